"""Dataset names and the NB201 normalisation constants."""

from __future__ import annotations

from typing import Dict, Tuple

DATASETS: Tuple[str, ...] = ("cifar10", "cifar100", "ImageNet16-120")

# NB201 (xautodl get_datasets) writes these as pixel values / 255; kept in that form so the
# float64 -> float32 rounding is the same as torchvision's Normalize with NB201's lists.
MEAN: Dict[str, Tuple[float, float, float]] = {
    "cifar10": tuple(v / 255 for v in (125.3, 123.0, 113.9)),
    "cifar100": tuple(v / 255 for v in (129.3, 124.1, 112.4)),
    "ImageNet16-120": tuple(v / 255 for v in (122.68, 116.66, 104.01)),
}
STD: Dict[str, Tuple[float, float, float]] = {
    "cifar10": tuple(v / 255 for v in (63.0, 62.1, 66.7)),
    "cifar100": tuple(v / 255 for v in (68.2, 65.4, 70.4)),
    "ImageNet16-120": tuple(v / 255 for v in (63.22, 61.26, 65.09)),
}


def check_dataset(dataset) -> str:
    """Return the canonical dataset name (case-insensitive match) or raise ValueError listing DATASETS."""
    if isinstance(dataset, str):
        for name in DATASETS:
            if dataset == name or dataset.lower() == name.lower():
                return name
    raise ValueError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
