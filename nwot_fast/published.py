"""Published numbers that the report and the figures set next to this project's results.

Each table says where its numbers come from; nothing here is computed. Published points a user
gives in place of the built-in ones (``report --published``) are read and checked here too.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

__all__ = ["PUBLISHED_CORRELATIONS", "PUBLISHED_SEARCH", "PUBLISHED_SEARCH_POINTS", "PUBLISHED_BASELINES",
           "PUBLISHED_KINDS", "read_published_points", "check_published_point"]

#: Published rank correlations on NB201 (whole space) that the report quotes. hook_logdet:
#: Kendall tau from the 2021 paper (Mellor et al., ICML); jacob_cov: the Spearman rho range
#: quoted for the original score against CIFAR-10 test accuracy.
PUBLISHED_CORRELATIONS: Dict[str, Dict[str, str]] = {
    "hook_logdet": {"cifar10": "tau 0.574", "cifar100": "tau 0.611", "ImageNet16-120": "tau 0.549"},
    "jacob_cov": {"cifar10": "rho ~0.69-0.73 (test)"},
}

#: Published NASWOT search results on NB201 (the original jacob_cov score, 500 runs), as the
#: authors list them in the README of BayesWatch/nas-without-training (v1, commit 07a991b),
#: "which is the same as what we report in the paper": median search time (s, one GPU) and
#: val / test accuracy mean +/- std of the chosen architecture.
PUBLISHED_SEARCH = {
    10: {"seconds": 1.73435, ("cifar10", "val"): (88.47, 1.33), ("cifar10", "test"): (91.53, 1.62),
         ("cifar100", "val"): (66.49, 3.08), ("cifar100", "test"): (66.63, 3.14),
         ("ImageNet16-120", "val"): (38.33, 4.98), ("ImageNet16-120", "test"): (38.33, 5.22)},
    100: {"seconds": 17.4139, ("cifar10", "val"): (88.45, 1.46), ("cifar10", "test"): (91.61, 1.71),
          ("cifar100", "val"): (66.42, 3.27), ("cifar100", "test"): (66.56, 3.28),
          ("ImageNet16-120", "val"): (36.56, 6.70), ("ImageNet16-120", "test"): (36.37, 6.97)},
}


#: The CIFAR-10 test points of :data:`PUBLISHED_SEARCH`, as Figure 6 draws them.
PUBLISHED_SEARCH_POINTS: Tuple[dict, ...] = tuple(
    {"label": f"NASWOT, published (N={n})", "seconds": row["seconds"], "accuracy": row[("cifar10", "test")][0],
     "std": row[("cifar10", "test")][1], "kind": "training-free", "tag": f"N={n}"}
    for n, row in PUBLISHED_SEARCH.items()
)

#: The other NAS methods of the paper's NAS-Bench-201 search table: Mellor et al., "Neural
#: Architecture Search without Training", ICML 2021, Table 2(a), whose baselines are taken from
#: NAS-Bench-201 (Dong & Yang, ICLR 2020). Search time in seconds on one GTX 1080 Ti, CIFAR-10
#: test accuracy mean +/- std over 500 runs (non-weight-sharing) or 3 runs (weight-sharing);
#: every search ran on CIFAR-10. All ten rows were checked, number by number, against a text copy
#: of that table on 2026-11-28. Other papers quote some of these NAS-Bench-201 baselines with
#: other values (e.g. GDAS 93.61 +- 0.09); these are the ones the NASWOT paper compares against.
PUBLISHED_BASELINES: Tuple[dict, ...] = (
    {"label": "REA", "seconds": 12000.0, "accuracy": 93.92, "std": 0.30, "kind": "non-weight-sharing"},
    {"label": "RS", "seconds": 12000.0, "accuracy": 93.70, "std": 0.36, "kind": "non-weight-sharing"},
    {"label": "REINFORCE", "seconds": 12000.0, "accuracy": 93.85, "std": 0.37, "kind": "non-weight-sharing"},
    {"label": "BOHB", "seconds": 12000.0, "accuracy": 93.61, "std": 0.52, "kind": "non-weight-sharing"},
    {"label": "RSPS", "seconds": 7587.0, "accuracy": 87.66, "std": 1.69, "kind": "weight-sharing"},
    {"label": "DARTS-V1", "seconds": 10890.0, "accuracy": 54.30, "std": 0.00, "kind": "weight-sharing"},
    {"label": "DARTS-V2", "seconds": 29902.0, "accuracy": 54.30, "std": 0.00, "kind": "weight-sharing"},
    {"label": "GDAS", "seconds": 28926.0, "accuracy": 93.51, "std": 0.13, "kind": "weight-sharing"},
    {"label": "SETN", "seconds": 31010.0, "accuracy": 86.19, "std": 4.63, "kind": "weight-sharing"},
    {"label": "ENAS", "seconds": 13315.0, "accuracy": 54.30, "std": 0.00, "kind": "weight-sharing"},
)

#: Kinds a published point may have (optional ``kind`` key), each drawn with its own marker.
PUBLISHED_KINDS = ("training-free", "non-weight-sharing", "weight-sharing")


def read_published_points(path) -> List[dict]:
    """Read published points from a CSV with columns ``label, seconds, accuracy`` and optional
    ``std`` and ``kind`` (search time in seconds, CIFAR-10 test accuracy in percent, ``kind`` one
    of :data:`PUBLISHED_KINDS`)."""
    import csv

    from ._common import check_input_file

    expected = "a CSV with columns label, seconds, accuracy[, std][, kind]"
    path = check_input_file(path, expected)
    out = []
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:  # a byte-order mark is no header
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in ("label", "seconds", "accuracy") if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (header: {header}); expected {expected}")
        for n, row in enumerate(reader, start=2):
            try:
                point = {"label": row["label"], "seconds": float(row["seconds"]),
                         "accuracy": float(row["accuracy"]),
                         "std": float(row["std"]) if row.get("std") not in (None, "") else 0.0}
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path} row {n}: expected label, seconds, accuracy[, std][, kind], "
                                 f"got {row!r}") from None
            if row.get("kind") not in (None, ""):
                point["kind"] = row["kind"]
            out.append(check_published_point(point, f"{path} row {n}"))
    return out


def check_published_point(point, where: str) -> dict:
    """``point`` when it can be drawn in Figure 6: a dict with a ``label``, ``seconds`` finite
    and > 0 (the axis is logarithmic), ``accuracy`` a percentage in [0, 100], an optional
    ``std`` finite and >= 0 and an optional ``kind`` of :data:`PUBLISHED_KINDS`; a ValueError
    naming ``where`` and the field otherwise. Checked when the points are read, before any
    figure is drawn."""
    import math

    if not isinstance(point, dict):
        raise TypeError(f"{where}: a point must be a dict with label, seconds, accuracy, got {type(point).__name__}")
    missing = [k for k in ("label", "seconds", "accuracy") if k not in point]
    if missing:
        raise ValueError(f"{where}: each point needs label, seconds and accuracy; {point!r} has no {missing[0]!r}")

    def number(key, default=None) -> float:
        value = point.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: {key} must be a number, got {value!r}")
        return float(value)

    where = f"{where} ({point['label']!r})"
    seconds, accuracy, std = number("seconds"), number("accuracy"), number("std", 0.0)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{where}: seconds must be a finite search time > 0 (the axis is logarithmic), "
                         f"got {seconds!r}")
    if not 0 <= accuracy <= 100:
        raise ValueError(f"{where}: accuracy must be a percentage in [0, 100], got {accuracy!r}")
    if not (math.isfinite(std) and std >= 0):
        raise ValueError(f"{where}: std must be finite and >= 0, got {std!r}")
    if point.get("kind") is not None and point["kind"] not in PUBLISHED_KINDS:
        raise ValueError(f"{where}: kind of {point['label']!r} is {point['kind']!r}; kind must be one of "
                         f"{', '.join(PUBLISHED_KINDS)}")
    return point
