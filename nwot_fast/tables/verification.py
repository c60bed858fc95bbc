"""Check a score table on this machine: recompute K random rows with the table's protocol.

The images are the first N training images of the source the user gives, checked against the
table's pixel fingerprint; the batch, seed, ReLU rule and engine come from the table's record.

* **float64 rows** are recomputed in float64 (the table's engine) and must equal the table to
  :data:`nwot_fast.precision.FLOOR` (1e-9) relative, NaN and -inf exactly.
* **float32 rows** are held to the precision contract (docs/PRECISION.md): the truth is the
  float64 score (the table's engine in float64, equal to the pure path's to 1e-9), the
  reference envelope the authors' procedure (the pure path in float32) at 1 and 2 threads on
  this machine. The table keeps the contract when its NaN and -inf rows are exactly the
  truth's and, over the sampled rows with a finite truth, its largest and median relative
  error are at most 2x the reference's (:meth:`nwot_fast.precision.Envelope.violations`).
  Each row also shows its own errors; a row above 2x its own reference error is flagged, but
  the verdict is the contract's, which is a statement about a set of architectures.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

from .._common import check_int
from .table import ScoreTable

__all__ = ["RowCheck", "Verification", "verify_table"]


@dataclass
class RowCheck:
    """One recomputed row: the table's score, this machine's float64 score (the truth), the
    relative error of the table against it, and for float32 tables the reference's error
    (the authors' float32 procedure here, the larger over 1 and 2 threads)."""

    index: int
    table: float
    truth: float
    error: float
    reference_error: Optional[float] = None
    ok: bool = True
    note: str = ""

    def to_dict(self) -> dict:
        """This row as JSON-ready data (NaN and infinities spelled as strings)."""
        from .._common import json_float

        return {"arch_index": self.index, "table": json_float(self.table), "truth_float64": json_float(self.truth),
                "relative_error": json_float(self.error),
                "reference_error": None if self.reference_error is None else json_float(self.reference_error),
                "ok": self.ok, "note": self.note}


@dataclass
class Verification:
    """The outcome of :func:`verify_table`: one :class:`RowCheck` per sampled row and the
    reasons the table fails (``problems``; empty when it passes)."""

    table: str
    dtype: str
    method: str
    rows: List[RowCheck]
    problems: List[str]
    sample_seed: int
    data: str
    seconds: float
    summary: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Whether every checked row agreed with the table (no problem recorded)."""
        return not self.problems

    def to_dict(self) -> dict:
        """The whole verification as JSON-ready data (what ``tables verify --json`` prints)."""
        return {"table": self.table, "dtype": self.dtype, "method": self.method, "passed": self.passed,
                "problems": self.problems, "sample_seed": self.sample_seed, "data": self.data,
                "seconds": round(self.seconds, 3), "summary": self.summary, "rows": [r.to_dict() for r in self.rows]}

    def format_text(self) -> str:
        """One line per checked row and a verdict, as ``tables verify`` prints it."""
        ref = self.dtype == "float32"
        head = f"{'index':>6}  {'table':>22}  {'float64 here':>22}  {'rel. error':>10}" + (
            f"  {'ref. error':>10}" if ref else "") + "  agreement"
        lines = [f"table {self.table} ({self.method}, {self.dtype}): {len(self.rows)} rows recomputed on "
                 f"{self.data} (sample seed {self.sample_seed}), {self.seconds:.1f} s", head]
        for r in self.rows:
            cells = f"{r.index:>6}  {r.table!r:>22}  {r.truth!r:>22}  {r.error:>10.2e}"
            if ref:
                cells += f"  {r.reference_error:>10.2e}"
            lines.append(cells + "  " + ("ok" if r.ok else "DIFFERS") + (f" ({r.note})" if r.note else ""))
        if ref and self.summary:
            s = self.summary
            lines.append(f"contract (docs/PRECISION.md) over the finite rows: max error {s['max']:.2e}, reference "
                         f"{s['reference_max']:.2e}; median {s['median']:.2e}, reference {s['reference_median']:.2e}; "
                         f"limit {s['factor']:g} x the reference (errors below {s['floor']:.0e} count as "
                         f"{s['floor']:.0e})")
        lines += [f"FAIL: {p}" for p in self.problems] or ["PASS"]
        return "\n".join(lines)


def _same_special(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (math.isinf(a) and a == b)


def verify_table(table: ScoreTable, data, *, sample: int = 20, sample_seed: Optional[int] = None,
                 progress: Optional[Callable[[int, int], None]] = None,
                 thread_counts: Optional[Sequence[int]] = None) -> Verification:
    """Recompute ``sample`` random rows of ``table`` (all rows when it has fewer) on this
    machine and compare them as the module docstring says. ``data``: a source of the table's
    images (a CIFAR-10 batch directory or an ``.npz``; its first N training images must have
    the table's pixel fingerprint, else ValueError). ``sample_seed``: which rows (default: a
    fresh seed, reported in the result so that the same rows can be checked again).
    ``progress(done, total)`` is called after each row. ``thread_counts``: those of the float32
    reference envelope (default :data:`nwot_fast.precision.THREADS`, the contract's 1 and 2)."""
    import torch

    from .. import precision
    from ..nb201 import arch_at
    from ..scoring import ArchScorer
    from .protocol import first_images, pixel_fingerprint, table_config

    if not isinstance(table, ScoreTable):
        raise TypeError(f"table must be a ScoreTable (nwot_fast.tables.load), got {type(table).__name__}")
    sample = check_int(sample, "sample", 1)
    if sample_seed is None:
        sample_seed = int(np.random.SeedSequence().generate_state(1)[0])
    sample_seed = check_int(sample_seed, "sample_seed", 0)
    started = time.perf_counter()
    prov = table.provenance
    proto = prov["protocol"]
    want = proto["data"]
    images = first_images(data, want["images"], want.get("dataset"))
    got = pixel_fingerprint(images.images)
    if got != want["fingerprint"]:
        raise ValueError(f"{data}: its first {want['images']} training images have the fingerprint {got}, not the "
                         f"table's {want['fingerprint']} ({want['description']}); give that data (a CIFAR-10 batch "
                         "directory or an .npz holding those images)")
    picks = np.sort(np.random.default_rng(sample_seed).choice(len(table), min(sample, len(table)), replace=False))
    indices = [int(table.indices[k]) for k in picks]
    shipped = [float(table.scores[k]) for k in picks]
    truth_scorer = ArchScorer(table_config(prov, "float64"), images=images)
    x = truth_scorer.batch_for(0)  # the fixed batch: the same for every architecture
    rows: List[RowCheck] = []
    problems: List[str] = []
    summary: dict = {}
    if table.dtype == "float64":
        for n, (i, s) in enumerate(zip(indices, shipped), start=1):
            t = truth_scorer.score_index(i).score
            err = precision.relative_error(s, t)
            ok = err <= precision.FLOOR
            rows.append(RowCheck(i, s, t, err, ok=ok, note="" if ok else f"> {precision.FLOOR:g} relative"))
            if not ok:
                problems.append(f"row {i}: table {s!r}, float64 here {t!r} (relative error {err:.2e} > "
                                f"{precision.FLOOR:g})")
            if progress is not None:
                progress(n, len(indices))
    else:
        counts = tuple(precision.THREADS if thread_counts is None else thread_counts)
        if not counts:
            raise ValueError("thread_counts must name at least one thread count")
        truth, reference = [], {n: [] for n in counts}
        kwargs = dict(method=table.method, seed=proto["seed"], relu_match=proto["relu_match"])
        for n, (i, s) in enumerate(zip(indices, shipped), start=1):
            truth.append(truth_scorer.score_index(i).score)
            for threads in counts:
                with precision.threads(threads):
                    reference[threads] += precision.reference_scores([i], x, dtype=torch.float32, **kwargs)
            if progress is not None:
                progress(n, len(indices))
        env = precision.Envelope([str(arch_at(i)) for i in indices], table.method, truth, reference,
                                 {"table": shipped})
        floor = precision.floor(table.method)
        for i, s, t, e, r in zip(indices, shipped, truth, env.errors("table"), env.reference_errors()):
            special = not (math.isfinite(s) and math.isfinite(t))
            if special:
                ok, note = _same_special(s, t), ("" if _same_special(s, t) else "special value differs")
            else:
                ok = e <= precision.FACTOR * max(r, floor)
                note = "" if ok else f"> {precision.FACTOR:g} x this row's reference error"
            rows.append(RowCheck(i, s, t, e, r, ok, note))
        problems = env.violations("table")
        summary = env.summary("table")  # empty when no sampled row has a finite truth
        if summary:
            summary.update(floor=floor, factor=precision.FACTOR)
    return Verification(table=table.name, dtype=table.dtype, method=table.method, rows=rows, problems=problems,
                        sample_seed=sample_seed, data=str(data), seconds=time.perf_counter() - started,
                        summary=summary)
