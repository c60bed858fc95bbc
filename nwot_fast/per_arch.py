"""One architecture per network pass: a compiled plan (:mod:`nwot_fast.plans`) run with
``torch.nn.functional``, and the scores of such passes.

The plan runs with the network's own weights (drawn after ``torch.manual_seed(seed)`` exactly
as :func:`~nwot_fast.nb201.build_network` draws them: :mod:`nwot_fast.weights`, bit for bit
:func:`nwot_fast.nb201.initial_parameters`), arranged for the plan (a merged convolution gets
its edges' weights concatenated along the output channels; each edge keeps its own
BatchNorm, run as one per-channel call whose output comes in one dense tensor per edge on the
CPU, else as channel slices). jacob_cov takes the backward w.r.t. the input only (no
parameter requires a gradient); hook_logdet is one forward pass under ``no_grad`` that packs
the codes the plan names.

On the CPU the plan runs in the channels-last memory format by default (NHWC: oneDNN's
convolutions, the compiled channels-last BatchNorm and pooling of :mod:`nwot_fast.ops`;
bench/RESULTS.md, "CPU levers").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from . import ops, reference, weights
from ._common import BN_EPS, BN_MOMENTUM
from ._common import resolve_device as _resolve_device
from ._common import check_seed as _check_seed
from ._common import torch_dtype
from .nb201.constants import N_CELLS, OUTPUT_NODE, STAGE_CHANNELS
from .nb201.registry import OP_SPECS
from .plans import Codes, ConvBN, Plan, Pool, Relu, Sum, compile_plan

__all__ = ["run_plan", "score_arch", "channels_last_by_default", "network_pass", "post_process", "ArchCodes", "check_nb201_input", "check_seed"]


# ---------------------------------------------------------------------------------------------
# Weights: those of build_network right after torch.manual_seed(seed)


@dataclass
class _CellWeights:
    conv: Dict[Tuple[int, ...], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)


@dataclass
class _Weights:
    stem: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    cells: List[_CellWeights]
    reductions: List[Tuple[torch.Tensor, ...]]
    head: Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _weights(plan: Plan, seed: int, device: torch.device, dtype: torch.dtype = torch.float32) -> _Weights:
    """The network's parameters exactly as the reference builds them (same RNG draws, bit for
    bit: :mod:`nwot_fast.weights`, equal to :func:`nwot_fast.nb201.initial_parameters`), arranged for the plan (merged
    convolutions get concatenated weights)."""
    p = weights.for_seed(seed).parameters(plan.arch)
    channels_last = _uses_channels_last(plan, device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def prep(name, conv=False):
        t = p[name].to(device=device, dtype=dtype)
        return t.contiguous(memory_format=fmt) if conv else t.contiguous()

    def conv_bn(prefix):
        return (prep(f"{prefix}.op.1.weight", True),) + bn(prefix + ".op.2")

    def bn(prefix):
        # Channels-last: BatchNorm at its initial affine (weight 1, bias 0: never drawn, so
        # every network's, nwot_fast.weights) runs as ops.batch_norm_train, marked by (None, None).
        # Not in NCHW plans (jacob_cov on the CPU): the compiled NCHW BatchNorm was 1.14x faster
        # there but broke the float32 contract on the 17 archs of tests/test_precision.py + 304
        # at batch 128, 32x32, seed 1 (max 3.9e-5 vs 2 x 1.35e-5; bench/RESULTS.md, issue 24).
        if channels_last:
            return None, None
        return prep(f"{prefix}.weight"), prep(f"{prefix}.bias")

    stem = (prep("stem.0.weight", True),) + bn("stem.1")
    cells: List[_CellWeights] = []
    reductions: List[Tuple[torch.Tensor, ...]] = []
    conv_steps = [s for s in plan.cell_steps if isinstance(s, ConvBN)]
    # A constant hook_logdet plan runs the first cell only (everything after it is zero).
    n_modules = 1 if plan.constant else 3 * N_CELLS + 2
    for index in range(n_modules):
        if f"cells.{index}.conv_a.op.1.weight" in p:  # a reduction block
            a, b = conv_bn(f"cells.{index}.conv_a"), conv_bn(f"cells.{index}.conv_b")
            reductions.append(a + b + (prep(f"cells.{index}.downsample.1.weight", True),))
            continue
        cw = _CellWeights()
        for s in conv_steps:
            parts = [conv_bn(f"cells.{index}.layers.{k}") for k in s.edges]
            cw.conv[s.edges] = tuple(
                parts[0][n] if len(parts) == 1 or parts[0][n] is None
                else torch.cat([q[n] for q in parts], 0).contiguous(memory_format=fmt if n == 0 else torch.contiguous_format)
                for n in range(3)
            )
        cells.append(cw)
    head = bn("lastact.0") + (prep("classifier.weight"), prep("classifier.bias"))
    return _Weights(stem, cells, reductions, head)


# ---------------------------------------------------------------------------------------------
# Running a plan


def channels_last_by_default(method: str, device: torch.device) -> bool:
    """The per-arch plans' memory format unless a plan fixes it: channels-last only for
    hook_logdet on the CPU (the one rule; :func:`nwot_fast.scorer.resolve_execution` asks it).

    jacob_cov runs NCHW on the CPU: in channels-last it breaks the float32 contract on real
    32x32 images at batch 128 (seed 0; relative errors against the authors' float32 ones,
    bench/RESULTS.md). Two causes, measured apart:
    - the channels-last BatchNorm forward computed y from mean and invstd rounded to float32
      (architecture 304: 1.69e-5 against 2.4e-6); it now rounds y once from float64, as the
      NCHW kernel does, and 304 is at 1.8e-6 (6111: 5.9e-7 against 4.9e-6);
    - the channels-last convolutions' float32 accumulation order: with float64 BatchNorm
      (forward and backward) around them, architecture 10152 is still at 1.2e-5 against the
      authors' 3.2e-6; with the compiled channels-last BatchNorm, 10152 / 10983 are at
      1.6e-5 / 1.6e-5 against 3.2e-6 / 6.2e-6 (1.0e-6 / 4.3e-6 before the BatchNorm change):
      which architectures miss moves with any change of rounding, that some do stays.
    In NCHW its float32 operations are the authors' (ATen's convolutions and BatchNorm), so its
    errors are theirs.
    Channels-last would run jacob_cov's per-arch path 1.20x faster (1.19x under AVX2 emulation).
    hook_logdet's codes are signs, which those rounding differences do not move beyond the
    contract."""
    return torch.device(device).type == "cpu" and method == "hook_logdet"


def _uses_channels_last(plan: Plan, device: torch.device) -> bool:
    """The plan's memory format: its own if it fixes one, else :func:`channels_last_by_default`."""
    if plan.channels_last is not None:
        return plan.channels_last
    return channels_last_by_default(plan.method, device)


def _bn_parts(x, weight, bias, parts: int = 1) -> Tuple[torch.Tensor, ...]:
    """Train-mode BatchNorm from batch statistics, split into ``parts`` channel groups; the
    running statistics the reference updates never reach the output of this pass. ``weight``
    None (channels-last plans at the initial affine): ``ops.batch_norm_train``, whose groups are
    dense channels-last tensors, so that the node sums add tensors of one memory format."""
    if weight is None:
        return ops.batch_norm_train(x, parts)
    y = F.batch_norm(x, None, None, weight, bias, True, BN_MOMENTUM, BN_EPS)
    return y.split(y.shape[1] // parts, dim=1) if parts > 1 else (y,)


def _bn(x, weight, bias):
    return _bn_parts(x, weight, bias)[0]


class ArchCodes:
    """Collects bit-packed ReLU codes with their multiplicities (hook_logdet)."""

    def __init__(self):
        self.packed: List[torch.Tensor] = []
        self.mults: List[int] = []
        self.units = 0

    def add(self, t: torch.Tensor, multiplicity: int):
        """Pack the codes ``t > 0`` of a hooked layer ``t [B, ...]`` (floating), counted
        ``multiplicity`` times."""
        if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
            # Packed in memory order (h, w, c), no copy: K sums over units with one
            # multiplicity per call, so the order of the units in a code does not matter.
            t = t.permute(0, 2, 3, 1)
        self.packed.append(ops.pack_codes(t))
        self.mults.append(multiplicity)
        self.units += multiplicity * (t[0].numel())

    def add_zero(self, units: int, multiplicity: int):
        """Count ``units`` all-zero codes ``multiplicity`` times without packing them."""
        # All-zero codes: equal for every pair of samples, they add units to each entry of K.
        self.units += multiplicity * units

    def triple(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(codes [1, B, W], multiplicity [1, W], units [1])`` for ``ops.hook_logdet_score``."""
        device = self.packed[0].device
        mult = torch.cat([torch.full((p.shape[1],), m, dtype=torch.int64, device=device)
                          for p, m in zip(self.packed, self.mults)])
        units = torch.tensor([self.units], dtype=torch.int64, device=device)
        return torch.cat(self.packed, 1)[None], mult[None], units


def _run_cell(plan: Plan, cw: _CellWeights, x: torch.Tensor, codes: Optional[ArchCodes]):
    nodes: List[Optional[torch.Tensor]] = [x] + [None] * OUTPUT_NODE
    relus: List[Optional[torch.Tensor]] = [None] * OUTPUT_NODE
    edges: Dict[int, torch.Tensor] = {}
    for s in plan.cell_steps:
        if isinstance(s, Relu):
            relus[s.node] = F.relu(nodes[s.node])
        elif isinstance(s, ConvBN):
            w, g, b = cw.conv[s.edges]
            parts = _bn_parts(F.conv2d(relus[s.node], w, padding=s.kernel // 2), g, b, len(s.edges))
            edges.update(zip(s.edges, parts))
        elif isinstance(s, Pool):
            edges[s.edge] = ops.avg_pool3x3(nodes[s.node])
        elif isinstance(s, Sum):
            first, *rest = s.terms
            total = nodes[first.source] if first.identity else edges[first.edge]
            for t in rest:
                total = total + (nodes[t.source] if t.identity else edges[t.edge])
            nodes[s.node] = total
        elif isinstance(s, Codes):
            codes.add(nodes[s.node], s.multiplicity)
        else:  # pragma: no cover - compile_plan emits only the steps above
            raise RuntimeError(f"unknown cell step {s!r}")
    if codes is not None and plan.zero_conv_edges:
        codes.add_zero(x[0].numel(), plan.zero_conv_edges * plan.code_multiplier)
    return nodes[OUTPUT_NODE]


def _reduction(weights, x, codes: Optional[ArchCodes], per_edge: int):
    wa, ga, ba, wb, gb, bb, wd = weights
    if codes is not None:
        codes.add(x, per_edge)
    a = _bn(F.conv2d(F.relu(x), wa, stride=2, padding=1), ga, ba)
    if codes is not None:
        codes.add(a, per_edge)
    b = _bn(F.conv2d(F.relu(a), wb, padding=1), gb, bb)
    shortcut = F.conv2d(F.avg_pool2d(x, 2, 2), wd)
    return shortcut + b


def _forward(plan: Plan, w: _Weights, x: torch.Tensor, codes: Optional[ArchCodes]) -> torch.Tensor:
    """The network pass of the plan: logits (or None for a constant hook_logdet plan)."""
    h = _bn(F.conv2d(x, w.stem[0], padding=1), w.stem[1], w.stem[2])
    if plan.constant:
        _run_cell(plan, w.cells[0], h, codes)
        _add_zero_rest(plan, codes, x)
        return None
    cell_index = 0
    for stage in range(3):
        if stage:
            h = _reduction(w.reductions[stage - 1], h, codes, plan.code_multiplier)
        for _ in range(N_CELLS):
            h = _run_cell(plan, w.cells[cell_index], h, codes)
            cell_index += 1
    g, b, lw, lb = w.head
    h = _bn(h, g, b)
    if codes is not None:
        codes.add(h, 1)  # lastact's nn.ReLU: counted once under both rules
    h = F.relu(h)
    return F.linear(F.adaptive_avg_pool2d(h, 1).flatten(1), lw, lb)


def _add_zero_rest(plan: Plan, codes: ArchCodes, x: torch.Tensor):
    """After a constant cell output every hooked ReLU sees zeros: count their units only."""
    n_conv = sum(1 for op in plan.arch.ops if OP_SPECS[op].hooked_relu)
    per_edge = plan.code_multiplier
    H, W = x.shape[2], x.shape[3]
    h, w_ = H, W
    for stage in range(3):
        C = STAGE_CHANNELS[stage]
        if stage:
            Cp = STAGE_CHANNELS[stage - 1]
            codes.add_zero(Cp * h * w_, per_edge)  # conv_a input
            h, w_ = (h + 1) // 2, (w_ + 1) // 2
            codes.add_zero(C * h * w_, per_edge)  # conv_b input
        cells = N_CELLS - 1 if stage == 0 else N_CELLS
        codes.add_zero(cells * n_conv * C * h * w_, per_edge)
    codes.add_zero(STAGE_CHANNELS[-1] * h * w_, 1)


# ---------------------------------------------------------------------------------------------
# Public entry points


def check_seed(seed) -> None:
    """The package's one seed rule (:func:`nwot_fast._common.check_seed`: an int in
    0..2**63-1; TypeError / ValueError otherwise)."""
    _check_seed(seed)


def network_pass(plan: Plan, x: torch.Tensor, seed: int, dev: torch.device, dtype: torch.dtype = torch.float32):
    """The network pass of one plan that runs a network (``plan.runs_network``), with the
    weights of ``seed`` (drawn in float32 as the reference draws them, then cast).

    Args:
        plan: a :class:`~nwot_fast.plans.Plan` with ``runs_network``.
        x: ``[B, 3, H, W]`` floating: the batch, moved to ``dev`` and cast to ``dtype``.
        seed: the weights' seed (a non-negative int).
        dev: the device to run on.
        dtype: ``torch.float32`` or ``torch.float64``.

    Returns:
        jacob_cov: ``J [B, 3*H*W]`` of ``dtype`` on ``dev``, the gradient of the summed outputs
        w.r.t. each sample; hook_logdet: the :class:`ArchCodes` the pass collected.
    """
    w = _weights(plan, seed, dev, dtype)
    x = x.to(device=dev, dtype=dtype)
    if _uses_channels_last(plan, dev):
        x = x.contiguous(memory_format=torch.channels_last)
    with reference.full_float32():  # no TF32 on CUDA: float32 scores are those of float32
        if plan.method == "jacob_cov":
            with torch.enable_grad():
                xg = x.detach().clone().requires_grad_(True)
                y = _forward(plan, w, xg, None)
                (J,) = torch.autograd.grad(y, xg, torch.ones_like(y))
            return J.reshape(J.shape[0], -1)
        codes = ArchCodes()
        with torch.no_grad():
            _forward(plan, w, x, codes)
        return codes


def post_process(method: str, results: list) -> List[float]:
    """Scores of several network passes of the same batch size, in one operator call (the codes
    of different cells are padded with zero words of multiplicity 0 by ``ops.stack_codes``,
    which add nothing to K).

    Args:
        method: ``"jacob_cov"`` or ``"hook_logdet"``.
        results: what :func:`network_pass` returned for each plan: ``J [B, D]`` tensors
            (jacob_cov) or :class:`ArchCodes` (hook_logdet), one batch size ``B`` for all.

    Returns:
        The scores as floats, in the order of ``results``.
    """
    if method == "jacob_cov":
        if len({tuple(J.shape) for J in results}) == 1:
            return [float(v) for v in ops.jacob_cov_score(torch.stack(results)).tolist()]
        return [float(ops.jacob_cov_score(J[None])[0]) for J in results]
    codes, mults, units = ops.stack_codes([c.triple() for c in results])
    return [float(v) for v in ops.hook_logdet_score(codes, mults, units).tolist()]


def check_nb201_input(x) -> None:
    """ValueError / TypeError unless ``x`` is an NB201 batch: what ``reference.check_input`` asks
    (a finite floating ``[B, C, H, W]`` tensor with ``B >= 2``) and ``C = 3`` (the stem's input).
    Other floating dtypes are accepted and cast to the scoring dtype, as
    ``build_network(arch)(x.float())`` would need."""
    reference.check_input(x)
    if x.shape[1] != 3:
        raise ValueError(f"input x must have 3 channels (RGB) for an NB201 network, got shape {tuple(x.shape)}")


def run_plan(plan: Plan, x: torch.Tensor, *, seed: int = 0, device="cpu", dtype=torch.float32) -> float:
    """Score a batch with a compiled plan (weights from ``torch.manual_seed(seed)``).

    Args:
        plan: a :class:`~nwot_fast.plans.Plan` from :func:`~nwot_fast.plans.compile_plan`.
        x: ``[B, 3, H, W]`` floating, ``B >= 2``: the batch.
        seed: the weights' seed (a non-negative int).
        device: where to run (``"cpu"``, ``"cuda"``, a ``torch.device``...).
        dtype: ``torch.float32`` (default) or ``torch.float64``.

    Returns:
        The score (a float; ``plan.result`` when structure decides it).
    """
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a Plan from compile_plan, got {type(plan).__name__}")
    check_nb201_input(x)
    check_seed(seed)
    dev = _resolve_device(device)
    dt = torch_dtype(dtype)
    if not plan.runs_network:
        return plan.result
    return post_process(plan.method, [network_pass(plan, x, seed, dev, dt)])[0]


def score_arch(arch, x, *, method: str = "jacob_cov", seed: int = 0, device="cpu", relu_match: str = "name",
               dtype=torch.float32) -> float:
    """NASWOT score of one NB201 architecture by the fast engine's per-arch mode, equal to
    ``reference.score(build_network(arch), x, method, dtype=dtype)`` with the network built right
    after ``torch.manual_seed(seed)`` (within the precision contract; float64 to 1e-9). The
    caller's RNG state is left untouched.

    Args:
        arch: an :class:`~nwot_fast.nb201.Arch`, an arch string or a benchmark index.
        x: ``[B, 3, H, W]`` floating, ``B >= 2``: the batch (cast to ``dtype``).
        method: ``"jacob_cov"`` or ``"hook_logdet"``.
        seed: the weights' seed (a non-negative int).
        device: where to run.
        relu_match: which ReLUs hook_logdet counts (``"name"``, the authors' rule, or ``"exact"``).
        dtype: ``torch.float32`` (default, the authors' precision) or ``torch.float64`` (the
            machine-independent truth; weights drawn in float32 as usual, then cast).

    Returns:
        The score (a float): NaN (jacob_cov) / -inf (hook_logdet) for the degenerate cells,
        from structure.
    """
    plan = compile_plan(arch, method, relu_match=relu_match)
    return run_plan(plan, x, seed=seed, device=device, dtype=dtype)
