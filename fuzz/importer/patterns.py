"""Importer patterns: one per layout op, each converting the recorded node(s) of that op.

``@import_pattern(op)`` registers ``convert(converter, node, inputs)`` for the layout op ``op`` of
:data:`fuzz.ops.SPECS` (``recorded=`` when the recorder names the op otherwise); it returns the layout
params of ``node`` (one node of kind ``op``) or a list of ``(id, op, params, inputs)`` entries.  An op that
no transformers model contains registers :func:`refuse_import` with the reason instead.

Conversion rules (recorded op -> layout op):

* ``embedding``, ``lm_head`` (``tied_to`` kept), ``linear`` (``F.linear``, or ``x @ W.T`` with ``W`` stored
  ``(out, in)`` -- Falcon's FalconLinear, told by the recorder comparing values; ``x @ W`` and ``addmm`` read
  ``W`` as ``(in, out)``), ``attention``, ``add``, ``mul``, ``act``, ``scale``: direct;
  parameter roles by shape (the 2-D one is the weight, the 1-D one the bias);
* ``norm``: kind / dim / groups / eps / weight_form / bias; a LayerNorm's weight and bias are told
  apart by feeding the norm module a constant row (it normalises to zero, so the output is the bias);
* ``rope``: ``theta`` and the scaling (linear / dynamic / yarn / llama3 / longrope) are measured from the
  model (:mod:`fuzz.importer.rope`); any other RoPE is refused;
* ``attention``: must be causal; its scale and soft-cap are read from the recording (sdpa's ``scale``
  argument, or the eager score chain ``Q K^T * a [/ c, tanh, * c]``; no factor at all is scale 1.0, GPT-Neo;
  ``baddbmm``'s alpha), never from config attributes; ALiBi slopes are fitted to the constants the chain adds
  (MPT, BLOOM); sinks are the one parameter the chain reads (a sink column before the softmax, or GraniteSWA's
  ``sigmoid(logsumexp - sink)`` output scale); two maps over the same queries combined as DiffLlama's
  ``first - lam * second`` are one ``differential`` attention (:func:`fuzz.importer.rewrites.fold_differential_attention`),
  any other combination is refused; a sliding window is measured after conversion (:mod:`fuzz.importer.window`: the attention's
  ``window``), a chunked span is refused by the check, by measurement;
* ``softcap``: ``scale(1 / c) -> tanh -> scale(c)`` (Gemma2's final-logit soft-cap);
* ``router`` (it reads its own weight): split into a ``linear`` ``<router id>_proj`` and a ``router``;
* ``experts``: ``gate_up_proj (E, 2I, H)`` and ``down_proj (E, H, I)`` (or transposed ``(E, in, out)``) and
  the biases ``(E, 2I)`` / ``(E, H)`` told apart by shape; interleaved gate/up and the GLU (an activation
  or GPT-OSS' clamped SwiGLU) measured against the module;
* ``router``: its score function (softmax, sigmoid, Phimoe's sparsemixer and its threshold), correction
  bias, group-limited top-k, renormalisation and routed scaling factor measured against the module
  (:func:`measure_router`), called as in the recording (a correction bias its parent passes in included); a
  correction bias read besides the projection (a child module's parameter, the parent's) is the router's;
* the clamped SwiGLU written out (``clamp`` / ``sigmoid(alpha g)`` / ``up + 1``) -> ``clamped_glu``;
* a routing op left uncontracted is refused by the feature the dataflow shows (mixture of attention heads,
  sparsemixer, an unrecognised router);
* ``x * sigmoid(g)`` / ``x * softplus(g)`` -> ``gate``; a last-axis slice (``x[..., a:b]``, ``chunk``,
  ``split``) of a fused projection, or a selection on a head axis of its per-token view that the recorder
  measured as one (``flat_slice``: Falcon's ``split([h, 1, 1], dim=-2)``, BLOOM's ``[..., k, :]``) -> ``head_slice``;
* a two-input last-axis ``cat`` (or slice copies into a ``new_empty`` tensor, DeepSeek-V3's ``expand_kv``) ->
  ``head_concat`` (``shared_b`` when the second input is one head the source expanded: MLA's ``k_pe``);
  a per-position factor (Mistral4's Llama-4 attention temperature tuning) is refused by name;
* exact rewrites first (:mod:`fuzz.importer.rewrites`): ``scale`` by 1.0 is dropped, ``(a + b) + c``
  becomes one three-input ``add``, the written-out clamped SwiGLU one ``clamped_glu``.

Anything else (an ``opaque`` node, a parameter read by an op that owns none) raises
:class:`~fuzz.errors.BadInput` naming the module path, the torch call and the recorded node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import networkx as nx
import torch

from ..materialize import MODULES
from ..ops import ACTIVATIONS, registrar, spec
from ..record.contract import weightless_norm
from .rewrites import last_axis_slice
from .rope import rope_params, sin_sign
from .temperature import PARAMS as TEMPERATURE_PARAMS

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
    vocab = conv.g.nodes[ins[0]]["vocab"]
    if lookups and lookups[0][1] != node:  # Gemma4 / Gemma3n embed_tokens_per_layer: a second table of the ids
        return _per_layer_embedding(conv, node, ins, lookups[0][1], vocab)
    if d["vocab"] != vocab:  # the recorder reads the id range off the table (Moshi's extra row included)
        raise conv.refuse(node, f"the token embedding has {d['vocab']} rows for {vocab} token ids; the layout's "
                          f"embedding table has one row per id")
    for c in conv.g.successors(node):  # DeepSeek-V4 / HY-V4 mHC: the stream widened to k copies of the hidden width
        shape = conv.g.nodes[c]["shape"]
        if len(shape) >= 4 and shape[-1] == d["dim"] and shape[-2] > 1 and conv.width(c) == shape[-2] * d["dim"]:
            raise conv.refuse(c, f"hyper-connections: the token embedding is widened to {shape[-2]} residual streams "
                              f"of width {d['dim']} ({conv.g.nodes[c].get('call', conv.g.nodes[c]['op'])} of shape "
                              f"{list(shape)}); the layout has one residual stream")
    conv.by_shape(node, {"weight": (d["vocab"], d["dim"])})
    return {"vocab": d["vocab"], "dim": d["dim"]}


def _per_layer_embedding(conv: Converter, node: str, ins: list[str], first: str, vocab: int) -> list:
    """A second table of the token ids (Gemma4's ``embed_tokens_per_layer``): a ``per_layer_embedding`` whose
    output must never meet the residual stream directly: every path from it runs through scales, adds and
    slices into a product (``act(gate h) * ple_l``); anything else (a second stream, a summed embedding) is refused
    naming per-layer input embeddings.  The import check decides the rest."""
    d = conv.g.nodes[node]
    where = conv.g.nodes[first]["module_path"]
    if d["vocab"] != vocab:
        raise conv.refuse(node, f"per-layer input embeddings (Gemma4): a second token-id table of {d['vocab']} rows "
                          f"for {vocab} token ids")
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        for c in conv.g.successors(n):
            op = conv.g.nodes[c]["op"]
            if c in seen or op == "mul":
                continue
            if op not in ("scale", "add", "opaque") or op == "opaque" and conv.g.nodes[c].get("call") not in _SLICES:
                raise conv.refuse(c, f"per-layer input embeddings (Gemma4): the second token-id table "
                                  f"({d['vocab']} x {d['dim']}, besides {where}) reaches {op} "
                                  f"{conv.g.nodes[c].get('call') or ''}, not a per-layer product")
            seen.add(c)
            stack.append(c)
    conv.by_shape(node, {"weight": (d["vocab"], d["dim"])})
    return [(node, "per_layer_embedding", {"vocab": d["vocab"], "dim": d["dim"]}, ins)]


@import_pattern("per_layer_embedding")
def _per_layer_table(conv: Converter, node: str, ins: list[str]) -> list:
    """The recorder records Gemma4's per-layer table as a second ``embedding`` of the ids, which the embedding
    pattern converts (:func:`_per_layer_embedding`); a node recorded as this op converts the same way."""
    first = [n for n in conv.g.successors(ins[0]) if conv.g.nodes[n]["op"] == "embedding"] if ins else []
    if not first:
        raise conv.refuse(node, "per-layer input embeddings (Gemma4) without a token embedding of the same ids")
    return _per_layer_embedding(conv, node, ins, first[0], conv.g.nodes[ins[0]]["vocab"])


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
    if call != "linear" and not d.get("weight_transposed"):  # x @ W.T with W stored (out, in) is F.linear
        raise conv.refuse(node, f"linear via {call!r} reads its weight as (in, out); the layout's linear "
                          f"is F.linear with an (out, in) weight")
    heads = d.get("head_bias")  # one bias value per head, folded by rewrites.fold_bias_adds (Beam's gate_bias)
    want = {"weight": (fan_out, fan_in), **({"bias": (heads or fan_out,)} if bias else {})}
    conv.by_shape(node, want)
    if heads:  # the layout's bias is that value repeated over each head's channels (a copy, read back on export)
        name = conv.param_map[node]["bias"]
        conv.head_biases[name] = heads
        conv.parameters[node]["bias"] = torch.nn.Parameter(
            conv.named[name].detach().repeat_interleave(fan_out // heads), requires_grad=False)
    return {"in_features": fan_in, "out_features": fan_out, "bias": bias}


@import_pattern("lm_head")
def _lm_head(conv: Converter, node: str, ins: list[str]) -> dict:
    d = conv.g.nodes[node]
    bias = bool(d.get("bias"))
    if d.get("call") != "linear":
        raise conv.refuse(node, f"lm_head via {d.get('call')!r} reads its weight as (in, out)")
    if d["tied_to"] is None:
        conv.by_shape(node, {"weight": (d["vocab"], d["dim"]), **({"bias": (d["vocab"],)} if bias else {})})
    else:
        shared = set(conv.g.nodes[d["tied_to"]]["params"])
        own_bias = [p for p in d["params"] if p not in shared]
        if set(d["params"]) - set(own_bias) != shared or len(own_bias) != int(bias) or bias and conv.shape(
                own_bias[0]) != (d["vocab"],):
            raise conv.refuse(node, f"lm_head is tied to {d['tied_to']!r} but reads {d['params']}")
        if bias:  # the shared table and a bias of the head's own
            conv.param_map[node] = {"bias": own_bias[0]}
            conv.parameters[node] = {"bias": conv.named[own_bias[0]]}
        # the name the lm_head module holds the shared table under (for export_weights)
        (table,) = shared
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
        params = {"kind": d["kind"], "dim": dim, "groups": groups, "eps": float(d["eps"]), "weight_form": "none"}
        return {**params, **({"keep_dtype": True} if _keeps_dtype(conv, node, params) else {})}
    own = (d["groups"], dim) if d.get("group_weights") else (dim,)  # group_weights: a weight row per head
    if any(conv.shape(p) != own for p in read) or len(read) != 1 + d.get("bias", False):
        raise conv.refuse(node, f"norm of dim {dim} reads {[(p, conv.shape(p)) for p in read]}")
    roles = {"weight": read[0]} if not d["bias"] else _norm_roles(conv, node, read)
    conv.take(node, roles)
    return {k: d[k] for k in ("kind", "dim", "groups", "weight_form", "bias")} | {"eps": float(d["eps"])} \
        | ({"group_weights": True} if d.get("group_weights") else {})


def _keeps_dtype(conv: Converter, node: str, params: dict) -> bool:
    """Whether a weight-free RMSNorm module computes in the model's float64 (torch's ``nn.RMSNorm``: DiffLlama's
    groupnorm), measured: on a float64 probe its output is the float64 norm to 1e-14 and not the float32-upcast one
    (transformers' RMSNorm modules, NanoChat's norm), so ``transformers`` numerics keep its dtype."""
    module = conv.modules.get(conv.g.nodes[node]["module_path"])
    if params["kind"] != "rms" or module is None:
        return False
    if hasattr(module, "node_id") and isinstance(getattr(module, "p", None), dict):  # a GraphModel's norm says it
        return bool(module.p.get("keep_dtype"))
    x = torch.randn(1, 3, params["groups"] * params["dim"], generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64) * 3.0
    for shape in (x.shape, (1, 3, params["groups"], params["dim"])):
        try:
            with torch.no_grad():
                y = module(x.reshape(shape))
        except (TypeError, RuntimeError, ValueError):
            continue
        if not isinstance(y, torch.Tensor) or y.dtype != torch.float64 or y.numel() != x.numel():
            continue
        want = {}
        for keep in (True, False):
            mod = MODULES["norm"](node, spec("norm").normalise(node, {**params, "keep_dtype": keep}), "transformers")
            with torch.no_grad():
                want[keep] = mod(x)
        y = y.reshape(x.shape)
        return bool(torch.allclose(y, want[True], rtol=1e-14, atol=1e-14)) \
            and not bool(torch.allclose(y, want[False], rtol=1e-12, atol=1e-12))
    return False


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
    """A recorded router reads its own weight: a ``linear`` producing the logits, then the ``router``.  The
    other parameters it reads (E numbers: a correction bias held by a child module or passed in by the
    parent) are the router's ``e_score_correction_bias`` when the measurement finds one."""
    d = conv.g.nodes[node]
    for dst in conv.g.successors(node):
        if conv.g.nodes[dst]["op"] != "experts":
            other = [s for s in conv.g.predecessors(dst) if s != node]
            if conv.g.nodes[dst]["op"] == "mul" and other and set(other) <= nx.ancestors(conv.g, node) and any(
                    conv.g.nodes[s]["op"] == "experts" for s in conv.g.successors(dst)):
                raise conv.refuse(node, f"routing weights that scale the experts' input: the router's scores "
                                  f"multiply the hidden states it read ({dst!r}) before the experts run (Llama 4's "
                                  f"routed_in = x * sigmoid(score)) in a form the importer does not fold "
                                  f"(rewrites.fold_input_scaled_experts: x * weights -> experts -> sum over the "
                                  f"experts)")
            raise conv.refuse(node, f"router output read by {conv.g.nodes[dst]['op']} {dst!r}, not experts")
    proj = f"{node}_proj"
    while proj in conv.g:
        proj += "_"
    proj_params = d.get("proj_params") or d["params"]
    extra = [p for p in d["params"] if p not in proj_params]
    want = {"weight": (d["n_experts"], d["in_features"]), **({"bias": (d["n_experts"],)} if d["bias"] else {})}
    d["params"] = list(proj_params)  # the projection's; the others are measured below
    conv.by_shape(node, want)
    conv.param_map[proj] = conv.param_map.pop(node)
    conv.parameters[proj] = conv.parameters.pop(node)
    linear = {"in_features": d["in_features"], "out_features": d["n_experts"], "bias": d["bias"]}
    router = {"n_experts": d["n_experts"], "top_k": d["top_k"], "renormalize": d["renormalize"],
              **({"sparsemixer": True} if d.get("sparsemixer") else {})}
    measured = measure_router(conv, node, conv.parameters[proj], router, extra)
    if measured is None and extra:
        raise conv.refuse(node, f"router reading {extra} besides its projection (a correction bias?) could not "
                          f"be probed to tell how it routes")
    if measured is None and router.pop("sparsemixer", False):
        raise conv.refuse(node, "a sparsemixer router (max / masked_fill / softmax) whose module could not be probed "
                          "to measure its threshold")
    if measured is not None:
        router, bias = measured
        if bias is not None and bias[0] is not None:  # a source parameter: the layout's router reads it
            if extra != [bias[0]]:
                raise conv.refuse(node, f"router reads {extra}; only {bias[0]} is its correction bias")
            conv.param_map[node] = {"e_score_correction_bias": bias[0]}
            source = conv.named[bias[0]]
            if tuple(source.shape) != (d["n_experts"],):  # Ernie 4.5: (1, E); the layout's is (E,), same storage
                conv.reshaped[bias[0]] = list(source.shape)
                source = torch.nn.Parameter(source.detach().view(d["n_experts"]), requires_grad=False)
            conv.parameters[node] = {"e_score_correction_bias": source}
        elif bias is not None:  # a buffer in the source (never trained): the layout's router owns a copy
            conv.parameters[node] = {"e_score_correction_bias": torch.nn.Parameter(bias[1], requires_grad=False)}
        elif extra:
            raise conv.refuse(node, f"router reads {extra} besides its projection, which the measured router "
                              f"does not use")
    return [(proj, "linear", linear, ins), (node, "router", router, [proj])]


_ROUTER_PROBE_TOKENS = 96
_ROUTER_TIE = 1e-3  # probe tokens whose candidate choice margin is below this are not compared
_ROUTER_MATCH = 1e-4  # relative agreement of the dense routing weights (the source may route in float32)


def _call_arguments(conv: Converter, template: list | None, x: torch.Tensor) -> list | None:
    """The positional arguments of the module's recorded call (:meth:`_Recorder._call_template`) with the
    probe ``x`` as its activation; None when the call cannot be rebuilt."""
    if template is None:
        return [x]
    buffers = dict(conv.model.named_buffers())
    args = []
    for entry in template:
        if "act" in entry:
            if entry["act"] != 0:
                return None
            args.append(x)
        elif "param" in entry and entry["param"] in conv.named:
            args.append(conv.named[entry["param"]])
        elif "buffer" in entry and entry["buffer"] in buffers:
            args.append(buffers[entry["buffer"]])
        elif "value" in entry:
            args.append(entry["value"])
        else:
            return None
    return args


def _module_routing(module, x: torch.Tensor, n_experts: int,
                    call=lambda inp: [inp]) -> tuple[torch.Tensor, int] | None:
    """The dense ``(T, E)`` routing weights a router module returns for ``x (T, H)`` and its top-k: from its
    outputs, the integer ``(T, k)`` indices and the float ``(T, k)`` weights; None when the module cannot be
    run that way.  ``call(inp)``: the module's positional arguments for the input ``inp``."""
    for inp in (x, x[None]):
        args = call(inp)
        if args is None:
            return None
        try:
            with torch.no_grad():
                out = module(*args)
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
        if not idx:  # dense weights (Llama 4: sigmoid of the top-k logits scattered into -inf): k non-zeros a row
            for v in val:
                counts = (v != 0).sum(-1) if v.shape[-1] == n_experts else None
                if counts is not None and int(counts.min()) == int(counts.max()) < n_experts:
                    return v.double(), int(counts[0])
    return None


def _router_candidates(module, d: dict, n_read: int, n_biases: int):
    """Router parameter sets to test against the module: score, correction bias (which of ``n_biases``
    candidates; the ``n_read`` first ones, which the router reads, before none), groups, renormalisation
    (the module's ``n_group`` / ``topk_group`` attributes first when it has them)."""
    e, k = d["n_experts"], d["top_k"]
    groups = [(g, tg) for g in range(1, e + 1) if e % g == 0 and (g == 1 or e // g >= 2)
              for tg in range(1, g + 1) if k <= tg * (e // g)]
    named = (getattr(module, "num_group", getattr(module, "n_group", None)), getattr(module, "topk_group", None))
    groups.sort(key=lambda gt: (gt != named, gt[0] > 1, -gt[1]))
    eps = [getattr(module, a, None) for a in ("router_jitter_noise", "jitter_eps")]
    eps = [float(v) for v in eps if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0]
    if k == 2 and d.get("sparsemixer"):  # recorded max / masked_fill / softmax: Phimoe's sparsemixer first
        for jitter in eps or [0.01]:
            yield None, {"n_experts": e, "top_k": 2, "renormalize": False, "score": "sparsemixer",
                         "jitter_eps": jitter, "scaling": 1.0}
    for score in ("softmax", "sigmoid"):
        for corrected in list(range(n_read)) + [None] + list(range(n_read, n_biases)):
            for g, tg in groups:
                for renorm in (d["renormalize"], not d["renormalize"]):
                    yield corrected, {"n_experts": e, "top_k": k, "renormalize": renorm, "score": score,
                                      "correction_bias": corrected is not None, "n_group": g, "topk_group": tg,
                                      "scaling": 1.0}


def _bias_candidates(conv: Converter, module, template: list | None, extra: list[str], e: int):
    """``(candidates, n_read)``: ``(parameter name or None, tensor (E,))`` the router may add to its choice
    scores: the parameters of E numbers it reads besides its projection (recorded) and the parameters /
    buffers of E numbers passed to it (``n_read`` of them: what the router reads), then its own buffers of
    E numbers."""
    buffers = dict(conv.model.named_buffers())
    found: list[tuple[str | None, torch.Tensor]] = [(p, conv.named[p]) for p in extra]
    for entry in template or []:
        if "param" in entry and entry["param"] in conv.named and entry["param"] not in extra:
            found.append((entry["param"], conv.named[entry["param"]]))
        elif "buffer" in entry and entry["buffer"] in buffers:
            found.append((None, buffers[entry["buffer"]]))
    n_found = len(found)
    found += [(None, b) for b in module._buffers.values() if isinstance(b, torch.Tensor)]
    out, seen, n_read = [], set(), 0
    for i, (name, t) in enumerate(found):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() == e and id(t) not in seen:
            seen.add(id(t))
            out.append((name, t.detach().to(torch.float64).reshape(e).clone()))
            n_read += i < n_found
    return out, n_read


def measure_router(conv: Converter, node: str, proj: dict, base: dict, extra: list[str] = ()):
    """``(router params, correction bias or None)`` that reproduce the source router module on random probe
    tokens (score function, correction bias, group-limited top-k, renormalisation and the routed scaling
    factor, all measured); None when the module cannot be probed (the import check still decides).  The
    module is called as it was in the recording (a correction bias passed in by its parent included); the
    correction bias is ``(source parameter name or None for a buffer, tensor (E,))``."""
    d = conv.g.nodes[node]
    module = conv.modules.get(d["module_path"])
    weight = proj["weight"]
    if module is None:
        return None
    gen = torch.Generator().manual_seed(0)
    x = 2.0 * torch.randn(_ROUTER_PROBE_TOKENS, d["in_features"], generator=gen, dtype=torch.float64)
    template = d.get("call_args")
    measured = _module_routing(module, x.to(weight.dtype), d["n_experts"],
                               lambda inp: _call_arguments(conv, template, inp))
    if measured is None:
        return None
    want, top_k = measured  # the recorded first topk may be a group score's (top-2 per group)
    if not 1 <= top_k <= d["n_experts"]:
        return None
    base = {**base, "top_k": top_k}
    biases, n_read = _bias_candidates(conv, module, template, list(extra), d["n_experts"])
    with torch.no_grad():
        logits = torch.nn.functional.linear(x, weight.detach().double(),
                                            proj["bias"].detach().double() if "bias" in proj else None)
    for which, cand in _router_candidates(module, base, n_read, len(biases)):
        params = spec("router").normalise(node, cand)
        router = MODULES["router"](node, params, "exact")
        if params["correction_bias"]:
            router.register_buffer("e_score_correction_bias", biases[which][1])
        with torch.no_grad():
            got = router(logits)
        ok = torch.ones(x.shape[0], dtype=torch.bool) if router.last_margin is None \
            else router.last_margin > _ROUTER_TIE
        if ok.sum() < x.shape[0] // 2 or not torch.equal(got[ok] != 0, want[ok] != 0):
            continue
        ratio = want[ok].sum(-1) / got[ok].sum(-1)
        scaling = float(ratio.median())
        named = [getattr(module, a, None) for a in ("routed_scaling_factor", "route_scale")]
        named = tuple(float(v) for v in named if isinstance(v, (int, float)) and v > 0)
        for exact in named + (1.0,):
            if math.isclose(exact, scaling, rel_tol=_ROUTER_MATCH):  # the factor as written, not re-measured
                scaling = exact
                break
        if not (scaling > 0 and torch.allclose(got[ok] * scaling, want[ok], rtol=_ROUTER_MATCH,
                                                atol=_ROUTER_MATCH * float(want.abs().max()))):
            continue
        params = {**params, "scaling": scaling}
        return params, (biases[which] if params["correction_bias"] else None)
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
    base = {"n_experts": e, "hidden": hidden, "intermediate": inter, "transposed": transposed, "bias": bool(vecs),
            **({"scale_input": True} if d.get("scale_input") else {})}  # rewrites.fold_input_scaled_experts
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
        (getattr(module, "limit", getattr(module, "swiglu_limit", None)),
         getattr(module, "alpha", getattr(module, "swiglu_alpha", None)))  # GPT-OSS, MiniMax-M3 (then measured)
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
    dense = torch.zeros(8 * e, e, dtype=torch.float64).scatter(-1, idx, w)
    try:
        with torch.no_grad():
            if base.get("scale_input"):  # Llama 4: one copy of the tokens per expert, each scaled by its weight
                routed_in = (x[None] * dense.T[:, :, None]).reshape(e * x.shape[0], h)
                want = module(routed_in.to(some.dtype)).reshape(e, *x.shape).sum(dim=0)
            else:
                want = module(x.to(some.dtype), idx, w.to(some.dtype))
    except Exception:  # noqa: BLE001 - a module with another calling convention
        return None
    if not isinstance(want, torch.Tensor) or want.shape != x.shape:
        return None
    want = want.double()
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
    p = {k: d[k] for k in ("n_heads", "head_dim", "rotary_dim", "style")}
    key = (d["module_path"], d["rotary_dim"])
    if key not in conv.thetas:
        conv.thetas[key] = rope_params(conv, node, d["rotary_dim"])
    # the direction, measured: the rotate form the recording shows (NanoChat's rotate_half = cat(x2, -x1) negates
    # the first half: record.contract._negates_first_half) times the sign of the sin table the rotation read
    reversed_ = bool(d.get("first_half_negated")) != (sin_sign(d) == -1)
    return {**p, **conv.thetas[key], **({"reversed": True} if reversed_ else {})}


@import_pattern("attention")
def _attention(conv: Converter, node: str, ins: list[str]) -> dict:
    twins = [n for n in conv.g.successors(ins[0]) if n != node and conv.g.nodes[n]["op"] == "attention"
             and conv.inputs(n)[:1] == ins[:1]]
    if twins:
        # DiffLlama's form (P_i - lam P_{i + h/2} over the paired value) is folded into one differential attention
        # first (rewrites.fold_differential_attention); two maps combined any other way are refused
        raise conv.refuse(node, f"two attention maps over the same queries ({node!r} and {twins[0]!r}), combined "
                          f"after the softmax other than DiffLlama's first - lambda * second: differential "
                          f"attention; the layout's attention computes one")
    d = conv.g.nodes[node]
    differential = {"differential": True, "lambda_init": d["lambda_init"]} if d.get("differential") else {}
    if differential:  # lam = exp(q1 . k1) - exp(q2 . k2) + lambda_init: the four vectors the recorded lam read
        conv.take(node, d["lambda_roles"])
        sinks = {}
    else:
        sinks = _sinks(conv, node)
    if not sinks and not differential:
        conv.no_params(node)
    _check_attention(conv, node)
    p = {k: conv.g.nodes[node][k] for k in ("n_heads", "n_kv_heads", "head_dim")}
    # attention temperature tuning, measured and folded into the node (fuzz.importer.temperature)
    tuned = {k: conv.g.nodes[node][k] for k in TEMPERATURE_PARAMS if k in conv.g.nodes[node]}
    return {**p, **_score_modifiers(conv, node), **_alibi(conv, node), **sinks, **tuned, **differential}


def _sinks(conv: Converter, node: str) -> dict:
    """Attention sinks read from the recording: one parameter, a logit per head, either appended to the scores
    as a last key column that the softmax sees and ``P`` then drops (``cat -> softmax -> [..., :-1]``: Flint,
    MiMo-V2-Flash) or as ``P V * sigmoid(logsumexp(s) - sink)`` (GraniteSWA), the same function."""
    d = conv.g.nodes[node]
    chain = [step[0] for step in d.get("score_chain", []) if step[0] != "stabilize"]  # s - max(s): same softmax
    appended = "sink" in chain and chain[chain.index("sink"):chain.index("sink") + 3] == ["sink", "softmax", "drop_sink"]
    scaled = chain[-2:] == ["softmax", "sink_scale"]
    if not (appended or scaled) and not {"sink", "drop_sink", "sink_scale"} & set(chain):
        return {}
    if not (appended or scaled) or chain.count("softmax") != 1 or len(d["params"]) != 1:
        raise conv.refuse(node, f"attention sinks in a form other than a sink column the softmax sees or a "
                          f"sigmoid(logsumexp - sink) scale of its output (score chain {d['score_chain']})")
    (name,) = d["params"]
    if conv.shape(name) != (d["n_heads"],):
        raise conv.refuse(node, f"attention sinks {name!r} of shape {conv.shape(name)}, not one logit per query head "
                          f"({d['n_heads']},)")
    conv.take(node, {"sinks": name})
    return {"sinks": True}


def _alibi(conv: Converter, node: str) -> dict:
    """ALiBi measured from the recording: the constants the eager score chain adds after the scale and the
    soft-cap are ``slope_h * (j - i)`` (up to a per-query constant) on every unmasked causal pair
    (:func:`fuzz.record.contract.score_bias`); the layout's attention owns a copy of the slopes (the source
    computes them, it trains none)."""
    d = conv.g.nodes[node]
    bias = d.get("score_bias") or {}
    if bias.get("kind") != "alibi":
        if _uses_alibi(conv):
            raise conv.refuse(node, "ALiBi position bias on the attention scores: the recording shows no "
                              f"slope_h * (j - i) bias added to the eager scores (score bias {bias.get('kind')!r}, "
                              f"score chain {d.get('score_chain')})")
        return {}
    chain = d["score_chain"]
    before = [k for k, step in enumerate(chain) if step[0] in ("scale", "tanh")]
    if before and max(before) > min(bias["steps"]):
        raise conv.refuse(node, f"ALiBi bias added before the scores are scaled or soft-capped (score chain {chain}); "
                          f"the layout's attention adds it after both")
    like = next(iter(conv.named.values()))
    conv.parameters.setdefault(node, {})["alibi_slopes"] = torch.nn.Parameter(
        torch.tensor(bias["slopes"], dtype=like.dtype, device=like.device), requires_grad=False)
    return {"alibi": True}


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
    scale = math.prod(factors) if factors else 1.0  # none: the scores are not scaled (GPT-Neo), scale 1.0
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
    if sinks_unread(conv, node):
        raise conv.refuse(node, "attention sinks (a learned per-head logit in the softmax denominator) the recorded "
                          "attention does not read: the importer reads them only from a recorded eager attention")
    if getattr(module, "attn_logit_softcapping", None) is not None and "score_chain" not in d:
        raise conv.refuse(node, "attention logits are soft-capped and the recorded attention shows no soft-cap")


def sinks_unread(conv: Converter, node: str) -> bool:
    """Whether the attention module of ``node`` holds attention sinks (``sinks`` / ``s_aux``) that the recorded
    attention does not read."""
    module = conv.modules.get(conv.g.nodes[node]["module_path"])
    return any(isinstance(getattr(module, name, None), torch.nn.Parameter) for name in ("sinks", "s_aux")) \
        and not conv.g.nodes[node]["params"]


def scores_activations_for_topk(conv: Converter, node: str) -> bool:
    """Whether ``node`` is a product of two activations (``Q K^T`` outside an attention) that feeds a top-k: a
    sparse-attention indexer choosing the keys each query reads (DeepSeek-V3.2, GLM-MoE-DSA)."""
    d = conv.g.nodes[node]
    return d["op"] == "opaque" and d.get("call") in ("matmul", "bmm", "einsum") and conv.g.in_degree(node) == 2 \
        and any(conv.g.nodes[n].get("call") == "topk" for n in nx.descendants(conv.g, node))


@import_pattern("index_topk")  # folded by rewrites.fold_sparse_indexers (DeepSeek Sparse Attention)
def _index_topk(conv: Converter, node: str, ins: list[str]) -> dict:
    conv.no_params(node)
    return dict(conv.g.nodes[node]["index_params"])


@import_pattern("softcap")  # recorded as scale(1 / c) -> tanh -> scale(c), folded by rewrites.fold_softcaps
def _softcap(conv: Converter, node: str, ins: list[str]) -> dict:
    conv.no_params(node)
    return {"cap": float(conv.g.nodes[node]["cap"])}


def _uses_alibi(conv: Converter) -> bool:
    """Whether the source's config switches ALiBi on (BLOOM always; MPT ``attn_config.alibi``; Falcon ``alibi``):
    only to name the refusal when the recording shows none, the import check would refuse the import anyway."""
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
        module, width = conv.modules.get(d["module_path"]), int(d["shape"][-1])
        eps = [float(v) for v in (getattr(module, "eps", None), getattr(module, "variance_epsilon", None))
               if isinstance(v, (int, float))] or [1e-6]
        found = weightless_norm(module, (3, width), eps) if module is not None else None
        if found is not None:  # the recorder contracts these (contract._contract_weightless_norm) when it sees eps
            raise conv.refuse(node, f"weight-free {found[0]} norm: module {d['fn'][8:]} normalises the last axis "
                              f"with no learned scale, but its eps ({found[1]}) is not in the recording")
        raise conv.refuse(node, f"activation module {d['fn'][8:]} computes none of the act op's functions "
                                f"{ACTIVATIONS}")
    if d["fn"] not in ACTIVATIONS:
        raise conv.refuse(node, f"activation {d['fn']!r} is none of {ACTIVATIONS}")
    return {"fn": d["fn"]}


@import_pattern("clamped_glu")
def _clamped_glu(conv: Converter, node: str, ins: list[str]) -> dict:
    """Folded by :func:`~fuzz.importer.rewrites.fold_clamped_glus`: limit and alpha as recorded."""
    conv.no_params(node)
    d = conv.g.nodes[node]
    if conv.width(ins[0]) != conv.width(ins[1]):
        raise conv.refuse(node, f"clamped SwiGLU of gate and up widths {conv.width(ins[0])}, {conv.width(ins[1])}")
    return {"limit": d["limit"], "alpha": d["alpha"]}
@import_pattern("add")
@import_pattern("mul")
def _elementwise(conv: Converter, node: str, ins: list[str]) -> dict:
    if conv.g.nodes[node]["op"] == "mul" and conv.g.nodes[node]["params"]:
        raise conv.refuse(node, _parameter_scale_refusal(conv, node))
    conv.no_params(node)
    widths = [conv.width(i) for i in ins]
    if len(set(widths)) != 1:
        raise conv.refuse(node, f"{conv.g.nodes[node]['op']} broadcasts inputs of widths {widths}")
    return {}


_GATE_MATCH = 1e-6  # relative: ErgoResidualGate computes its factors from w in float32


@import_pattern("residual_gate")
def _residual_gate(conv: Converter, node: str, ins: list[str]) -> dict:
    """Folded by :func:`~fuzz.importer.rewrites.fold_residual_gates` (which input is the residual: the dataflow);
    the module's two factors are measured (:func:`measure_residual_gate`) and must be Ergo's."""
    d = conv.g.nodes[node]
    (param,) = d["params"]
    why = measure_residual_gate(conv, node, param)
    if why is not None:
        raise conv.refuse(node, why)
    conv.take(node, {"weight": param})
    return {"dim": conv.width(node)}


def measure_residual_gate(conv: Converter, node: str, param: str) -> str | None:
    """None when the gate's module, called on probes ``(u, v)``, computes ``f0 * u + f1 * v`` with per-channel
    factors ``{f0, f1}`` = Ergo's ``{sigmoid(w), sqrt(1 + sigmoid(w)) exp(-softplus(w) / 2)}``; else why not
    (the refusal names the residual gate and the module)."""
    path = conv.g.nodes[node]["module_path"]
    module = conv.modules.get(path)
    name = type(module).__name__ if module is not None else "?"
    head = (f"residual gate ({name}): the residual stream and the branch output each times a learned per-channel "
            f"factor of {[param]} before their sum")
    w = conv.named[param].detach()
    if module is None:
        return f"{head}; no module to measure its factors"
    h = w.shape[0]
    gen = torch.Generator().manual_seed(0)
    u, v = (torch.randn(1, 3, h, generator=gen, dtype=torch.float64).to(w.dtype) for _ in range(2))
    one, zero = torch.ones(1, 1, h, dtype=w.dtype), torch.zeros(1, 1, h, dtype=w.dtype)
    try:
        with torch.no_grad():
            f0, f1 = (module(one, zero).double().reshape(h), module(zero, one).double().reshape(h))
            got = module(u, v).double()
    except Exception as exc:  # noqa: BLE001 - another calling convention: not measured, refused by name
        return f"{head}; the module cannot be called on (branch, residual) probes ({type(exc).__name__})"
    if not torch.allclose(got, f0 * u.double() + f1 * v.double(), rtol=1e-9, atol=1e-12):
        return f"{head}; the module is not a per-channel factor on each input"
    wd = w.double()
    a = torch.sigmoid(wd)
    c = torch.sqrt(1.0 + a) * torch.exp(-0.5 * torch.nn.functional.softplus(wd))
    close = lambda x, y: torch.allclose(x, y, rtol=_GATE_MATCH, atol=0)  # noqa: E731
    if not ((close(f0, a) and close(f1, c)) or (close(f0, c) and close(f1, a))):
        return (f"{head}; the measured factors are not Ergo's sigmoid(w) on the branch and sqrt(1 + sigmoid(w)) "
                f"exp(-softplus(w) / 2) on the residual (the layout's residual_gate)")
    return None


def _parameter_scale_refusal(conv: Converter, node: str) -> str:
    """Why a product by (a function of) a learned parameter is refused, named from the dataflow: a residual gate
    (two such products of the same parameter summed, one of them the residual stream: the input that the
    layer's branch also reads; Ergo's ``ErgoResidualGate``, ``sigmoid(w) * branch + sqrt(1 + sigmoid(w))
    exp(-softplus(w) / 2) * residual``), else a learned per-channel scale."""
    params = conv.g.nodes[node]["params"]
    path = conv.g.nodes[node]["module_path"]
    module = type(conv.modules[path]).__name__ if path in conv.modules else "?"
    for add in conv.g.successors(node):
        if conv.g.nodes[add]["op"] != "add":
            continue
        scaled = [m for m in conv.inputs(add) if conv.g.nodes[m]["op"] == "mul" and conv.g.nodes[m]["params"] == params]
        residual = [m for m in scaled if any(conv.g.out_degree(i) > 1 for i in conv.inputs(m))]
        if len(scaled) == 2 and residual:
            return (f"residual gate ({module}): the residual stream and the branch output each times a learned "
                    f"per-channel factor of {params} before their sum (Ergo: sigmoid(w) * branch + sqrt(1 + "
                    f"sigmoid(w)) exp(-softplus(w) / 2) * residual); a per-channel scale of the residual stream is "
                    f"not in the layout vocabulary (the next RMSNorm is not invariant under it, so it cannot fold "
                    f"into a linear)")
    return (f"a learned per-channel scale ({module}): the activation times a function of {params} "
            f"(layer scale); not in the layout vocabulary")


def _routing_refusal(conv: Converter, node: str) -> str:
    """Why an uncontracted routing op (softmax / top-k / max) is refused, named from the dataflow: routed
    attention heads (what it routes reaches an attention's query before any residual add: JetMoE's mixture
    of attention heads), a sparsemixer router (a ``max`` whose threshold masks the scores: Phimoe), or a
    router the contraction did not recognise."""
    call = conv.g.nodes[node].get("call")
    # from the op and its siblings (the other outputs of the router's logits: top-k values and indices)
    seen, stack = set(), list(conv.g.successors(node)) + [s for p in conv.g.predecessors(node)
                                                        for s in conv.g.successors(p) if s != node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        op = conv.g.nodes[n]["op"]
        if op == "attention":
            return (f"opaque op {call!r}: mixture of attention heads (a router choosing per-token attention experts "
                    f"whose output reaches the attention, JetMoE MoA); not in the layout's vocabulary")
        if op in ("add", "norm", "lm_head"):
            continue  # past the block: a residual add or a norm
        stack.extend(conv.g.successors(n))
    calls = {conv.g.nodes[n].get("call") for n in seen}
    if call == "max" and "masked_fill" in calls:
        return (f"opaque op {call!r}: a sparsemixer router (Phimoe: the top expert's softmax over the scores within a "
                f"relative threshold of the max, masked_fill -inf elsewhere, then the same for the second choice); "
                f"not in the layout's router vocabulary")
    return (f"opaque op {call!r}: a MoE router whose softmax / top-k / max was not contracted into a router (its "
            f"projection, scores and choice did not form one router feeding fused experts); not in the layout's "
            f"router vocabulary")
@import_pattern("head_concat")  # a last-axis cat (or slice copies into an empty tensor), rewrites.fold_head_concats
def _head_concat(conv: Converter, node: str, ins: list[str]) -> dict:
    conv.no_params(node)
    return {k: conv.g.nodes[node][k] for k in ("n_heads", "a_dim", "b_dim", "shared_b")}


def _ids_read_refusal(conv: Converter, node: str) -> str:
    """Why an op reading the token ids (besides the embedding lookup) is refused, named from what it feeds: other
    embedding tables indexed by values computed from the ids (segment embeddings; a bucketed relative-position
    bias read into the scores) and attention masks (an id taken as padding)."""
    call = conv.g.nodes[node].get("call")
    path = conv.g.nodes[node]["module_path"]
    module = type(conv.modules[path]).__name__ if path in conv.modules else type(conv.model).__name__
    below = nx.descendants(conv.g, node)
    tables = sorted(p for n in below if conv.g.nodes[n]["op"] == "embedding" for p in conv.g.nodes[n]["params"])
    masked = any(conv.g.nodes[n].get("call") == "masked_fill" for n in below)
    fed = ([f"embedding tables indexed by them ({', '.join(tables)}: segment embeddings, a bucketed "
            f"relative-position bias)"] if tables else []) + (["an attention mask (an id taken as padding)"]
                                                           if masked else [])
    return (f"token-id segments ({module}): {call}(ids) computes values from the token ids (e.g. CPM-Ant's segment = "
            f"where(ids != 0, 2, 0), the padding length = the count of non-zero ids) read by "
            f"{' and '.join(fed) or 'the model'}; the layout reads the ids once, in the token embedding")


@import_pattern("head_slice", recorded="opaque")
def _head_slice(conv: Converter, node: str, ins: list[str]) -> dict:
    """A slice of the last axis of a ``(.., heads, head_dim)`` view: ``x[..., a:b]``, a chunk or a split.
    Any other opaque call is refused."""
    d = conv.g.nodes[node]
    if d.get("call") in _ROUTING_CALLS:
        raise conv.refuse(node, _routing_refusal(conv, node))
    if scores_activations_for_topk(conv, node):
        raise conv.refuse(node, "sparse attention: activations scored against each other (Q K^T outside an attention) "
                          "feed a top-k choosing the keys each query reads (DeepSeek-V3.2 / GLM-MoE-DSA indexer); the "
                          "layout's attention reads every key in its window")
    if d.get("call") == "mul" and d.get("const_shape", [0])[-1] == 1:
        rows = [round(row[0], 6) for row in d.get("const_rows", ())][:12]
        why = d.get("temperature_refusal") or ("not the queries an attention reads right after it: the layout's "
                                               "attention temperature scales only those")
        raise conv.refuse(node, f"position-dependent scaling: the activation times a constant factor per position "
                          f"(table {d['const_shape']}" + (f", {rows} at positions 0..{len(rows) - 1}" if rows else "")
                          + "), e.g. Llama-4 / Mistral4 / Ministral3 attention temperature tuning q * (1 + beta "
                          "log(1 + floor(pos / L))), llama_4_scaling_beta, or Beam's scalable-softmax query scale q * "
                          f"(1 + (pos + o) / L) ** beta; {why}")
    if "flat_slice" in d:  # a selection on a head axis, measured by the recorder (record.recorder._flat_slice)
        if d["flat_slice"] is None:
            raise conv.refuse(node, f"opaque op {d.get('call')!r} ({d.get('key', 'output %s' % d.get('output', 0))}) "
                              f"selects values of each token that are no slice of a (heads, head_dim) view")
        conv.no_params(node)
        heads, head_dim, start, length = d["flat_slice"]
        return {"n_heads": heads, "head_dim": head_dim, "start": start, "length": length}
    if d.get("call") not in _SLICES:
        if any(conv.g.nodes[i]["op"] == "tokens" for i in ins):  # CPM-Ant: segment = (ids != 0)
            raise conv.refuse(node, _ids_read_refusal(conv, node))
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
    if d["call"] == "getitem":
        start = _getitem_start(conv, node, in_shape, length)
    else:
        start = _split_start(conv, node, src)
    if start is None or heads * length != conv.width(node):
        raise conv.refuse(node, f"opaque op {d['call']!r} ({d.get('key', 'output %s' % d.get('output', 0))}) "
                          f"is not a slice of the last axis")
    return {"n_heads": heads, "head_dim": head_dim, "start": start, "length": length}


def _getitem_start(conv: Converter, node: str, in_shape: list[int], length: int) -> int | None:
    span = last_axis_slice(conv.g.nodes[node].get("key", ""), int(in_shape[-1]), len(in_shape))
    return span.start if span is not None and len(span) == length else None


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
