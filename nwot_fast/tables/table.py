"""The score-table format: one table = ``NAME.csv`` (the scores) + ``NAME.json`` (provenance).

``NAME.csv`` has the header ``arch_index,score`` and one row per architecture, in increasing
benchmark index (the official NB201 ``meta_archs`` order, :func:`nwot_fast.nb201.arch_at`);
each score is ``repr(float)``: the shortest decimal that reads back to the same float64,
``nan`` or ``-inf``. The file is the score-file format :func:`nwot_fast.scorefile.read_scores`
reads, and diffs line by line.

``NAME.json`` is the provenance record (keys sorted, one per line): what the scores are
(``method``, ``dtype``), how many rows and which (``coverage``: complete or partial, the
covered count and how the rows were chosen), the NaN / -inf counts, the SHA-256 of the CSV,
the scoring protocol (data fingerprint, batch, seed, ...), where and when the scan ran
(package version, git commit, torch, CPU, threads, dates, wall time, the command that
reproduces it) and how the table was exported. :func:`read_table` checks the CSV against
its record (checksum, row count, counts of NaN and -inf) before it returns anything.

This module is torch-free: listing and loading a table imports neither torch nor the scoring
code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from .._common import DTYPES, METHODS, NUM_ARCHS, atomic_write, check_input_file
from ..scorefile import index_score_arrays

__all__ = ["FORMAT", "SHIPPED_DIR", "ScoreTable", "TableIntegrityError", "float32_error", "list_tables", "read_table",
           "summary_counts", "table_paths", "write_table"]

#: The format tag every provenance record carries; a reader refuses records of another format.
FORMAT = "nwot_fast score table 1"
#: Where the tables shipped with the package live (package data, see MANIFEST.in / setup.py).
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shipped")
_HEADER = "arch_index,score"
# The keys a provenance record must have, by section ("" is the top level); the readers of a
# record (show, verify, the report) rely on these and on nothing else being present.
_REQUIRED = {
    "": ("format", "name", "method", "dtype", "rows", "nan", "neg_inf", "csv_sha256", "coverage", "protocol", "scan"),
    "coverage": ("complete", "covered", "expected", "selection"),
    "protocol": ("batch_size", "seed", "fixed_batch", "augment", "relu_match", "engine", "device_type", "data"),
    "protocol.data": ("description", "dataset", "images", "fingerprint"),
    "scan": ("nwot_fast_version", "git_commit", "torch", "cpu", "threads", "started", "finished", "wall_seconds",
             "scoring_seconds", "command"),
}


def _missing_keys(record: dict) -> List[str]:
    """The required keys (dotted) that ``record`` lacks."""
    missing = []
    for section, keys in _REQUIRED.items():
        node = record
        for part in filter(None, section.split(".")):
            node = node.get(part) if isinstance(node, dict) else None
        missing += [f"{section}.{k}".lstrip(".") for k in keys if not isinstance(node, dict) or k not in node]
    return missing


class TableIntegrityError(ValueError):
    """A table's CSV does not match its provenance record (checksum, rows, counts): the file
    was changed or damaged after export."""


@dataclass(frozen=True)
class ScoreTable:
    """One score table: ``indices`` (int64 ``[R]``, increasing) and ``scores`` (float64 ``[R]``,
    NaN / -inf kept) with the ``provenance`` record, read from ``csv_path`` / ``json_path``."""

    name: str
    indices: np.ndarray
    scores: np.ndarray
    provenance: dict
    csv_path: str
    json_path: str

    @property
    def method(self) -> str:
        """The score method of the table (``jacob_cov`` or ``hook_logdet``), from its provenance."""
        return self.provenance["method"]

    @property
    def dtype(self) -> str:
        """The precision the table was computed in (``float32`` or ``float64``), from its provenance."""
        return self.provenance["dtype"]

    @property
    def complete(self) -> bool:
        """True when every row the table was built for is there (see ``coverage``)."""
        return bool(self.provenance["coverage"]["complete"])

    def __len__(self) -> int:
        return int(self.indices.size)

    def score(self, index: int) -> float:
        """The score of benchmark ``index``; KeyError when the table has no such row."""
        k = int(np.searchsorted(self.indices, index))
        if k >= self.indices.size or self.indices[k] != index:
            raise KeyError(f"table {self.name} has no row for benchmark index {index}")
        return float(self.scores[k])

    def scores_by_index(self) -> Dict[int, float]:
        """``{benchmark index: score}`` of every row the table holds."""
        return {int(i): float(s) for i, s in zip(self.indices, self.scores)}

    def describe(self) -> str:
        """One line: what the scores are and how they were made."""
        p = self.provenance
        proto, cov = p["protocol"], p["coverage"]
        data = proto.get("data", {})
        part = "" if cov["complete"] else f", PARTIAL: {cov['covered']} of {cov['expected']} rows"
        return (f"score table {self.name}: {p['method']} {p['dtype']}, {len(self)} architectures{part}; "
                f"{data.get('description', 'images')}, batch {proto.get('batch_size')}, "
                f"{'fixed batch' if proto.get('fixed_batch') else 'batch per architecture'}, seed {proto.get('seed')}; "
                f"nwot_fast {p['scan'].get('nwot_fast_version')} at {str(p['scan'].get('git_commit'))[:10]}")

    def as_score_file(self):
        """The table as a :class:`nwot_fast.scorefile.ScoreFile` (what ``evaluate`` reads in
        place of a score file); its config carries the provenance and a data description. A
        table keeps no per-row times: every row gets the scan's mean scoring time per
        architecture (``scoring_seconds / rows``, on the scan's CPU), so that a search table's
        time column is N times that mean."""
        from ..scorefile import ScoreFile

        scan = self.provenance["scan"]
        mean = float(scan["scoring_seconds"]) / len(self) if scan["scoring_seconds"] and len(self) else float("nan")

        config = {"method": self.method, "dtype": self.dtype, "table": self.name, "table_path": self.json_path,
                  "data_description": self.describe(), "provenance": self.provenance}
        return ScoreFile(indices=self.indices.copy(), scores=self.scores.copy(),
                         seconds=np.full(self.indices.shape, mean), method=self.method, config=config,
                         source=f"score table {self.name} ({self._where()})")

    def _where(self) -> str:
        """Where the CSV is, for reports: "shipped with nwot_fast" for a package table (its
        absolute path names one machine's install), else the path as it was given."""
        shipped = os.path.dirname(os.path.abspath(self.csv_path)) == SHIPPED_DIR
        return f"{os.path.basename(self.csv_path)}, shipped with nwot_fast" if shipped else str(self.csv_path)


def _csv_text(indices: np.ndarray, scores: np.ndarray) -> str:
    buf = io.StringIO()
    buf.write(_HEADER + "\n")
    for i, s in zip(indices.tolist(), scores.tolist()):
        buf.write(f"{i},{float(s)!r}\n")
    return buf.getvalue()


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or name.startswith(".") or any(
            c not in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-" for c in name):
        raise ValueError(f"table name must be letters, digits, '.', '_' or '-' (not starting with '.'), got {name!r}")
    return name


def table_paths(directory, name: str):
    """``(DIR/NAME.csv, DIR/NAME.json)``."""
    base = os.path.join(os.fspath(directory), _check_name(name))
    return base + ".csv", base + ".json"


def write_table(directory, name: str, indices, scores, provenance: dict) -> ScoreTable:
    """Write ``NAME.csv`` and ``NAME.json`` in ``directory`` (each through a temporary file
    renamed into place) and return the table as :func:`read_table` reads it back.

    ``indices``: benchmark indices (distinct, any order: rows are written sorted);
    ``scores``: one float per index. ``provenance``: the record without the fields this
    function computes (``format``, ``name``, ``rows``, ``nan``, ``neg_inf``, ``csv_sha256``)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"table directory {directory!r} does not exist")
    idx, sc = index_score_arrays(indices, scores)
    if idx.size == 0:
        raise ValueError("a table needs at least one row")
    order = np.argsort(idx, kind="stable")
    idx, sc = idx[order], sc[order]
    if np.any(np.diff(idx) == 0):
        raise ValueError("indices must be distinct benchmark indices")
    if np.isposinf(sc).any():
        raise ValueError("a score is +inf; no NASWOT score can be (NaN and -inf are the degenerate values)")
    text = _csv_text(idx, sc)
    record = dict(provenance, format=FORMAT, name=_check_name(name), rows=int(idx.size),
                  nan=int(np.isnan(sc).sum()), neg_inf=int(np.isneginf(sc).sum()),
                  csv_sha256=hashlib.sha256(text.encode("ascii")).hexdigest())
    missing = _missing_keys(record)
    if missing:
        raise ValueError(f"provenance lacks {', '.join(missing)}")
    csv_path, json_path = table_paths(directory, name)
    with atomic_write(csv_path, "score table", newline="") as f:
        f.write(text)
    with atomic_write(json_path, "table provenance") as f:
        json.dump(record, f, indent=1, sort_keys=True, allow_nan=False)
        f.write("\n")
    return read_table(csv_path)


def _resolve(table, directory) -> str:
    """The path of a table's JSON record from a name (looked up in ``directory``, default the
    shipped tables) or a path to its ``.csv`` or ``.json``."""
    text = os.fspath(table)
    if text.endswith((".csv", ".json")) or os.sep in text or (os.altsep and os.altsep in text):
        base = text[:-4] if text.endswith(".csv") else (text[:-5] if text.endswith(".json") else text)
        return base + ".json"
    directory = SHIPPED_DIR if directory is None else os.fspath(directory)
    path = table_paths(directory, text)[1]
    if not os.path.exists(path):
        names = [t["name"] for t in list_tables(directory)]
        raise FileNotFoundError(f"no score table named {text!r} in {directory}; tables there: "
                                f"{', '.join(names) or 'none'}")
    return path


def _read_record(json_path: str) -> dict:
    json_path = check_input_file(json_path, "a score table's provenance record (NAME.json beside NAME.csv)")
    try:
        with open(json_path, encoding="utf-8") as f:
            record = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{json_path}: not a readable provenance record ({e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{json_path}: not a score table record of format {FORMAT!r} "
                         f"(format: {record.get('format') if isinstance(record, dict) else type(record).__name__!r})")
    missing = _missing_keys(record)
    if missing:
        raise ValueError(f"{json_path}: provenance record lacks {', '.join(missing)}")
    if record["method"] not in METHODS or record["dtype"] not in DTYPES:
        raise ValueError(f"{json_path}: method {record['method']!r} / dtype {record['dtype']!r} not one of "
                         f"{', '.join(METHODS)} / {', '.join(DTYPES)}")
    return record


def read_table(table, directory=None) -> ScoreTable:
    """Load a table: by name (from ``directory``, default the tables shipped with the package)
    or by the path of its ``.csv`` or ``.json``. The CSV is checked against the record
    (SHA-256, header, row count, increasing indices in range, NaN and -inf counts): a mismatch
    is a :class:`TableIntegrityError` naming the file."""
    json_path = _resolve(table, directory)
    record = _read_record(json_path)
    csv_path = check_input_file(json_path[:-5] + ".csv", f"the scores of table {record['name']} (NAME.csv)")
    with open(csv_path, "rb") as f:
        raw = f.read()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != record["csv_sha256"]:
        raise TableIntegrityError(f"{csv_path}: SHA-256 {digest[:16]}... differs from the one its record "
                                  f"{os.path.basename(json_path)} holds ({record['csv_sha256'][:16]}...): the scores "
                                  "were changed after export")
    try:
        lines = raw.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise TableIntegrityError(f"{csv_path}: not an ASCII CSV") from None
    if not lines or lines[0] != _HEADER:
        raise TableIntegrityError(f"{csv_path}: header must be {_HEADER!r}")
    idx = np.empty(len(lines) - 1, dtype=np.int64)
    sc = np.empty(len(lines) - 1, dtype=np.float64)
    for k, line in enumerate(lines[1:]):
        try:
            a, b = line.split(",")
            idx[k], sc[k] = int(a), float(b)
        except ValueError:
            raise TableIntegrityError(f"{csv_path} line {k + 2}: expected 'arch_index,score', got {line!r}") from None
    if idx.size != record["rows"]:
        raise TableIntegrityError(f"{csv_path}: {idx.size} rows, its record says {record['rows']}")
    if idx.size and (idx[0] < 0 or idx[-1] >= NUM_ARCHS or np.any(np.diff(idx) <= 0)):
        raise TableIntegrityError(f"{csv_path}: indices must increase strictly within 0..{NUM_ARCHS - 1}")
    counts = {"nan": int(np.isnan(sc).sum()), "neg_inf": int(np.isneginf(sc).sum())}
    for key, n in counts.items():
        if n != record[key]:
            raise TableIntegrityError(f"{csv_path}: {n} {key} scores, its record says {record[key]}")
    return ScoreTable(name=record["name"], indices=idx, scores=sc, provenance=record, csv_path=csv_path,
                      json_path=json_path)


def list_tables(directory=None) -> List[dict]:
    """The tables in ``directory`` (default: those shipped with the package), sorted by name:
    each a dict with ``name``, ``method``, ``dtype``, ``rows``, ``complete``, ``covered``,
    ``expected`` and ``path`` (of the record). Reads the records only, not the scores."""
    directory = SHIPPED_DIR if directory is None else os.fspath(directory)
    if not os.path.isdir(directory):
        if os.path.exists(directory):
            raise NotADirectoryError(f"{directory}: not a directory of score tables")
        return []
    out = []
    for entry in sorted(os.listdir(directory)):
        if not entry.endswith(".json") or entry.startswith("."):
            continue
        record = _read_record(os.path.join(directory, entry))
        cov = record["coverage"]
        out.append({"name": record["name"], "method": record["method"], "dtype": record["dtype"],
                    "rows": record["rows"], "complete": bool(cov["complete"]), "covered": cov["covered"],
                    "expected": cov["expected"], "path": os.path.join(directory, entry)})
    return out


def summary_counts(table: ScoreTable) -> Dict[str, int]:
    """Finite / NaN / -inf row counts of ``table``."""
    sc = table.scores
    return {"finite": int(np.isfinite(sc).sum()), "nan": int(np.isnan(sc).sum()),
            "neg_inf": int(np.isneginf(sc).sum())}


def float32_error(table32: ScoreTable, table64: ScoreTable) -> Optional[dict]:
    """The float32 table's error on the rows the float64 table holds (its truth): relative
    error max / median over the rows where both are finite, and how many rows disagree on a
    special value (NaN / -inf). ``None`` when they share no row."""
    if table32.method != table64.method:
        raise ValueError(f"tables of different scores: {table32.method} and {table64.method}")
    common, k32, k64 = np.intersect1d(table32.indices, table64.indices, return_indices=True)
    if common.size == 0:
        return None
    s32, s64 = table32.scores[k32], table64.scores[k64]
    finite = np.isfinite(s32) & np.isfinite(s64)
    special_same = (np.isnan(s32) & np.isnan(s64)) | (np.isneginf(s32) & np.isneginf(s64))
    # nwot_fast.precision.relative_error, vectorised (that module imports torch; this one must not)
    diff, truth = np.abs(s32[finite] - s64[finite]), np.abs(s64[finite])
    rel = np.where(truth != 0, diff / np.where(truth != 0, truth, 1.0), diff)
    return {"rows": int(common.size), "finite": int(finite.sum()), "special_agree": int(special_same.sum()),
            "special_disagree": int(common.size - finite.sum() - special_same.sum()),
            "max_rel_error": float(rel.max()) if rel.size else float("nan"),
            "median_rel_error": float(np.median(rel)) if rel.size else float("nan")}
