"""T2: a per-channel scaling absorbed into the preceding norm (no online operator).

A norm output ``x = g * n(u)`` (+ ``b`` for LayerNorm) is read by the set ``C`` of its consumers, taken
from the layout's dataflow.  With ``s > 0`` per channel:

    g' = g / s        (``1 + w' = (1 + w) / s`` for norms stored as ``1 + w``),   b' = b / s,
    W' = W diag(s)    for every W in C,

so ``W' x' = W diag(s) diag(1/s) x = W x``.  Exact iff every consumer is linear in ``x``: a linear, the
input axis (``H``) of fused experts ``gate_up_proj (E, 2I, H)``, an untied lm_head.  Routers, shared
experts and their gates are ordinary linear consumers, so MoE norms are covered by the same rule.

``s = (1 + d * rho)^alpha`` with ``rho`` the per-channel energy of ``x`` on the calibration tokens (the
basis where ``s`` is applied), or seeded random scales (``scales="random"``) for fuzzing.

Refusals (``on_unsupported="refuse"``, the default): a consumer that is not linear in ``x``
(``nonlinear-consumer``), a norm output that feeds the residual stream (``norm-feeds-residual``, post-norm
and sandwich norms), the final norm under tied embeddings unless ``untie=True`` (``tied-embeddings``).
``on_unsupported="skip"`` leaves such norms alone and logs why.  Per-head q/k norms (``groups > 1``) are
not T2's business (see T5) and are always left alone.

A weight-free norm (``weight_form="none"``, ``g = 1``: OLMo, NanoChat) has no ``g`` to divide: it is first
given a weight of ones (``weight_form="w"``, the same function; a layout edit), then absorbs ``1 / s`` like any
other norm.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from fuzz.errors import Refusal
from fuzz.layout import Layout
from fuzz.materialize import GraphModel
from verifier._faults import fault
from verifier.transform import Calibration

from . import register
from .calibration import collect, energy_scales
from .graph_edit import LayoutEdit, rebuild, require_graph_model, untie as untie_model

NAME = "norm-absorb"


def consumers(layout: Layout, node: str, *, transform: str = NAME, untie: bool = False) -> list[tuple[str, int]]:
    """The readers of norm ``node`` that take a column scaling; :class:`Refusal` for anything else."""
    readers = layout.consumers(node)
    for c, port in readers:
        op = layout.op(c)
        if op == "add":
            raise Refusal(transform, f"the normed output feeds the residual add {c!r}", op="norm", path=node,
                          feature="norm-feeds-residual")
        if op == "lm_head" and layout.params(c)["tied_to"] is not None and not untie:
            raise Refusal(transform, "the norm feeds a tied lm_head: scaling its columns rescales the embedding "
                          "table (pass untie=True)", op="norm", path=node, feature="tied-embeddings")
        if not (op in ("linear", "lm_head") or op == "experts" and port == 0):
            raise Refusal(transform, f"consumer {c!r} ({op}, port {port}) is not linear in the normed input",
                          op="norm", path=node, feature="nonlinear-consumer")
    return readers


def candidate_norms(layout: Layout) -> list[str]:
    """Full-width norms (per-head q/k norms belong to T5)."""
    return [n for n in layout.of_op("norm") if layout.params(n)["groups"] == 1]


def scale_consumer(model: GraphModel, consumer: str, s: torch.Tensor) -> None:
    """``W diag(s)`` on the consumer's input axis (experts: the ``H`` axis of ``gate_up_proj``)."""
    mod = model.nodes[consumer]
    if model.layout.op(consumer) == "experts":
        if fault("expert_output_axis") is not None:  # mutant: the output-side H axis (down_proj), not the input
            mod.w_out().mul_(s[None, :, None])
        else:  # the H axis whatever the storage (transposed experts: gate_up_proj (E, H, 2I)); biases unscaled
            mod.w_in().mul_(s[None, None, :])
    else:
        mod.weight.mul_(s[None, :])


def with_weights(model: GraphModel, norms: list[str]) -> GraphModel:
    """Every weight-free norm of ``norms`` (``weight_form="none"``, ``g = 1``) as a ``w`` norm with a weight of
    ones: the same function, with a ``g`` that can absorb ``1 / s``.  ``model`` itself when there is none."""
    free = [n for n in norms if model.layout.params(n)["weight_form"] == "none"]
    if not free or fault("weightless_norm_unabsorbed") is not None:  # the mutant: left weight-free
        return model
    edit = LayoutEdit()
    for n in free:
        p = model.layout.params(n)
        edit.params[n] = {"weight_form": "w"}
        edit.tensors[(n, "weight")] = torch.ones(p["dim"], dtype=model.dtype)
    new = rebuild(model, edit)
    new.transform_log = list(getattr(model, "transform_log", []))
    return new


def absorb_into_norm(model: GraphModel, norm: str, s: torch.Tensor) -> None:
    """``g' = g / s`` (or ``1 + w' = (1 + w) / s``) and ``b' = b / s`` on the norm itself."""
    mod = model.nodes[norm]
    if mod.p["weight_form"] == "none":  # only under the mutant weightless_norm_unabsorbed: nothing absorbs 1 / s
        return
    if mod.p["weight_form"] == "w":
        mod.weight.div_(s)
    else:
        mod.weight.copy_((1.0 + mod.weight) / s - 1.0)
    if mod.p["bias"]:
        mod.bias.div_(s)


@register(NAME)
def norm_absorb(model: nn.Module, calib: Calibration, alpha: float = 0.5,
                scales: Literal["energy", "random"] = "energy", seed: int = 0, untie: bool = False,
                on_unsupported: Literal["refuse", "skip"] = "refuse", norms: list[str] | None = None) -> GraphModel:
    """Absorb ``s`` into every full-width norm (or the given ``norms``); see the module docstring."""
    m = require_graph_model(NAME, model)
    if untie:
        m = untie_model(m, NAME)
    layout = m.layout
    plan, log = {}, []
    for node in norms if norms is not None else candidate_norms(layout):
        try:
            plan[node] = consumers(layout, node, untie=untie)
        except Refusal as exc:
            if on_unsupported == "refuse":
                raise
            log.append({"transform": NAME, "node": node, "skipped": exc.feature, "why": str(exc)})
    m = with_weights(m, list(plan))
    layout = m.layout
    if scales == "energy":
        stats = collect(m, calib, energy=list(plan))["energy"] if plan else {}
    gen = torch.Generator().manual_seed(seed)
    unscaled = fault("unscaled_consumer")  # mutants only (verifier._faults): readers left unscaled
    with torch.no_grad():
        for node, readers in plan.items():
            dim = m.nodes[node].p["dim"]
            if scales == "energy":
                s = energy_scales(stats[node], alpha)
            else:
                s = torch.exp(0.5 * torch.randn(dim, generator=gen, dtype=torch.float64))
            s = s.to(m.dtype)
            absorb_into_norm(m, node, s)
            for consumer, _ in readers:
                if unscaled is not None and unscaled["where"](layout, consumer):
                    continue
                scale_consumer(m, consumer, s)
            log.append({"transform": NAME, "node": node, "consumers": [c for c, _ in readers],
                        "s_min": float(s.min()), "s_max": float(s.max())})
    m.transform_log = getattr(m, "transform_log", []) + log
    return m
