"""Durable, resumable scans of NB201 architectures into an SQLite database.

``scan(indices, ...)`` scores a range or list of benchmark indices under one
:class:`~nwot_fast.scoring.ScoreConfig` and writes every result to the ``scores`` table of an
SQLite database as soon as it is computed (WAL journal, one committed transaction per
architecture), so a killed scan loses at most the architecture in flight. Running the same
scan again resumes: it reads what the database already holds for this configuration (rows are
keyed by ``(arch_index, config_hash)``), scores only the rest, and never writes a row twice.

Scores are stored faithfully: ``score`` is a REAL (SQLite cannot hold NaN and stores it as
NULL), and ``score_text`` holds ``repr(score)`` (``'nan'``, ``'-inf'`` or the shortest
round-tripping decimal), which is what the readers here parse, so scores come back bitwise.

With ``dedup=True`` one representative per isomorphism class
(:func:`nwot_fast.nb201.representative_index`, the smallest index of the class; 6,466 classes
for the whole space) is scored and every other member of the class gets the representative's
score. Such rows are flagged: their ``representative`` column is not their own index. (A
member's own score would differ slightly: its weights and batch are drawn for its own index.)
A later scan without ``dedup`` replaces those filled rows by real scores.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import math
import operator
import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from .nb201 import NUM_ARCHS, arch_at, representative_index
from .scoring import ArchScorer, ScoreConfig

__all__ = [
    "scan",
    "ScanResult",
    "ScanDatabaseError",
    "ScoreDB",
    "load_scores",
    "parse_indices",
    "OUTPUT_FORMATS",
]

GAUSSIAN_DATA = "Gaussian N(0, 1) random inputs (no data path given)"
OUTPUT_FORMATS = (".csv", ".jsonl")
SCHEMA_VERSION = "1"

_COLUMNS = (
    "arch_index",
    "arch",
    "method",
    "score",
    "score_text",
    "representative",
    "dataset",
    "data",
    "batch_size",
    "seed",
    "config_hash",
    "config",
    "seconds",
    "engine",
    "device",
    "version",
    "created_at",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    id             INTEGER PRIMARY KEY,
    arch_index     INTEGER NOT NULL,
    arch           TEXT    NOT NULL,
    method         TEXT    NOT NULL,
    score          REAL,             -- NULL when the score is NaN (SQLite has no NaN)
    score_text     TEXT    NOT NULL, -- repr(score): 'nan', '-inf' or an exact decimal
    representative INTEGER NOT NULL, -- index whose network gave the score (== arch_index unless deduplicated)
    dataset        TEXT,
    data           TEXT,             -- NULL: Gaussian random inputs
    batch_size     INTEGER NOT NULL,
    seed           INTEGER NOT NULL,
    config_hash    TEXT    NOT NULL,
    config         TEXT    NOT NULL, -- JSON of ScoreConfig.identity()
    seconds        REAL,             -- NULL for rows filled from a representative
    engine         TEXT,
    device         TEXT,
    version        TEXT    NOT NULL,
    created_at     TEXT    NOT NULL,
    UNIQUE (arch_index, config_hash)
);
CREATE INDEX IF NOT EXISTS scores_by_config ON scores (config_hash);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class ScanDatabaseError(RuntimeError):
    """The scan database cannot be written right now (locked by another process, read-only,
    disk full): a resource problem, not a mistake in the input. Results already committed
    are kept."""


# ---------------------------------------------------------------------------------------------
# indices


def _check_index(value, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got bool {value!r}")
    try:
        i = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}") from None
    if not 0 <= i < NUM_ARCHS:
        raise ValueError(f"{what} {i} out of range; allowed 0..{NUM_ARCHS - 1}")
    return i


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
                out.append(_check_index(_parse_int(part, spec), "benchmark index"))
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
        values = [_check_index(v, "benchmark index") for v in values]
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
# score text: exact and faithful for NaN and infinities


def score_to_text(score: float) -> str:
    return repr(float(score))  # 'nan', '-inf', 'inf' or the shortest exact decimal


def score_from_text(text: str) -> float:
    return float(text)


def _json_score(score: float):
    """JSON has no NaN or infinity: write them as the strings 'nan', '-inf', 'inf' (as search does)."""
    return score if math.isfinite(score) else score_to_text(score)


# ---------------------------------------------------------------------------------------------
# the database


@dataclass(frozen=True)
class StoredScore:
    score: float
    representative: int
    seconds: float


def _sqlite_errors(path: str, action: str, timeout: float):
    """Turn sqlite3 errors into the package's error kinds, naming the file."""

    @contextlib.contextmanager
    def ctx():
        try:
            yield
        except sqlite3.OperationalError as e:
            msg = str(e).lower()
            if "locked" in msg or "busy" in msg:
                raise ScanDatabaseError(
                    f"scan database {path!r} is locked by another process or connection "
                    f"(waited {timeout:g} s) while {action}; wait for it to finish, raise --db-timeout, "
                    "or use another --db path"
                ) from e
            if "readonly" in msg or "read-only" in msg:
                raise ScanDatabaseError(
                    f"scan database {path!r} is read-only (file, directory or file system) while {action}; "
                    "choose a writable --db path"
                ) from e
            if "unable to open" in msg:
                parent = os.path.dirname(os.path.abspath(path))
                if not os.path.isdir(parent):
                    raise FileNotFoundError(
                        f"cannot create scan database {path!r}: directory {parent!r} does not exist"
                    ) from e
                if os.path.isdir(path):
                    raise ValueError(f"scan database path {path!r} is a directory; give a file path") from e
                raise ScanDatabaseError(
                    f"cannot open scan database {path!r} for writing (read-only location or no permission) "
                    f"while {action}; choose a writable --db path"
                ) from e
            if "disk" in msg or "full" in msg:
                raise ScanDatabaseError(f"scan database {path!r}: {e} while {action}; free disk space") from e
            raise ScanDatabaseError(f"scan database {path!r}: {e} while {action}") from e
        except sqlite3.DatabaseError as e:
            raise ValueError(
                f"{path!r} is not a usable nwot_fast scan database ({e}); give a new path or a database "
                "written by 'nwot-fast scan'"
            ) from e

    return ctx()


class ScoreDB:
    """The ``scores`` table of one SQLite file. ``readonly=True`` never creates or writes."""

    def __init__(self, path, *, timeout: float = 30.0, readonly: bool = False):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"database path must be a str or path, got {type(path).__name__}")
        self.path = os.fspath(path)
        if not self.path:
            raise ValueError("database path is empty")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
            raise ValueError(f"database timeout must be a number of seconds >= 0, got {timeout!r}")
        self.timeout = float(timeout)
        self.readonly = readonly
        if readonly:
            if not os.path.isfile(self.path):
                raise FileNotFoundError(f"scan database {self.path!r} does not exist")
            with self._errors("opening it for reading"):
                uri = "file:" + _uri_path(self.path) + "?mode=ro"
                self.conn = sqlite3.connect(uri, uri=True, timeout=self.timeout, isolation_level=None)
                self._check_schema(require=True)
            return
        if os.path.isdir(self.path):
            raise ValueError(f"scan database path {self.path!r} is a directory; give a file path")
        with self._errors("opening it"):
            self.conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            try:
                # WAL: readers never block the writer, and a killed writer leaves every committed
                # transaction intact. synchronous=NORMAL survives any process crash (only a power
                # loss can drop the last commits, never corrupt the file).
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                self._check_schema(require=False)
                # A real write now, so that a read-only or locked database fails before any scoring.
                with self.transaction():
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            self.conn.execute(stmt)
                    self.conn.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
                    )
            except BaseException:
                self.conn.close()
                raise

    def _errors(self, action: str):
        return _sqlite_errors(self.path, action, self.timeout)

    def _check_schema(self, *, require: bool) -> None:
        rows = self.conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='scores'").fetchall()
        if not rows:
            if require:
                raise ValueError(f"{self.path!r} has no 'scores' table; it was not written by 'nwot-fast scan'")
            return
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(scores)")}
        missing = [c for c in _COLUMNS if c not in have]
        if missing:
            raise ValueError(
                f"{self.path!r} has a 'scores' table of another layout (missing columns: {', '.join(missing)}); "
                "use a new --db path"
            )

    @contextlib.contextmanager
    def transaction(self):
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def load(self, config_hash: str) -> Dict[int, StoredScore]:
        with self._errors("reading scores"):
            rows = self.conn.execute(
                "SELECT arch_index, score_text, representative, seconds FROM scores WHERE config_hash = ?",
                (config_hash,),
            ).fetchall()
        return {
            int(i): StoredScore(score_from_text(t), int(r), float("nan") if s is None else float(s))
            for i, t, r, s in rows
        }

    def write(self, rows: Sequence[dict]) -> None:
        """Commit ``rows`` in one transaction. A real score (``representative == arch_index``)
        replaces a row filled from a representative; nothing else is ever overwritten."""
        if not rows:
            return
        cols = ", ".join(_COLUMNS)
        marks = ", ".join("?" for _ in _COLUMNS)
        update = ", ".join(
            f"{c} = excluded.{c}"
            for c in ("score", "score_text", "representative", "seconds", "engine", "device", "version", "created_at")
        )
        real_sql = (
            f"INSERT INTO scores ({cols}) VALUES ({marks}) ON CONFLICT (arch_index, config_hash) "
            f"DO UPDATE SET {update} WHERE scores.representative != scores.arch_index"
        )
        filled_sql = f"INSERT OR IGNORE INTO scores ({cols}) VALUES ({marks})"
        with self._errors("saving results"):
            with self.transaction():
                for row in rows:
                    sql = real_sql if row["representative"] == row["arch_index"] else filled_sql
                    self.conn.execute(sql, tuple(row[c] for c in _COLUMNS))

    def count(self, config_hash: str) -> int:
        with self._errors("counting rows"):
            return int(
                self.conn.execute("SELECT COUNT(*) FROM scores WHERE config_hash = ?", (config_hash,)).fetchone()[0]
            )

    def configurations(self) -> List[dict]:
        """One summary per configuration stored: its identity, row counts and time span."""
        with self._errors("summarising"):
            rows = self.conn.execute(
                "SELECT config_hash, MIN(config), COUNT(*), SUM(representative != arch_index), "
                "SUM(score_text = 'nan'), SUM(score_text = '-inf'), SUM(seconds), MIN(created_at), "
                "MAX(created_at), GROUP_CONCAT(DISTINCT version), GROUP_CONCAT(DISTINCT engine) "
                "FROM scores GROUP BY config_hash ORDER BY MIN(id)"
            ).fetchall()
        out = []
        for h, cfg, n, reused, nan, neg_inf, secs, first, last, versions, engines in rows:
            out.append(
                {
                    "config_hash": h,
                    "config": json.loads(cfg),
                    "rows": int(n),
                    "reused": int(reused or 0),
                    "nan": int(nan or 0),
                    "neg_inf": int(neg_inf or 0),
                    "scoring_seconds": float(secs or 0.0),
                    "first": first,
                    "last": last,
                    "versions": sorted((versions or "").split(",")),
                    "engines": sorted((engines or "").split(",")),
                }
            )
        return out

    def close(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()
            self.conn = None

    def __enter__(self) -> "ScoreDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(os.path.abspath(path))


def _config_hash(config_or_hash) -> str:
    if isinstance(config_or_hash, ScoreConfig):
        return config_or_hash.config_hash()
    if isinstance(config_or_hash, str) and config_or_hash:
        return config_or_hash
    raise TypeError(
        f"expected a ScoreConfig or a config hash string, got {type(config_or_hash).__name__} {config_or_hash!r}"
    )


def load_scores(db, config_or_hash, *, include_reused: bool = True, timeout: float = 30.0) -> Dict[int, float]:
    """``{arch_index: score}`` stored in the scan database ``db`` for one configuration (a
    :class:`ScoreConfig` or its ``config_hash()``). NaN and ``-inf`` come back as such.
    ``include_reused=False`` leaves out rows filled from an isomorphism representative."""
    chash = _config_hash(config_or_hash)
    with ScoreDB(db, timeout=timeout, readonly=True) as store:
        stored = store.load(chash)
    return {
        i: s.score for i, s in sorted(stored.items()) if include_reused or s.representative == i
    }


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
        out = []
        for rec in self.to_records():
            rec["score"] = _json_score(rec["score"])
            rec["seconds"] = rec["seconds"] if math.isfinite(rec["seconds"]) else None
            out.append(rec)
        return out

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

    def write_csv(self, path) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            cols = ["arch_index", "arch", "score", "representative", "reused", "seconds", "method", "config_hash"]
            w.writerow(cols)
            for rec in self.to_records():
                rec["score"] = score_to_text(rec["score"])
                rec["seconds"] = "" if not math.isfinite(rec["seconds"]) else repr(rec["seconds"])
                rec["reused"] = int(rec["reused"])
                w.writerow([rec[c] for c in cols])

    def write_jsonl(self, path) -> None:
        with open(path, "w") as f:
            for rec in self.json_records():
                f.write(json.dumps(rec, allow_nan=False) + "\n")

    def write(self, path) -> None:
        """CSV or JSON Lines by the file name's ending."""
        ext = check_output_path(path)
        (self.write_csv if ext == ".csv" else self.write_jsonl)(path)


def check_output_path(path) -> str:
    """Validate an output file name before any work: ``.csv`` or ``.jsonl``, in an existing directory."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"output path must be a str or path, got {type(path).__name__}")
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in OUTPUT_FORMATS:
        raise ValueError(f"output file {path!r} must end in {' or '.join(OUTPUT_FORMATS)} (CSV or JSON Lines)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"cannot write output file {path!r}: directory {parent!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"output file {path!r} is a directory; give a file name ending in .csv or .jsonl")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write output file {path!r}: directory {parent!r} is not writable")
    return ext


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
    method: str = "jacob_cov",
    data=None,
    dataset=None,
    batch_size=None,
    seed: int = 0,
    device: str = "cpu",
    engine: str = "fast",
    relu_match: str = "name",
    dedup: bool = False,
    db=None,
    progress=None,
    config: Optional[ScoreConfig] = None,
    db_timeout: float = 30.0,
    ray=None,
) -> ScanResult:
    """Score the benchmark ``indices`` (a range, a list, or ``"START:STOP"``) and return a
    :class:`ScanResult`.

    ``config`` (a :class:`ScoreConfig`) replaces ``method`` .. ``relu_match`` when given.
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
    if config is None:
        if dataset is not None:
            from .data import check_dataset

            dataset = check_dataset(dataset)  # one spelling, so one config hash
        config = ScoreConfig(
            method=method,
            data=None if data is None else os.fspath(data),
            dataset=dataset,
            batch_size=batch_size,
            seed=seed,
            relu_match=relu_match,
            engine=engine,
            device=device,
        )
    elif not isinstance(config, ScoreConfig):
        raise TypeError(f"config must be a ScoreConfig, got {type(config).__name__}")
    if not isinstance(dedup, bool):
        raise TypeError(f"dedup must be True or False, got {dedup!r}")
    if ray is not None and ray is not False:  # Ray hook (issue 12): the target is checked before any work
        from .distributed import check_ray_target

        ray = check_ray_target(ray)
    resolved = config.resolved()
    chash = config.config_hash()
    identity_json = json.dumps(config.identity(), sort_keys=True)

    rep_of = representatives(wanted) if dedup else {i: i for i in wanted}

    store = None if db is None else ScoreDB(db, timeout=db_timeout)
    try:
        existing = store.load(chash) if store is not None else {}
        results: Dict[int, StoredScore] = {}
        resumed = 0
        for i in wanted:
            row = existing.get(i)
            # A filled row is only good enough when deduplicating; a real row always is.
            if row is not None and (row.representative == i or dedup):
                results[i] = row
                resumed += 1

        # Representatives to score, in order of first appearance; the rest are filled from rows
        # the database already holds.
        members: Dict[int, List[int]] = {}
        for i in wanted:
            if i not in results:
                members.setdefault(rep_of[i], []).append(i)
        todo: List[int] = []
        fill_now: List[dict] = []
        for r, ms in members.items():
            row = existing.get(r)
            if row is not None and row.representative == r:
                for m in ms:
                    results[m] = StoredScore(row.score, r, float("nan"))
                    fill_now.append(m)
            else:
                todo.append(r)

        scorer = None
        description = GAUSSIAN_DATA if resolved.data is None else resolved.data
        if todo:
            scorer = ArchScorer(config)
            description = scorer.describe_data()
        dataset_name = resolved.dataset
        if dataset_name is None and scorer is not None and scorer.images is not None:
            dataset_name = getattr(scorer.images, "dataset", None)
        dataset_name = None if dataset_name is None else str(dataset_name)

        def row_for(index: int, score: float, representative: int, seconds) -> dict:
            return {
                "arch_index": index,
                "arch": str(arch_at(index)),
                "method": resolved.method,
                "score": None if math.isnan(score) else score,
                "score_text": score_to_text(score),
                "representative": representative,
                "dataset": dataset_name,
                "data": resolved.data,
                "batch_size": resolved.batch_size,
                "seed": resolved.seed,
                "config_hash": chash,
                "config": identity_json,
                "seconds": seconds,
                "engine": resolved.engine,
                "device": resolved.device,
                "version": _version(),
                "created_at": _now(),
            }

        if store is not None and fill_now:
            store.write([row_for(m, results[m].score, results[m].representative, None) for m in fill_now])

        bar = _make_progress(progress, len(todo))
        if not todo:
            scored = (s for s in ())
        elif ray is None or ray is False:
            scored = scorer.score_indices(todo)
        else:  # Ray hook (issue 12): the same scores from a cluster, in completion order
            from .distributed import score_on_ray

            scored = score_on_ray(config, todo, ray=ray)
        try:
            for done, s in enumerate(scored, start=1):
                r = s.index
                rows = [row_for(r, s.score, r, s.seconds)]
                for m in members[r]:
                    if m == r:
                        results[m] = StoredScore(s.score, r, s.seconds)
                    else:
                        results[m] = StoredScore(s.score, r, float("nan"))
                        rows.append(row_for(m, s.score, r, None))
                if store is not None:
                    store.write(rows)
                if bar is not None:
                    bar(done, len(todo))
        finally:
            scored.close()
            if bar is not None and hasattr(bar, "close"):
                bar.close()
    finally:
        if store is not None:
            store.close()

    return ScanResult(
        indices=np.asarray(wanted, dtype=np.int64),
        scores=np.asarray([results[i].score for i in wanted], dtype=np.float64),
        representatives=np.asarray([results[i].representative for i in wanted], dtype=np.int64),
        seconds=np.asarray([results[i].seconds for i in wanted], dtype=np.float64),
        config=resolved,
        config_hash=chash,
        dedup=dedup,
        db=None if db is None else os.fspath(db),
        computed=len(todo),
        resumed=resumed,
        data_description=description,
        wall_seconds=time.perf_counter() - started,
    )


def _version() -> str:
    from . import __version__

    return __version__


def _make_progress(progress, total: int):
    if progress is None or progress is False:
        return None
    if progress is True:
        from .progress import Progress

        return Progress(total, desc="scoring")
    if callable(progress):
        return progress
    raise TypeError(f"progress must be None, True or a callable progress(done, total), got {type(progress).__name__}")
