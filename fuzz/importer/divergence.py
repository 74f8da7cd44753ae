"""Where an import goes wrong, for the refusal of :func:`~fuzz.importer.check.check_import`.

A refusal names the first divergent node in execution order with its source module and error (node
outputs against the outputs / inputs of the source modules, by hooks on both), and ``sliding window``
when that node is an attention that agrees at the first positions only, or when the source's logits at
late positions do not depend on the first token while the graph's do (a limited attention span, measured,
whatever the config or module calls it).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layout import Layout
from ..materialize import GraphModel
from ..record import _tensors
from .logits import checked_source_logits, graph_logits, relative_error


def _inside(path: str, module: str) -> bool:
    return module == "" or path == module or path.startswith(module + ".")


def _ancestors(path: str) -> list[str]:
    """``path`` and every enclosing module path, deepest first (``""`` is the root)."""
    parts = path.split(".") if path else []
    return [".".join(parts[:k]) for k in range(len(parts), -1, -1)]


def module_spans(layout: Layout) -> tuple[dict[str, str], list[str], dict[str, str], dict[str, str]]:
    """``(paths, order, first_in, last_in)``: each node's source module (``meta["module_paths"]``), the nodes
    that have one in execution order, and per source module (and each of its ancestors) the first and the
    last of them that ran inside it."""
    paths = layout.meta.get("module_paths", {})
    order = [n for n in layout.order if n in paths]
    first_in: dict[str, str] = {}
    last_in: dict[str, str] = {}
    for n in order:
        for module in _ancestors(paths[n]):
            first_in.setdefault(module, n)
            last_in[module] = n
    return paths, order, first_in, last_in


def first_divergent(model: nn.Module, graph_model: GraphModel, x: torch.Tensor, policy: str, bound: float) -> str:
    """The first node, in execution order, whose output differs from its source counterpart beyond ``bound``.

    Counterparts come from the module each node ran in (``meta["module_paths"]``): a node's output is the
    output of the deepest module in which it is the last node to run, or else the input of the deepest
    module in which one of its readers is the first node to run (the attention core feeds ``o_proj``).
    Compared as ``(tokens, features)`` when the sizes agree; routers are skipped (a router module's output
    format is its own).  Hooks on both models, one forward each.
    """
    layout = graph_model.layout
    paths, order, first_in, last_in = module_spans(layout)
    wanted = set(first_in)
    seen_in: dict[str, torch.Tensor | None] = {}
    seen_out: dict[str, torch.Tensor | None] = {}

    def floating(obj):
        return next((t for t in _tensors(obj) if t.is_floating_point()), None)

    def source_hook(path):
        def hook(module, args, kwargs, out):
            twice = path in seen_out  # a module run more than once has no single counterpart
            t_in = floating(args) if floating(args) is not None else floating(kwargs)
            t_out = floating(out)
            seen_in[path] = None if twice or t_in is None else t_in.detach().clone()
            seen_out[path] = None if twice or t_out is None else t_out.detach().clone()
        return hook

    got: dict[str, torch.Tensor] = {}

    def graph_hook(node):
        def hook(module, args, out):
            if isinstance(out, torch.Tensor):
                got[node] = out.detach().clone()
        return hook

    handles = [m.register_forward_hook(source_hook(p), with_kwargs=True)
               for p, m in model.named_modules() if p in wanted]
    handles += [graph_model.nodes[n].register_forward_hook(graph_hook(n)) for n in order]
    try:
        want = checked_source_logits(model, x)
        logits = graph_logits(graph_model, x, policy)
    finally:
        for h in handles:
            h.remove()
    tokens = x.numel()

    def compare(node: str, ref: torch.Tensor | None) -> float | None:
        out = got.get(node)
        if ref is None or out is None or out.numel() != ref.numel() or out.numel() % tokens:
            return None
        err = relative_error(out.reshape(tokens, -1), ref.reshape(tokens, -1))
        if ref.dim() == 4 and tuple(ref.shape[::2]) == tuple(x.shape):  # (batch, heads, seq, d): q / k norms
            err = min(err, relative_error(out.reshape(tokens, -1), ref.transpose(1, 2).reshape(tokens, -1)))
        return err

    for n in order:
        if layout.op(n) in ("tokens", "router"):
            continue
        refs = [(f"the output of {m or 'the model'}", seen_out.get(m)) for m in _ancestors(paths[n])
                if last_in.get(m) == n]
        for reader, _ in layout.consumers(n):
            if reader in paths:
                refs += [(f"the input of {m}", seen_in.get(m)) for m in _ancestors(paths[reader])
                         if first_in.get(m) == reader and not _inside(paths[n], m)]
        for what, ref in refs:
            err = compare(n, ref)
            if err is None:
                continue
            if err > bound:
                routers = [r for r in layout.inputs(n) if layout.op(r) == "router"]
                routed = (f" (it reads router {routers[0]!r} of module {paths.get(routers[0])}, whose output is not "
                          f"compared directly: a routing difference shows here)") if routers else ""
                span = _span_at(got[n], ref, x.shape, bound) if layout.op(n) == "attention" else ""
                return (f"first divergent node {n!r} ({layout.op(n)}) in module {paths[n] or type(model).__name__}: "
                        f"{err:.3g} relative against {what}{routed}{span}")
            break  # the deepest counterpart decides
    return (f"no node output differs beyond {bound:.3g} before the logits ({relative_error(logits, want):.3g} at the "
            f"lm_head)")


def _span_at(out: torch.Tensor, ref: torch.Tensor, shape: torch.Size, bound: float) -> str:
    """``"; sliding window ..."`` when an attention node whose inputs agree (it is the first divergent node)
    agrees with its source at positions ``0 .. S-1`` and not at ``S``, ``S >= 2``: the source attends over
    fewer keys from position ``S`` on.  (A different score -- scaling, ALiBi, soft-cap, sinks -- already
    shows at position 1, where two keys are mixed; position 0 has one key whatever the scores.)"""
    b, t = shape
    out, ref = out.detach().double().reshape(b, t, -1), ref.detach().double().reshape(b, t, -1)
    per_position = (out - ref).abs().amax(dim=(0, 2)) / ref.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    over = [i for i in range(t) if not per_position[i] <= bound]
    if not over or over[0] < 2:
        return ""
    return (f"; sliding window: measured, this attention agrees with its source at positions 0..{over[0] - 1} "
            f"and differs from position {over[0]} on ({len(over)} of {t} positions): the source attends over "
            f"a limited span (sliding-window or chunked), which the layout's attention cannot express")


def limited_span(model: nn.Module, graph_model: GraphModel, x: torch.Tensor, policy: str) -> str:
    """``"; sliding window ..."`` when the source's logits at late positions ignore the first token while the
    graph's do not (measured: the first token's id is changed), else ``""``."""
    vocab = graph_model.layout.params(graph_model.layout.source)["vocab"]
    a = x[:1]
    b = a.clone()
    b[0, 0] = (b[0, 0] + 1) % vocab
    src = (checked_source_logits(model, a) - checked_source_logits(model, b)).abs().amax(-1)[0]
    gm = (graph_logits(graph_model, a, policy) - graph_logits(graph_model, b, policy)).abs().amax(-1)[0]
    blind = [t for t in range(a.shape[1]) if src[t] == 0 and gm[t] != 0]
    if not blind:
        return ""
    return (f"; sliding window: measured, the source's logits at positions {blind[0]}.. ({len(blind)} of "
            f"{a.shape[1]}) do not depend on the first token while the imported graph's do (a limited "
            f"attention span, sliding-window or chunked, which the layout's attention cannot express)")
