"""T6: MoE-aware absorption over fused 3-D experts, router, shared expert and its gate; and the
up -> down scaling of every GLU.

Input side: the MoE block's norm is read by the router linear, every expert (the ``H`` axis of
``gate_up_proj (E, 2I, H)``), the shared expert's gate/up projections and the shared-expert gate.  All
are consumers in the dataflow, so T2 (``norm-absorb``) absorbs ``s`` into the norm and scales all of
them; the router logits are unchanged, hence routing is unchanged in exact arithmetic.

Inside each GLU, ``down(act(gate x) * up x)`` is linear in ``up x``: with ``s > 0`` per intermediate
channel,

    W_up' = diag(1/s) W_up,  b_up' = b_up / s,  W_down' = W_down diag(s)

and for fused experts, per expert ``e``: rows ``I..2I`` of ``gate_up_proj[e]`` divided by ``s_e``,
columns of ``down_proj[e]`` multiplied by ``s_e``.  ``s`` comes from the energy of the intermediate
(``down``'s input; per expert, over the tokens routed to it).  A GELU MLP (``down(act(up x))``) is not
linear in ``up x``; when ``act`` is positively homogeneous of degree ``k`` (relu: 1, relu2 = relu^2: 2),
``act(u / s) = act(u) / s^k`` for ``s > 0``, so

    W_up' = diag(1/s) W_up,  b_up' = b_up / s,  W_down' = W_down diag(s^k)

is exact; any other activation (gelu, silu, quick_gelu, ...) is left alone, and so are the clamped SwiGLU
experts of GPT-OSS and the dense clamped SwiGLUs (``clamped_glu``, MiniMax-M3) (``clamp(up)`` and ``up + 1`` are
not linear in ``up``; logged as skipped).  Expert biases: ``gate_up_proj_bias``' up part is
divided by ``s`` with its rows, ``down_proj_bias`` is untouched (it is added after ``down``).  Transposed
or interleaved storage is reached through the canonical views of :class:`fuzz.materialize.Experts`.

Routers: a correction bias (``e_score_correction_bias``, DeepSeek-V3 / GLM-4-MoE) moves only the choice
and is not on the residual stream: nothing here touches it, nor the routed scaling factor.
"""

from __future__ import annotations

import types
from typing import Literal

import torch
from torch import nn

from fuzz.dataflow import clamped_glu_chains, glu_chains, homogeneous_mlp_chains
from fuzz.errors import Refusal
from fuzz.ops import ACTIVATIONS, HOMOGENEOUS_DEGREE
from fuzz.materialize import GraphModel
from verifier._faults import fault
from verifier.transform import Calibration

from . import register
from .calibration import collect, energy_scales
from .graph_edit import require_graph_model
from .norm_absorb import norm_absorb

UP_DOWN = "up-down"
MOE = "moe-absorb"


@register(UP_DOWN)
def up_down(model: nn.Module, calib: Calibration, alpha: float = 0.5, experts: bool = True, dense: bool = True,
            scales: Literal["energy", "random"] = "energy", seed: int = 0,
            reading: list[str] | None = None) -> GraphModel:
    """Scale every GLU's intermediate channels between ``up`` and ``down`` (dense, shared and fused
    experts); ``reading`` restricts the GLUs to those whose ``up`` reads one of these nodes."""
    m = require_graph_model(UP_DOWN, model)
    layout = m.layout
    glus = [g for g in glu_chains(layout) if reading is None or layout.inputs(g.up)[0] in reading] if dense else []
    clamped = [g for g in clamped_glu_chains(layout)
               if reading is None or layout.inputs(g.up)[0] in reading] if dense else []
    if fault("clamped_glu_as_linear") is not None:  # mutants only: the clamped SwiGLU taken for a GLU
        glus, clamped = glus + clamped, []
    degrees = {fn: 1 for fn in ACTIVATIONS} if fault("homogeneity_assumed") is not None else None  # mutants only
    if fault("first_activation") is not None:  # the mutant: the first plain MLP's activation taken for every layer's
        first = homogeneous_mlp_chains(layout, {fn: 1 for fn in ACTIVATIONS})[:1]  # in layer order
        fn = layout.params(first[0].act).get("fn") if first else None
        degrees = {f: HOMOGENEOUS_DEGREE[fn] for f in ACTIVATIONS} if fn in HOMOGENEOUS_DEGREE else {}
    if fault("xielu_quadratic") is not None:  # the mutant: xIELU's positive side taken for relu2 (degree 2)
        degrees = {**HOMOGENEOUS_DEGREE, "xielu": 2}
    plain = [c for c in homogeneous_mlp_chains(layout, degrees)
             if reading is None or layout.inputs(c.up)[0] in reading] if dense else []
    expert_nodes = layout.of_op("experts") if experts else []
    stats = collect(m, calib, energy=[g.mul for g in glus] + [c.act for c in plain],
                    expert_energy=expert_nodes) if scales == "energy" else {}
    gen = torch.Generator().manual_seed(seed)

    def scale(energy: torch.Tensor | None, n: int) -> torch.Tensor:
        if scales == "energy":
            return energy_scales(energy, alpha).to(m.dtype)
        return torch.exp(0.5 * torch.randn(n, generator=gen, dtype=torch.float64)).to(m.dtype)

    log = [{"transform": UP_DOWN, "node": g.mul, "skipped": "clamped-swiglu",
            "why": "the clamped SwiGLU clamps up and adds 1: not linear in up"} for g in clamped]
    with torch.no_grad():
        for g in glus:
            up, down = m.nodes[g.up], m.nodes[g.down]
            s = scale(stats.get("energy", {}).get(g.mul), up.p["out_features"])
            up.weight.div_(s[:, None])
            if up.p["bias"]:
                up.bias.div_(s)
            down.weight.mul_(s[None, :])
            log.append({"transform": UP_DOWN, "node": g.mul, "up": g.up, "down": g.down})
        for c in plain:  # down(act(up x)), act homogeneous of degree k: 1/s into up, s^k into down
            up, down = m.nodes[c.up], m.nodes[c.down]
            s = scale(stats.get("energy", {}).get(c.act), up.p["out_features"])
            up.weight.div_(s[:, None])
            if up.p["bias"]:
                up.bias.div_(s)
            down.weight.mul_(s.pow(c.degree)[None, :])
            log.append({"transform": UP_DOWN, "node": c.act, "up": c.up, "down": c.down, "degree": c.degree})
        for node in expert_nodes:
            mod = m.nodes[node]
            inter = mod.p["intermediate"]
            if mod.p["act"] == "clamped_swiglu":  # clamp(up) and (up + 1) are not linear in up: left alone
                log.append({"transform": UP_DOWN, "node": node, "skipped": "clamped-swiglu",
                            "why": "the clamped SwiGLU (GPT-OSS) clamps up and adds 1: not linear in up"})
                continue
            for e in range(mod.p["n_experts"]):
                energy = stats["expert_energy"][node][e] if scales == "energy" else None
                if scales == "energy" and not energy.any():
                    continue  # no calibration token reached this expert: leave it as it is
                s = scale(energy, inter)
                up, up_bias = mod.up_rows(e)  # views: up rows whatever the storage (interleaved, transposed)
                up.div_(s[:, None])
                if up_bias is not None and fault("expert_up_bias_unscaled") is None:  # the mutant forgets it
                    up_bias.div_(s)
                mod.w_out()[e].mul_(s[None, :])
            log.append({"transform": UP_DOWN, "node": node, "experts": mod.p["n_experts"]})
    m.transform_log = getattr(m, "transform_log", []) + log
    return m


@register(MOE)
def moe_absorb(model: nn.Module, calib: Calibration, alpha: float = 0.5, scales: Literal["energy", "random"] = "energy",
               seed: int = 0) -> GraphModel:
    """T6: absorb into every norm that feeds fused experts, then scale every expert's (and shared
    expert's) intermediate.  Refuses a layout without MoE (``no-moe``) and, as T2 does, a MoE norm that
    cannot absorb."""
    m = require_graph_model(MOE, model)
    layout = m.layout
    if not layout.of_op("experts"):
        raise Refusal(MOE, "the layout has no fused experts", feature="no-moe")
    moe_norms = sorted({src for e in layout.of_op("experts") for src in layout.inputs(e)[:1]
                        if layout.op(src) == "norm"})
    if not moe_norms:
        raise Refusal(MOE, "the experts do not read a norm (post-norm layout)", op="experts",
                      path=layout.of_op("experts")[0], feature="norm-feeds-residual")
    m = norm_absorb(m, calib, alpha=alpha, scales=scales, seed=seed, norms=moe_norms)
    m = up_down(m, calib, alpha=alpha, scales=scales, seed=seed, reading=moe_norms)
    if fault("router_bias_in_weights") is not None:  # mutant: the correction bias leaks into the weights
        for node in layout.of_op("router"):
            if layout.params(node)["correction_bias"]:
                mod = m.nodes[node]
                mod.forward = types.MethodType(_weigh_by_corrected_scores, mod)
    return m


def _weigh_by_corrected_scores(self, logits):
    """The mutant's router (``router_bias_in_weights``): the experts chosen as before, but weighed by
    ``score + e_score_correction_bias`` instead of the score alone."""
    chosen = type(self).forward(self, logits) != 0
    p = self.p
    scores = torch.softmax(logits, dim=-1) if p["score"] == "softmax" else torch.sigmoid(logits)
    w = torch.where(chosen, scores + self.e_score_correction_bias, torch.zeros_like(scores))
    if p["renormalize"]:
        w = w / w.sum(dim=-1, keepdim=True)
    return w * p["scaling"]
