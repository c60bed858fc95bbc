"""Durable, resumable scans of NB201 architectures into an SQLite database.

``scan(indices, ...)`` scores a range or list of benchmark indices under one
:class:`~nwot_fast.scoring.ScoreConfig` and writes every result to the ``scores`` table of an
SQLite database (:mod:`nwot_fast.store`) as soon as it is computed (one committed transaction
per architecture), so a killed scan loses at most the architecture in flight. Running the same
scan again resumes: it reads what the database already holds for this configuration (rows are
keyed by ``(arch_index, config_hash)``), scores only the rest, and never writes a row twice.

With ``dedup=True`` one representative per isomorphism class
(:func:`nwot_fast.nb201.representative_index`, the smallest index of the class; 6,466 classes
for the whole space) is scored and every other member of the class gets the representative's
score. Such rows are flagged: their ``representative`` column is not their own index. (A
member's own score would differ slightly: its weights and batch are drawn for its own index.)
A later scan without ``dedup`` replaces those filled rows by real scores.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

import numpy as np

from ._common import NUM_ARCHS, __version__, check_index, json_float
from .args import check_flag
from .nb201 import arch_at, representative_index
from .paths import check_distinct
from .scorefile import SCORE_FORMATS as OUTPUT_FORMATS
from .scorefile import check_output_path, score_to_text, write_scores
from .scoring import ArchScorer, ScoreConfig, score_config
from .store import ScanDatabaseError, ScoreDB, StoredScore, load_scores

__all__ = [
    "scan",
    "ScanResult",
    "ScanDatabaseError",
    "ScoreDB",
    "load_scores",
    "parse_indices",
    "OUTPUT_FORMATS",
    "check_output_path",
]

GAUSSIAN_DATA = "Gaussian N(0, 1) random inputs (no data path given)"

# ---------------------------------------------------------------------------------------------
# indices


def _parse_int(text: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"bad index specification {spec!r}: {text!r} is not an integer; "
            f"use START:STOP (STOP exclusive), single indices or a comma-separated list, e.g. 0:{NUM_ARCHS}"
        ) from None


def parse_indices(spec) -> List[int]:
    """Benchmark indices from a ``range``, an iterable of ints, one int, or a string:
    ``"START:STOP"`` (STOP exclusive; either side may be empty), ``"START:STOP:STEP"``, a single
    index, or a comma-separated list of these (``"0:10,100,200:205"``). Order is kept and
    repeated indices are dropped."""
    if isinstance(spec, str):
        text = spec.strip()
        if not text:
            raise ValueError(f"empty index specification; use START:STOP, e.g. 0:{NUM_ARCHS}")
        out: List[int] = []
        for part in text.split(","):
            part = part.strip()
            if ":" in part:
                fields = part.split(":")
                if len(fields) > 3:
                    raise ValueError(f"bad index range {part!r} in {spec!r}; use START:STOP or START:STOP:STEP")
                start = _parse_int(fields[0], spec) if fields[0].strip() else 0
                stop = _parse_int(fields[1], spec) if fields[1].strip() else NUM_ARCHS
                step = _parse_int(fields[2], spec) if len(fields) == 3 and fields[2].strip() else 1
                if step <= 0:
                    raise ValueError(f"step of index range {part!r} must be positive, got {step}")
                if not 0 <= start < NUM_ARCHS or not 0 < stop <= NUM_ARCHS or start >= stop:
                    raise ValueError(
                        f"index range {part!r} is empty or out of bounds; "
                        f"need 0 <= START < STOP <= {NUM_ARCHS} (STOP exclusive)"
                    )
                out.extend(range(start, stop, step))
            else:
                out.append(check_index(_parse_int(part, spec)))
        values: Iterable = out
    elif isinstance(spec, range):
        if len(spec) and (min(spec[0], spec[-1]) < 0 or max(spec[0], spec[-1]) >= NUM_ARCHS):
            raise ValueError(f"indices {spec} out of range; allowed 0..{NUM_ARCHS - 1}")
        values = spec
    elif isinstance(spec, (str, bytes)) or spec is None:
        raise TypeError(f"indices must be a range, a list of ints or a 'START:STOP' string, got {spec!r}")
    else:
        try:
            values = [spec] if not hasattr(spec, "__iter__") else list(spec)
        except TypeError:
            raise TypeError(
                f"indices must be a range, a list of ints or a 'START:STOP' string, got {type(spec).__name__}"
            ) from None
        values = [check_index(v) for v in values]
    seen = set()
    result = []
    for i in values:
        i = int(i)
        if i not in seen:
            seen.add(i)
            result.append(i)
    if not result:
        raise ValueError("no architectures to scan: the index list is empty")
    return result


# ---------------------------------------------------------------------------------------------
# the result


@dataclass
class ScanResult:
    """Scores of the requested indices, in the requested order.

    ``representatives[k]`` is the index whose network produced ``scores[k]``: the index itself,
    or (with ``dedup``) its isomorphism representative. ``scored`` counts the indices with their
    own score, ``reused`` those filled from a representative; ``resumed`` how many were already
    in the database; ``computed`` how many networks this call actually scored (with ``dedup`` a
    representative outside the requested indices may be among them).
    """

    indices: np.ndarray
    scores: np.ndarray
    representatives: np.ndarray
    seconds: np.ndarray
    config: ScoreConfig
    config_hash: str
    dedup: bool = False
    db: Optional[str] = None
    computed: int = 0
    resumed: int = 0
    data_description: str = GAUSSIAN_DATA
    wall_seconds: float = 0.0
    _archs: Optional[List[str]] = field(default=None, repr=False)

    @property
    def archs(self) -> List[str]:
        if self._archs is None:
            self._archs = [str(arch_at(int(i))) for i in self.indices]
        return self._archs

    @property
    def reused_mask(self) -> np.ndarray:
        return self.representatives != self.indices

    @property
    def scored(self) -> int:
        return int(np.count_nonzero(~self.reused_mask))

    @property
    def reused(self) -> int:
        return int(np.count_nonzero(self.reused_mask))

    def __len__(self) -> int:
        return len(self.indices)

    def to_records(self) -> List[dict]:
        method = self.config.method
        out = []
        for i, a, s, r, sec in zip(self.indices, self.archs, self.scores, self.representatives, self.seconds):
            out.append(
                {
                    "arch_index": int(i),
                    "arch": a,
                    "score": float(s),
                    "representative": int(r),
                    "reused": bool(r != i),
                    "seconds": float(sec),
                    "method": method,
                    "config_hash": self.config_hash,
                }
            )
        return out

    def json_records(self) -> List[dict]:
        """Records for JSON: a non-finite score is the string ``'nan'`` / ``'-inf'``; unknown seconds ``null``."""
        return [dict(rec, score=json_float(rec["score"]), seconds=rec["seconds"] if math.isfinite(rec["seconds"]) else None)
                for rec in self.to_records()]

    def to_dict(self, *, records: bool = True) -> dict:
        finite = np.isfinite(self.scores)
        d = {
            "n": len(self),
            "scored": self.scored,
            "reused": self.reused,
            "resumed": self.resumed,
            "computed": self.computed,
            "nan": int(np.count_nonzero(np.isnan(self.scores))),
            "neg_inf": int(np.count_nonzero(np.isneginf(self.scores))),
            "finite": int(np.count_nonzero(finite)),
            "dedup": self.dedup,
            "db": self.db,
            "method": self.config.method,
            "data": self.data_description,
            "config_hash": self.config_hash,
            "config": self.config.identity(),
            "engine": self.config.engine,
            "device": self.config.device,
            "dtype": self.config.dtype,
            "wall_seconds": self.wall_seconds,
        }
        if records:
            d["records"] = self.json_records()
        return d

    def summary(self) -> str:
        d = self.to_dict(records=False)
        lines = [
            f"scanned {d['n']} architectures with {d['method']}: {d['scored']} own scores, "
            f"{d['reused']} reused from an isomorphic representative; {d['resumed']} were already in the "
            f"database, {d['computed']} scored now in {self.wall_seconds:.1f} s",
            f"data: {self.data_description}",
            f"config hash {self.config_hash}; non-finite scores: {d['nan']} NaN, {d['neg_inf']} -inf",
        ]
        if self.db:
            lines.append(f"database: {self.db}")
        return "\n".join(lines)

    def top(self, k: int = 5) -> List[dict]:
        """The ``k`` best records (NaN last)."""
        order = np.argsort(np.where(np.isnan(self.scores), -np.inf, self.scores), kind="stable")[::-1]
        recs = self.to_records()
        return [recs[j] for j in order[:k]]

    def write(self, path) -> str:
        """The score file (:mod:`nwot_fast.scorefile`; CSV, JSON Lines or JSON by the ending),
        never over the scan's database or data."""
        check_distinct([("path", path)], [("data", self.config.data)], [("db", self.db)])
        return write_scores(path, self.indices, self.scores, seconds=self.seconds, method=self.config.method,
                            config=self.config.identity(), representatives=self.representatives,
                            config_hash=self.config_hash)


# ---------------------------------------------------------------------------------------------
# the scan


def representatives(indices) -> Dict[int, int]:
    """``{index: representative}`` for deduplicated scans: the smallest index of each index's
    isomorphism class (:func:`nwot_fast.nb201.representative_index`). Over the whole space there
    are 6,466 distinct representatives."""
    return {i: representative_index(arch_at(i)) for i in parse_indices(indices)}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def scan(
    indices,
    *,
    dedup: bool = False,
    db=None,
    progress=None,
    config: Optional[ScoreConfig] = None,
    db_timeout: float = 30.0,
    ray=None,
    **options,
) -> ScanResult:
    """Score the benchmark ``indices`` (a range, a list, or ``"START:STOP"``) and return a
    :class:`ScanResult`.

    The scoring configuration: ``config`` (a :class:`ScoreConfig`), or its fields as keyword
    options (``method``, ``data``, ``dataset``, ``batch_size``, ``augment``, ``fixed_batch``,
    ``seed``, ``relu_match``, ``engine``, ``device``, ``dtype``; see
    :func:`nwot_fast.scoring.score_config`).
    ``db`` (a path): write each result to that SQLite database as it is produced and resume
    from what it holds; ``None`` keeps results in memory only. ``dedup``: score one
    representative per isomorphism class and give the other members its score (flagged).
    ``progress``: ``True`` for a progress bar on stderr (drawn only on a terminal), or a
    callable ``progress(done, total)`` called after each scored architecture.
    ``ray``: score on a Ray cluster (:mod:`nwot_fast.distributed`): ``True`` starts a local
    instance for the run, ``"auto"``, ``"HOST:PORT"`` or ``"ray://HOST:10001"`` joins one;
    this process stays the only writer of ``db``.
    """
    started = time.perf_counter()
    wanted = parse_indices(indices)
    config = score_config(config, **options)
    dedup = check_flag(dedup, "dedup")
    if ray is not None and ray is not False:  # Ray hook (issue 12): the target is checked before any work
        from .distributed import check_ray_target

        ray = check_ray_target(ray)
    rep_of = representatives(wanted) if dedup else {i: i for i in wanted}
    config.config_hash()  # reads and fingerprints the data: a bad --data fails before the database is touched
    scorer = None
    if db is not None and not os.path.lexists(os.fspath(db)):
        # A new database has nothing to resume, so the scorer is needed anyway: built first, it
        # refuses a batch size the data cannot fill before an empty database file is left behind.
        scorer = ArchScorer(config)
    store = None if db is None else ScoreDB(db, timeout=db_timeout)
    try:
        run = _ScanRun(config, store, dedup, scorer)
        run.plan(wanted, rep_of)
        run.score_all(progress, ray=ray)
    finally:
        if store is not None:
            store.close()
    results = run.results
    return ScanResult(
        indices=np.asarray(wanted, dtype=np.int64),
        scores=np.asarray([results[i].score for i in wanted], dtype=np.float64),
        representatives=np.asarray([results[i].representative for i in wanted], dtype=np.int64),
        seconds=np.asarray([results[i].seconds for i in wanted], dtype=np.float64),
        config=run.resolved,
        config_hash=run.chash,
        dedup=dedup,
        db=None if db is None else os.fspath(db),
        computed=len(run.todo),
        resumed=run.resumed,
        data_description=run.description,
        wall_seconds=time.perf_counter() - started,
    )


class _ScanRun:
    """The state of one :func:`scan` call: what the store holds, what is left to score, and
    the rows written for each result."""

    def __init__(self, config: ScoreConfig, store: Optional[ScoreDB], dedup: bool,
                 scorer: Optional[ArchScorer] = None):
        self.config, self.store, self.dedup = config, store, dedup
        self.resolved = config.resolved()
        self.chash = config.config_hash()
        self.identity_json = json.dumps(config.identity(), sort_keys=True)
        self.existing = store.load(self.chash) if store is not None else {}
        self.results: Dict[int, StoredScore] = {}
        self.members: Dict[int, List[int]] = {}
        self.todo: List[int] = []
        self.resumed = 0
        self.scorer = scorer
        self.description = GAUSSIAN_DATA if self.resolved.data is None else self.resolved.data
        self.dataset: Optional[str] = self.resolved.dataset

    def plan(self, wanted: List[int], rep_of: Dict[int, int]) -> None:
        """Take what the store holds; group the rest by representative; fill members whose
        representative the store already holds; the other representatives are to score."""
        for i in wanted:
            row = self.existing.get(i)
            # A filled row is only good enough when deduplicating; a real row always is.
            if row is not None and (row.representative == i or self.dedup):
                self.results[i] = row
                self.resumed += 1
        for i in wanted:
            if i not in self.results:
                self.members.setdefault(rep_of[i], []).append(i)
        fill_now: List[int] = []
        for r, ms in self.members.items():
            row = self.existing.get(r)
            if row is not None and row.representative == r:
                for m in ms:
                    self.results[m] = StoredScore(row.score, r, float("nan"))
                    fill_now.append(m)
            else:
                self.todo.append(r)
        if self.todo:
            self.scorer = self.scorer or ArchScorer(self.config)
            self.description = self.scorer.describe_data()
            if self.dataset is None and self.scorer.images is not None:
                self.dataset = getattr(self.scorer.images, "dataset", None)
        self._write([self._row(m, self.results[m].score, self.results[m].representative, None) for m in fill_now])

    def score_all(self, progress, ray=None) -> None:
        bar = _make_progress(progress, len(self.todo))
        if not self.todo:
            scored = (s for s in ())
        elif ray is None or ray is False:
            scored = self.scorer.score_indices(self.todo)
        else:  # Ray hook (issue 12): the same scores from a cluster, in completion order
            from .distributed import score_on_ray

            scored = score_on_ray(self.config, self.todo, ray=ray)
        try:
            for done, s in enumerate(scored, start=1):
                r = s.index
                rows = [self._row(r, s.score, r, s.seconds)]
                for m in self.members[r]:
                    self.results[m] = StoredScore(s.score, r, s.seconds if m == r else float("nan"))
                    if m != r:
                        rows.append(self._row(m, s.score, r, None))
                self._write(rows)
                if bar is not None:
                    bar(done, len(self.todo))
        finally:
            scored.close()
            if bar is not None and hasattr(bar, "close"):
                bar.close()

    def _write(self, rows: List[dict]) -> None:
        if self.store is not None and rows:
            self.store.write(rows)

    def _row(self, index: int, score: float, representative: int, seconds) -> dict:
        c = self.resolved
        return {
            "arch_index": index,
            "arch": str(arch_at(index)),
            "method": c.method,
            "score": None if math.isnan(score) else score,
            "score_text": score_to_text(score),
            "representative": representative,
            "dataset": None if self.dataset is None else str(self.dataset),
            "data": c.data,
            "batch_size": c.batch_size,
            "seed": c.seed,
            "config_hash": self.chash,
            "config": self.identity_json,
            "seconds": seconds,
            "engine": c.engine,
            "device": c.device,
            "version": __version__,
            "created_at": _now(),
        }


def _make_progress(progress, total: int):
    if progress is None or progress is False:
        return None
    if progress is True:
        from .progress import Progress

        return Progress(total, desc="scoring")
    if callable(progress):
        return progress
    raise TypeError(f"progress must be None, True or a callable progress(done, total), got {type(progress).__name__}")
