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
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ._common import METHODS, NUM_ARCHS, atomic_write, check_input_file, check_output_file, json_float
from .args import check_choice

__all__ = ["SCORE_FORMATS", "ScoreFile", "check_output_path", "read_scores", "write_scores",
           "score_to_text", "score_from_text"]

SCORE_FORMATS = (".csv", ".jsonl", ".json")
_BASE_COLUMNS = ["arch_index", "arch", "method", "score", "seconds"]
_SCAN_COLUMNS = ["representative", "reused", "config_hash"]


def score_to_text(score: float) -> str:
    """The exact text of a score: ``repr(float(score))``, so :func:`score_from_text` gives back
    the same float bit for bit (NaN as ``'nan'``, infinities as ``'inf'`` / ``'-inf'``)."""
    return repr(float(score))  # 'nan', '-inf', 'inf' or the shortest exact decimal


def score_from_text(text: str) -> float:
    """The score written by :func:`score_to_text`: ``float(text)``. A string that is not a
    number is a ValueError, a non-string that ``float`` cannot take (``None``) a TypeError;
    callers name the file and row."""
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
    """What :func:`read_scores` read: one score per architecture (``indices`` int64, ``scores``
    and ``seconds`` float64, all ``[n]``), the method, the file's configuration, and how many
    rows of other methods were left out (``skipped``, by method)."""

    indices: np.ndarray
    scores: np.ndarray
    seconds: np.ndarray  # NaN where unknown
    method: Optional[str]
    config: dict
    source: str
    skipped: Dict[str, int] = field(default_factory=dict)


def _load_rows(path: str, ext: str) -> Tuple[List[Tuple[str, dict]], dict]:
    """``([(where, row), ...], config)``: every row an object, ``where`` naming its line (CSV,
    JSON Lines) or its position in the list (JSON). A byte-order mark is accepted."""
    config: dict = {}
    if ext == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return [], config
            header = [h.strip() for h in header]
            rows = []
            for fields in reader:
                where = f"{path} line {reader.line_num}"
                if not fields:
                    continue
                if len(fields) != len(header):
                    # csv.DictReader would fill a short row with None (read back as a NaN score).
                    raise ValueError(f"{where}: {len(fields)} fields, the header has {len(header)} "
                                     f"({','.join(header)}); the row is truncated or malformed")
                rows.append((where, dict(zip(header, fields))))
            return rows, config
    if ext == ".jsonl":
        rows = []
        with open(path, encoding="utf-8-sig") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path} line {n}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: not JSON ({e})") from None
                rows.append((where, _object(row, where)))
        return rows, config
    if ext == ".json":
        with open(path, encoding="utf-8-sig") as f:
            blob = json.load(f)
        records = blob if isinstance(blob, list) else None
        if isinstance(blob, dict):
            records = next((blob[k] for k in ("scores", "records") if isinstance(blob.get(k), list)), None)
            config = blob.get("config") or {}
            if not isinstance(config, dict):
                raise ValueError(f"{path}: 'config' is a {type(config).__name__}; expected an object")
        if records is None:
            raise ValueError(f"{path}: expected a list of records or an object with a 'scores' list")
        return [(f"{path} record {n}", _object(r, f"{path} record {n}")) for n, r in enumerate(records, start=1)], \
            dict(config)
    raise ValueError(f"unknown extension {ext!r}; allowed: {', '.join(SCORE_FORMATS)}")


def _object(row, where: str) -> dict:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a row must be an object with arch_index and score, got "
                         f"{type(row).__name__} {row!r:.60}")
    return row


def _score_column(path: str, first, method: Optional[str]) -> str:
    if "arch_index" not in first:
        raise ValueError(f"{path}: rows must have an 'arch_index' column, got {sorted(first)}")
    if "score" in first:
        return "score"
    if method is not None and method in first:
        return method
    have = [m for m in METHODS if m in first]
    if len(have) == 1:
        return have[0]
    if have:
        raise ValueError(f"{path}: holds scores of {', '.join(have)}; say which with --method (Python: method=)")
    raise ValueError(f"{path}: rows need a 'score' column (or one named after a method: {', '.join(METHODS)})")


def _row_index(row: dict, where: str, seen: set) -> int:
    from .nb201 import arch_at

    value = row.get("arch_index")
    # An integer in JSON, integer text in CSV: 3.7 or true is not read as architecture 3 or 1.
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: arch_index {value!r} is not an integer benchmark index (0..{NUM_ARCHS - 1})")
    i = value
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


def _seconds(row: dict, column: str, where: str) -> float:
    key = "seconds" if "seconds" in row else f"{column}_seconds"
    t = row.get(key)
    if t is None or t == "":
        return float("nan")
    if isinstance(t, (int, float, str)) and not isinstance(t, bool):
        try:
            return float(t)
        except ValueError:
            pass
    raise ValueError(f"{where}: {key} {t!r} is not a number of seconds (unknown: empty or null)")


def read_scores(path, method: Optional[str] = None) -> ScoreFile:
    """Read a score file (this module's format, as written by ``nwot-fast scan --out`` and
    ``nwot-fast evaluate --scores-out``), or a table with one column per score method
    (``arch_index, jacob_cov, hook_logdet, ...``; ``method`` picks the column).

    Every row must be an object (a CSV row with the header's fields) with an integer
    ``arch_index`` in 0..15624 and a score; a bad row is an error that names its line.
    A file whose ``method`` column holds several methods needs ``method``: its rows are read
    and the others counted in :attr:`ScoreFile.skipped`. An ``arch`` column, when present,
    must match the index (the file is refused otherwise: it was written for another index
    order)."""
    path = check_input_file(path, "a scores file (.csv, .jsonl or .json written by nwot-fast evaluate "
                                  "--scores-out or nwot-fast scan --out)")
    if method is not None:
        check_choice(method, "method", METHODS, "score method")
    ext = os.path.splitext(path)[1].lower()
    try:
        rows, config = _load_rows(path, ext)
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: not a readable scores file ({e})") from None
    if not rows:
        raise ValueError(f"{path}: no score rows")
    column = _score_column(path, rows[0][1], method)
    if column == "score":
        held = Counter(str(r.get("method")) for _, r in rows if r.get("method"))
        unknown = sorted(set(held) - set(METHODS))
        if unknown:
            where = next(w for w, r in rows if str(r.get("method")) == unknown[0])
            raise ValueError(f"{where}: unknown method {unknown[0]!r}; allowed: {', '.join(METHODS)}")
        if method is None and len(held) > 1:
            counts = ", ".join(f"{n} {m}" for m, n in sorted(held.items()))
            raise ValueError(f"{path}: holds scores of several methods ({counts} rows); say which with --method "
                             "(Python: method=)")
        if method is not None and held and method not in held:
            raise ValueError(f"{path}: holds {', '.join(sorted(held))} scores, not {method}")
        found_method = method or (next(iter(held)) if held else None)
    else:
        found_method = column if column in METHODS else method
        if method is not None and found_method != method:
            raise ValueError(f"{path}: holds {found_method} scores, not {method}")
    idx, sc, secs = [], [], []
    seen: set = set()
    skipped: Counter = Counter()
    for where, row in rows:
        row_method = row.get("method") or None
        if column == "score" and method is not None and row_method and row_method != method:
            skipped[row_method] += 1
            continue
        idx.append(_row_index(row, where, seen))
        if column not in row:
            raise ValueError(f"{where}: no {column!r} field")
        sc.append(parse_score(row[column], where))
        secs.append(_seconds(row, column, where))
    return ScoreFile(np.asarray(idx, dtype=np.int64), np.asarray(sc, dtype=np.float64),
                     np.asarray(secs, dtype=np.float64), found_method, config, path, dict(skipped))
