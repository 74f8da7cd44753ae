"""Exact rewrites of a recorded graph before conversion: each leaves the function it computes unchanged,
bit for bit (``x * 1.0`` dropped, a view that only adds an axis bypassed, ``x * act(g)`` folded into a
``gate``, ``(a + b) + c`` flattened into one three-input ``add``, which sums left to right as before), and one
that may round differently: ``linear(x) + b`` folded into the linear's bias (the import check measures it)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..ops import GATE_ACTS

if TYPE_CHECKING:
    from .converter import Converter


def _bypass(conv: Converter, node: str) -> None:
    """Remove a single-input node whose output equals its input, its readers reading the input instead
    (kept when a reader also reads the input directly: a layout node reads a producer once)."""
    (src,) = conv.inputs(node)
    outs = list(conv.g.out_edges(node, data=True))
    if any(conv.g.has_edge(src, dst) for _, dst, _ in outs):
        return
    for _, dst, data in outs:
        conv.g.add_edge(src, dst, **data)
    conv.g.remove_node(node)


def drop_identity_scales(conv: Converter) -> None:
    """``x * 1.0`` is ``x`` (transformers multiplies by 1.0 where a multiplier is unset)."""
    for node in [n for n, d in conv.g.nodes(data=True) if d["op"] == "scale" and d["factor"] == 1.0]:
        _bypass(conv, node)


def bypass_views(conv: Converter) -> None:
    """``x[..., None]`` only adds an axis (the recorder keeps it because the last width changes)."""
    for node, d in list(conv.g.nodes(data=True)):
        if d["op"] != "opaque" or d.get("call") != "getitem" or d["params"] or conv.g.in_degree(node) != 1:
            continue
        parts = {p.strip() for p in d.get("key", "").split(",")}
        if parts <= {"...", ":", "None"} and conv.width(node) == conv.width(conv.inputs(node)[0]):
            _bypass(conv, node)


def fold_gates(conv: Converter) -> None:
    """``x * sigmoid(g)`` (or softplus) with the activation read only there -> a ``gate`` node."""
    for node in [n for n, d in conv.g.nodes(data=True) if d["op"] == "mul" and not d["params"]]:
        ins = conv.inputs(node)
        if len(ins) != 2:
            continue
        for k, act in enumerate(ins):
            a, x = conv.g.nodes[act], ins[1 - k]
            if not (a["op"] == "act" and a["fn"] in GATE_ACTS and not a["params"]
                    and conv.g.out_degree(act) == 1 and conv.g.in_degree(act) == 1):
                continue
            (g,) = conv.inputs(act)
            n_heads = _gate_heads(conv, node, x, act)
            if g == x or n_heads is None:
                continue
            conv.g.nodes[node].update(op="gate", act=a["fn"], n_heads=n_heads)
            conv.g.remove_node(act)
            conv.rewire(node, [x, g])
            break


def _gate_heads(conv: Converter, node: str, x: str, act: str) -> int | None:
    """1 for an elementwise or per-token gate, the head count for a per-head one, None otherwise."""
    xw, gw = conv.width(x), conv.width(act)
    if gw in (xw, 1):
        return 1
    x_shape, g_shape = conv.g.edges[x, node]["shape"], conv.g.edges[act, node]["shape"]
    if xw % gw == 0 and g_shape[-1] == 1 and g_shape[-2] == gw and x_shape[-2:] == [gw, xw // gw]:
        return gw
    return None


def flatten_adds(conv: Converter) -> None:
    """``(a + b) + c`` -> ``add(a, b, c)`` when the inner add feeds only the outer one, at port 0
    (the layout's add sums left to right, so this is the same rounding)."""
    changed = True
    while changed:
        changed = False
        for node in sorted(conv.g, key=lambda n: conv.g.nodes[n]["index"]):
            d = conv.g.nodes[node]
            if d["op"] != "add" or d["params"]:
                continue
            ins = conv.inputs(node)
            inner = ins[0]
            e = conv.g.nodes[inner]
            if e["op"] != "add" or e["params"] or conv.g.out_degree(inner) != 1:
                continue
            merged = conv.inputs(inner) + ins[1:]
            if len(set(merged)) != len(merged):
                continue
            conv.g.remove_node(inner)
            conv.rewire(node, merged)
            changed = True
            break


def fold_softcaps(conv: Converter) -> None:
    """``tanh(x * (1 / c)) * c`` (Gemma2's final-logit soft-cap) -> a ``softcap`` node with ``cap = c``, when
    the two scales are exact reciprocals and each is read only there."""
    for node in [n for n, d in conv.g.nodes(data=True) if d["op"] == "act" and d.get("fn") == "tanh"]:
        if conv.g.in_degree(node) != 1 or conv.g.out_degree(node) != 1 or conv.g.nodes[node]["params"]:
            continue
        (pre,) = conv.inputs(node)
        (post,) = list(conv.g.successors(node))
        a, b = conv.g.nodes[pre], conv.g.nodes[post]
        if not (a["op"] == "scale" and b["op"] == "scale" and conv.g.out_degree(pre) == 1
                and conv.g.in_degree(pre) == 1 and b["factor"] > 0
                and math.isclose(a["factor"] * b["factor"], 1.0, rel_tol=1e-12)):
            continue
        (src,) = conv.inputs(pre)
        conv.g.nodes[post].update(op="softcap", cap=float(b["factor"]))
        conv.g.nodes[post].pop("factor")
        conv.g.remove_node(node)
        conv.g.remove_node(pre)
        conv.rewire(post, [src])


def fold_bias_adds(conv: Converter) -> None:
    """``linear(x) + b`` with the linear bias-free and read only there, ``b`` one parameter of its output width
    (GPT-NeoX-Japanese's attention ``dense`` and ``dense_bias``, added by the layer) -> the linear with bias ``b``
    (the same sum; F.linear may round it together with the product)."""
    for node in [n for n, d in conv.g.nodes(data=True) if d["op"] == "add" and len(d["params"]) == 1]:
        if conv.g.in_degree(node) != 1:
            continue
        (src,) = conv.inputs(node)
        d, e = conv.g.nodes[node], conv.g.nodes[src]
        (bias,) = d["params"]
        if not (e["op"] == "linear" and not e["bias"] and e.get("call") == "linear" and conv.g.out_degree(src) == 1
                and conv.shape(bias) == (e["out_features"],) and d["shape"] == e["shape"]):
            continue
        e.update(bias=True, params=sorted([*e["params"], bias]))
        for _, dst, data in list(conv.g.out_edges(node, data=True)):
            conv.g.add_edge(src, dst, **data)
        conv.g.remove_node(node)
