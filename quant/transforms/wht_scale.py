"""T1: the input-side spectral transform (BBT-spectral), one linear at a time.

For a linear ``y = x W^T + b`` with ``W: (d_out, d_in)``, ``d_pad = next_pow2(d_in)``, the orthonormal,
symmetric Walsh-Hadamard ``Q = H / sqrt(d_pad)`` and ``D = diag(s)``, ``s > 0``:

    x~ = [x, 0] Q D^-1         (a ``wht_in`` node on the linear's input edge, parameter ``scale = s``)
    W~ = [W, 0] Q D            (the linear now has ``in_features = d_pad``; the bias is unchanged)

so ``x~ W~^T = [x, 0] Q D^-1 D Q^T [W, 0]^T = x W^T`` exactly, for any linear.  Row ``o`` of
``[W, 0] Q`` is ``fwht([W_o, 0])`` (Q is symmetric), so ``H`` is never materialised.

Scales: ``s_l = (1 + d_pad * rho_l)^alpha`` with ``rho_l = E[h_l^2] / sum_k E[h_k^2]``, ``h = [x, 0] Q``
over the calibration tokens (all ``d_pad`` coordinates, padded ones included, as the paper defines
``rho``); ``alpha = 0`` is the rotation alone, uniform energy gives ``s = 2^alpha``.  ``scales="random"``
draws seeded positive scales instead, for fuzzing.  The quantizer sees ``W~``: high-energy columns are
boosted (``s > 1``), so per-group rounding favours them.

:func:`unfold` returns to a plain model after quantization: with ``W^`` the (possibly quantized) ``W~``,

    W_eff = (W^ D^-1 Q^T)[:, :d_in] = fwht(W^ / s)[:, :d_in]      (row-wise),

the ``wht_in`` node is removed and ``in_features`` restored, so the layout is exactly the original one.
``wht-scale-roundtrip`` registers ``unfold(wht_scale(model))`` so that the oracle proves the unfold too.

Group-aligned block form (``block=b``, registered as ``wht-scale-block``): ``Q_b = I_{d_in/b} (x) H_b / sqrt(b)``
(block-diagonal, orthonormal, symmetric), ``b`` a power of two dividing ``d_in``, no padding:

    x~ = x Q_b D^-1 = block_fwht(x, b) / s,      W~ = W Q_b D,      W_eff = W^ D^-1 Q_b = block_fwht(W^ / s, b)

with ``s_l = (1 + d_in * rho_l)^alpha``, ``rho`` over the ``d_in`` coordinates of ``h = x Q_b``.  Exact for any
linear, like the padded form; ``in_features`` is unchanged, so a quantized ``W~`` has exactly the plain
weight's bytes, and with ``b`` dividing the quantization group size each group of input columns is the
span of its own Hadamard blocks (``b = 64 = group size`` on SmolLM2: each group gets one Hadamard).
``wht-scale-block`` picks ``b = min(max_block, 2^v)`` per linear, ``2^v`` the largest power of two dividing
``d_in`` (SmolLM2: 64 everywhere; tiny fuzz layouts: 8, 16, 32), so every width is fuzzed, not refused:
an odd ``d_in`` gets ``b = 1``, ``Q_1 = I``, i.e. a plain per-column scaling ``x / s``, ``W s`` (exact; no
rotation at all).  An explicit ``block`` that is not a power of two dividing ``d_in`` is refused
(``block-misaligned``, naming the linear).

Mutant (tests only): the ``block_scale_before_rotation`` fault (``verifier._faults``) folds ``W D Q_b``
instead of ``W Q_b D``; ``mutants:block_scale_before_rotation`` must be caught.

Exact-width full form (registered as ``wht-scale-exact``): ``Q_n = (H_m (x) H_{2^k}) / sqrt(n)``, ``n = d_in``,
``H_m`` a Paley matrix (``fuzz.hadamard.exact_hadamard``; SmolLM2: 576 = 36 x 16, 1536 = 12 x 128), orthonormal
but not symmetric in general, no padding:

    x~ = x Q_n D^-1 = exact_fwht(x) / s,      W~ = W Q_n D,      W_eff = W^ D^-1 Q_n^T = exact_fwht(W^ / s, transpose)

so ``x~ W~^T = x Q_n Q_n^T W^T = x W^T``; every coordinate mixes with every other, as in the padded form, at
the plain weight's bytes.  ``s`` as the block form, over the ``d_in`` coordinates of ``h = x Q_n``.  A linear
whose ``d_in`` has no construction here (``n = 2 mod 4``, or an ``H_m`` beyond Paley I/II over a prime) is
refused (``no-hadamard-order``, naming the linear).  Mutant: ``exact_q_not_transposed`` unfolds with ``Q_n``
where ``Q_n^T`` is needed (caught wherever ``Q_n`` is not symmetric, e.g. a width with a Paley I factor: 12, 20,
24, 48).

The three forms (``block``: ``None`` padded, an int block, ``EXACT``) are ``fuzz.hadamard.rotation``'s, which every
reader of a ``wht_in`` node uses too (the op's shape rule, its module, calibration, the quantize hook, the online
rotation); a form that does not fit a linear's width (``fuzz.hadamard.check_form``) is refused naming the linear
and the feature (``block-misaligned``, ``no-hadamard-order``).

Per-linear alpha (``alpha`` a grid, e.g. :data:`ALPHA_GRID`; recipe ``bbt-spectral-alpha-search``): each selected
linear gets the alpha of the grid minimising the calibration-weighted rounding error of its ``W~`` under the target
weight quantizer ``q`` (:func:`quant.transforms.rtn.rtn`: asymmetric min/max round to nearest, ``bits`` bits per
group of ``group_size`` input columns of ``W~``).  With ``h = [x, 0] Q`` (``E[h_j^2]``: the energy the scales are
built from), ``s = s(alpha)``, ``x~_j = h_j / s_j`` and ``W~ = [W, 0] Q D``:

    err(alpha) = sum_j E[h_j^2] / s_j^2 * sum_i (W~ - q(W~))_ij^2

the diagonal (imatrix) approximation of ``E||x~ (W~ - q(W~))^T||^2``.  Ties go to the first alpha of the grid, so
the choice is deterministic; ``transform_log`` records each linear's chosen ``alpha`` and ``err`` per grid value.
Any alpha is exact (above), so the choice changes the quantizer's error, never the function.  A grid of one value is
the float alpha exactly.  A ``W~`` narrower than a group (``d_pad < group_size``: tiny layouts) is rounded as one
group per row (the ``group_size`` logged).  Refused: an empty grid, a negative or non-finite alpha, ``bits`` outside
1..8, a ``group_size`` below 1 or random scales with a grid (``BadInput``), and a linear whose quantized width
``d_pad`` a narrower group size does not divide (``group-misaligned``, naming the linear).

Refusals: a module that is not a GraphModel (``module-without-layout``), a target that is not a
``linear`` node, e.g. the lm_head (``not-a-linear``), a linear already fed by a ``wht_in`` node
(``already-transformed``).  Nothing structural is needed otherwise: T1 is exact for any linear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from fuzz.errors import BadInput, FormError, Refusal
from fuzz.hadamard import EXACT, Rotation, is_pow2, rotation
from fuzz.layout import Layout
from fuzz.materialize import GraphModel
from fuzz.ops import wht_in_form, wht_in_params
from verifier._faults import fault
from verifier.transform import Calibration

from . import register
from .calibration import collect, energy_scales
from .graph_edit import LayoutEdit, rebuild, require_graph_model
from .rtn import rtn

NAME = "wht-scale"
BLOCK_NAME = "wht-scale-block"
EXACT_NAME = "wht-scale-exact"
SCALES = ("energy", "random")
#: ``wht-scale-block``'s largest block: the quantization group size, so each group gets its own Hadamard
MAX_BLOCK = 64
#: the alphas ``bbt-spectral-alpha-search`` chooses from per linear (0: rotation alone; 0.25 the best global W2 alpha
#: on SmolLM2, 0.5 the paper's)
ALPHA_GRID = (0.0, 0.125, 0.25, 0.375, 0.5)
#: the quantizer the alpha search measures against by default: W2, groups of 64 input columns
SEARCH_BITS, SEARCH_GROUP = 2, 64


def transformed_weight(weight: torch.Tensor, s: torch.Tensor, block: int | str | None = None) -> torch.Tensor:
    """``W~ = [W, 0] Q D`` in float64 (row ``o``: ``[W_o, 0] Q * s``), ``Q`` the form ``block``'s rotation."""
    w, s = weight.detach().double(), s.detach().double()  # plain float64 math: no autograd graph kept alive
    return rotation(block, w.shape[1], s.numel()).apply(w) * s


def folded_weight(weight: torch.Tensor, s: torch.Tensor, d_in: int, block: int | str | None = None) -> torch.Tensor:
    """``W_eff = (W^ D^-1 Q^T)[:, :d_in]`` in float64, ``Q`` the form ``block``'s rotation (padded: row ``o`` is
    ``fwht(W^_o / s)[:d_in]``; block: ``block_fwht(W^ / s, b)``, ``Q_b`` symmetric; exact: ``W^ D^-1 Q_n^T``)."""
    # ``s`` detached: the unfold reads it from a Parameter, and the autograd graph of every linear's fold, kept alive
    # by the folded weights until the rebuild, took the unfold of SmolLM2 past 12 GB (stopped there); a copy, not a
    # view of the padded result, so the padded columns are freed (6 SmolLM2-shaped layers: +2.3 GB -> +0.7 GB)
    w, s = weight.detach().double(), s.detach().double()
    rot = rotation(block, d_in, s.numel())
    if block == EXACT and fault("exact_q_not_transposed") is not None:  # the mutant unfolds with Q_n, not Q_n^T
        return rot.apply(w / s)
    return rot.inverse(w / s)


def fitted_block(d_in: int, max_block: int = MAX_BLOCK) -> int:
    """``min(max_block, 2^v)``, ``2^v`` the largest power of two dividing ``d_in`` (1 for an odd width)."""
    return min(max_block, d_in & -d_in)


def alphas_of(alpha, transform: str = NAME) -> tuple[float, ...]:
    """``alpha`` as a grid: a float is the grid of one value; refused (``BadInput``): an empty grid, a value that is
    not a finite, non-negative number."""
    grid = tuple(alpha) if isinstance(alpha, (tuple, list)) else (alpha,)
    if not grid:
        raise BadInput(f"{transform}: the alpha grid is empty; give at least one alpha")
    for a in grid:
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a < 0:
            raise BadInput(f"{transform}: alpha must be a finite number >= 0 (or a grid of them), got {a!r}")
    return tuple(float(a) for a in grid)


def check_quantizer(bits: int, group_size: int, transform: str = NAME) -> None:
    """``bits`` in 1..8 and ``group_size >= 1``, integers (the quantizer the alpha search measures against)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise BadInput(f"{transform}: bits must be an integer in 1..8, got {bits!r}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise BadInput(f"{transform}: group_size must be an integer >= 1, got {group_size!r}")


def rounding_errors(weight: torch.Tensor, energy: torch.Tensor, grid: tuple[float, ...], block: int | str | None,
                    bits: int, group_size: int) -> list[float]:
    """``err(alpha)`` for each alpha of ``grid`` (module docstring): ``sum_j E[h_j^2] / s_j^2 * sum_i
    (W~ - q(W~))_ij^2``, ``W~ = [W, 0] Q D`` in float64, ``q`` group-wise RTN (:func:`quant.transforms.rtn.rtn`)."""
    e = energy.double()
    rotated = transformed_weight(weight, torch.ones_like(e), block)  # [W, 0] Q, once for the whole grid
    errs = []
    for a in grid:
        s = energy_scales(e, a)
        wt = rotated * s
        errs.append(float(((e / s ** 2) * (wt - rtn(wt, bits, group_size)).pow(2).sum(0)).sum()))
    return errs


def rotation_of(node: str, d_in: int, block: int | str | None, transform: str = NAME) -> Rotation:
    """The rotation of form ``block`` on the linear ``node``; a :class:`Refusal` naming it and the feature where the
    form does not fit its width (``block-misaligned``, ``no-hadamard-order``: :func:`fuzz.hadamard.check_form`)."""
    try:
        return rotation(block, d_in)
    except FormError as exc:
        if exc.feature == "not-a-form":
            raise BadInput(f"{transform}: {exc}") from exc
        raise Refusal(transform, exc.reason, op="linear", path=node, feature=exc.feature) from exc


def targets_of(layout: Layout, targets: list[str] | None = None, *, transform: str = NAME) -> list[str]:
    """The linears to transform (default: every ``linear`` node); :class:`Refusal` for any other node."""
    chosen = layout.of_op("linear") if targets is None else list(targets)
    for node in chosen:
        if node not in layout.graph:
            raise BadInput(f"{transform}: target {node!r} is not a node of the layout")
        op = layout.op(node)
        if op != "linear":
            raise Refusal(transform, f"{node!r} is a {op}, not a linear (the lm_head is its own op)",
                          op=op, path=node, feature="not-a-linear")
        src = layout.inputs(node)[0]
        if layout.op(src) == "wht_in":
            raise Refusal(transform, f"the input of {node!r} is already the wht_in node {src!r}",
                          op="linear", path=node, feature="already-transformed")
    return chosen


@register(NAME)
def wht_scale(model: nn.Module, calib: Calibration, alpha: float | tuple[float, ...] = 0.5,
              scales: Literal[SCALES] = "energy", seed: int = 0, targets: list[str] | None = None,
              block: int | None = None, bits: int = SEARCH_BITS, group_size: int = SEARCH_GROUP) -> GraphModel:
    """Insert ``x~ = [x, 0] Q D^-1`` before every selected linear and set ``W~ = [W, 0] Q D`` (module docstring);
    ``block``: the group-aligned form ``x Q_b D^-1``, ``W Q_b D`` with that block on every selected linear;
    ``alpha`` a grid: per linear the alpha of least ``err`` under the ``bits`` / ``group_size`` RTN quantizer."""
    transform = NAME if block is None else BLOCK_NAME
    m = require_graph_model(transform, model)
    chosen = targets_of(m.layout, targets, transform=transform)
    return _transform(m, calib, {node: block for node in chosen}, alpha, scales, seed, bits, group_size)


def _transform(m: GraphModel, calib: Calibration, blocks: dict[str, int | str | None],
               alpha: float | tuple[float, ...], scales: str, seed: int, bits: int = SEARCH_BITS,
               group_size: int = SEARCH_GROUP) -> GraphModel:
    """T1 on the linears ``blocks`` names, each in its form: padded (``None``), a block (an int) or ``EXACT``;
    ``alpha`` a float, or a grid searched per linear (module docstring)."""
    transform = (EXACT_NAME if any(b == EXACT for b in blocks.values()) else
                 NAME if all(b is None for b in blocks.values()) else BLOCK_NAME)
    if scales not in SCALES:
        raise BadInput(f"{transform}: scales must be one of {SCALES}, got {scales!r}")
    search = isinstance(alpha, (tuple, list))
    grid = alphas_of(alpha, transform)
    check_quantizer(bits, group_size, transform)
    if search and scales != "energy":
        raise BadInput(f"{transform}: an alpha grid chooses energy scales; scales={scales!r} has no alpha")
    layout = m.layout
    chosen = list(blocks)
    rots = {node: rotation_of(node, layout.params(node)["in_features"], blocks[node], transform) for node in chosen}
    groups = {node: min(group_size, rot.d_pad) for node, rot in rots.items()}  # a narrower row is one group
    if search:
        for node, rot in rots.items():
            if rot.d_pad % groups[node]:
                raise Refusal(transform, f"the alpha search rounds {node!r}'s W~ ({rot.d_pad} input columns) in "
                              f"groups of {group_size}, which do not divide it", op="linear", path=node,
                              feature="group-misaligned")
    if scales == "energy" and chosen:
        energy = collect(m, calib, wht_energy=list(blocks.items()))["wht_energy"]
    gen = torch.Generator().manual_seed(seed)
    edit, log = LayoutEdit(), []
    for node in chosen:
        rot = rots[node]
        d_in, d_pad = rot.d_in, rot.d_pad
        found = {}
        if search:
            errs = rounding_errors(m.nodes[node].weight, energy[node], grid, rot.block, bits, groups[node])
            best = min(range(len(grid)), key=errs.__getitem__)  # the first of equal errors: deterministic
            a = grid[best]
            found = {"alpha_search": {"grid": list(grid), "err": errs, "bits": bits, "group_size": groups[node]}}
        else:
            a = grid[0]
        if scales == "energy":
            s = energy_scales(energy[node], a)
        else:
            s = torch.exp(0.5 * torch.randn(d_pad, generator=gen, dtype=torch.float64))
        wht = f"{node}_wht"
        form = wht_in_params(rot.block)
        edit.insert[(node, 0)] = (wht, "wht_in", {"in_features": d_in, "d_pad": d_pad, **form})
        if d_pad != d_in:
            edit.params[node] = {"in_features": d_pad}
        edit.tensors[(wht, "scale")] = s.to(m.dtype)
        if isinstance(rot.block, int) and fault("block_scale_before_rotation") is not None:  # the mutant: W D Q_b
            edit.tensors[(node, "weight")] = rot.apply(m.nodes[node].weight.double() * s).to(m.dtype)
        else:
            edit.tensors[(node, "weight")] = transformed_weight(m.nodes[node].weight, s, rot.block).to(m.dtype)
        log.append({"transform": transform, "node": node, "wht_in": wht, "d_in": d_in, "d_pad": d_pad,
                    **form, "s_min": float(s.min()), "s_max": float(s.max()),
                    **({"alpha": a} if scales == "energy" else {}), **found})
    out = rebuild(m, edit)
    out.transform_log = getattr(m, "transform_log", []) + log
    return out


@register(BLOCK_NAME)
def wht_scale_block(model: nn.Module, calib: Calibration, alpha: float | tuple[float, ...] = 0.5,
                    scales: Literal[SCALES] = "energy", seed: int = 0, targets: list[str] | None = None,
                    max_block: int = MAX_BLOCK, bits: int = SEARCH_BITS, group_size: int = SEARCH_GROUP) -> GraphModel:
    """The group-aligned block form of T1 on every selected linear, ``b = min(max_block, 2^v(d_in))`` each
    (module docstring)."""
    if isinstance(max_block, bool) or not isinstance(max_block, int) or not is_pow2(max_block):
        raise BadInput(f"{BLOCK_NAME}: max_block must be a power of two, got {max_block!r}")
    m = require_graph_model(BLOCK_NAME, model)
    chosen = targets_of(m.layout, targets, transform=BLOCK_NAME)
    blocks = {n: fitted_block(m.layout.params(n)["in_features"], max_block) for n in chosen}
    return _transform(m, calib, blocks, alpha, scales, seed, bits, group_size)


@register(EXACT_NAME)
def wht_scale_exact(model: nn.Module, calib: Calibration, alpha: float | tuple[float, ...] = 0.5,
                    scales: Literal[SCALES] = "energy", seed: int = 0, targets: list[str] | None = None,
                    bits: int = SEARCH_BITS, group_size: int = SEARCH_GROUP) -> GraphModel:
    """The exact-width full form of T1 on every selected linear: ``x Q_n D^-1``, ``W Q_n D`` (module docstring)."""
    m = require_graph_model(EXACT_NAME, model)
    chosen = targets_of(m.layout, targets, transform=EXACT_NAME)
    return _transform(m, calib, {n: EXACT for n in chosen}, alpha, scales, seed, bits, group_size)


@dataclass
class _Unfold(LayoutEdit):
    """A :class:`LayoutEdit` that also removes single-input nodes, rewiring their readers to their input."""

    remove: set[str] = field(default_factory=set)

    def apply(self, layout: Layout) -> Layout:
        assert not (self.replace or self.insert), "_Unfold only removes nodes and updates parameters"
        nodes = []
        for node in layout.order:
            if node in self.remove:
                continue
            inputs = [layout.inputs(src)[0] if src in self.remove else src for src in layout.inputs(node)]
            nodes.append((node, layout.op(node), {**layout.params(node), **self.params.get(node, {})}, inputs))
        meta = {k: v for k, v in layout.meta.items() if k not in ("spec", "features")}
        meta["features"] = layout.meta.get("features", [])
        meta["derived_from"] = layout.hash()
        return Layout.from_nodes(nodes, meta)


def unfold(model: GraphModel) -> GraphModel:
    """Fold every ``wht_in`` node that feeds only linears back into them (module docstring).

    Each reader gets ``W_eff = (W^ D^-1 Q^T)[:, :d_in]`` in the node's form (:func:`folded_weight`) and
    ``in_features = d_in``; the ``wht_in`` node is removed.  A ``wht_in`` read by anything else is left in place.
    """
    m = require_graph_model("wht-scale-unfold", model)
    layout = m.layout
    edit = _Unfold()
    for wht in layout.of_op("wht_in"):
        readers = layout.consumers(wht)
        if not all(layout.op(r) == "linear" for r, _ in readers):
            continue
        d_in, block = layout.params(wht)["in_features"], wht_in_form(layout.params(wht))
        s = m.nodes[wht].scale
        edit.remove.add(wht)
        for reader, _ in readers:
            edit.params[reader] = {"in_features": d_in}
            edit.tensors[(reader, "weight")] = folded_weight(m.nodes[reader].weight, s, d_in, block).to(m.dtype)
    if not edit.remove:
        return m
    out = rebuild(m, edit)
    out.transform_log = getattr(m, "transform_log", []) + [
        {"transform": "wht-scale-unfold", "removed": sorted(edit.remove)}]
    return out


@register("wht-scale-roundtrip")
def wht_scale_roundtrip(model: nn.Module, calib: Calibration, **options) -> GraphModel:
    """``unfold(wht_scale(model))``: the plain model the quantizer's output folds back into."""
    return unfold(wht_scale(model, calib, **options))


@register("wht-scale-block-roundtrip")
def wht_scale_block_roundtrip(model: nn.Module, calib: Calibration, **options) -> GraphModel:
    """``unfold(wht_scale_block(model))``: the block form's unfold, proven by the oracle."""
    return unfold(wht_scale_block(model, calib, **options))


@register("wht-scale-exact-roundtrip")
def wht_scale_exact_roundtrip(model: nn.Module, calib: Calibration, **options) -> GraphModel:
    """``unfold(wht_scale_exact(model))``: the exact-width form's unfold, proven by the oracle."""
    return unfold(wht_scale_exact(model, calib, **options))
