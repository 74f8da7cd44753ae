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
* ``rope``: ``theta`` is recovered from the model (below); any RoPE but the default one is refused;
* ``attention``: must be causal with ``head_dim ** -0.5`` scaling and no soft-cap (the recorder sees
  neither, so the attention module's ``scaling`` / ``attn_logit_softcapping`` / ``is_causal`` attributes
  are consulted); a sliding window or chunked attention is found by the check, by measurement;
* ``router`` (it reads its own weight): split into a ``linear`` ``<router id>_proj`` and a ``router``;
* ``experts``: ``gate_up_proj (E, 2I, H)`` and ``down_proj (E, H, I)`` told apart by shape; the
  transposed ``(E, in, out)`` layout is refused;
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

from ..ops import ACTIVATIONS, registrar
from .rope import rope_theta

if TYPE_CHECKING:
    from .converter import Converter, Entry

_SLICES = frozenset({"getitem", "chunk", "split", "split_with_sizes", "tensor_split"})


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
    conv.by_shape(node, {"weight": (d["vocab"], d["dim"])})
    return {"vocab": d["vocab"], "dim": d["dim"]}


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
    if d.get("bias"):
        raise conv.refuse(node, "the lm_head has a bias, the layout's lm_head has none")
    if d.get("call") != "linear":
        raise conv.refuse(node, f"lm_head via {d.get('call')!r} reads its weight as (in, out)")
    if d["tied_to"] is None:
        conv.by_shape(node, {"weight": (d["vocab"], d["dim"])})
    elif set(d["params"]) != set(conv.g.nodes[d["tied_to"]]["params"]):
        raise conv.refuse(node, f"lm_head is tied to {d['tied_to']!r} but reads {d['params']}")
    else:  # the name the lm_head module holds the shared table under (for export_weights)
        (table,) = d["params"]
        names = [table] + [a for a, canonical in conv.rec.meta.get("aliases", {}).items() if canonical == table]
        own = [n for n in names if n.rpartition(".")[0] == d["module_path"]]
        if len(own) != 1:
            raise conv.refuse(node, f"cannot tell which of {names} names the tied lm_head weight")
        conv.tied[node] = {"weight": own[0]}
    return {"dim": d["dim"], "vocab": d["vocab"], "tied_to": d["tied_to"]}


@import_pattern("norm")
def _norm(conv: Converter, node: str, ins: list[str]) -> dict:
    d = conv.g.nodes[node]
    if d["eps"] is None:
        raise conv.refuse(node, "norm with no recognisable eps")
    dim, read = d["dim"], d["params"]
    if not read and "bias" not in d:  # OLMo's LayerNorm: F.layer_norm with neither weight nor bias
        raise conv.refuse(node, f"a {d.get('kind', '')} norm with no weight and no bias (non-parametric "
                          f"{d.get('call', 'norm')}): the layout's norm owns a weight")
    if any(conv.shape(p) != (dim,) for p in read) or len(read) != 1 + d.get("bias", False):
        raise conv.refuse(node, f"norm of dim {dim} reads {[(p, conv.shape(p)) for p in read]}")
    roles = {"weight": read[0]} if not d["bias"] else _norm_roles(conv, node, read)
    conv.take(node, roles)
    return {k: d[k] for k in ("kind", "dim", "groups", "weight_form", "bias")} | {"eps": float(d["eps"])}


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
    return [(proj, "linear", linear, ins), (node, "router", router, [proj])]


@import_pattern("experts")
def _experts(conv: Converter, node: str, ins: list[str]) -> dict:
    """Roles of the two 3-D parameters from the shapes the dataflow implies: ``x`` (width H) is
    multiplied by ``gate_up_proj[e] (2I, H)``, the product of width I by ``down_proj[e] (H, I)``."""
    d = conv.g.nodes[node]
    if len(ins) != 2 or conv.g.nodes[ins[1]]["op"] != "router":
        raise conv.refuse(node, f"experts read {ins}; expected the hidden states and a router")
    if d.get("act") not in ACTIVATIONS:
        raise conv.refuse(node, f"experts activation {d.get('act')!r} is none of {ACTIVATIONS}")
    read = d["params"]
    shapes = [conv.shape(p) for p in read]
    hidden = conv.width(ins[0])
    if len(read) != 2 or any(len(s) != 3 for s in shapes):
        raise conv.refuse(node, f"experts read {dict(zip(read, shapes))}; expected two 3-D tensors")

    def fits(gu, dn, transposed=False):
        if transposed:
            gu, dn = (gu[0], gu[2], gu[1]), (dn[0], dn[2], dn[1])
        return gu[0] == dn[0] and gu[2] == hidden and dn[1] == hidden and gu[1] == 2 * dn[2]

    for gate_up, down in ((0, 1), (1, 0)):
        if fits(shapes[gate_up], shapes[down]):
            conv.take(node, {"gate_up_proj": read[gate_up], "down_proj": read[down]})
            e, _, inter = shapes[down]
            return {"n_experts": e, "hidden": hidden, "intermediate": inter, "act": d["act"]}
    if any(fits(shapes[a], shapes[b], transposed=True) for a, b in ((0, 1), (1, 0))):
        raise conv.refuse(node, f"experts store transposed (E, in, out) weights {dict(zip(read, shapes))}; "
                          f"the layout needs gate_up_proj (E, 2I, H) and down_proj (E, H, I)")
    raise conv.refuse(node, f"experts weights {dict(zip(read, shapes))} are not gate_up_proj (E, 2I, {hidden}) "
                      f"and down_proj (E, {hidden}, I)")

# ------------------------------------------------------------------ ops without parameters


# ====================================================================== ops without parameters
@import_pattern("rope")
def _rope(conv: Converter, node: str, ins: list[str]) -> dict:
    d = conv.g.nodes[node]
    conv.no_params(node)
    p = {k: d[k] for k in ("n_heads", "head_dim", "rotary_dim", "style")}
    key = (d["module_path"], d["rotary_dim"])
    if key not in conv.thetas:
        conv.thetas[key] = rope_theta(conv, node, d["rotary_dim"])
    return {**p, "theta": conv.thetas[key]}


@import_pattern("attention")
def _attention(conv: Converter, node: str, ins: list[str]) -> dict:
    conv.no_params(node)
    _check_attention(conv, node)
    return {k: conv.g.nodes[node][k] for k in ("n_heads", "n_kv_heads", "head_dim")}


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
    scaling = getattr(module, "scaling", None)
    if isinstance(scaling, float) and not math.isclose(scaling, d["head_dim"] ** -0.5, rel_tol=1e-12):
        raise conv.refuse(node, f"attention scaling {scaling} is not head_dim ** -0.5")
    if getattr(module, "attn_logit_softcapping", None) is not None:
        raise conv.refuse(node, "attention logits are soft-capped")


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
    if d.get("call") not in _SLICES:
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
