"""Per-architecture score files: one format for ``scan --out``, ``evaluate --scores-out`` and
what ``evaluate --scores-in`` / ``report`` read back.

Columns (CSV; the same fields in JSON Lines, one record per line, and in ``.json`` as
``{"config": ..., "scores": [records]}``): ``arch_index, arch, method, score, seconds``, then,
for scan results, ``representative, reused, config_hash``. Scores are exact: ``repr(score)`` in
CSV (``nan``, ``-inf`` or the shortest round-tripping decimal); in JSON a number, or the
strings ``"nan"`` / ``"-inf"`` (:func:`nwot_fast._common.json_float`). Unknown seconds are
empty (CSV) or ``null`` (JSON).
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ._common import METHODS, NUM_ARCHS, atomic_write, check_input_file, check_output_file, json_float

__all__ = ["SCORE_FORMATS", "ScoreFile", "check_output_path", "read_scores", "write_scores",
           "score_to_text", "score_from_text"]

SCORE_FORMATS = (".csv", ".jsonl", ".json")
_BASE_COLUMNS = ["arch_index", "arch", "method", "score", "seconds"]
_SCAN_COLUMNS = ["representative", "reused", "config_hash"]


def score_to_text(score: float) -> str:
    return repr(float(score))  # 'nan', '-inf', 'inf' or the shortest exact decimal


def score_from_text(text: str) -> float:
    return float(text)


def parse_score(value, where: str) -> float:
    """A score cell: a number, ``None`` (NaN) or its text (``'nan'``, ``'-inf'``, a decimal)."""
    if value is None:
        return float("nan")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ValueError(f"{where}: score {value!r} is not a number (nan and -inf are written as 'nan' / '-inf')")


def check_output_path(path, rows: int = 0) -> str:
    """Validate a score file name before any work: ``.csv``, ``.jsonl`` or ``.json``, in an
    existing directory that takes a test write of the size of ``rows`` rows. Returns the
    lower-case extension."""
    from .paths import BYTES_PER_SCORE_ROW, PROBE_BYTES

    probe_bytes = max(PROBE_BYTES, BYTES_PER_SCORE_ROW * rows)
    return check_output_file(path, "output file", SCORE_FORMATS, probe_bytes=probe_bytes)


def _records(indices, scores, seconds, method, representatives, config_hash) -> List[dict]:
    from .nb201 import arch_at

    out = []
    for k, (i, s, t) in enumerate(zip(indices, scores, seconds)):
        rec = {"arch_index": int(i), "arch": str(arch_at(int(i))), "method": method or "", "score": float(s),
               "seconds": None if math.isnan(t) else float(t)}
        if representatives is not None:
            rep = int(representatives[k])
            rec.update(representative=rep, reused=rep != int(i), config_hash=config_hash or "")
        out.append(rec)
    return out


def write_scores(path, indices, scores, *, seconds=None, method: Optional[str] = None,
                 config: Optional[dict] = None, representatives=None, config_hash: Optional[str] = None) -> str:
    """Write per-architecture scores to ``path`` (``.csv``, ``.jsonl`` or ``.json``, see the
    module docstring). ``representatives`` (scan results) adds the representative, reused and
    config_hash columns. Returns the path."""
    ext = check_output_path(path)
    path = os.fspath(path)
    indices = np.asarray(indices, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if indices.shape != scores.shape:
        raise ValueError(f"indices and scores must have the same length, got {indices.shape} and {scores.shape}")
    secs = np.full(indices.shape, np.nan) if seconds is None else np.asarray(seconds, dtype=np.float64)
    records = _records(indices, scores, secs, method, representatives, config_hash)
    if ext == ".csv":
        cols = _BASE_COLUMNS + (_SCAN_COLUMNS if representatives is not None else [])
        with atomic_write(path, "scores file", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            for r in records:
                r = dict(r, score=score_to_text(r["score"]), seconds="" if r["seconds"] is None else repr(r["seconds"]))
                if "reused" in r:
                    r["reused"] = int(r["reused"])
                w.writerow([r[c] for c in cols])
        return path
    records = [dict(r, score=json_float(r["score"])) for r in records]
    with atomic_write(path, "scores file") as f:
        if ext == ".jsonl":
            for r in records:
                f.write(json.dumps(r, allow_nan=False) + "\n")
        else:
            json.dump({"config": config or {"method": method}, "scores": records}, f, indent=1, allow_nan=False)
            f.write("\n")
    return path


@dataclass
class ScoreFile:
    indices: np.ndarray
    scores: np.ndarray
    seconds: np.ndarray  # NaN where unknown
    method: Optional[str]
    config: dict
    source: str


def _load_rows(path: str, ext: str):
    config: dict = {}
    if ext == ".csv":
        with open(path, newline="") as f:
            return list(csv.DictReader(f)), config
    if ext == ".jsonl":
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()], config
    if ext == ".json":
        with open(path) as f:
            blob = json.load(f)
        for key in ("scores", "records"):
            if isinstance(blob, dict) and isinstance(blob.get(key), list):
                return blob[key], dict(blob.get("config") or {})
        if isinstance(blob, list):
            return blob, config
        raise ValueError("expected a list of records or an object with a 'scores' list")
    raise ValueError(f"unknown extension {ext!r}; allowed: {', '.join(SCORE_FORMATS)}")


def _score_column(path: str, first, method: Optional[str]) -> str:
    if not isinstance(first, dict) or "arch_index" not in first:
        raise ValueError(f"{path}: rows must have an 'arch_index' column, got "
                         f"{sorted(first) if isinstance(first, dict) else first!r}")
    if "score" in first:
        return "score"
    if method is not None and method in first:
        return method
    have = [m for m in METHODS if m in first]
    if len(have) == 1:
        return have[0]
    if have:
        raise ValueError(f"{path}: holds scores of {', '.join(have)}; say which with method=")
    raise ValueError(f"{path}: rows need a 'score' column (or one named after a method: {', '.join(METHODS)})")


def _row_index(row: dict, where: str, seen: set) -> int:
    from .nb201 import arch_at

    try:
        i = int(row["arch_index"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: arch_index {row.get('arch_index')!r} is not an integer") from None
    if not 0 <= i < NUM_ARCHS:
        raise ValueError(f"{where}: arch_index {i} out of range 0..{NUM_ARCHS - 1}")
    arch = row.get("arch")
    if arch and arch != str(arch_at(i)):
        raise ValueError(f"{where}: arch {arch!r} is not the architecture at index {i} ({arch_at(i)}); "
                         "the file uses another index order")
    if i in seen:
        raise ValueError(f"{where}: arch_index {i} appears twice")
    seen.add(i)
    return i


def _seconds(row: dict, column: str) -> float:
    t = row.get("seconds", row.get(f"{column}_seconds"))
    try:
        return float(t) if t not in (None, "") else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def read_scores(path, method: Optional[str] = None) -> ScoreFile:
    """Read a score file (this module's format, as written by ``nwot-fast scan --out`` and
    ``nwot-fast evaluate --scores-out``), or a table with one column per score method
    (``arch_index, jacob_cov, hook_logdet, ...``; ``method`` picks the column).

    Rows of other methods are skipped when the file has a ``method`` column and ``method`` is
    given. An ``arch`` column, when present, must match the index (the file is refused
    otherwise: it was written for another index order)."""
    path = check_input_file(path, "a scores file (.csv, .jsonl or .json written by nwot-fast evaluate "
                                  "--scores-out or nwot-fast scan --out)")
    if method is not None and method not in METHODS:
        raise ValueError(f"unknown score method {method!r}; allowed: {', '.join(METHODS)}")
    ext = os.path.splitext(path)[1].lower()
    try:
        rows, config = _load_rows(path, ext)
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: not a readable scores file ({e})") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if not rows:
        raise ValueError(f"{path}: no score rows")
    column = _score_column(path, rows[0], method)
    found_method = column if column in METHODS else method
    idx, sc, secs = [], [], []
    seen: set = set()
    other_methods = set()
    for n, row in enumerate(rows, start=2 if ext == ".csv" else 1):
        where = f"{path} row {n}"
        row_method = row.get("method") or None
        if row_method and row_method not in METHODS:
            raise ValueError(f"{where}: unknown method {row_method!r}")
        if column == "score" and method is not None and row_method and row_method != method:
            other_methods.add(row_method)
            continue
        if column == "score" and row_method:
            if found_method not in (None, row_method) and method is None:
                raise ValueError(f"{path}: holds scores of several methods; say which with method=")
            found_method = row_method
        idx.append(_row_index(row, where, seen))
        sc.append(parse_score(row.get(column), where))
        secs.append(_seconds(row, column))
    if not idx:
        held = f"; it holds {', '.join(sorted(other_methods))} scores" if other_methods else ""
        raise ValueError(f"{path}: no rows for method {method!r}{held}")
    if method is not None and found_method is not None and found_method != method:
        raise ValueError(f"{path}: holds {found_method} scores, not {method}")
    return ScoreFile(np.asarray(idx, dtype=np.int64), np.asarray(sc, dtype=np.float64),
                     np.asarray(secs, dtype=np.float64), found_method, config, path)
