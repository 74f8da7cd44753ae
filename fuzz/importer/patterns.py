"""Importer patterns: one per layout op, each converting the recorded node(s) of that op.

``@import_pattern(op)`` registers ``convert(converter, node, inputs)`` for the layout op ``op`` of
:data:`fuzz.ops.SPECS` (``recorded=`` when the recorder names the op otherwise); it returns the layout
params of ``node`` (one node of kind ``op``) or a list of ``(id, op, params, inputs)`` entries.  An op that
no transformers model contains registers :func:`refuse_import` with the reason instead.

Conversion rules (recorded op -> layout op):

* ``embedding``, ``lm_head`` (``tied_to`` kept), ``linear`` (``F.linear`` only: ``x @ W`` and
  ``addmm`` read ``W`` as ``(in, out)``), ``attention``, ``add``, ``mul``, ``act``, ``scale``: direct;
  parameter roles by shape (the 2-D one is the weight, the 1-D one the bias);
* ``norm``: kind / dim / groups / eps / weight_form / bias; a LayerNorm's weight and bias are told
  apart by feeding the norm module a constant row (it normalises to zero, so the output is the bias);
* ``rope``: ``theta`` and the scaling (linear / dynamic / yarn / llama3 / longrope) are measured from the
  model (:mod:`fuzz.importer.rope`); any other RoPE is refused;
* ``attention``: must be causal; its scale and soft-cap are read from the recording (sdpa's ``scale``
  argument, or the eager score chain ``Q K^T * a [/ c, tanh, * c]``), never from config attributes; a
  sliding window is measured after conversion (:mod:`fuzz.importer.window`: the attention's ``window``), a
  chunked span is refused by the check, by measurement;
* ``softcap``: ``scale(1 / c) -> tanh -> scale(c)`` (Gemma2's final-logit soft-cap);
* ``router`` (it reads its own weight): split into a ``linear`` ``<router id>_proj`` and a ``router``;
* ``experts``: ``gate_up_proj (E, 2I, H)`` and ``down_proj (E, H, I)`` (or transposed ``(E, in, out)``) and
  the biases ``(E, 2I)`` / ``(E, H)`` told apart by shape; interleaved gate/up and the GLU (an activation
  or GPT-OSS' clamped SwiGLU) measured against the module;
* ``router``: its score function, correction bias, group-limited top-k, renormalisation and routed
  scaling factor measured against the module (:func:`measure_router`);
* ``x * sigmoid(g)`` / ``x * softplus(g)`` -> ``gate``; a last-axis slice (``x[..., a:b]``, ``chunk``,
  ``split``) of a fused projection -> ``head_slice``;
* exact rewrites first (:mod:`fuzz.importer.rewrites`): ``scale`` by 1.0 is dropped, ``(a + b) + c``
  becomes one three-input ``add``.

Anything else (an ``opaque`` node, a parameter read by an op that owns none) raises
:class:`~fuzz.errors.BadInput` naming the module path, the torch call and the recorded node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from ..materialize import MODULES
from ..ops import ACTIVATIONS, registrar, spec
from .rope import rope_params

if TYPE_CHECKING:
    from .converter import Converter, Entry

_SLICES = frozenset({"getitem", "chunk", "split", "split_with_sizes", "tensor_split"})
_ROUTING_CALLS = frozenset({"softmax", "topk", "max", "sort", "argmax", "gather", "scatter", "scatter_",
                            "one_hot"})


@dataclass(frozen=True)
class ImportPattern:
    """How layout op ``op`` is imported: ``convert`` applied to the recorded nodes of kind ``recorded``, or
    (``convert is None``) never, for ``refusal``."""

    op: str
    recorded: str
    convert: Callable[["Converter", str, list[str]], "dict | list[Entry]"] | None
    refusal: str | None = None


IMPORT_PATTERNS: dict[str, ImportPattern] = {}  # layout op -> its pattern
_register = registrar(IMPORT_PATTERNS, "an importer pattern")


def import_pattern(op: str, *, recorded: str | None = None):
    """``@import_pattern("norm")``: registers the decorated ``convert(converter, node, inputs)`` for ``op``."""
    register = _register(op)

    def decorate(convert):
        register(ImportPattern(op, recorded or op, convert))
        return convert

    return decorate


def refuse_import(op: str, reason: str) -> None:
    """Declare that ``op`` is never imported, and why."""
    _register(op)(ImportPattern(op, op, None, reason))


def pattern_for(recorded_op: str) -> ImportPattern | None:
    """The pattern converting recorded nodes of kind ``recorded_op``; ``None`` when there is none."""
    return next((p for p in IMPORT_PATTERNS.values() if p.recorded == recorded_op), None)


# ====================================================================== ops with parameters
@import_pattern("tokens")
def _tokens(conv: Converter, node: str, ins: list[str]) -> dict:
    return {"vocab": conv.g.nodes[node]["vocab"]}


@import_pattern("embedding")
def _embedding(conv: Converter, node: str, ins: list[str]) -> dict:
    d = conv.g.nodes[node]
    if [conv.g.nodes[i]["op"] for i in ins] != ["tokens"]:
        raise conv.refuse(node, "embedding does not read the token ids")
    lookups = sorted((conv.g.nodes[n]["index"], n) for n in conv.g.successors(ins[0])
                     if conv.g.nodes[n]["op"] == "embedding")
    if lookups and lookups[0][1] != node:  # Gemma4 / Gemma3n embed_tokens_per_layer: a second table of the ids
        raise conv.refuse(node, f"a second token-id embedding ({d['vocab']} x {d['dim']}) besides "
                          f"{conv.g.nodes[lookups[0][1]]['module_path']}: per-layer input embeddings (Gemma4); the "
                          "layout has one token embedding")
    vocab = conv.g.nodes[ins[0]]["vocab"]
    if d["vocab"] != vocab:  # Moshi: vocab + 1 rows (an initial-token row the ids never reach)
        raise conv.refuse(node, f"the token embedding has {d['vocab']} rows for a vocabulary of {vocab} logits (rows "
                          f"the ids never reach, e.g. Moshi's extra initial-token row); the layout's embedding table "
                          f"is the vocabulary")
    for c in conv.g.successors(node):  # DeepSeek-V4 / HY-V4 mHC: the stream widened to k copies of the hidden width
        shape = conv.g.nodes[c]["shape"]
        if len(shape) >= 4 and shape[-1] == d["dim"] and shape[-2] > 1 and conv.width(c) == shape[-2] * d["dim"]:
            raise conv.refuse(c, f"hyper-connections: the token embedding is widened to {shape[-2]} residual streams "
                              f"of width {d['dim']} ({conv.g.nodes[c].get('call', conv.g.nodes[c]['op'])} of shape "
                              f"{list(shape)}); the layout has one residual stream")
    conv.by_shape(node, {"weight": (d["vocab"], d["dim"])})
    return {"vocab": d["vocab"], "dim": d["dim"]}


@import_pattern("position_embedding")
def _position_embedding(conv: Converter, node: str, ins: list[str]) -> dict:
    """``x + P[start : start + seq]`` (recorder: an add of a constant-ids lookup ``start + arange(seq)``)."""
    d = conv.g.nodes[node]
    src = ins[0] if len(ins) == 1 else None
    if src is not None and conv.g.nodes[src]["op"] == "scale":  # BioGPT: sqrt(hidden) E[ids] + P[positions]
        src = conv.inputs(src)[0] if len(conv.inputs(src)) == 1 else None
    if src is None or conv.g.nodes[src]["op"] != "embedding":
        raise conv.refuse(node, "learned positions are not added to the (scaled) token embedding")
    conv.by_shape(node, {"weight": (d["max_pos"], d["dim"])})
    return {"max_pos": d["max_pos"], "dim": d["dim"], "start": d["start"]}


@import_pattern("linear")
def _linear(conv: Converter, node: str, ins: list[str]) -> dict:
    d = conv.g.nodes[node]
    fan_in, fan_out, bias = d["in_features"], d["out_features"], d["bias"]
    call = d.get("call")
    if call != "linear":
        raise conv.refuse(node, f"linear via {call!r} reads its weight as (in, out); the layout's linear "
                          f"is F.linear with an (out, in) weight")
    want = {"weight": (fan_out, fan_in), **({"bias": (fan_out,)} if bias else {})}
    conv.by_shape(node, want)
    return {"in_features": fan_in, "out_features": fan_out, "bias": bias}


@import_pattern("lm_head")
def _lm_head(conv: Converter, node: str, ins: list[str]) -> dict:
    d = conv.g.nodes[node]
    bias = bool(d.get("bias"))  # Phi: logits = x W^T + b, the bias its own (tied or not)
    if d.get("call") != "linear":
        raise conv.refuse(node, f"lm_head via {d.get('call')!r} reads its weight as (in, out)")
    if d["tied_to"] is None:
        conv.by_shape(node, {"weight": (d["vocab"], d["dim"]), **({"bias": (d["vocab"],)} if bias else {})})
    elif len(set(d["params"]) - set(conv.g.nodes[d["tied_to"]]["params"])) != bias:
        raise conv.refuse(node, f"lm_head is tied to {d['tied_to']!r} but reads {d['params']}")
    else:  # the name the lm_head module holds the shared table under (for export_weights)
        own_bias = sorted(set(d["params"]) - set(conv.g.nodes[d["tied_to"]]["params"]))
        if own_bias:
            if conv.shape(own_bias[0]) != (d["vocab"],):
                raise conv.refuse(node, f"lm_head bias {own_bias[0]} has shape {conv.shape(own_bias[0])}, "
                                  f"expected ({d['vocab']},)")
            conv.param_map[node] = {"bias": own_bias[0]}
            conv.parameters[node] = {"bias": conv.named[own_bias[0]]}
        (table,) = [p for p in d["params"] if p not in own_bias]
        names = [table] + [a for a, canonical in conv.rec.meta.get("aliases", {}).items() if canonical == table]
        own = [n for n in names if n.rpartition(".")[0] == d["module_path"]]
        if len(own) != 1:
            raise conv.refuse(node, f"cannot tell which of {names} names the tied lm_head weight")
        conv.tied[node] = {"weight": own[0]}
    return {"dim": d["dim"], "vocab": d["vocab"], "tied_to": d["tied_to"], **({"bias": True} if bias else {})}


@import_pattern("norm")
def _norm(conv: Converter, node: str, ins: list[str]) -> dict:
    d = conv.g.nodes[node]
    if d["eps"] is None:
        raise conv.refuse(node, "norm with no recognisable eps")
    dim, read = d["dim"], d["params"]
    if not read:  # non-parametric: OLMo's F.layer_norm with neither weight nor bias, NanoChat's RMSNorm module
        if d.get("bias") or d.get("weight_form", "none") not in ("none", "w"):
            raise conv.refuse(node, f"a {d.get('kind', '')} norm reads no parameter but is recorded with a bias or "
                              f"weight form {d.get('weight_form')!r}")
        groups = d.get("groups") or max(1, conv.width(node) // dim)
        return {"kind": d["kind"], "dim": dim, "groups": groups, "eps": float(d["eps"]), "weight_form": "none"}
    own = (d["groups"], dim) if d.get("group_weights") else (dim,)  # group_weights: a weight row per head
    if any(conv.shape(p) != own for p in read) or len(read) != 1 + d.get("bias", False):
        raise conv.refuse(node, f"norm of dim {dim} reads {[(p, conv.shape(p)) for p in read]}")
    roles = {"weight": read[0]} if not d["bias"] else _norm_roles(conv, node, read)
    conv.take(node, roles)
    return {k: d[k] for k in ("kind", "dim", "groups", "weight_form", "bias")} | {"eps": float(d["eps"])} \
        | ({"group_weights": True} if d.get("group_weights") else {})


def _norm_roles(conv: Converter, node: str, read: list[str]) -> dict[str, str]:
    """Weight vs bias of a LayerNorm.  A constant row normalises to zero, so the norm module maps it
    to its bias: the parameter equal to that output is the bias.  When the probe cannot decide (the
    module does not take one tensor, or weight == bias), fall back to the names the module registered
    its parameters under -- used for this weight/bias role only, never for structure."""
    d = conv.g.nodes[node]
    module = conv.modules.get(d["module_path"])
    params = [conv.named[p] for p in read]
    for shape in ((1, 1, d["groups"] * d["dim"]), (1, 1, d["groups"], d["dim"])):  # flat or per head
        try:
            with torch.no_grad():
                out = module(torch.zeros(shape, dtype=params[0].dtype, device=params[0].device))
        except (TypeError, RuntimeError, ValueError):
            continue
        if isinstance(out, torch.Tensor) and out.numel() == d["groups"] * d["dim"]:
            row = out.reshape(-1, d["dim"])[0]
            hits = [i for i, p in enumerate(params) if torch.equal(row, p.detach())]
            if len(hits) == 1:
                return {"bias": read[hits[0]], "weight": read[1 - hits[0]]}
            break
    own = {id(p): role for role, p in getattr(module, "_parameters", {}).items() if p is not None}
    roles = {own.get(id(p)): name for p, name in zip(params, read)}
    if set(roles) != {"weight", "bias"}:
        raise conv.refuse(node, f"cannot tell the LayerNorm weight from its bias among {read}")
    return roles


@import_pattern("xielu")
def _xielu(conv: Converter, node: str, ins: list[str]) -> dict:
    """xIELU (Apertus), measured by the recorder (:func:`fuzz.record.contract.measure_xielu`): ``alpha_p`` is the
    scalar whose softplus is the measured ``a_p``, ``alpha_n`` the other one."""
    d = conv.g.nodes[node]
    read = d["params"]
    soft = [float(torch.nn.functional.softplus(conv.named[p].detach().double()).reshape(())) for p in read]
    hits = [i for i, s in enumerate(soft) if abs(s - d["a_p"]) <= 1e-9 * max(1.0, abs(d["a_p"]))]
    if len(read) != 2 or len(hits) != 1:
        raise conv.refuse(node, f"xIELU reads {read}: cannot tell alpha_p from alpha_n")
    conv.take(node, {"alpha_p": read[hits[0]], "alpha_n": read[1 - hits[0]]})
    return {"beta": float(d["beta"]), "eps": float(d["eps"])}


@import_pattern("router")
def _router(conv: Converter, node: str, ins: list[str]) -> list[Entry]:
    """A recorded router reads its own weight: a ``linear`` producing the logits, then the ``router``."""
    d = conv.g.nodes[node]
    for dst in conv.g.successors(node):
        if conv.g.nodes[dst]["op"] != "experts":
            raise conv.refuse(node, f"router output read by {conv.g.nodes[dst]['op']} {dst!r}, not experts")
    proj = f"{node}_proj"
    while proj in conv.g:
        proj += "_"
    want = {"weight": (d["n_experts"], d["in_features"]), **({"bias": (d["n_experts"],)} if d["bias"] else {})}
    conv.by_shape(node, want)
    conv.param_map[proj] = conv.param_map.pop(node)
    conv.parameters[proj] = conv.parameters.pop(node)
    linear = {"in_features": d["in_features"], "out_features": d["n_experts"], "bias": d["bias"]}
    router = {"n_experts": d["n_experts"], "top_k": d["top_k"], "renormalize": d["renormalize"]}
    measured = measure_router(conv, node, conv.parameters[proj], router)
    if measured is not None:
        router, bias = measured
        if bias is not None:  # a buffer in the source (never trained): the layout's router owns a copy
            conv.parameters[node] = {"e_score_correction_bias": torch.nn.Parameter(bias, requires_grad=False)}
    return [(proj, "linear", linear, ins), (node, "router", router, [proj])]


_ROUTER_PROBE_TOKENS = 96
_ROUTER_TIE = 1e-3  # probe tokens whose candidate choice margin is below this are not compared
_ROUTER_MATCH = 1e-4  # relative agreement of the dense routing weights (the source may route in float32)


def _module_routing(module, x: torch.Tensor, n_experts: int, extra: tuple = ()) -> tuple[torch.Tensor, int] | None:
    """The dense ``(T, E)`` routing weights a router module returns for ``x (T, H)`` (and ``extra`` arguments)
    and its top-k: from its outputs, the integer ``(T, k)`` indices and the float ``(T, k)`` weights; None
    when the module cannot be run that way."""
    for inp in (x, x[None]):
        try:
            with torch.no_grad():
                out = module(inp, *extra)
        except Exception:  # noqa: BLE001 - any failure means "cannot probe this way"
            continue
        outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(o, torch.Tensor)]
        outs = [o.reshape(x.shape[0], -1) for o in outs if o.numel() % x.shape[0] == 0 and o.numel()]
        idx = [o for o in outs if not o.is_floating_point()]
        val = [o for o in outs if o.is_floating_point()]
        if len(idx) == 1 and any(v.shape == idx[0].shape for v in val):
            # the last one: with top_k == n_experts the logits (returned first) have the weights' shape too
            w = [v for v in val if v.shape == idx[0].shape][-1]
            return torch.zeros(x.shape[0], n_experts, dtype=torch.float64).scatter(
                -1, idx[0].long(), w.double()), idx[0].shape[-1]
    return None


def _router_candidates(module, d: dict, bias: torch.Tensor | None):
    """Router parameter sets to test against the module: score, correction bias, groups, renormalisation
    (the module's ``n_group`` / ``topk_group`` attributes first when it has them)."""
    e, k = d["n_experts"], d["top_k"]
    groups = [(g, tg) for g in range(1, e + 1) if e % g == 0 and (g == 1 or e // g >= 2)
              for tg in range(1, g + 1) if k <= tg * (e // g)]
    named = (getattr(module, "num_group", getattr(module, "n_group", None)), getattr(module, "topk_group", None))
    groups.sort(key=lambda gt: (gt != named, gt[0] > 1, -gt[1]))
    for score in ("softmax", "sigmoid"):
        for corrected in ((False, True) if bias is not None else (False,)):
            for g, tg in groups:
                for renorm in (d["renormalize"], not d["renormalize"]):
                    yield {"n_experts": e, "top_k": k, "renormalize": renorm, "score": score,
                           "correction_bias": corrected, "n_group": g, "topk_group": tg, "scaling": 1.0}


def measure_router(conv: Converter, node: str, proj: dict, base: dict):
    """``(router params, correction bias or None)`` that reproduce the source router module on random probe
    tokens (score function, correction bias, group-limited top-k, renormalisation and the routed scaling
    factor, all measured); None when the module cannot be probed (the import check still decides)."""
    d = conv.g.nodes[node]
    module = conv.modules.get(d["module_path"])
    weight = proj["weight"]
    if module is None:
        return None
    gen = torch.Generator().manual_seed(0)
    x = 2.0 * torch.randn(_ROUTER_PROBE_TOKENS, d["in_features"], generator=gen, dtype=torch.float64)
    measured = _module_routing(module, x.to(weight.dtype), d["n_experts"])
    bias = None
    if measured is None:  # HY-V3: the correction bias is the parent block's buffer, passed in as an argument
        parent = conv.modules.get(d["module_path"].rpartition(".")[0])
        held = [b for b in getattr(parent, "_buffers", {}).values() if isinstance(b, torch.Tensor)
                and b.shape == (d["n_experts"],) and b.is_floating_point()]
        if len(held) == 1:
            bias = held[0].detach().to(torch.float64).clone()
            measured = _module_routing(module, x.to(weight.dtype), d["n_experts"], (held[0],))
    if measured is None:
        return None
    want, top_k = measured  # the recorded first topk may be a group score's (top-2 per group)
    if not 1 <= top_k <= d["n_experts"]:
        return None
    base = {**base, "top_k": top_k}
    buffers = [b for b in module._buffers.values() if isinstance(b, torch.Tensor) and b.shape == (d["n_experts"],)
               and b.is_floating_point()]
    if bias is None:
        bias = buffers[0].detach().to(torch.float64).clone() if len(buffers) == 1 else None
    with torch.no_grad():
        logits = torch.nn.functional.linear(x, weight.detach().double(),
                                            proj["bias"].detach().double() if "bias" in proj else None)
    for cand in _router_candidates(module, base, bias):
        params = spec("router").normalise(node, cand)
        router = MODULES["router"](node, params, "exact")
        if params["correction_bias"]:
            router.register_buffer("e_score_correction_bias", bias)
        with torch.no_grad():
            got = router(logits)
        ok = torch.ones(x.shape[0], dtype=torch.bool) if router.last_margin is None \
            else router.last_margin > _ROUTER_TIE
        if ok.sum() < x.shape[0] // 2 or not torch.equal(got[ok] != 0, want[ok] != 0):
            continue
        ratio = want[ok].sum(-1) / got[ok].sum(-1)
        scaling = float(ratio.median())
        named = getattr(module, "routed_scaling_factor", None)
        for exact in ((float(named),) if isinstance(named, (int, float)) and named > 0 else ()) + (1.0,):
            if math.isclose(exact, scaling, rel_tol=_ROUTER_MATCH):  # the factor as written, not re-measured
                scaling = exact
                break
        if not (scaling > 0 and torch.allclose(got[ok] * scaling, want[ok], rtol=_ROUTER_MATCH,
                                                atol=_ROUTER_MATCH * float(want.abs().max()))):
            continue
        params = {**params, "scaling": scaling}
        return params, (bias if params["correction_bias"] else None)
    raise conv.refuse(node, "router: no softmax / sigmoid router (with or without a correction bias, "
                      "group-limited top-k and renormalisation, times a routed scaling factor) reproduces "
                      f"module {d['module_path']} on {x.shape[0]} probe tokens")


@import_pattern("experts")
def _experts(conv: Converter, node: str, ins: list[str]) -> dict:
    """Roles of the 3-D parameters from the shapes the dataflow implies: ``x`` (width H) is multiplied by
    ``gate_up_proj[e] (2I, H)`` (or, transposed, ``(H, 2I)``), the product of width I by ``down_proj[e]
    (H, I)`` (transposed ``(I, H)``); 2-D biases ``(E, 2I)`` and ``(E, H)``.  Whether gate and up are
    interleaved and which GLU the experts compute (plain ``act(gate) * up`` or GPT-OSS' clamped SwiGLU)
    are measured against the experts module (:func:`measure_experts`)."""
    d = conv.g.nodes[node]
    if len(ins) != 2 or conv.g.nodes[ins[1]]["op"] != "router":
        raise conv.refuse(node, f"experts read {ins}; expected the hidden states and a router")
    read = d["params"]
    shapes = {p: conv.shape(p) for p in read}
    hidden = conv.width(ins[0])
    mats = [p for p in read if len(shapes[p]) == 3]
    vecs = [p for p in read if len(shapes[p]) == 2]
    if len(mats) != 2 or len(vecs) not in (0, 2) or len(read) != len(mats) + len(vecs):
        raise conv.refuse(node, f"experts read {shapes}; expected two 3-D tensors (and two 2-D biases)")

    def fits(gu, dn, transposed):
        if transposed:
            gu, dn = (gu[0], gu[2], gu[1]), (dn[0], dn[2], dn[1])
        return gu[0] == dn[0] and gu[2] == hidden and dn[1] == hidden and gu[1] == 2 * dn[2]

    found = [(gu, dn, t) for t in (False, True) for gu, dn in (mats, mats[::-1]) if fits(shapes[gu], shapes[dn], t)]
    if len(found) != 1:
        raise conv.refuse(node, f"experts weights {shapes} are not gate_up_proj (E, 2I, {hidden}) and down_proj "
                          f"(E, {hidden}, I), nor their transposed (E, in, out) forms")
    gate_up, down, transposed = found[0]
    e = shapes[gate_up][0]
    inter = shapes[gate_up][2 if transposed else 1] // 2
    roles = {"gate_up_proj": gate_up, "down_proj": down}
    bias_options = [{}]
    if vecs:
        bias_options = [{"gate_up_proj_bias": a, "down_proj_bias": b} for a, b in (vecs, vecs[::-1])
                        if shapes[a] == (e, 2 * inter) and shapes[b] == (e, hidden)]
        if not bias_options:
            raise conv.refuse(node, f"experts biases {({v: shapes[v] for v in vecs})} are not gate_up_proj_bias "
                              f"({e}, {2 * inter}) and down_proj_bias ({e}, {hidden})")
    base = {"n_experts": e, "hidden": hidden, "intermediate": inter, "transposed": transposed, "bias": bool(vecs)}
    measured = measure_experts(conv, node, base, roles, bias_options)
    if measured is None:  # the module cannot be probed: only the plain form is imported
        if vecs or transposed or d.get("act") not in ACTIVATIONS:
            raise conv.refuse(node, f"experts with {'biases, ' if vecs else ''}"
                              f"{'transposed storage, ' if transposed else ''}activation {d.get('act')!r}: "
                              f"the module could not be probed to tell its gate/up layout and GLU")
        conv.take(node, roles)
        return {**base, "act": d["act"]}
    params, roles = measured
    conv.take(node, roles)
    return params


_EXPERT_MATCH = 1e-6  # relative agreement with the experts module on the probe (a variant misses by O(1))


def _expert_candidates(module, recorded_act: str | None):
    acts = [a for a in (recorded_act,) if a in ACTIVATIONS] + [a for a in ACTIVATIONS if a != recorded_act]
    if recorded_act == "clamped_swiglu":
        acts = []
    clamp = {}
    own = getattr(module, "p", None)  # a GraphModel's experts keep them in their layout params
    limit, alpha = (own.get("limit"), own.get("alpha")) if isinstance(own, dict) else \
        (getattr(module, "limit", None), getattr(module, "alpha", None))
    if isinstance(limit, (int, float)) and isinstance(alpha, (int, float)) and limit > 0 and alpha > 0:
        clamp = {"limit": float(limit), "alpha": float(alpha)}
    for act in acts + (["clamped_swiglu"] if clamp else []):
        for interleaved in (False, True):
            yield {"act": act, "interleaved": interleaved, **(clamp if act == "clamped_swiglu" else {})}


def measure_experts(conv: Converter, node: str, base: dict, roles: dict, bias_options: list[dict]):
    """``(params, roles)`` of the experts variant (activation or clamped SwiGLU, interleaved or not, which
    2-D tensor is which bias) that reproduces the source experts module on probe tokens routed to every
    expert; None when the module cannot be called as ``experts(x, top_k_index, top_k_weights)``."""
    d = conv.g.nodes[node]
    module = conv.modules.get(d["module_path"])
    if module is None:
        return None
    e, h = base["n_experts"], base["hidden"]
    some = conv.named[roles["gate_up_proj"]]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8 * e, h, generator=gen, dtype=torch.float64)
    idx = torch.arange(8 * e)[:, None] % e
    w = 0.5 + torch.rand(8 * e, 1, generator=gen, dtype=torch.float64)
    try:
        with torch.no_grad():
            want = module(x.to(some.dtype), idx, w.to(some.dtype))
    except Exception:  # noqa: BLE001 - a module with another calling convention
        return None
    if not isinstance(want, torch.Tensor) or want.shape != x.shape:
        return None
    want = want.double()
    dense = torch.zeros(8 * e, e, dtype=torch.float64).scatter(-1, idx, w)
    for biases in bias_options:
        for cand in _expert_candidates(module, d.get("act")):
            params = spec("experts").normalise(node, {**base, **cand})
            mod = MODULES["experts"](node, params, "exact")
            for role, name in {**roles, **biases}.items():
                mod.register_buffer(role, conv.named[name].detach().double())
            with torch.no_grad():
                got = mod(x, dense)
            if torch.allclose(got, want, rtol=_EXPERT_MATCH, atol=_EXPERT_MATCH * float(want.abs().max())):
                return params, {**roles, **biases}
    raise conv.refuse(node, f"experts: no GLU of {ACTIVATIONS} or clamped SwiGLU, gate/up split or interleaved, "
                      f"reproduces module {d['module_path']} on {x.shape[0]} probe tokens")

# ====================================================================== ops without parameters
@import_pattern("rope")
def _rope(conv: Converter, node: str, ins: list[str]) -> dict:
    d = conv.g.nodes[node]
    conv.no_params(node)
    if d.get("reversed"):
        raise conv.refuse(node, "RoPE rotating by -theta (rotate_half written cat(x2, -x1), NanoChat): the layout's "
                          "rope rotates by +theta")
    p = {k: d[k] for k in ("n_heads", "head_dim", "rotary_dim", "style")}
    key = (d["module_path"], d["rotary_dim"])
    if key not in conv.thetas:
        conv.thetas[key] = rope_params(conv, node, d["rotary_dim"])
    return {**p, **conv.thetas[key]}


@import_pattern("attention")
def _attention(conv: Converter, node: str, ins: list[str]) -> dict:
    conv.no_params(node)
    _check_attention(conv, node)
    p = {k: conv.g.nodes[node][k] for k in ("n_heads", "n_kv_heads", "head_dim")}
    return {**p, **_score_modifiers(conv, node)}


def _score_modifiers(conv: Converter, node: str) -> dict:
    """The scale and soft-cap the recording shows: sdpa's ``scale`` argument, or the eager score chain
    ``Q K^T * a [/ c, tanh, * c] (+ mask) -> softmax`` (a product of scales before the soft-cap is the scale;
    the scale right before ``tanh`` must be ``1 / c`` with ``c`` the one right after).  Anything else
    between the scores and the softmax is refused; a mask is left to the import check, which measures it.
    Only the modifiers that differ from the defaults are returned (``head_dim ** -0.5``, no soft-cap)."""
    d = conv.g.nodes[node]
    head = d["head_dim"] ** -0.5
    if "score_chain" not in d:  # sdpa: the scale is an argument (None = head_dim ** -0.5), no soft-cap
        scale = d.get("sdpa_scale")
        return {} if scale is None or scale == head else {"scale": float(scale)}
    chain = d["score_chain"]
    pre = [i for i, step in enumerate(chain) if step[0] in ("tanh", "softmax")]
    first = pre[0] if pre else len(chain)
    factors = [step[1] for step in chain[:first] if step[0] == "scale"]
    out: dict = {}
    if chain[first:first + 1] == [["tanh"]]:
        after = chain[first + 1:first + 2]
        if not factors or not after or after[0][0] != "scale" or not math.isclose(
                factors[-1] * after[0][1], 1.0, rel_tol=1e-12):
            raise conv.refuse(node, f"attention scores go through tanh other than a soft-cap c * tanh(s / c) "
                              f"(score chain {chain})")
        out["softcap"] = float(after[0][1])
        factors = factors[:-1]
        rest = chain[first + 2:]
    else:
        rest = chain[first:]
    if any(step[0] in ("scale", "tanh") for step in rest):
        raise conv.refuse(node, f"attention scores are scaled or soft-capped after the mask or the softmax "
                          f"(score chain {chain})")
    scale = math.prod(factors) if factors else 1.0
    if not factors:
        raise conv.refuse(node, f"attention scores are never scaled (score chain {chain})")
    if not math.isclose(scale, head, rel_tol=1e-15):
        out["scale"] = float(scale)
    return out


def _check_attention(conv: Converter, node: str) -> None:
    """Causal softmax attention with ``head_dim ** -0.5`` scaling and no soft-cap (the recorder sees
    neither, so they are read from the attention module).  A sliding window or chunked span is left to
    :func:`check_import`, which measures it: a module attribute need not exist (Mistral's attention has
    none) nor say what the mask does."""
    d = conv.g.nodes[node]
    module = conv.modules.get(d["module_path"])
    one_query = conv.rec.meta["input_shape"][-1] == 1  # sdpa drops is_causal for a single position
    if d.get("causal") is False and d.get("masked") is False and not one_query \
            or getattr(module, "is_causal", True) is False:
        raise conv.refuse(node, "attention is neither causal nor masked (bidirectional)")
    if _uses_alibi(conv):
        raise conv.refuse(node, "ALiBi position bias on the attention scores: the layout's attention has ALiBi "
                          "slopes, but the importer does not measure them from a recording yet")
    if any(isinstance(getattr(module, name, None), torch.nn.Parameter) for name in ("sinks", "s_aux")):
        raise conv.refuse(node, "attention sinks (a learned per-head logit in the softmax denominator): the "
                          "layout's attention has sinks, but the importer does not read them from a recording yet")
    if getattr(module, "attn_logit_softcapping", None) is not None and "score_chain" not in d:
        raise conv.refuse(node, "attention logits are soft-capped and the recorded attention shows no soft-cap")


@import_pattern("softcap")  # recorded as scale(1 / c) -> tanh -> scale(c), folded by rewrites.fold_softcaps
def _softcap(conv: Converter, node: str, ins: list[str]) -> dict:
    conv.no_params(node)
    return {"cap": float(conv.g.nodes[node]["cap"])}


def _uses_alibi(conv: Converter) -> bool:
    """Whether the source's config switches ALiBi on (BLOOM always; MPT ``attn_config.alibi``; Falcon ``alibi``):
    only to name the refusal, the import check would refuse the import anyway."""
    cfg = getattr(conv.model, "config", None)
    if cfg is None:
        return False
    attn_cfg = getattr(cfg, "attn_config", None)
    return (getattr(cfg, "model_type", None) == "bloom" or getattr(cfg, "alibi", False) is True
            or getattr(attn_cfg, "alibi", False) is True)


@import_pattern("gate")  # recorded as mul(x, act(g)), folded by rewrites.fold_gates
def _gate(conv: Converter, node: str, ins: list[str]) -> dict:
    d = conv.g.nodes[node]
    return {"act": d["act"], "n_heads": d["n_heads"]}


@import_pattern("scale")
def _scale(conv: Converter, node: str, ins: list[str]) -> dict:
    conv.no_params(node)
    return {"factor": float(conv.g.nodes[node]["factor"])}


@import_pattern("act")
def _act(conv: Converter, node: str, ins: list[str]) -> dict:
    d = conv.g.nodes[node]
    conv.no_params(node)
    if str(d["fn"]).startswith("unknown:"):  # a parameter-free module that is none of them (contract.py)
        raise conv.refuse(node, f"activation module {d['fn'][8:]} computes none of the act op's functions "
                                f"{ACTIVATIONS}")
    if d["fn"] not in ACTIVATIONS:
        raise conv.refuse(node, f"activation {d['fn']!r} is none of {ACTIVATIONS}")
    return {"fn": d["fn"]}


@import_pattern("add")
@import_pattern("mul")
def _elementwise(conv: Converter, node: str, ins: list[str]) -> dict:
    conv.no_params(node)
    widths = [conv.width(i) for i in ins]
    if len(set(widths)) != 1:
        raise conv.refuse(node, f"{conv.g.nodes[node]['op']} broadcasts inputs of widths {widths}")
    return {}


@import_pattern("head_slice", recorded="opaque")
def _head_slice(conv: Converter, node: str, ins: list[str]) -> dict:
    """A slice of the last axis of a ``(.., heads, head_dim)`` view: ``x[..., a:b]``, a chunk or a split.
    Any other opaque call is refused."""
    d = conv.g.nodes[node]
    if d.get("call") in _ROUTING_CALLS:
        raise conv.refuse(node, f"opaque op {d.get('call')!r}: a MoE router whose softmax / top-k / max was not "
                          f"contracted into a router (one written across modules, e.g. a correction bias held by a "
                          f"child module, or a sparsemixer router); not in the layout's router vocabulary")
    if d.get("call") not in _SLICES:
        if any(conv.g.nodes[i]["op"] == "tokens" for i in ins):  # CPM-Ant: segment = (ids != 0)
            raise conv.refuse(node, f"opaque op {d.get('call')!r} reads the token ids besides the embedding lookup: "
                              f"an ids-dependent mask, segment or position (e.g. CPM-Ant's segments of non-zero "
                              f"ids); the layout reads the ids once, in the token embedding")
        if d.get("call") in ("zeros_like", "ones_like", "full_like", "empty_like"):  # Git's token_type_ids
            raise conv.refuse(node, f"opaque op {d.get('call')!r}: a tensor built from an activation's shape inside "
                              f"the forward (token-type ids or a mask prepared in the model, e.g. Git's image-text "
                              f"mask); not in the layout's vocabulary")
        raise conv.refuse(node, f"opaque op {d.get('call')!r}")
    conv.no_params(node)
    (src,) = ins
    in_shape = conv.g.edges[src, node]["shape"]
    head_dim = int(in_shape[-1])
    heads = conv.width(src) // head_dim
    length = int(d["shape"][-1])
    picked = _picked_within_head(conv, node, in_shape) if d["call"] == "getitem" else None
    if picked is not None:  # x.view(.., heads, k, d)[..., i, :]: channels [i d, (i + 1) d) of each head's k d
        head_dim, start = picked
        heads = conv.width(src) // head_dim
    elif d["call"] == "getitem":
        start = _getitem_start(conv, node, in_shape, length)
    else:
        start = _split_start(conv, node, src)
    if start is None or heads * length != conv.width(node):
        raise conv.refuse(node, f"opaque op {d['call']!r} ({d.get('key', 'output %s' % d.get('output', 0))}) "
                          f"is not a slice of the last axis")
    return {"n_heads": heads, "head_dim": head_dim, "start": start, "length": length}


def _picked_within_head(conv: Converter, node: str, in_shape: list[int]) -> tuple[int, int] | None:
    """``(head_dim, start)`` of ``x[..., i, :]`` on a token-major ``(batch, seq, [heads,] k, d)`` view (Persimmon's
    fused qkv, Moshi's GLU halves): each head's ``k d`` channels, of which ``[i d, (i + 1) d)`` are picked; None for
    any other key."""
    parts = [p.strip() for p in conv.g.nodes[node].get("key", "").split(",")]
    if len(in_shape) not in (4, 5) or len(parts) != 3 or parts[0] != "..." or parts[2] != ":" \
            or int(in_shape[0]) * int(in_shape[1]) != conv.n_tokens:
        return None
    try:
        i = int(parts[1])
    except ValueError:
        return None
    k, d = int(in_shape[-2]), int(in_shape[-1])
    i = i + k if i < 0 else i
    return (k * d, i * d) if 0 <= i < k else None


def _getitem_start(conv: Converter, node: str, in_shape: list[int], length: int) -> int | None:
    parts = [p.strip() for p in conv.g.nodes[node].get("key", "").split(",")]
    lead, last = parts[:-1], parts[-1]
    if any(p not in ("...", ":") for p in lead) or ("..." not in lead and len(parts) != len(in_shape)):
        return None
    bounds = last.split(":")
    if len(bounds) != 2:
        return None
    try:
        a, b = (int(x) if x else None for x in bounds)
    except ValueError:
        return None
    span = range(int(in_shape[-1]))[slice(a, b)]
    return span.start if len(span) == length else None


def _split_start(conv: Converter, node: str, src: str) -> int | None:
    """Output ``i`` of a chunk / split starts where outputs ``0 .. i-1`` (recorded siblings) end."""
    d = conv.g.nodes[node]
    i = d.get("output", 0)
    call_id = d["index"] - i
    siblings = {conv.g.nodes[s].get("output", 0): s for s in conv.g.successors(src)
                if conv.g.nodes[s].get("call") == d["call"]
                and conv.g.nodes[s]["index"] - conv.g.nodes[s].get("output", 0) == call_id}
    if any(j not in siblings for j in range(i)):
        return None
    return sum(int(conv.g.nodes[siblings[j]]["shape"][-1]) for j in range(i))


# ====================================================================== ops no model contains
refuse_import("wht_in", "only the T1 wht-scale transform makes it; a transformers model has no such module")
refuse_import("gamma_norm", "only the T5 spectral-PCA transform makes it; a transformers model has no such module")
