"""Export a score table from a scan database (``nwot-fast tables build``).

The database is opened read-only (safe while the scan still writes to it). One configuration
is taken (by method, dtype or config hash); its rows become the table and its configuration,
the images and the environment become the provenance record. A table is only what the
protocol promises: real scores of every architecture (no rows filled from an isomorphism
representative), one fixed batch of images without augmentation, and the images the
database names (the data file given is checked against the database's key). A table that
lacks rows of the set it was built for is refused unless ``allow_partial``: then its record
says PARTIAL, with the covered count.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
from typing import List, Optional, Sequence

import numpy as np

from .._common import DTYPES, METHODS, NUM_ARCHS, __version__, check_int, check_seed
from .table import ScoreTable, write_table

__all__ = ["build_table", "cpu_description", "degenerate_rows", "random_rows"]

_COMMIT = re.compile(r"^[0-9a-f]{7,40}$")


def random_rows(count: int, seed: int = 0) -> np.ndarray:
    """``sorted(numpy.random.default_rng(seed).choice(15625, count, replace=False))``: the
    rule that picks a table's random rows (the float64 tables: 500 rows, seed 0)."""
    count = check_int(count, "count", 1, NUM_ARCHS)
    return np.sort(np.random.default_rng(check_seed(seed)).choice(NUM_ARCHS, count, replace=False)).astype(np.int64)


def degenerate_rows(method: str, indices, scores) -> dict:
    """How a table's degenerate scores sit against the structure of the cells: for jacob_cov the
    NaN rows and the constant-output cells (no path from input to output through non-``none``
    edges), for hook_logdet the -inf rows and the cells whose ReLUs see only zeros. ``scored``:
    rows with that value; ``cells``: rows whose cell has that structure; ``both``: the overlap.
    Over the whole space, jacob_cov's NaN rows are exactly the 341 constant-output cells; a
    hook_logdet -inf row outside the structural set is a K that the exact test proved singular."""
    from ..nb201 import arch_at, is_constant_output, relu_sees_only_zeros

    idx = np.asarray(indices, dtype=np.int64)
    sc = np.asarray(scores, dtype=np.float64)
    if method == "jacob_cov":
        value, marked = "nan", np.isnan(sc)
        cells = np.array([is_constant_output(arch_at(int(i))) for i in idx], dtype=bool)
        structure = "constant output"
    else:
        value, marked = "-inf", np.isneginf(sc)
        cells = np.array([relu_sees_only_zeros(arch_at(int(i))) for i in idx], dtype=bool)
        structure = "every ReLU sees only zeros"
    return {"value": value, "structure": structure, "scored": int(marked.sum()), "cells": int(cells.sum()),
            "both": int((marked & cells).sum())}


def cpu_description() -> str:
    """The CPU of this machine: its model name and its widest vector extension (float32 sums
    differ between AVX2 and AVX-512 kernels), from /proc/cpuinfo where there is one."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    vector = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "")
    name = model or platform.processor() or platform.machine() or "unknown CPU"
    return f"{name} ({vector}, {os.cpu_count()} logical cores)" if vector else f"{name} ({os.cpu_count()} logical cores)"


def _pick_config(configs: List[dict], db: str, method, dtype, config_hash) -> dict:
    def describe(c):
        cfg = c["config"]
        return (f"{c['config_hash']} ({cfg.get('method')} {cfg.get('dtype')} batch {cfg.get('batch_size')} "
                f"seed {cfg.get('seed')}, {c['rows']} rows)")

    chosen = [c for c in configs
              if (config_hash is None or c["config_hash"] == config_hash)
              and (method is None or c["config"].get("method") == method)
              and (dtype is None or c["config"].get("dtype") == dtype)]
    if len(chosen) != 1:
        what = "no configuration" if not chosen else f"{len(chosen)} configurations"
        raise ValueError(f"{db}: {what} match (method {method or 'any'}, dtype {dtype or 'any'}, config hash "
                         f"{config_hash or 'any'}); it holds: {'; '.join(describe(c) for c in configs) or 'nothing'}"
                         + ("; say which with --method, --dtype or --config-hash" if len(chosen) > 1 else ""))
    return chosen[0]


def _check_protocol(cfg: dict, db: str) -> None:
    """The fields a table's protocol fixes: real images, one fixed batch, no augmentation, CPU."""
    problems = []
    if not cfg.get("data"):
        problems.append("scored on Gaussian inputs (a table is scored on images)")
    if cfg.get("fixed_batch") is not True:
        problems.append("a new batch per architecture (a table uses one fixed batch)")
    if cfg.get("augment") is not False:
        problems.append("augmented batches (a table uses no augmentation)")
    if cfg.get("device_type") != "cpu":
        problems.append(f"device type {cfg.get('device_type')!r} (tables are CPU scans)")
    if problems:
        raise ValueError(f"{db}: configuration {cfg} is not a table protocol: {'; '.join(problems)}")


def _iso_seconds(a: str, b: str) -> Optional[float]:
    try:
        return (datetime.datetime.fromisoformat(b) - datetime.datetime.fromisoformat(a)).total_seconds()
    except (TypeError, ValueError):
        return None


def _scan_command(cfg: dict, selection: dict, count: int, threads: Optional[int], db_name: str, name: str) -> str:
    """The commands that recompute the table from a CIFAR-10 source: write the protocol's
    images to an .npz, scan, export."""
    if selection["kind"] == "random":
        indices = ('"$(python -c \'import numpy as np; print(",".join(map(str, sorted(np.random.default_rng('
                   f'{selection["seed"]}).choice({NUM_ARCHS}, {selection["count"]}, replace=False).tolist()))))\')"')
    else:
        indices = shlex.quote(selection["spec"])
    parts = [f"python -c \"from nwot_fast.tables.protocol import save_first_images; "
             f"save_first_images('DATA', 'first{count}.npz', {count})\""]
    env = f"OMP_NUM_THREADS={threads} " if threads is not None else ""
    scan = [f"{env}nwot-fast scan --indices {indices} --db {shlex.quote(db_name)} --method {cfg['method']}",
            f"--data first{count}.npz --batch-size {cfg['batch_size']} --fixed-batch --no-augment --seed {cfg['seed']}"]
    if cfg["dtype"] != "float32":
        scan.append(f"--dtype {cfg['dtype']}")
    if cfg.get("engine", "fast") != "fast":
        scan.append(f"--engine {cfg['engine']}")
    if cfg.get("relu_match", "name") != "name":
        scan.append(f"--relu-match {cfg['relu_match']}")
    parts.append(" ".join(scan))
    parts.append(f"nwot-fast tables build --db {shlex.quote(db_name)} --data first{count}.npz --out . "
                 f"--name {name} --commit COMMIT" + (f" --threads {threads}" if threads is not None else "")
                 + (f" --random {selection['count']} --random-seed {selection['seed']}" if selection["kind"] == "random"
                    else f" --indices {shlex.quote(selection['spec'])}"))
    return " && ".join(parts)


def build_table(
    db,
    *,
    data,
    out_dir,
    commit: str,
    method: Optional[str] = None,
    dtype: Optional[str] = None,
    config_hash: Optional[str] = None,
    indices=None,
    random: Optional[int] = None,
    random_seed: int = 0,
    allow_partial: bool = False,
    name: Optional[str] = None,
    threads: Optional[int] = None,
    command: Optional[str] = None,
    timeout: float = 30.0,
) -> ScoreTable:
    """Export one configuration of the scan database ``db`` as the table ``NAME.csv`` +
    ``NAME.json`` in ``out_dir`` and return it.

    ``data``: the image file (or batch directory) the scan read; it must have the fingerprint
    the database recorded, and its images become the record's pixel fingerprint.
    ``commit``: the git commit of the code that ran the scan (7 to 40 hex digits).
    ``method`` / ``dtype`` / ``config_hash``: which configuration, when the database holds
    several. Rows: ``indices`` (a range, list or ``"START:STOP"``; default all 15,625) or
    ``random=K`` (:func:`random_rows` ``(K, random_seed)``). Missing rows are a ValueError
    unless ``allow_partial``. ``name``: default ``METHOD.DTYPE``. ``threads``: the torch
    thread count of the scan (recorded; float32 jacob_cov sums depend on it). ``command``:
    replaces the reproducing command the record gets by default. The record's torch version,
    CPU and Python describe the machine running the export: run it where the scan ran."""
    import numpy
    import torch

    from ..data import data_fingerprint, load_images
    from ..scanning import parse_indices
    from ..store import ScoreDB
    from .protocol import describe_images, pixel_fingerprint

    if not isinstance(commit, str) or not _COMMIT.match(commit):
        raise ValueError(f"commit must be the scan code's git commit, 7 to 40 lower-case hex digits, got {commit!r}")
    if method is not None and method not in METHODS:
        raise ValueError(f"unknown score method {method!r}; allowed: {', '.join(METHODS)}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not isinstance(allow_partial, bool):
        raise TypeError(f"allow_partial must be True or False, got {allow_partial!r}")
    if threads is not None:
        threads = check_int(threads, "threads", 1, 4096)
    if indices is not None and random is not None:
        raise ValueError("give indices or random rows, not both")
    if random is not None:
        wanted = random_rows(random, random_seed)
        selection = {"kind": "random", "count": int(wanted.size), "seed": int(random_seed),
                     "rule": f"sorted(numpy.random.default_rng({random_seed}).choice({NUM_ARCHS}, {wanted.size}, "
                             "replace=False))"}
    else:
        spec = f"0:{NUM_ARCHS}" if indices is None else indices
        wanted = np.sort(np.asarray(parse_indices(spec), dtype=np.int64))
        selection = {"kind": "indices", "spec": spec if isinstance(spec, str) else _spec_text(wanted)}
    out_dir = os.fspath(out_dir)
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"table directory {out_dir!r} does not exist")

    with ScoreDB(db, readonly=True, timeout=timeout) as store:
        configs = store.configurations()
        chosen = _pick_config(configs, os.fspath(db), method, dtype, config_hash)
        rows = store.load(chosen["config_hash"])
    cfg = chosen["config"]
    _check_protocol(cfg, os.fspath(db))
    fingerprint = data_fingerprint(data, cfg.get("dataset"))
    if fingerprint != cfg["data"]:
        raise ValueError(f"{data}: its fingerprint {fingerprint} is not the data key {cfg['data']} of configuration "
                         f"{chosen['config_hash']} in {db}; give the image file the scan read")
    images = load_images(data, dataset=cfg.get("dataset"))
    filled = sorted(i for i, r in rows.items() if r.representative != i)
    if filled:
        raise ValueError(f"{db}: {len(filled)} rows of configuration {chosen['config_hash']} were filled from an "
                         f"isomorphism representative (first: {filled[:5]}); a table holds every architecture's own "
                         "score: rescan them without --dedup")
    have = np.asarray(sorted(rows), dtype=np.int64)
    covered = np.intersect1d(wanted, have)
    missing = wanted.size - covered.size
    if missing and not allow_partial:
        first = np.setdiff1d(wanted, have)[:5].tolist()
        raise ValueError(f"{db}: configuration {chosen['config_hash']} has {covered.size} of the {wanted.size} rows "
                         f"asked for ({missing} missing, first: {first}); finish the scan, or pass allow_partial "
                         "(--allow-partial) for a table marked PARTIAL")
    if covered.size == 0:
        raise ValueError(f"{db}: configuration {chosen['config_hash']} holds none of the rows asked for")
    scores = np.asarray([rows[int(i)].score for i in covered], dtype=np.float64)
    dtype_name = cfg["dtype"]
    name = name or f"{cfg['method']}.{dtype_name}"
    secs = [rows[int(i)].seconds for i in covered]
    provenance = {
        "method": cfg["method"],
        "dtype": dtype_name,
        "benchmark": "NAS-Bench-201 (C=16, N=5), official index order (meta_archs); not deduplicated: "
                     "isomorphic cells have their own weights and scores",
        "coverage": {"complete": bool(missing == 0), "covered": int(covered.size), "expected": int(wanted.size),
                     "missing": int(missing), "selection": selection},
        "degenerate": degenerate_rows(cfg["method"], covered, scores),
        "protocol": {
            "batch_size": cfg["batch_size"], "seed": cfg["seed"], "fixed_batch": True, "augment": False,
            "relu_match": cfg["relu_match"], "engine": cfg["engine"], "device_type": cfg["device_type"],
            "dtype": dtype_name,
            "weights": "torch.manual_seed(seed) right before building each architecture (float32 draws, cast for "
                       "float64)",
            "batch": "BatchSampler(fixed=True, augment=False, seed): one seeded permutation of the images, the same "
                     "batch for every architecture",
            "data": {"description": describe_images(images.dataset, len(images)), "dataset": images.dataset,
                     "images": len(images), "shape": list(images.images.shape),
                     "fingerprint": pixel_fingerprint(images.images), "file_fingerprint": fingerprint},
        },
        "scan": {
            "config_hash": chosen["config_hash"], "config": cfg, "nwot_fast_version": ", ".join(chosen["versions"]),
            "git_commit": commit, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "cpu": cpu_description(), "threads": threads,
            "started": chosen["first"], "finished": chosen["last"],
            "wall_seconds": _iso_seconds(chosen["first"], chosen["last"]),
            "scoring_seconds": float(np.nansum(np.asarray(secs, dtype=np.float64))),
            "command": command or _scan_command(cfg, selection, len(images), threads, os.path.basename(os.fspath(db)),
                                                name),
            "command_placeholders": None if command else {
                "DATA": "a CIFAR-10 source: the python batch directory (cifar-10-batches-py) or an .npz (x, y) whose "
                        "first images are the training set's",
                "COMMIT": "the git commit of the nwot_fast code that ran the scan"},
        },
        "export": {"nwot_fast_version": __version__,
                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "database": os.path.basename(os.fspath(db))},
    }
    return write_table(out_dir, name, covered, scores, provenance)


def _spec_text(indices: Sequence[int]) -> str:
    """A compact ``START:STOP`` spec of sorted ``indices`` when they are one run, else the list."""
    idx = list(map(int, indices))
    if idx and idx == list(range(idx[0], idx[-1] + 1)):
        return f"{idx[0]}:{idx[-1] + 1}"
    return ",".join(map(str, idx))
