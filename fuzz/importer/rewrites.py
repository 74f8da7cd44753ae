"""Exact rewrites of a recorded graph before conversion: each leaves the function it computes unchanged,
bit for bit (``x * 1.0`` dropped, a view that only adds an axis bypassed, ``x * act(g)`` folded into a
``gate``, ``(a + b) + c`` flattened into one three-input ``add``, which sums left to right as before, the
clamped SwiGLU written out folded into a ``clamped_glu``), and one that may round differently:
``linear(x) + b`` folded into the linear's bias (the import check measures it)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import networkx as nx
import torch

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


def _only(conv: Converter, node: str, readers: int | None) -> bool:
    """A parameter-free node with one input and ``readers`` readers (None: any number)."""
    d = conv.g.nodes[node]
    return not d["params"] and conv.g.in_degree(node) == 1 and (readers is None or conv.g.out_degree(node) == readers)


def fold_clamped_glus(conv: Converter) -> None:
    """``(clamp(up, -l, l) + 1) * (g * sigmoid(g * alpha))`` with ``g = clamp(gate, max=l)`` (MiniMax-M3's dense
    MLP, written out op by op) -> a ``clamped_glu`` node reading ``gate`` and ``up``, when every intermediate is
    read only inside the pattern.  Runs before :func:`fold_gates` (which would read ``g * sigmoid(..)`` as a
    gate)."""
    def one(node):
        a, b = conv.inputs(node)
        for plus, glu in ((a, b), (b, a)):
            p, q = conv.g.nodes[plus], conv.g.nodes[glu]
            if not (p["op"] == "opaque" and p.get("call") == "add" and p.get("scalar") == 1.0 and _only(conv, plus, 1)
                    and q["op"] == "mul" and not q["params"] and conv.g.out_degree(glu) == 1):
                continue
            (up_c,) = conv.inputs(plus)
            u = conv.g.nodes[up_c]
            if not (u.get("call") == "clamp" and _only(conv, up_c, 1) and u.get("bounds") is not None):
                continue
            lo, limit = u["bounds"]
            if limit is None or lo != -limit or not limit > 0:
                continue
            glu_ins = conv.inputs(glu)
            if len(glu_ins) != 2:
                continue
            for sig, gate_c in (glu_ins, glu_ins[::-1]):
                s_, g_ = conv.g.nodes[sig], conv.g.nodes[gate_c]
                if not (s_["op"] == "act" and s_["fn"] == "sigmoid" and _only(conv, sig, 1)
                        and g_.get("call") == "clamp" and g_.get("bounds") == [None, limit] and _only(conv, gate_c, 2)):
                    continue
                (sc,) = conv.inputs(sig)
                c = conv.g.nodes[sc]
                if not (c["op"] == "scale" and _only(conv, sc, 1) and conv.inputs(sc) == [gate_c]):
                    continue
                return plus, glu, up_c, gate_c, sig, sc, float(limit), float(c["factor"])
        return None

    for node in [n for n, d in conv.g.nodes(data=True) if d["op"] == "mul" and not d["params"]]:
        if node not in conv.g or conv.g.in_degree(node) != 2:
            continue
        found = one(node)
        if found is None:
            continue
        plus, glu, up_c, gate_c, sig, sc, limit, alpha = found
        (gate,), (up,) = conv.inputs(gate_c), conv.inputs(up_c)
        if gate == up:
            continue
        conv.g.remove_nodes_from([plus, glu, up_c, gate_c, sig, sc])
        conv.g.nodes[node].update(op="clamped_glu", limit=limit, alpha=alpha)
        conv.rewire(node, [gate, up])


def fold_input_scaled_experts(conv: Converter) -> None:
    """Llama 4's MoE: ``routed_in = x * score`` (the router's dense weights multiply the hidden states the router
    read, one copy per expert), the experts run on it, and their ``(E, T, H)`` outputs are summed over the
    experts -> one ``experts`` node reading ``x`` and the router with ``scale_input`` (the weight scales the
    expert's input, not its output).  The dataflow fixes the form; whether the module computes exactly that is
    measured (:func:`fuzz.importer.patterns.measure_experts`) and checked against the model's logits."""
    for node, d in list(conv.g.nodes(data=True)):
        if d["op"] != "experts" or conv.g.in_degree(node) != 1 or conv.g.out_degree(node) != 1:
            continue
        (m,) = conv.inputs(node)
        md = conv.g.nodes[m]
        if md["op"] != "mul" or md["params"] or conv.g.out_degree(m) != 1 or conv.g.in_degree(m) != 2:
            continue
        ins = conv.inputs(m)
        routers = [i for i in ins if conv.g.nodes[i]["op"] == "router"]
        if len(routers) != 1:
            continue
        (r,) = routers
        (x,) = [i for i in ins if i != r]
        if x not in conv.g.predecessors(r):  # the router weighs the hidden states it read
            continue
        (total,) = conv.g.successors(node)
        td, shape = conv.g.nodes[total], d.get("shape") or []
        if not (td["op"] == "opaque" and td.get("call") == "sum" and not td["params"] and _only(conv, total, None)
                and len(shape) == 3 and shape[0] == conv.g.nodes[r].get("n_experts")
                and list(td.get("shape") or []) == list(shape[1:])):
            continue
        conv.g.remove_node(m)
        conv.rewire(node, [x, r])
        d["scale_input"] = True
        d["shape"] = list(td["shape"])  # the sum over the experts: the node's output now
        _bypass(conv, total)


def fold_residual_gates(conv: Converter) -> None:
    """Ergo's residual gate: ``add(mul(branch, f(w)), mul(residual, g(w)))``, both products by functions of one
    learned ``(H,)`` parameter ``w`` and the residual the input the branch is computed from (the dataflow: a path
    from it to the branch) -> one ``residual_gate`` node ``(branch, residual)`` reading ``w``.  That the module
    computes ``sigmoid(w) * branch + sqrt(1 + sigmoid(w)) exp(-softplus(w) / 2) * residual`` is measured by
    :func:`fuzz.importer.patterns.measure_residual_gate` (else refused by name there) and checked against the
    model's logits."""
    for node, d in list(conv.g.nodes(data=True)):
        if d["op"] != "add" or d["params"] or conv.g.in_degree(node) != 2:
            continue
        muls = conv.inputs(node)
        mds = [conv.g.nodes[m] for m in muls]
        if not all(md["op"] == "mul" and len(md["params"]) == 1 and conv.g.in_degree(m) == 1
                   and conv.g.out_degree(m) == 1 for m, md in zip(muls, mds)):
            continue
        params = set(mds[0]["params"]) | set(mds[1]["params"])
        if len(params) != 1:  # a gate's two factors are functions of one parameter
            continue
        (param,) = params
        if len(conv.shape(param)) != 1 or conv.shape(param)[0] != conv.width(node):
            continue
        acts = [conv.inputs(m)[0] for m in muls]
        if acts[0] == acts[1]:
            continue
        residual = [a for a, b in (acts, acts[::-1]) if nx.has_path(conv.g, a, b) and not nx.has_path(conv.g, b, a)]
        if len(residual) != 1:
            continue
        branch = acts[1] if residual[0] == acts[0] else acts[0]
        conv.g.remove_nodes_from(muls)
        conv.rewire(node, [branch, residual[0]])
        d.update(op="residual_gate", params=[param], module_path=mds[0]["module_path"])


def fold_differential_attention(conv: Converter) -> None:
    """DiffLlama's differential attention: two recorded attentions over the same q, k, v (the recorder passes V's
    head-axis chunk and repeat through), ``cat`` on the last axis (per head ``[o1_h, o2_h]``), chunked into the
    first and second halves of the heads, ``first - lam * second`` with ``lam`` one number computed from four
    parameters (the recorder keeps its value, ``param_scalar``) -> one ``attention`` with ``differential`` (query
    heads ``i`` and ``i + h/2`` paired over the value ``[V_j; V_{j + kv/2}]``, :mod:`fuzz.ops`).  The dataflow fixes
    the form; the value halves each map reads are the op's convention, which the import check confirms against
    the model's logits.  ``lambda_init`` is measured: the recorded ``lam`` less ``exp(q1 . k1) - exp(q2 . k2)``,
    computed as DiffLlama does (float32 sums and exps)."""
    for sub, d in list(conv.g.nodes(data=True)):
        if sub not in conv.g or d["op"] != "opaque" or d.get("call") != "sub" or d["params"] \
                or conv.g.in_degree(sub) != 2:
            continue
        c0, m = conv.inputs(sub)
        md = conv.g.nodes[m]
        if md["op"] != "mul" or "param_scalar" not in md or len(md["params"]) != 4 or conv.g.in_degree(m) != 1 \
                or conv.g.out_degree(m) != 1:
            continue
        (c1,) = conv.inputs(m)
        if not all(_only(conv, c, 1) and conv.g.nodes[c].get("call") == "chunk" for c in (c0, c1)):
            continue
        (x0,), (x1,) = conv.inputs(c0), conv.inputs(c1)
        xd = conv.g.nodes[x0]
        if x0 != x1 or xd["op"] != "opaque" or xd.get("call") != "cat" or xd["params"] \
                or xd.get("dim") not in (-1, len(xd["shape"]) - 1) or conv.g.in_degree(x0) != 2:
            continue
        a1, a2 = conv.inputs(x0)
        ad1, ad2 = conv.g.nodes[a1], conv.g.nodes[a2]
        keys = ("n_heads", "n_kv_heads", "head_dim", "sdpa_scale", "causal", "masked")
        if not (ad1["op"] == ad2["op"] == "attention" and conv.inputs(a1) == conv.inputs(a2) and not ad1["params"]
                and not ad2["params"] and conv.g.out_degree(a1) == conv.g.out_degree(a2) == 1
                and all(ad1.get(k) == ad2.get(k) for k in keys)
                and ad1.get("score_chain") == ad2.get("score_chain")):
            continue
        width = conv.width(x0)
        if conv.g.nodes[c0].get("flat_slice") != [1, width, 0, width // 2] \
                or conv.g.nodes[c1].get("flat_slice") != [1, width, width // 2, width // 2]:
            continue
        roles = {name.rsplit(".", 1)[-1]: name for name in md["params"]}
        if set(roles) != {"lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"}:
            continue
        lam = md["param_scalar"]
        q1, k1, q2, k2 = (conv.named[roles[r]].detach().double() for r in ("lambda_q1", "lambda_k1", "lambda_q2",
                                                                         "lambda_k2"))
        l1 = float(torch.exp(torch.sum(q1 * k1, dim=-1, dtype=torch.float32)).double())
        l2 = float(torch.exp(torch.sum(q2 * k2, dim=-1, dtype=torch.float32)).double())
        for node in (x0, c0, c1, m, a2):
            conv.g.remove_node(node)
        for _, dst, data in list(conv.g.out_edges(sub, data=True)):
            conv.g.add_edge(a1, dst, **data)
        ad1.update(differential=True, lambda_init=lam - (l1 - l2), params=sorted(md["params"]),
                   lambda_roles=roles, shape=list(d["shape"]))
        conv.g.remove_node(sub)


_EMPTY = frozenset({"new_empty", "empty_like", "new_zeros", "zeros_like"})


def fold_slice_copies(conv: Converter) -> None:
    """``out = x.new_empty(..); out[..., a:b].copy_(p); out[..., b:c].copy_(q)`` (slices tiling the last axis in
    order: DeepSeek-V3's ``expand_kv``) -> ``cat((p, q), dim=-1)``: the recorder sees the empty tensor, each slice
    and each in-place copy; the tensor they write is the concatenation of the sources."""
    for node in [n for n, d in conv.g.nodes(data=True) if d["op"] == "opaque" and d.get("call") in _EMPTY]:
        width = int(conv.g.nodes[node]["shape"][-1])
        cur, sources, end, chain = node, [], 0, [node]
        while True:
            outs = list(conv.g.successors(cur))
            if len(outs) != 1 or (cur != node and end == width):
                break
            sl = outs[0]
            d = conv.g.nodes[sl]
            span = _last_axis_span(d, width)  # a copy node has its slice's shape: the whole tensor's width
            copies = list(conv.g.successors(sl))
            if d.get("call") != "getitem" or span is None or span[0] != end or len(copies) != 1:
                break
            cp = copies[0]
            ins = conv.inputs(cp)
            if conv.g.nodes[cp].get("call") != "copy" or len(ins) != 2 or ins[0] != sl:
                break
            sources.append((ins[1], conv.g.edges[ins[1], cp]["shape"]))
            chain += [sl, cp]
            end, cur = span[1], cp
        if end != width or len(sources) < 2 or any(conv.g.nodes[n]["params"] for n in chain):
            continue
        last = chain[-1]
        full = list(conv.g.nodes[node]["shape"])
        readers = [(dst, data) for _, dst, data in conv.g.out_edges(last, data=True)]
        base = dict(conv.g.nodes[last])
        new = f"{last}_cat"
        conv.g.add_node(new, **{**base, "op": "opaque", "call": "cat", "dim": -1, "shape": full})
        for port, (src, shape) in enumerate(sources):
            conv.g.add_edge(src, new, port=port, shape=list(shape))
        for dst, data in readers:
            conv.g.add_edge(new, dst, **{**data, "shape": full})
            if conv.g.nodes[dst]["op"] == "attention" and data["port"] == 1:  # its kv heads, from the whole key
                d = conv.g.nodes[dst]
                d["n_kv_heads"] = math.prod(full) // (conv.n_tokens * d["head_dim"])
        conv.g.remove_nodes_from(chain)


def last_axis_slice(key: str, width: int, ndim: int | None = None) -> range | None:
    """The channels ``x[..., a:b]`` takes of a last axis of ``width`` (``key`` as the recorder writes it; every
    leading index ``...`` or ``:``, with an ``...`` unless ``ndim`` names the input's rank); None for any other
    key."""
    parts = [p.strip() for p in key.split(",")]
    lead = parts[:-1]
    if any(p not in ("...", ":") for p in lead) or ("..." not in lead and len(parts) != ndim):
        return None
    bounds = parts[-1].split(":")
    if len(bounds) != 2:
        return None
    try:
        a, b = (int(x) if x else None for x in bounds)
    except ValueError:
        return None
    return range(width)[slice(a, b)]


def _last_axis_span(d: dict, width: int) -> tuple[int, int] | None:
    """``(start, stop)`` of a ``x[..., a:b]`` getitem over a last axis of ``width``; None for any other key."""
    span = last_axis_slice(d.get("key", ""), width)
    return (span.start, span.stop) if span else None


def fold_head_concats(conv: Converter) -> None:
    """A two-input concatenation over the last axis -> a ``head_concat`` node: per head ``[a_h, b_h]``, ``b`` one
    head read by every head (``shared_b``) when its producer holds one head that the source expanded (MLA's
    ``k_pe``).  Any other concatenation stays opaque (refused by name)."""
    for node in [n for n, d in conv.g.nodes(data=True) if d["op"] == "opaque"
                 and d.get("call") in ("cat", "concat", "concatenate") and d.get("dim") == -1]:
        ins = conv.inputs(node)
        if len(ins) != 2 or conv.g.nodes[node]["params"] or ins[0] == ins[1]:
            continue
        shape = conv.g.nodes[node]["shape"]
        a_dim, b_dim = (int(conv.g.edges[i, node]["shape"][-1]) for i in ins)
        if a_dim + b_dim != int(shape[-1]):
            continue
        heads = conv.width(node) // int(shape[-1])
        if conv.width(ins[0]) != heads * a_dim or conv.width(ins[1]) not in (heads * b_dim, b_dim):
            continue
        conv.g.nodes[node].update(op="head_concat", n_heads=heads, a_dim=a_dim, b_dim=b_dim,
                                  shared_b=conv.width(ins[1]) == b_dim)  # one head: shared and own are one function


def fold_bias_adds(conv: Converter) -> None:
    """``linear(x) + b`` with the linear bias-free and read only there, ``b`` one parameter of its output width
    (GPT-NeoX-Japanese's attention ``dense`` and ``dense_bias``, added by the layer) -> the linear with bias ``b``
    (the same sum; F.linear may round it together with the product).

    Also ``linear(x).view(.., heads, head_dim) + b`` with ``b`` one value per head (``(heads,)``, broadcast over
    ``head_dim``: Beam's attention ``gate_bias``) -> the linear with the bias ``b`` repeated ``head_dim`` times
    per head (the linear node records ``head_bias = heads``; the pattern builds that bias, ``export_weights``
    reads one value per head back).  Told apart from a per-channel bias by shape: only when ``heads !=
    head_dim`` (a ``(heads,)`` parameter cannot broadcast along a ``head_dim`` axis of another width); the
    import check measures the result."""
    for node in [n for n, d in conv.g.nodes(data=True) if d["op"] == "add" and len(d["params"]) == 1]:
        if conv.g.in_degree(node) != 1:
            continue
        (src,) = conv.inputs(node)
        d, e = conv.g.nodes[node], conv.g.nodes[src]
        (bias,) = d["params"]
        if not (e["op"] == "linear" and not e["bias"] and e.get("call") == "linear" and conv.g.out_degree(src) == 1):
            continue
        if conv.shape(bias) == (e["out_features"],) and d["shape"] == e["shape"]:
            e.update(bias=True, params=sorted([*e["params"], bias]))
        elif _per_head_bias(conv.shape(bias), d["shape"], e["shape"], e["out_features"]):
            e.update(bias=True, head_bias=conv.shape(bias)[0], params=sorted([*e["params"], bias]))
        else:
            continue
        for _, dst, data in list(conv.g.out_edges(node, data=True)):
            conv.g.add_edge(src, dst, **data)
        conv.g.remove_node(node)


def _per_head_bias(bias: tuple[int, ...], add_shape: list[int], linear_shape: list[int], width: int) -> bool:
    """A ``(heads,)`` bias added to the linear's output viewed ``(.., heads, head_dim)``, ``heads != head_dim``."""
    if len(bias) != 1 or len(add_shape) < 2 or list(add_shape[:-2]) != list(linear_shape[:-1]):
        return False
    heads, head_dim = add_shape[-2:]
    return heads == bias[0] and heads * head_dim == width and heads != head_dim and head_dim > 1


# the recorded steps from an indexer's top-k indices to the attention's mask: the indices scattered into a
# selection (``new_ones(..).scatter(-1, idx, False)``), inverted and and-ed into (or masked into) the mask
_SELECTION_CALLS = frozenset({"long", "int", "to", "new_ones", "new_zeros", "ones_like", "zeros_like", "scatter",
                              "scatter_", "invert", "bitwise_not", "logical_not", "and", "logical_and", "bitwise_and",
                              "masked_fill", "unsqueeze", "getitem", "view", "reshape", "expand", "where"})


def fold_sparse_indexers(conv: Converter) -> None:
    """DeepSeek Sparse Attention: the lightning indexer whose top-k choice masks an attention (DeepSeek-V3.2,
    GLM-MoE-DSA, AXK2, Dots3) -> one ``index_topk`` node read by the attention's ``select`` port.

    Found from the dataflow alone: an attention's mask (port 3) behind a ``topk`` whose scores are
    ``(w * c_w) @ relu((q @ k^T) * c_s)`` masked by the causal mask: a matmul of a per-head weight (a width-``h``
    activation, times an optional constant ``c_w``) with the relu of the scaled product of two activations, the
    RoPE'd queries (``h`` heads of ``d``) and the one key (``d``).  The two constants become the node's
    ``weight_scale`` and ``scale``; ``topk`` is the recorded top-k width when it is below the recorded length,
    else the choice keeps every key there and ``topk`` is the owning module's ``index_topk`` (at least the
    recorded width), else refused.  The selection steps (scatter, invert, and) are dropped: the attention's
    ``select`` port means the same mask.  A layer that reuses an earlier layer's choice (GLM-MoE-DSA's
    ``shared`` indexer layers) reads that layer's node.  The import check compares the result at lengths past
    ``topk`` (:func:`benchmarks.compat.tiny_config` shrinks ``index_topk``)."""
    seq = conv.rec.meta["input_shape"][-1]
    folded: dict[str, str] = {}  # recorded topk -> its index_topk node
    dead: set[str] = set()
    for att, d in sorted(conv.g.nodes(data=True), key=lambda nd: nd[1]["index"]):
        if d["op"] != "attention":
            continue
        masks = [s for s, _, port in conv.g.in_edges(att, data="port") if port == 3]
        if not masks:
            continue
        chain = nx.ancestors(conv.g, masks[0]) | {masks[0]}
        tops = [n for n in chain if conv.g.nodes[n]["op"] == "opaque" and conv.g.nodes[n].get("call") == "topk"]
        if len(tops) != 1:
            continue
        (top,) = tops
        between = (chain - nx.ancestors(conv.g, top)) - {top}
        if any(conv.g.nodes[n]["op"] != "opaque" or conv.g.nodes[n].get("call") not in _SELECTION_CALLS
               or conv.g.nodes[n]["params"] for n in between):
            continue  # not a selection only: left to the dynamic-mask and sparse-attention refusals
        if top not in folded:
            found = _indexer_scores(conv, top)
            if found is None:
                continue
            q, k, w, scale, weight_scale, scoring = found
            width = int(conv.g.nodes[top]["shape"][-1])
            topk = width
            if width >= seq:  # every key chosen at the recorded length: the module's own limit, if it has one
                owner = conv.modules.get(conv.g.nodes[top]["module_path"])
                topk = getattr(owner, "index_topk", None)
                if not isinstance(topk, int) or isinstance(topk, bool) or topk < width:
                    raise conv.refuse(top, f"sparse attention indexer (DeepSeek Sparse Attention): its top-k keeps "
                                      f"all {width} keys at the recorded length {seq} and the module names no "
                                      f"index_topk, so the number of keys each query reads is not measured")
            h, hd = conv.width(w), conv.width(k)
            node = f"{top}__index_topk"
            conv.g.add_node(node, op="index_topk", module_path=conv.g.nodes[top]["module_path"], params=[],
                            index=conv.g.nodes[top]["index"], shape=list(conv.g.nodes[top]["shape"]),
                            index_params={"n_heads": h, "head_dim": hd, "topk": topk, "scale": scale,
                                          "weight_scale": weight_scale})
            for port, src in enumerate((q, k, w)):
                conv.g.add_edge(src, node, port=port)
            folded[top] = node
            dead |= scoring | {top}
        conv.g.remove_edge(masks[0], att)
        conv.g.add_edge(folded[top], att, port=3)
        dead |= between
    while True:  # drop the scoring and selection steps nothing reads any more
        gone = [n for n in dead if n in conv.g and conv.g.out_degree(n) == 0]
        if not gone:
            break
        conv.g.remove_nodes_from(gone)


def _indexer_scores(conv: Converter, top: str):
    """``(q, k, w, scale, weight_scale, nodes)`` of a top-k over ``(w * c_w) @ relu((q @ k^T) * c_s)`` (masked),
    else None."""
    g = conv.g

    def strip(node, op):  # an optional constant factor
        if g.nodes[node]["op"] == op and g.in_degree(node) == 1 and not g.nodes[node]["params"]:
            return conv.inputs(node)[0], float(g.nodes[node].get("factor", 1.0)), node
        return node, 1.0, None

    (masked,) = conv.inputs(top) if g.in_degree(top) == 1 else (None,)
    if masked is None or g.nodes[masked]["op"] not in ("opaque", "add") or g.in_degree(masked) != 1:
        return None
    (total,) = conv.inputs(masked)
    if g.nodes[total].get("call") not in ("matmul", "bmm", "einsum") or g.in_degree(total) != 2:
        return None
    nodes = {masked, total}
    relu = next((i for i in conv.inputs(total) if g.nodes[i]["op"] == "act" and g.nodes[i].get("fn") == "relu"), None)
    if relu is None:
        return None
    (weights,) = [i for i in conv.inputs(total) if i != relu]
    w, weight_scale, s1 = strip(weights, "scale")
    (scaled,) = conv.inputs(relu)
    qk, scale, s2 = strip(scaled, "scale")
    if g.nodes[qk].get("call") not in ("matmul", "bmm", "einsum") or g.in_degree(qk) != 2 \
            or g.nodes[w]["op"] != "linear":
        return None
    h = conv.width(w)
    a, b = conv.inputs(qk)
    q, k = (a, b) if conv.width(a) == h * conv.width(b) else (b, a)
    if conv.width(q) != h * conv.width(k):
        return None
    if any(g.out_degree(n) != 1 for n in (relu, qk) + tuple(x for x in (s1, s2) if x)):
        return None
    return q, k, w, scale, weight_scale, nodes | {relu, qk} | {x for x in (s1, s2) if x}
