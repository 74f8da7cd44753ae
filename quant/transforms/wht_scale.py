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

Refusals: a module that is not a GraphModel (``module-without-layout``), a target that is not a
``linear`` node, e.g. the lm_head (``not-a-linear``), a linear already fed by a ``wht_in`` node
(``already-transformed``).  Nothing structural is needed otherwise: T1 is exact for any linear.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fuzz.errors import BadInput, Refusal
from fuzz.hadamard import fwht, next_pow2
from fuzz.layout import Layout
from fuzz.materialize import GraphModel
from verifier.transform import Calibration

from . import register
from .calibration import collect, energy_scales
from .graph_edit import LayoutEdit, rebuild, require_graph_model

NAME = "wht-scale"
SCALES = ("energy", "random")


def transformed_weight(weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``W~ = [W, 0] Q D`` in float64: row ``o`` is ``fwht([W_o, 0]) * s``."""
    w = weight.detach().double()
    return fwht(F.pad(w, (0, s.numel() - w.shape[1]))) * s.double()


def folded_weight(weight: torch.Tensor, s: torch.Tensor, d_in: int) -> torch.Tensor:
    """``W_eff = (W^ D^-1 Q^T)[:, :d_in]`` in float64: row ``o`` is ``fwht(W^_o / s)[:d_in]``."""
    return fwht(weight.detach().double() / s.double())[:, :d_in]


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
def wht_scale(model: nn.Module, calib: Calibration, alpha: float = 0.5, scales: Literal[SCALES] = "energy",
              seed: int = 0, targets: list[str] | None = None) -> GraphModel:
    """Insert ``x~ = [x, 0] Q D^-1`` before every selected linear and set ``W~ = [W, 0] Q D`` (module docstring)."""
    if scales not in SCALES:
        raise BadInput(f"{NAME}: scales must be one of {SCALES}, got {scales!r}")
    m = require_graph_model(NAME, model)
    layout = m.layout
    chosen = targets_of(layout, targets)
    if scales == "energy" and chosen:
        stats = collect(m, calib, wht_energy=chosen)["wht_energy"]
    gen = torch.Generator().manual_seed(seed)
    edit, log = LayoutEdit(), []
    for node in chosen:
        d_in = layout.params(node)["in_features"]
        d_pad = next_pow2(d_in)
        if scales == "energy":
            s = energy_scales(stats[node], alpha)
        else:
            s = torch.exp(0.5 * torch.randn(d_pad, generator=gen, dtype=torch.float64))
        wht = f"{node}_wht"
        edit.insert[(node, 0)] = (wht, "wht_in", {"in_features": d_in, "d_pad": d_pad})
        edit.params[node] = {"in_features": d_pad}
        edit.tensors[(wht, "scale")] = s.to(m.dtype)
        edit.tensors[(node, "weight")] = transformed_weight(m.nodes[node].weight, s).to(m.dtype)
        log.append({"transform": NAME, "node": node, "wht_in": wht, "d_in": d_in, "d_pad": d_pad,
                    "s_min": float(s.min()), "s_max": float(s.max())})
    out = rebuild(m, edit)
    out.transform_log = getattr(m, "transform_log", []) + log
    return out


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

    Each reader gets ``W_eff = fwht(W^ / s)[:, :d_in]`` and ``in_features = d_in``; the ``wht_in`` node is
    removed.  A ``wht_in`` read by anything else is left in place.
    """
    m = require_graph_model("wht-scale-unfold", model)
    layout = m.layout
    edit = _Unfold()
    for wht in layout.of_op("wht_in"):
        readers = layout.consumers(wht)
        if not all(layout.op(r) == "linear" for r, _ in readers):
            continue
        d_in = layout.params(wht)["in_features"]
        s = m.nodes[wht].scale
        edit.remove.add(wht)
        for reader, _ in readers:
            edit.params[reader] = {"in_features": d_in}
            edit.tensors[(reader, "weight")] = folded_weight(m.nodes[reader].weight, s, d_in).to(m.dtype)
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
