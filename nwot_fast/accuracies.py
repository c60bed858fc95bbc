"""The NAS-Bench-201 accuracy table: trained accuracies of every architecture, behind one interface.

Two sources give the same :class:`AccuracyTable`:

* a CSV in the layout of ``../shared/data/nb201_accuracies.csv`` (``index, arch,
  cifar10_valid_acc, ..., imagenet16_test_acc``), read with the ``csv`` module;
* the official benchmark file (``NAS-Bench-201-v1_0-e61699.pth`` / ``v1_1-096897.pth``),
  read through the ``nas_201_api`` package with ``hp='200'`` and ``is_random=False``
  (200-epoch schedule, mean over the training seeds). The API's defaults are the 12-epoch
  schedule and one random seed; the reader never lets them through.

Which accuracy is meant by "val" and "test" follows the NASWOT evaluation (:data:`SPLITS`).
Both readers check every row's arch string against the official index order
(:func:`nwot_fast.nb201.arch_at`): a file of another version or order is refused.
"""

from __future__ import annotations

import csv
import functools
import math
import pickle
import re
import zipfile
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ._common import check_index, check_input_file
from .data.constants import check_dataset
from .nb201 import NUM_ARCHS, arch_at

#: (dataset, "val" | "test") -> (NB201 dataset, NB201 metric), as the NASWOT evaluation uses them.
SPLITS: Dict[Tuple[str, str], Tuple[str, str]] = {
    ("cifar10", "val"): ("cifar10-valid", "x-valid"),
    ("cifar10", "test"): ("cifar10", "ori-test"),
    ("cifar100", "val"): ("cifar100", "x-valid"),
    ("cifar100", "test"): ("cifar100", "x-test"),
    ("ImageNet16-120", "val"): ("ImageNet16-120", "x-valid"),
    ("ImageNet16-120", "test"): ("ImageNet16-120", "x-test"),
}
SPLIT_NAMES = ("val", "test")

#: The CSV column holding each (dataset, split).
CSV_COLUMNS: Dict[Tuple[str, str], str] = {
    ("cifar10", "val"): "cifar10_valid_acc",
    ("cifar10", "test"): "cifar10_test_acc",
    ("cifar100", "val"): "cifar100_valid_acc",
    ("cifar100", "test"): "cifar100_test_acc",
    ("ImageNet16-120", "val"): "imagenet16_valid_acc",
    ("ImageNet16-120", "test"): "imagenet16_test_acc",
}

_CSV_EXPECTED = "a CSV with columns index, arch and accuracy columns " + ", ".join(CSV_COLUMNS.values())
_PTH_EXPECTED = ("the NAS-Bench-201 benchmark file (NAS-Bench-201-v1_0-e61699.pth or "
                 "NAS-Bench-201-v1_1-096897.pth: a dict with meta_archs and arch2infos)")


@functools.lru_cache(maxsize=1)
def _official_strings() -> Tuple[str, ...]:
    return tuple(str(arch_at(i)) for i in range(NUM_ARCHS))


def _first_mismatch(strings: Sequence[str]) -> Optional[int]:
    official = _official_strings()
    for i, (got, want) in enumerate(zip(strings, official)):
        if got != want:
            return i
    return None


def _check_percentages(col: np.ndarray, name: str, source: str) -> None:
    """Accuracies are percentages: every value present (not NaN) must be in [0, 100]."""
    bad = np.flatnonzero(~np.isnan(col) & ~((col >= 0) & (col <= 100)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{source}: {name} of index {i} (line {i + 2} in the CSV layout) is {col[i]!r}; accuracies "
                         f"are percentages in [0, 100] ({bad.size} value(s) outside)")


def check_split(dataset, split) -> Tuple[str, str]:
    """Canonical ``(dataset, split)`` or ValueError listing what is allowed."""
    dataset = check_dataset(dataset)
    if split == "valid":
        split = "val"
    if split not in SPLIT_NAMES:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLIT_NAMES)}")
    return dataset, split


class AccuracyTable:
    """Trained accuracies (percent) of the NB201 architectures, by benchmark index.

    ``column(dataset, split)`` is a float64 array of length 15,625 (NaN where the source has
    no value, e.g. a partial benchmark file; :attr:`indices` lists the rows present).
    ``extra`` holds other per-architecture columns of the source (``params_mb``,
    ``cifar10valid_test_acc``) when it has them.
    """

    def __init__(self, columns: Mapping[Tuple[str, str], np.ndarray], arch_strings: List[str], source: str,
                 extra: Optional[Mapping[str, np.ndarray]] = None, kind: str = "csv"):
        self._columns = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}
        self.arch_strings = list(arch_strings)
        self.source = source
        self.kind = kind
        self.extra = {k: np.asarray(v, dtype=np.float64) for k, v in (extra or {}).items()}
        for key, col in self._columns.items():
            _check_percentages(col, CSV_COLUMNS.get(key, str(key)), source)
        for name, col in self.extra.items():
            if name.endswith("_acc"):
                _check_percentages(col, name, source)
        present = np.zeros(NUM_ARCHS, dtype=bool)
        for col in self._columns.values():
            present |= ~np.isnan(col)
        self._present = present
        self.indices = np.flatnonzero(present)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def splits(self) -> Tuple[Tuple[str, str], ...]:
        """The (dataset, split) pairs this table has values for."""
        return tuple(k for k in SPLITS if k in self._columns)

    def _col(self, dataset, split) -> np.ndarray:
        key = check_split(dataset, split)
        if key not in self._columns:
            raise ValueError(f"{self.source} has no {key[0]} {key[1]} accuracies; it has "
                             f"{', '.join(f'{d} {s}' for d, s in self.splits) or 'none'}")
        return self._columns[key]

    def column(self, dataset: str, split: str) -> np.ndarray:
        """float64 ``[15625]`` accuracies in percent (a copy)."""
        return self._col(dataset, split).copy()

    def accuracy(self, index: int, dataset: str, split: str) -> float:
        """Accuracy in percent of the architecture at benchmark ``index``."""
        col = self._col(dataset, split)
        i = check_index(index)
        value = float(col[i])
        if math.isnan(value) and self._present[i]:
            raise ValueError(f"{self.source} has results for index {i} but none for {dataset} {split}")
        if math.isnan(value):
            shown = ", ".join(map(str, self.indices[:10])) + (" ..." if len(self.indices) > 10 else "")
            raise ValueError(f"{self.source} has no {dataset} {split} accuracy for index {i}; "
                             f"it holds {len(self.indices)} architectures: {shown}")
        return value

    def __repr__(self) -> str:
        return f"AccuracyTable({self.source!r}, {len(self)} architectures, {self.kind})"


def as_table(accuracies) -> AccuracyTable:
    """``accuracies`` itself when it is an :class:`AccuracyTable`, else :func:`load_accuracies` of it."""
    if isinstance(accuracies, AccuracyTable):
        return accuracies
    if accuracies is None:
        raise ValueError("accuracies is required: a path to nb201_accuracies.csv (or the official NB201 .pth), "
                         "or a loaded AccuracyTable")
    return load_accuracies(accuracies)


def load_accuracies(path) -> AccuracyTable:
    """Read NB201 accuracies from a CSV (``nb201_accuracies.csv`` layout) or the official ``.pth``."""
    path = check_input_file(path, f"{_CSV_EXPECTED}, or {_PTH_EXPECTED}")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise ValueError(f"{path}: file is empty; expected {_CSV_EXPECTED}, or {_PTH_EXPECTED}")
    # torch files are zip archives (PK) or legacy pickles (0x80 protocol byte).
    if path.endswith((".pth", ".pt")) or head.startswith(b"PK") or head[:1] == b"\x80":
        return _load_pth(path)
    return _load_csv(path)


def _load_csv(path: str) -> AccuracyTable:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark (Excel's CSV) is no field
            rows = list(csv.reader(f))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file; expected {_CSV_EXPECTED}") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: not a readable CSV ({exc}); expected {_CSV_EXPECTED}") from None
    if not rows:
        raise ValueError(f"{path}: no header line; expected {_CSV_EXPECTED}")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in ("index", "arch") if c not in header]
    present = {k: c for k, c in CSV_COLUMNS.items() if c in header}
    if missing or not present:
        raise ValueError(f"{path}: header {header} lacks {', '.join(missing) or 'every accuracy column'}; "
                         f"expected {_CSV_EXPECTED}")
    body = [r for r in rows[1:] if r]
    if len(body) != NUM_ARCHS:
        raise ValueError(f"{path}: {len(body)} data rows; expected {NUM_ARCHS} (one per NB201 architecture, in "
                         "benchmark order); the file may be truncated or of another benchmark")
    col_of = {name: i for i, name in enumerate(header)}
    numeric = [c for c in header if c not in ("index", "arch")]
    values = np.empty((NUM_ARCHS, len(numeric)), dtype=np.float64)
    arch_strings: List[str] = []
    for row_no, row in enumerate(body):
        line = row_no + 2
        if len(row) != len(header):
            raise ValueError(f"{path}: line {line} has {len(row)} fields; the header has {len(header)}")
        try:
            index = int(row[col_of["index"]])
        except ValueError:
            raise ValueError(f"{path}: line {line}: index {row[col_of['index']]!r} is not an integer") from None
        if index != row_no:
            raise ValueError(f"{path}: line {line} has index {index}; expected {row_no} (rows must be in benchmark "
                             "order 0..15624)")
        arch_strings.append(row[col_of["arch"]].strip())
        for j, name in enumerate(numeric):
            text = row[col_of[name]]
            try:
                values[row_no, j] = float(text) if text.strip() else math.nan
            except ValueError:
                raise ValueError(f"{path}: line {line}: {name} {text!r} is not a number") from None
    bad = _first_mismatch(arch_strings)
    if bad is not None:
        raise ValueError(f"{path}: row {bad} has arch {arch_strings[bad]!r} but NB201 index {bad} is "
                         f"{_official_strings()[bad]!r}; the file is of another benchmark version or order")
    columns = {k: values[:, numeric.index(c)] for k, c in present.items()}
    for key, col in columns.items():
        if np.isnan(col).any():
            first = int(np.flatnonzero(np.isnan(col))[0])
            raise ValueError(f"{path}: column {CSV_COLUMNS[key]} has no value at index {first}")
    extra = {c: values[:, j] for j, c in enumerate(numeric) if c not in CSV_COLUMNS.values()}
    return AccuracyTable(columns, arch_strings, path, extra=extra, kind="csv")


def _torch_safe_globals() -> list:
    """NumPy reconstruction globals allowed on top of torch's weights_only set."""
    try:
        from numpy._core import multiarray  # type: ignore[attr-defined]
    except ImportError:  # NumPy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    allowed: list = [np.ndarray, np.dtype]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray._reconstruct, f"{mod}._reconstruct"), (multiarray.scalar, f"{mod}.scalar")]
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType", "UInt8DType"):
        cls = getattr(getattr(np, "dtypes", None), name, None)
        if cls is not None:
            allowed.append(cls)
    allowed.append(OrderedDict)
    return allowed


def _unpickler_refusal(path: str, exc: BaseException) -> ValueError:
    """The error for a file torch's weights-only unpickler stopped at, in the package's words: its
    own message wraps the reason in advice to load the file without that safeguard."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)  # torch words it differently across versions
    match = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    detail = match.group(1).strip().rstrip(".") if match else "torch's weights-only loader stopped"
    if found:
        return ValueError(f"{path}: refused to load: it holds a {found.group(1)}, so it is not a NAS-Bench-201 "
                          f"benchmark file (nothing from it was executed); expected {_PTH_EXPECTED}")
    return ValueError(f"{path}: not a readable torch file ({detail}), so not a NAS-Bench-201 benchmark file; it may be "
                      f"truncated or corrupt (nothing from it was executed); expected {_PTH_EXPECTED}")


def _load_pth(path: str) -> AccuracyTable:
    import torch

    try:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message advises loading with weights_only=False: not advice for a benchmark
        # file, which holds only containers and arrays. Keep only what the unpickler stopped at.
        raise _unpickler_refusal(path, exc) from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            UnicodeDecodeError, zipfile.BadZipFile, MemoryError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{path}: not a readable torch file ({type(exc).__name__}: {first}); expected "
                         f"{_PTH_EXPECTED}; the file may be truncated or corrupt") from None
    return table_from_benchmark_dict(data, path)


def table_from_benchmark_dict(data, source: str) -> AccuracyTable:
    """Build the table from an already-loaded NB201 benchmark dict, through ``nas_201_api``.

    The dict may hold results for only some architectures (``meta_archs`` must still list all
    15,625 in official order); :attr:`AccuracyTable.indices` says which are present.
    """
    from .errors import require

    NASBench201API = require("nas_201_api", "nb201", f"reading {source}").NASBench201API
    ArchResults = require("nas_201_api.api_utils", "nb201", f"reading {source}").ArchResults
    if not isinstance(data, dict):
        raise ValueError(f"{source}: holds a {type(data).__name__}; expected {_PTH_EXPECTED}")
    missing = [k for k in ("meta_archs", "arch2infos") if k not in data]
    if missing:
        raise ValueError(f"{source}: missing key(s) {', '.join(missing)} (has {sorted(map(str, data))[:8]}); "
                         f"expected {_PTH_EXPECTED}")
    meta_archs = data["meta_archs"]
    if not isinstance(meta_archs, (list, tuple)) or len(meta_archs) != NUM_ARCHS:
        raise ValueError(f"{source}: meta_archs has {len(meta_archs) if hasattr(meta_archs, '__len__') else '?'} "
                         f"entries; NB201 has {NUM_ARCHS}: the file is of another benchmark")
    meta_archs = [str(a) for a in meta_archs]
    bad = _first_mismatch(meta_archs)
    if bad is not None:
        raise ValueError(f"{source}: meta_archs[{bad}] is {meta_archs[bad]!r} but NB201 index {bad} is "
                         f"{_official_strings()[bad]!r}; the file is of another benchmark version or order")
    arch2infos = data["arch2infos"]
    if not isinstance(arch2infos, dict) or not arch2infos:
        raise ValueError(f"{source}: arch2infos is empty or not a dict; expected {_PTH_EXPECTED}")

    # Built around an empty dict: the constructor deep-copies what it is given, and only the
    # 200-epoch results are wanted. Leaving hp '12' out of every entry makes any accidental use
    # of the API's 12-epoch default fail loudly instead of returning the wrong numbers.
    api = NASBench201API({"meta_archs": meta_archs, "arch2infos": {}, "evaluated_indexes": []}, verbose=False)
    for key in sorted(arch2infos):
        idx = key if isinstance(key, int) and not isinstance(key, bool) else None
        if idx is None or not 0 <= idx < NUM_ARCHS:
            raise ValueError(f"{source}: arch2infos key {key!r} is not a benchmark index 0..{NUM_ARCHS - 1}")
        info = arch2infos[key]
        if not isinstance(info, dict) or not isinstance(info.get("full"), dict):
            raise ValueError(f"{source}: arch2infos[{idx}] has no 'full' (200-epoch) results; expected {_PTH_EXPECTED}")
        try:
            result = ArchResults.create_from_state_dict(info["full"])
        except Exception as exc:  # noqa: BLE001 - the package asserts on malformed state; report which entry
            raise ValueError(f"{source}: arch2infos[{idx}]['full'] is malformed ({type(exc).__name__}: {exc})") from None
        if getattr(result, "arch_str", None) != meta_archs[idx]:
            raise ValueError(f"{source}: arch2infos[{idx}] is for arch {getattr(result, 'arch_str', None)!r} but "
                             f"meta_archs[{idx}] is {meta_archs[idx]!r}")
        result.clear_params()  # trained weights are not needed for accuracies; frees most of the memory
        api.arch2infos_dict[idx] = OrderedDict([("200", result)])

    columns = {k: np.full(NUM_ARCHS, np.nan) for k in SPLITS}
    extra = {"cifar10valid_test_acc": np.full(NUM_ARCHS, np.nan)}
    # get_more_info picks the metric per NB201 dataset: cifar10-valid -> valid = x-valid and
    # test = ori-test; cifar10 -> test = ori-test; the others -> valid = x-valid, test = x-test.
    field = {"x-valid": "valid-accuracy", "ori-test": "test-accuracy", "x-test": "test-accuracy"}
    by_nb_dataset: Dict[str, List[Tuple[Tuple[str, str], str]]] = {}
    for key, (nb_dataset, metric) in SPLITS.items():
        by_nb_dataset.setdefault(nb_dataset, []).append((key, field[metric]))
    for idx in api.arch2infos_dict:
        seeds = api.arch2infos_dict[idx]["200"].dataset_seed
        for nb_dataset, wanted in by_nb_dataset.items():
            if nb_dataset not in seeds:
                continue  # this architecture has no 200-epoch run on that dataset in the file
            try:
                more = api.get_more_info(idx, nb_dataset, hp="200", is_random=False)
            except Exception as exc:  # noqa: BLE001 - malformed trial records inside the package's classes
                raise ValueError(f"{source}: cannot read the {nb_dataset} results of index {idx} "
                                 f"({type(exc).__name__}: {exc})") from None
            for key, name in wanted:
                if name in more:
                    columns[key][idx] = float(more[name])
            if nb_dataset == "cifar10-valid" and "test-accuracy" in more:
                extra["cifar10valid_test_acc"][idx] = float(more["test-accuracy"])
    return AccuracyTable(columns, meta_archs, source, extra=extra, kind="nb201-pth (hp=200, mean over seeds)")
