"""Post-processing of a recording: contract parametric-leaf regions (norm, experts, router), RoPE and eager
attention into single nodes, keep the logits' ancestors, label the ``lm_head`` and give readable ids."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import TYPE_CHECKING

import networkx as nx
import torch

from ..errors import BadInput
from .calls import _NORM_FNS, _NORMALISING, _numel
from .graph import _ID, RecordedGraph

if TYPE_CHECKING:
    from .recorder import _Frame, _Recorder

# RoPE: rearrangements of one activation, and the combiners of the rotated halves
_REARRANGE = frozenset({"getitem", "neg", "cat", "concat", "concatenate", "stack", "narrow", "select",
                        "index_select", "chunk", "split", "split_with_sizes", "tensor_split", "unbind",
                        "flip", "roll"})
_COMBINE = frozenset({"sub", "cat", "concat", "concatenate", "stack"})
# eager attention: what may sit between Q K^T and the softmax, and between the softmax and P V
_SCORE_OPS = frozenset({"softmax", "masked_fill", "add", "sub", "mul", "div", "where", "tanh", "clamp",
                        "dropout"})



def _finish(rec: _Recorder, logits_node: str, ids: torch.Tensor, name: str, vocab: int) -> RecordedGraph:
    g = rec.graph
    keep = nx.ancestors(g, logits_node) | {logits_node}
    pruned = g.number_of_nodes() - len(keep)
    g.remove_nodes_from([n for n in list(g) if n not in keep])
    merged: dict[str, str] = {}
    _contract_regions(g, rec, merged)
    _contract_routers(g, rec, merged)
    _contract_complex_ropes(g, rec.n_tokens, merged)  # first: its phasor product is no cos/sin seed
    _contract_ropes(g, rec.n_tokens, merged)
    _contract_eager_attention(g, rec.n_tokens, merged, rec.added)
    logits_node = _resolve(merged, logits_node)
    for n in g:
        g.nodes[n].pop("region", None)
    # the ids the model reads: its embedding table's rows, which may exceed the logits' vocabulary (Moshi's
    # ``vocab_size + 1`` rows: an initial token it reads and never predicts)
    tables = [g.nodes[s]["vocab"] for s in g.successors("tokens") if g.nodes[s]["op"] == "embedding"]
    g.nodes["tokens"]["vocab"] = int(tables[0]) if len(set(tables)) == 1 and tables[0] > vocab else int(vocab)
    mapping = _readable_ids(g)
    nx.relabel_nodes(g, mapping, copy=False)
    logits_node = mapping[logits_node]
    if not _label_lm_head(g, logits_node):
        raise BadInput(f"{name}: the logits are not computed by a linear head over hidden states "
                       f"(they come from {g.nodes[logits_node]['op']} {logits_node!r}): not a causal LM")
    meta = {"model": name, "input_shape": list(ids.shape), "logits": logits_node, "pruned": pruned,
            "aliases": dict(sorted(rec.aliases.items()))}
    return RecordedGraph(g, meta)


def _resolve(merged: dict[str, str], node: str) -> str:
    while node in merged:
        node = merged[node]
    return node


def _contract(g: nx.DiGraph, nodes: set[str], new: str, attrs: dict, port_order: list[str],
              merged: dict[str, str]) -> None:
    """Replace ``nodes`` by one node ``new``; outputs keep their edges.

    Input ports follow ``port_order`` (the producers of the module's arguments, one entry per argument,
    so a producer passed twice gets two ports), then the other producers read, by first use.
    """
    order = sorted(nodes, key=lambda n: g.nodes[n]["index"])
    shapes: dict[str, list[int]] = {}
    for n in order:
        for src, _, d in sorted(g.in_edges(n, data=True), key=lambda e: e[2]["port"]):
            if src not in nodes:
                shapes.setdefault(src, d["shape"])
    argument_order = [s for s in port_order if s in shapes] + [s for s in shapes if s not in port_order]
    ports: dict[str, list[int]] = defaultdict(list)
    for port, src in enumerate(argument_order):
        ports[src].append(port)
    ext_out: dict[str, dict] = {}
    for n in order:
        for _, dst, d in g.out_edges(n, data=True):
            if dst in nodes:
                continue
            if dst in ext_out:
                both = set(ext_out[dst].get("ports", [ext_out[dst]["port"]])) | set(d.get("ports", [d["port"]]))
                ext_out[dst].update(port=min(both), ports=sorted(both))
            else:
                ext_out[dst] = dict(d)
    g.remove_nodes_from(order)
    g.add_node(new, **attrs)
    for src, numbers in ports.items():
        g.add_edge(src, new, port=numbers[0], shape=shapes[src], **({"ports": numbers} if len(numbers) > 1 else {}))
    for dst, d in ext_out.items():
        g.add_edge(new, dst, **d)
    for n in order:
        if n != new:
            merged[n] = new


def _common_path(paths: list[str]) -> str:
    """The innermost module containing every one of ``paths``."""
    parts = [p.split(".") if p else [] for p in paths]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _base_attrs(g: nx.DiGraph, nodes, op: str, path: str, shape_node: str) -> dict:
    params = sorted({p for n in nodes for p in g.nodes[n]["params"]})
    return {"op": op, "module_path": path, "params": params, "index": min(g.nodes[n]["index"] for n in nodes),
            "shape": g.nodes[shape_node]["shape"]}


def _contract_regions(g: nx.DiGraph, rec: _Recorder, merged: dict[str, str]) -> None:
    """Contract each parametric-leaf module call that computes a norm, fused experts or a router."""
    members: dict[int, list[str]] = defaultdict(list)
    for n, d in g.nodes(data=True):
        if d.get("region") is not None:
            members[d["region"]].append(n)
    for call in sorted(members):
        frame = rec.regions[call]
        nodes = sorted(members[call], key=lambda n: g.nodes[n]["index"])
        if frame.activation:
            _contract_activation(g, nodes, frame, merged, rec.n_tokens)
            continue
        found = _classify_region(g, nodes, frame, rec.own[id(frame.module)], rec.n_tokens)
        if found is None:
            continue
        op, attrs = found
        outs = [_resolve(merged, o) for o in frame.outputs]
        shape_node = next((o for o in outs if o in nodes), nodes[-1])
        new = nodes[0]
        full = {**_base_attrs(g, nodes, op, frame.path, shape_node), **attrs}
        if op == "router":
            full["call_args"] = frame.call_args
        _contract(g, set(nodes), new, full, [_resolve(merged, i) for i in frame.inputs], merged)


def _expert_intermediate(shapes, hidden: int, dims: list) -> int:
    """I of fused experts ``gate_up (E, 2I, H)`` / ``down (E, H, I)``: the I both shapes agree on (so that
    I == H is not read as 2I), else the smallest non-hidden dim."""
    agreed = None
    for s in (s for s in shapes if len(s) == 3):
        c = ({int(s[2])} if s[1] == hidden else set()) | ({int(s[1]) // 2} if s[2] == hidden and s[1] % 2 == 0 else set())
        agreed = c if agreed is None else agreed & c
    if agreed:
        return min(agreed)
    return int(min(dims)) if dims else hidden
_TAILS = torch.logspace(-8, 6, 281, dtype=torch.float64)  # tiny and huge inputs: a clip (gelu_10) shows there
ACT_PROBE = torch.cat([torch.linspace(-8.0, 8.0, 4097, dtype=torch.float64), _TAILS, -_TAILS])


def identify_activation(module) -> str | None:
    """The :data:`fuzz.ops.ACTIVATIONS` fn that ``module`` computes, elementwise in float64 to a few ulps on a
    probe over ``[-8, 8]`` and ``+-[1e-8, 1e6]``; None when it computes none of them (or does not run on a float64 vector)."""
    from ..materialize import ACT
    from ..ops import ACTIVATIONS

    try:
        with torch.no_grad():
            y = module(ACT_PROBE.clone())
    except Exception:  # not an elementwise tensor -> tensor module
        return None
    if not isinstance(y, torch.Tensor) or y.shape != ACT_PROBE.shape or y.dtype != torch.float64:
        return None
    bound = 32 * torch.finfo(torch.float64).eps * (1 + y.abs())
    errors = {fn: float((ACT[fn](ACT_PROBE) - y).abs().max()) for fn in ACTIVATIONS
              if bool(((ACT[fn](ACT_PROBE) - y).abs() <= bound).all())}
    return min(errors, key=errors.get) if errors else None


def weightless_norm(module, x_shape, eps_candidates, dims=None) -> tuple[str, float, int] | None:
    """``(kind, eps, dim)`` when the parameter-free ``module`` computes a weight-free RMSNorm or LayerNorm over
    groups of ``dim`` channels of the last axis (``u / sqrt(mean(u^2) + eps)``, ``u = x`` or ``x - mean(x)``;
    ``dim`` one of ``dims``, default the last axis) with one of ``eps_candidates``, measured on a float64 probe
    of ``x_shape`` (an offset random draw: the mean shows) to the float32 floor (NanoChat normalises in
    float32); None otherwise."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tuple(x_shape), generator=gen, dtype=torch.float64) * 3.0 + 0.5
    try:
        with torch.no_grad():
            y = module(x.clone())
    except Exception:  # not a one-tensor module
        return None
    if not isinstance(y, torch.Tensor) or y.numel() != x.numel():
        return None
    for dim in dims or (x.shape[-1],):
        if dim <= 0 or x.shape[-1] % dim:
            continue
        xg = x.reshape(*x.shape[:-1], -1, dim)
        for kind in ("rms", "layer"):
            u = xg - xg.mean(-1, keepdim=True) if kind == "layer" else xg
            for eps in eps_candidates:
                ref = (u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + eps)).reshape(y.shape)
                if bool(((ref - y.double()).abs() <= 1e-5 * (1 + ref.abs())).all()):
                    return kind, float(eps), int(dim)
    return None


def _contract_weightless_norm(g: nx.DiGraph, nodes: list[str], frame: _Frame, merged: dict[str, str],
                              n_tokens: int, inputs: list[str], out: str) -> bool:
    """Contract a parameter-free module that normalises (a normalising call among its nodes) and computes a
    weight-free RMSNorm / LayerNorm (:func:`weightless_norm`, NanoChat's ``F.rms_norm``-like module) into one
    ``norm`` node with ``weight_form="none"``; False when it is none."""
    if not any(g.nodes[n].get("call") in _NORMALISING | {"pow", "mean"} for n in nodes):
        return False
    eps = sorted({float(g.nodes[n]["scalar"]) for n in nodes if g.nodes[n].get("call") == "add"
                  and isinstance(g.nodes[n].get("scalar"), float) and 0 < g.nodes[n]["scalar"] < 0.1}
                 | {float(g.nodes[n]["eps"]) for n in nodes if g.nodes[n]["op"] == "norm"
                    and g.nodes[n].get("eps") is not None})
    dims = sorted({int(frame.in_shapes[0][-1]), int(g.nodes[out]["shape"][-1])}, reverse=True)
    found = weightless_norm(frame.module, frame.in_shapes[0], eps, dims)
    if found is None:
        return False
    dim = found[2]
    attrs = {**_base_attrs(g, nodes, "norm", frame.path, out), "kind": found[0], "dim": dim,
             "groups": max(1, _numel(frame.in_shapes[0]) // (n_tokens * dim)), "eps": found[1],
             "weight_form": "none", "bias": False, "group_weights": False, "call": type(frame.module).__name__}
    _contract(g, set(nodes), nodes[0], attrs, inputs, merged)
    return True


def _contract_activation(g: nx.DiGraph, nodes: list[str], frame: _Frame, merged: dict[str, str],
                         n_tokens: int) -> None:
    """Contract the weight-free call of a parameter-free leaf module computing an elementwise activation
    (``relu(x) ** 2``, ``x * sigmoid(1.702 x)``, the tanh GELU written out) into one ``act`` node; the fn is
    found by probing the module (:func:`identify_activation`).  A module computing none of them, recorded as
    opaque ops, becomes an ``act`` named after its class, which the importer refuses by that name."""
    inputs = [_resolve(merged, i) for i in frame.inputs]
    outputs = [_resolve(merged, o) for o in frame.outputs]
    if len(inputs) != 1 or len(outputs) != 1 or outputs[0] not in nodes:
        return
    out = outputs[0]
    if any(g.nodes[n]["params"] for n in nodes) or any(s not in nodes for n in nodes if n != out
                                                       for s in g.successors(n)):
        return
    if list(g.nodes[out]["shape"]) != list(frame.in_shapes[0]):  # a per-group view (a GraphModel's own norm)
        if _numel(g.nodes[out]["shape"]) == _numel(frame.in_shapes[0]):
            _contract_weightless_norm(g, nodes, frame, merged, n_tokens, inputs, out)
        return
    fn = identify_activation(frame.module)
    if fn is None and _contract_weightless_norm(g, nodes, frame, merged, n_tokens, inputs, out):
        return
    if fn is None:
        if not any(g.nodes[n]["op"] == "opaque" for n in nodes):
            return  # importable as recorded (scales, adds ...): nothing to name
        fn = f"unknown:{type(frame.module).__name__}"
    elif len(nodes) == 1 and g.nodes[nodes[0]]["op"] == "act" and g.nodes[nodes[0]]["fn"] == fn:
        return  # already the act op (nn.SiLU, GELUActivation)
    attrs = {**_base_attrs(g, nodes, "act", frame.path, out), "fn": fn, "call": type(frame.module).__name__}
    _contract(g, set(nodes), nodes[0], attrs, inputs, merged)


def measure_xielu(module) -> dict | None:
    """xIELU's ``beta``, ``eps`` and ``a_p`` measured on the elementwise module with two scalar parameters:
    ``y = a_p x^2 + beta x`` at ``x = 1, 2``; ``a_n = beta + softplus(p)`` for the parameter ``p`` whose
    softplus is not ``a_p``; ``eps`` from ``y(0) = expm1(eps) a_n``; then the whole function is confirmed on the
    activation probe.  None when the module computes something else."""
    import torch.nn.functional as F

    params = [p for p in module.parameters() if p.numel() == 1]
    if len(params) != 2:
        return None
    try:
        with torch.no_grad():
            y = module(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64))
            yy = module(ACT_PROBE.clone())
    except Exception:
        return None
    if not isinstance(y, torch.Tensor) or y.shape != (3,) or yy.shape != ACT_PROBE.shape:
        return None
    y = y.double()
    a_p = float((y[2] - 2 * y[1]) / 2)
    beta = float(y[1]) - a_p
    soft = [float(F.softplus(p.detach().double()).reshape(())) for p in params]
    hits = [i for i, s in enumerate(soft) if abs(s - a_p) <= 1e-9 * max(1.0, abs(a_p))]
    if len(hits) != 1 or not 0 < beta <= 10:
        return None
    a_n = beta + soft[1 - hits[0]]
    ratio = float(y[0]) / a_n
    if not -1 < ratio <= 0:
        return None
    eps = math.log1p(ratio)
    x = ACT_PROBE
    ref = torch.where(x > 0, a_p * x * x + beta * x, (torch.expm1(torch.clamp(x, max=eps)) - x) * a_n + beta * x)
    if not bool(((ref - yy.double()).abs() <= 1e-9 * (1 + ref.abs())).all()) or not -0.1 <= eps <= 0:
        return None
    return {"beta": beta, "eps": eps, "a_p": a_p}


def _classify_region(g, nodes, frame: _Frame, own: dict, n_tokens: int) -> tuple[str, dict] | None:
    read = {p for n in nodes for p in g.nodes[n]["params"]}
    if not read or not read <= set(own) or not frame.in_shapes:
        return None
    if len(read) == 2 and all(_numel(own[p]) == 1 for p in read):  # an activation with two learned scalars
        found = measure_xielu(frame.module)
        if found is not None:
            return "xielu", found
    fns = {g.nodes[n].get("call") for n in nodes}
    x_shape = frame.in_shapes[0]
    shapes = {p: own[p] for p in read}
    if any(len(s) == 3 for s in shapes.values()):
        hidden = int(x_shape[-1])
        dims = [d for s in shapes.values() if len(s) == 3 for d in s[1:] if d != hidden]
        acts = [g.nodes[n]["fn"] for n in nodes if g.nodes[n]["op"] == "act"]
        if acts and acts[0] == "sigmoid" and "clamp" in fns:  # GPT-OSS: g * sigmoid(alpha g), clamped
            acts = ["clamped_swiglu"]
        return "experts", {"n_experts": int(next(s[0] for s in shapes.values() if len(s) == 3)), "hidden": hidden,
                           "intermediate": _expert_intermediate(shapes.values(), hidden, dims),
                           "act": acts[0] if acts else None}
    group_weights = len(set(shapes.values())) == 1 and all(len(s) == 2 for s in shapes.values()) \
        and _numel(x_shape) == n_tokens * _numel(next(iter(shapes.values())))  # (heads, head_dim): Cohere q_norm
    # a normalising call; Gemma4 writes 1 / rms as pow(mean(x^2) + eps, -0.5)
    normalising = fns & _NORMALISING or any(g.nodes[n].get("call") == "pow" and g.nodes[n].get("scalar") in (-0.5, 0.5)
                                            for n in nodes)
    if (group_weights or all(len(s) == 1 for s in shapes.values())) and normalising:
        scaled = any(g.nodes[n]["params"] and g.nodes[n].get("call") in {"mul"} | _NORM_FNS for n in nodes)
        if not scaled:
            return None
        fused = [g.nodes[n] for n in nodes if g.nodes[n]["op"] == "norm"]
        dim = int(next(iter(shapes.values()))[-1])
        if fused:
            kind, eps = fused[0]["kind"], fused[0]["eps"]
        else:
            kind = "layer" if "sub" in fns and "mean" in fns or fns & {"var", "std", "var_mean"} else "rms"
            small = [g.nodes[n]["scalar"] for n in nodes if g.nodes[n].get("call") == "add"
                     and isinstance(g.nodes[n].get("scalar"), float) and 0 < g.nodes[n]["scalar"] < 0.1]
            eps = small[0] if small else None
        one_plus = any(fn == "add" and s == 1 for fn, s in frame.param_ops)
        return "norm", {"kind": kind, "dim": dim, "groups": max(1, _numel(x_shape) // (n_tokens * dim)),
                        "eps": eps, "weight_form": "1+w" if one_plus else "w", "bias": len(read) > 1,
                        "group_weights": group_weights}
    linears = [g.nodes[n] for n in nodes if g.nodes[n]["op"] == "linear"]
    topk = [g.nodes[n] for n in nodes if g.nodes[n].get("call") == "topk"]
    if len(linears) == 1 and not topk and {"max", "masked_fill", "softmax"} <= fns:  # sparsemixer (Phimoe)
        return "router", {"in_features": linears[0]["in_features"], "n_experts": linears[0]["out_features"],
                          "top_k": 2, "renormalize": False, "bias": linears[0]["bias"],
                          "proj_params": list(linears[0]["params"]), "sparsemixer": True}
    if len(linears) == 1 and topk:
        return "router", {"in_features": linears[0]["in_features"], "n_experts": linears[0]["out_features"],
                          "top_k": topk[0]["k"], "renormalize": "sum" in fns and "div" in fns,
                          "bias": linears[0]["bias"], "proj_params": list(linears[0]["params"])}
    return None


# what a router may compute between its projection and the experts (scores, choice, gather, renormalisation)
_ROUTER_OPS = frozenset({"softmax", "sigmoid", "topk", "gather", "sum", "div", "add", "mul", "clamp", "max",
                         "scatter", "to", "float", "sort", "take_along_dim"})


def _contract_routers(g: nx.DiGraph, rec: _Recorder, merged: dict[str, str]) -> None:
    """Contract a top-k router written across modules (a parametric leaf did not hold it whole: the
    projection is a child ``nn.Linear``, or a correction bias lives in a child module or is passed in by
    the parent) into one ``router`` node, from the dataflow: the nodes on the paths from the projection
    (the ``linear`` of width E feeding a ``topk``) to the experts node reading the choice.  Kept when
    those nodes read nothing else than the projection's input, parameters of E numbers (a correction
    bias) and constants, compute only score / choice / renormalisation ops, and feed nothing but the
    experts; the router's module is the innermost one holding all of them."""
    pshape = {name: shape for own in rec.own.values() for name, shape in own.items()}
    for top in sorted((n for n, d in g.nodes(data=True) if d["op"] == "opaque" and d.get("call") == "topk"),
                      key=lambda n: g.nodes[n]["index"]):
        if top not in g:
            continue
        found = _router_cluster(g, top, pshape)
        if found is None:
            continue
        proj, cluster = found
        lin = g.nodes[proj]
        e = int(lin["out_features"])
        tops = sorted((n for n in cluster if g.nodes[n].get("call") == "topk"), key=lambda n: g.nodes[n]["index"])
        calls = {g.nodes[n].get("call") for n in cluster}
        path = _common_path([g.nodes[n]["module_path"] for n in cluster])
        exits = [n for n in cluster if any(s not in cluster for s in g.successors(n))]
        attrs = {**_base_attrs(g, cluster, "router", path, max(exits, key=lambda n: g.nodes[n]["index"])),
                 "in_features": lin["in_features"], "n_experts": e, "top_k": g.nodes[tops[0]]["k"],
                 "renormalize": "sum" in calls and "div" in calls, "bias": lin["bias"],
                 "proj_params": list(lin["params"]), "call_args": rec.call_args.get(path)}
        _contract(g, cluster, proj, attrs, [next(iter(g.predecessors(proj)))], merged)


def _router_cluster(g: nx.DiGraph, top: str, pshape: dict) -> tuple[str, set[str]] | None:
    """``(projection, nodes)`` of the router whose ``topk`` is ``top`` (see :func:`_contract_routers`)."""
    width = [d["shape"][-1] for _, _, d in g.in_edges(top, data=True)]
    if len(width) != 1:
        return None
    e = int(width[0])
    proj, seen, stack = None, set(), list(g.predecessors(top))
    while stack:  # back from the choice to the projection, through weight-free score ops
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        d = g.nodes[n]
        if d["op"] == "linear" and int(d["out_features"]) == e and g.in_degree(n) == 1:
            if proj not in (None, n):
                return None
            proj = n
            continue
        if not _router_step(g, n, e, pshape):
            return None
        stack.extend(g.predecessors(n))
    if proj is None:
        return None
    experts = sorted((s for s in nx.descendants(g, top) if g.nodes[s]["op"] == "experts"),
                     key=lambda n: g.nodes[n]["index"])
    if not experts:
        return None
    cluster = (nx.descendants(g, proj) & nx.ancestors(g, experts[0])) | {proj}
    x = next(iter(g.predecessors(proj)))
    for n in cluster - {proj}:
        if not _router_step(g, n, e, pshape) or any(p not in cluster for p in g.predecessors(n)):
            return None
    if any(s not in cluster and s != experts[0] for n in cluster for s in g.successors(n)):
        return None
    if x in cluster:
        return None
    return proj, cluster


def _router_step(g: nx.DiGraph, n: str, e: int, pshape: dict) -> bool:
    """A node a router may hold after its projection: a weight-free score / choice op, or one reading
    parameters of E numbers (a correction bias)."""
    d = g.nodes[n]
    if d["op"] not in ("opaque", "act", "scale", "add", "mul"):
        return False
    if d["op"] == "act" and d.get("fn") not in ("sigmoid",):
        return False
    if d["op"] == "opaque" and d.get("call") not in _ROUTER_OPS:
        return False
    return all(p in pshape and _numel(pshape[p]) == e for p in d["params"])


def _is_rearrange(d: dict) -> bool:
    return d["op"] == "opaque" and d.get("call") in _REARRANGE and not d["params"]


def _contract_complex_ropes(g: nx.DiGraph, n_tokens: int, merged: dict[str, str]) -> None:
    """Contract ``view_as_real(view_as_complex(x) * freqs_cis)`` (Llama 4: each adjacent pair a complex number
    times a constant unit phasor) into an interleaved ``rope`` node whose tables are the phasor's real (cos)
    and imaginary (sin) parts."""
    for c in sorted((n for n, d in g.nodes(data=True) if d["op"] == "opaque" and d.get("call") == "view_as_complex"),
                    key=lambda n: g.nodes[n]["index"]):
        if g.in_degree(c) != 1 or g.out_degree(c) != 1:
            continue
        (m,) = g.successors(c)
        dm = g.nodes[m]
        if not (dm["op"] == "opaque" and dm.get("call") == "mul" and "const_shape" in dm and g.in_degree(m) == 1
                and g.out_degree(m) == 1):
            continue
        (r,) = g.successors(m)
        if g.nodes[r].get("call") != "view_as_real" or g.in_degree(r) != 1:
            continue
        shape = g.nodes[r]["shape"]
        head_dim = 2 * int(shape[-2])
        comp = {c, m, r}
        attrs = {**_base_attrs(g, comp, "rope", _common_path([g.nodes[n]["module_path"] for n in comp]), r),
                 "n_heads": _numel(shape) // (n_tokens * head_dim), "head_dim": head_dim,
                 "rotary_dim": 2 * int(dm["const_shape"][-1]), "style": "interleaved"}
        if "const_rows_imag" in dm:
            attrs["tables"] = [dm["const_rows"], dm["const_rows_imag"]]
        _contract(g, comp, c, attrs, list(g.predecessors(c)), merged)


def _contract_ropes(g: nx.DiGraph, n_tokens: int, merged: dict[str, str]) -> None:
    """Contract ``x * cos + rotate(x) * sin`` (any pairing, partial rotary included) into ``rope`` nodes.

    Seeds are products of one activation with a constant table; the rearrangements (slices, negation,
    concatenation) feeding them are pulled in, then the adds / concatenations combining them.  A
    cluster is kept when it reads exactly one producer, holds two or more seeds and has a single exit.
    """
    seeds = {n for n, d in g.nodes(data=True)
             if d["op"] == "opaque" and d.get("call") == "mul" and "const_shape" in d and g.in_degree(n) == 1
             and not _per_position_factor(g, n)}
    if not seeds:
        return
    cand = set(seeds)
    sources = set()
    stack = [p for s in seeds for p in g.predecessors(s)]
    while stack:
        p = stack.pop()
        if p in cand:
            continue
        if _is_rearrange(g.nodes[p]):
            cand.add(p)
            stack.extend(g.predecessors(p))
        else:
            sources.add(p)
    changed = True
    while changed:
        changed = False
        for c in sorted({s for n in cand for s in g.successors(n)} - cand, key=lambda n: g.nodes[n]["index"]):
            d = g.nodes[c]
            if not (d["op"] == "add" and not d["params"] or d["op"] == "opaque" and d.get("call") in _COMBINE):
                continue
            extra = set(g.predecessors(c)) - cand
            if all(_is_rearrange(g.nodes[p]) and set(g.predecessors(p)) <= cand | sources for p in extra):
                cand |= extra | {c}
                changed = True
    # a product of the rotated result with a constant (Ministral3's per-position query scale) is no seed of it
    cand -= {s for s in seeds if any(p in cand and not _is_rearrange(g.nodes[p]) for p in g.predecessors(s))}
    for comp in sorted(nx.connected_components(g.subgraph(cand).to_undirected()),
                       key=lambda c: min(g.nodes[n]["index"] for n in c)):
        comp = _without_leading_pass(g, comp, seeds)
        while True:  # a lone entry slice (e.g. q out of a fused projection) is the rotated input, not RoPE
            entries = [n for n in comp if any(p not in comp for p in g.predecessors(n))]
            if len(entries) != 1 or entries[0] in seeds or len(comp) <= 1:
                break
            comp = comp - {entries[0]}
        ext = {p for n in comp for p in g.predecessors(n)} - comp
        exits = [n for n in comp if any(s not in comp for s in g.successors(n))]
        n_seeds = len(comp & seeds)
        if len(ext) != 1 or len(exits) != 1 or n_seeds < 2:
            continue
        exit_ = exits[0]
        d = g.nodes[exit_]
        if not (d["op"] == "add" or d.get("call") in _COMBINE):
            continue
        shape = d["shape"]
        head_dim = int(shape[-1])
        in_order = sorted(comp & seeds, key=lambda n: g.nodes[n]["index"])
        rotary = _cluster_rotary(g, comp & seeds)
        interleaved = any(g.nodes[n].get("call") == "stack" or g.nodes[n].get("strided") for n in comp)
        path = _common_path([g.nodes[n]["module_path"] for n in comp])
        attrs = {**_base_attrs(g, comp, "rope", path, exit_), "n_heads": _numel(shape) // (n_tokens * head_dim),
                 "head_dim": head_dim, "rotary_dim": rotary, "style": "interleaved" if interleaved else "half"}
        if all("const_rows" in g.nodes[s] for s in in_order):  # the cos/sin tables read (importer: rope.py)
            attrs["tables"] = [g.nodes[s]["const_rows"] for s in in_order]
        if not interleaved and _negates_first_half(g, comp):
            attrs["first_half_negated"] = True  # NanoChat: rotate_half = cat(x2, -x1), a rotation by -theta
        first = min(comp, key=lambda n: g.nodes[n]["index"])
        _contract(g, set(comp), first, attrs, list(ext), merged)


def _per_position_factor(g: nx.DiGraph, node: str) -> bool:
    """``x * c`` with ``c`` one number per position (last axis 1) over a wider ``x``: a position-dependent scale
    (Mistral4 / Llama-4 attention temperature tuning), not a cos / sin table."""
    d = g.nodes[node]
    (src,) = g.predecessors(node)
    return int(d["const_shape"][-1]) == 1 and int(g.edges[src, node]["shape"][-1]) > 1



_HALVES = frozenset({"getitem", "chunk", "split", "split_with_sizes", "tensor_split", "unbind"})


def _cluster_rotary(g: nx.DiGraph, seeds: set) -> int:
    """The rotary width of a RoPE cluster: its widest ``cos`` / ``sin`` table, twice that when every seed multiplies
    one half of the rotated channels by a half-width table (DeepSeek-V3's ``x[..., 0::2] * cos[..., :r/2]``,
    GPT-OSS' ``chunk(x, 2)[0] * cos``): each seed's input is then a slice of width ``w`` out of ``2 w`` channels."""
    width = max(int(g.nodes[s]["const_shape"][-1]) for s in seeds)

    def half(seed: str) -> bool:
        (src,) = g.predecessors(seed)
        d = g.nodes[src]
        if not (d["op"] == "opaque" and d.get("call") in _HALVES and g.in_degree(src) == 1):
            return False
        (whole,) = g.predecessors(src)
        return int(d["shape"][-1]) == width == int(g.nodes[seed]["const_shape"][-1]) \
            and int(g.edges[whole, src]["shape"][-1]) == 2 * width

    return 2 * width if all(half(s) for s in seeds) else width


def _without_leading_pass(g: nx.DiGraph, comp: set, seeds: set) -> set:
    """A cluster whose exit concatenates a pass-through part *before* the rotated part (MLA:
    ``cat(q_nope, rope(q_pe))``) is no RoPE on the first channels: the concatenation and the pass-through
    branch leave the cluster (they import as a ``head_slice`` and a ``head_concat``), the rotated part stays."""
    sub = g.subgraph(comp)
    rotated = set()
    for s in comp & seeds:
        rotated |= nx.ancestors(sub, s) | nx.descendants(sub, s) | {s}
    passing = comp - rotated
    exits = [n for n in comp if any(s not in comp for s in g.successors(n))]
    if not passing or len(exits) != 1 or g.nodes[exits[0]].get("call") not in _COMBINE:
        return comp
    exit_ = exits[0]
    ins = [s for s, _, _ in sorted(g.in_edges(exit_, data="port"), key=lambda e: e[2])]
    if len(ins) != 2 or ins[0] not in passing or ins[1] not in rotated:
        return comp
    branch = {ins[0]} | (nx.ancestors(sub, ins[0]) & passing)  # not an empty tail slice of the rotation itself
    return comp - branch - {exit_}


def _negates_first_half(g: nx.DiGraph, comp: set) -> bool:
    """A half-split RoPE whose negation reads the first half (``x[..., :r/2]``): ``cat(x2, -x1)``, the rotation
    by ``-theta``, where Llama's ``rotate_half`` negates the second half (``cat(-x2, x1)``)."""
    for n in comp:
        d = g.nodes[n]
        if not (d.get("call") == "neg" or d["op"] == "scale" and d.get("factor") == -1.0):
            continue
        for src in g.predecessors(n):
            key = g.nodes[src].get("key", "") if g.nodes[src].get("call") == "getitem" else ""
            last = key.split(",")[-1].strip()
            if last.startswith(":") and last != ":":
                return True
    return False


def _contract_eager_attention(g: nx.DiGraph, n_tokens: int, merged: dict[str, str],
                              added: dict[str, torch.Tensor] | None = None) -> None:
    """Contract ``softmax(Q K^T ...) V`` written with matmuls into ``attention`` nodes (ports q, k, v); the
    constants the chain adds to the scores are measured (:func:`score_bias`) into the node's ``score_bias``."""
    for pv in [n for n in sorted(g, key=lambda n: g.nodes[n]["index"])
               if g.nodes[n].get("call") in ("matmul", "bmm") and g.nodes[n]["op"] == "opaque"]:
        if pv not in g or g.in_degree(pv) != 2:
            continue
        (p_node, v_node) = [s for s, _, _ in sorted(g.in_edges(pv, data="port"), key=lambda e: e[2])]
        chain, cur, softmax = [], p_node, False
        while True:
            d = g.nodes[cur]
            if d["op"] == "opaque" and d.get("call") in ("matmul", "bmm", "baddbmm") and g.in_degree(cur) == 2:
                break
            ok = g.in_degree(cur) == 1 and not d["params"] and (
                d["op"] == "scale" or d["op"] == "act" and d["fn"] == "tanh"
                or d["op"] == "opaque" and d.get("call") in _SCORE_OPS
                or _drops_last_key(g, cur)) or _appends_sink(g, cur)
            peak = _subtracted_max(g, cur)  # s - max(s): the softmax is the same (MiMo-V2-Flash, GPT-OSS)
            if peak is not None:
                chain.extend([cur, peak])
                cur = next(iter(g.predecessors(peak)))
                continue
            if not ok:
                chain = None
                break
            softmax |= d.get("call") == "softmax"
            chain.append(cur)
            cur = next(iter(g.predecessors(cur)))
        if chain is None or not softmax:
            continue
        qk = cur
        cluster = {qk, pv, *chain}
        out, sink_scale = pv, _lse_sink_scale(g, pv, chain)
        if sink_scale is not None:  # GraniteSWA: P V * sigmoid(logsumexp(s) - sink)
            out = sink_scale[0]
            cluster |= set(sink_scale)
        if any(s not in cluster for n in cluster - {out} for s in g.successors(n)):
            continue
        (q_node, k_node) = [s for s, _, _ in sorted(g.in_edges(qk, data="port"), key=lambda e: e[2])]
        q_shape = g.edges[q_node, qk]["shape"]
        head_dim = int(q_shape[-1])
        path = _common_path([g.nodes[n]["module_path"] for n in cluster])
        first: list[list] = []  # baddbmm: its alpha scales Q K^T, then beta * input is added
        if g.nodes[qk]["call"] == "baddbmm":
            first = [["scale", g.nodes[qk]["alpha"]]] + ([["call", "add"]] if qk in (added or {}) else [])
        attrs = {**_base_attrs(g, cluster, "attention", path, out),
                 "n_heads": _numel(q_shape) // (n_tokens * head_dim),
                 "n_kv_heads": _numel(g.nodes[k_node]["shape"]) // (n_tokens * head_dim), "head_dim": head_dim,
                 "score_chain": first + _score_chain(g, chain)
                 + ([["sink_scale"]] if sink_scale is not None else [])}
        stepped = [n for n in reversed(chain) if g.nodes[n].get("call") not in ("max", "amax")]  # as _score_chain
        steps = [qk, *stepped] if first else stepped
        bias = [(added[n], g.nodes[n]["shape"]) for n in steps if n in (added or {})]
        if bias:  # steps: where in the score chain the constants are added
            attrs["score_bias"] = {**score_bias(bias, attrs["n_heads"]),
                                   "steps": [k + (len(first) - 1 if first else 0)
                                             for k, n in enumerate(steps) if n in added]}
        _contract(g, cluster, qk, attrs, [q_node, k_node, v_node], merged)


_MASKED = -1e30  # an added score below this (or -inf) masks its key: the float minima and -inf masks
_ALIBI_MATCH = 1e-9  # relative agreement of an added bias with slope_h * (j - i) on every unmasked causal pair


def score_bias(added: list[tuple[torch.Tensor, list[int]]], n_heads: int) -> dict:
    """What constants added to the attention scores ``(.., heads, queries, keys)`` do on the causal pairs they
    leave unmasked, up to a per-query constant (which the softmax cancels): ``{"kind": "none"}`` (a mask),
    ``{"kind": "alibi", "slopes": [s_h]}`` when the bias is ``s_h * (j - i)`` in every head (ALiBi: BLOOM, MPT),
    ``{"kind": "other"}`` otherwise (left to the import check)."""
    try:
        t_q, t_k = added[0][1][-2], added[0][1][-1]
        total = sum(c.to(torch.float64).broadcast_to(shape).reshape(-1, n_heads, t_q, t_k) for c, shape in added)
    except RuntimeError:
        return {"kind": "other"}
    if t_q != t_k or not bool((total == total[:1]).all()):
        return {"kind": "other"}
    c = total[0]
    i = torch.arange(t_q)[:, None]
    j = torch.arange(t_k)[None, :]
    diag = torch.diagonal(c, dim1=-2, dim2=-1)
    live = (j <= i) & (c > _MASKED) & torch.isfinite(c) & (diag > _MASKED)[..., :, None]
    rel = (j - i).to(torch.float64).expand_as(c)
    d = torch.where(live, c - diag[..., :, None], 0.0)
    denom = torch.where(live, rel * rel, 0.0).sum((-2, -1))
    slopes = torch.where(denom > 0, (d * torch.where(live, rel, 0.0)).sum((-2, -1)) / denom.clamp_min(1.0), 0.0)
    fit = torch.where(live, slopes[:, None, None] * rel, 0.0)
    scale = float(torch.where(live, c, 0.0).abs().max()) if bool(live.any()) else 0.0
    if float((d - fit).abs().max()) > _ALIBI_MATCH * max(1.0, scale):
        return {"kind": "other"}
    if not bool((slopes != 0).any()):
        return {"kind": "none"}
    return {"kind": "alibi", "slopes": [float(x) for x in slopes]}


def _subtracted_max(g: nx.DiGraph, node: str) -> str | None:
    """The ``max`` node of ``s - s.max(-1, keepdim=True)`` at ``node`` (read only there), else None."""
    d = g.nodes[node]
    if not (d["op"] == "opaque" and d.get("call") == "sub" and not d["params"] and g.in_degree(node) == 2):
        return None
    x, m = [s for s, _, _ in sorted(g.in_edges(node, data="port"), key=lambda e: e[2])]
    e = g.nodes[m]
    if not (e["op"] == "opaque" and e.get("call") in ("max", "amax") and e.get("output", 0) == 0 and not e["params"]
            and list(g.predecessors(m)) == [x] and list(g.successors(m)) == [node] and e["shape"][-1] == 1
            and not d.get("reflected")):
        return None
    return m


def _drops_last_key(g: nx.DiGraph, node: str) -> bool:
    """``p[..., :-1]``: the probabilities without the sink column appended before the softmax."""
    d = g.nodes[node]
    return d["op"] == "opaque" and d.get("call") == "getitem" and d.get("key") == "..., :-1" and not d["params"]


def _appends_sink(g: nx.DiGraph, node: str) -> bool:
    """``cat([s, sinks.expand(..., 1)], -1)``: one column read from one parameter appended to the scores (Flint,
    MiMo-V2-Flash, GPT-OSS attention sinks; the importer checks the parameter is one logit per head)."""
    d = g.nodes[node]
    if not (d["op"] == "opaque" and d.get("call") in ("cat", "concat", "concatenate") and len(d["params"]) == 1
            and g.in_degree(node) == 1):
        return False
    (src,) = g.predecessors(node)
    return d["shape"][-1] == g.edges[src, node]["shape"][-1] + 1 and d["shape"][:-1] == g.edges[src, node]["shape"][:-1]


def _lse_sink_scale(g: nx.DiGraph, pv: str, chain: list[str]) -> tuple[str, str, str, str] | None:
    """``(mul, sigmoid, sub, logsumexp)`` when the only reader of ``P V`` multiplies it by
    ``sigmoid(logsumexp(s) - sink)`` of the scores ``s`` the softmax reads (GraniteSWA's sinks: the same function
    as a sink logit in the softmax denominator)."""
    soft = next((n for n in chain if g.nodes[n].get("call") == "softmax"), None)
    succ = list(g.successors(pv))
    if soft is None or len(succ) != 1 or g.nodes[succ[0]]["op"] != "mul" or g.nodes[succ[0]]["params"]:
        return None
    mul = succ[0]
    others = [s for s in g.predecessors(mul) if s != pv]
    if len(others) != 1 or g.in_degree(mul) != 2:
        return None
    sig = others[0]
    if not (g.nodes[sig]["op"] == "act" and g.nodes[sig].get("fn") == "sigmoid" and g.in_degree(sig) == 1
            and g.out_degree(sig) == 1):
        return None
    (sub,) = g.predecessors(sig)
    e = g.nodes[sub]
    if not (e["op"] == "opaque" and e.get("call") == "sub" and len(e["params"]) == 1 and not e.get("reflected")
            and g.in_degree(sub) == 1 and g.out_degree(sub) == 1):
        return None
    (lse,) = g.predecessors(sub)
    f = g.nodes[lse]
    scores = next(iter(g.predecessors(soft)))
    if not (f["op"] == "opaque" and f.get("call") == "logsumexp" and not f["params"] and g.out_degree(lse) == 1
            and list(g.predecessors(lse)) == [scores]):
        return None
    return mul, sig, sub, lse


def _score_chain(g: nx.DiGraph, chain: list[str]) -> list[list]:
    """What the eager attention does between ``Q K^T`` and ``P V``, in order: ``["scale", factor]``,
    ``["tanh"]``, ``["softmax"]`` or ``["call", name]`` (the importer reads the scale and soft-cap from it)."""
    out = []
    for n in reversed(chain):
        d = g.nodes[n]
        if d["op"] == "scale":
            out.append(["scale", float(d["factor"])])
        elif d["op"] == "act":
            out.append(["tanh"])
        elif d.get("call") == "softmax":
            out.append(["softmax"])
        elif g.nodes[n].get("call") in ("max", "amax"):
            continue  # the max of s - max(s), named by the sub
        elif g.nodes[n].get("call") == "sub" and _subtracted_max(g, n) is not None:
            out.append(["stabilize"])
        elif _drops_last_key(g, n):
            out.append(["drop_sink"])
        elif _appends_sink(g, n):
            out.append(["sink"])
        else:
            out.append(["call", str(d.get("call"))])
    return out


def _label_lm_head(g: nx.DiGraph, logits: str) -> bool:
    """The linear producing the logits (through weight-free single-input ops) becomes the ``lm_head``."""
    cur = logits
    while g.nodes[cur]["op"] != "linear":
        if g.in_degree(cur) != 1 or g.nodes[cur]["params"]:
            return False
        cur = next(iter(g.predecessors(cur)))
    d = g.nodes[cur]
    tied = [n for n, e in g.nodes(data=True) if e["op"] == "embedding" and set(e["params"]) & set(d["params"])]
    d.update(op="lm_head", dim=d.pop("in_features"), vocab=d.pop("out_features"), tied_to=tied[0] if tied else None)
    return True


def _readable_ids(g: nx.DiGraph) -> dict[str, str]:
    """Node ids from the module path (alone when the module made one node), plus the op when it made more."""
    order = sorted(g, key=lambda n: g.nodes[n]["index"])
    per_path = defaultdict(int)
    for n in order:
        per_path[g.nodes[n]["module_path"]] += 1
    mapping, used = {"tokens": "tokens"}, {"tokens"}
    for n in order:
        if n == "tokens":
            continue
        d = g.nodes[n]
        base = re.sub(r"\W", "_", d["module_path"])
        kind = d["op"] if d["op"] != "opaque" else re.sub(r"\W", "_", str(d.get("call")))
        name = base if base and per_path[d["module_path"]] == 1 else f"{base}__{kind}" if base else kind
        if not _ID.match(name):
            name = f"m_{name}"
        candidate, k = name, 1
        while candidate in used:
            candidate, k = f"{name}_{k}", k + 1
        mapping[n] = candidate
        used.add(candidate)
    return mapping
