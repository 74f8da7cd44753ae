"""Sliding windows, measured: each attention node's window ``W`` comes from what the source computes.

The recorder sees no mask (it records ``softmax(Q K^T) V`` and the mask is an input), and a module
attribute need not exist or say what the mask does (Mistral's attention has none; Qwen2 reads
``max_window_layers`` and ``layer_types`` elsewhere).  So the window is measured: both models run on one
row of ``L`` token ids (``L`` the longest length of the import check, :func:`~fuzz.importer.check.check_lengths`,
which covers ``2 W + 8`` for every span the config names), each attention node's output is compared, position
by position, with its source counterpart (the input of ``o_proj``, as in
:func:`~fuzz.importer.divergence.first_divergent`).  A node that agrees at positions ``0 .. S-1`` and not at
``S`` reads fewer keys from ``S`` on: with a sliding window ``W`` query ``i`` reads keys ``i - W + 1 .. i``,
so the first position missing a key is ``S = W``.  With chunked attention (Llama-4's ``attention_chunk_size``
``C``: query ``i`` reads keys ``j <= i`` with ``floor(i / C) == floor(j / C)``) the first query missing a key is
the first of the second chunk, ``S = C``, too.  The node gets ``window = S`` and is measured again; when that
does not make it agree at every position it gets ``chunk = S`` instead (the two spans agree up to ``2 S - 1``
and differ after: the profile tells them apart); a span that is neither (a different score) is dropped, and
the import check refuses the model naming the module.  Each layer is measured on its own (Llama-4 chunks its
RoPE layers and attends over everything on its NoPE ones).  Nodes are fixed in execution order (a later node
reads what the earlier ones compute).  Nothing here decides an import: :func:`check_import` still runs the
result at every length against the source.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import BadInput
from ..layout import Layout
from ..materialize import GraphModel
from ..record import _tensors, device_of
from .check import check_lengths
from .divergence import _ancestors, _inside, module_spans
from .logits import checked_source_logits, graph_logits

AGREE = 1e-5  # per-position relative error under which an attention output agrees with its source
#: (float32 sources agree to ~1e-7; a missing key moves the output by ~ its attention weight, 1 / W)


def _counterparts(layout: Layout, nodes: list[str]) -> dict[str, tuple[str, str, str]]:
    """node -> ``("out" | "in", module path, probed node)``: the deepest source module whose output is the
    probed node's output (it runs last in it) or whose input is the probed node's output (a reader of it
    runs first in it).  The probed node is the node itself, or, when an output gate multiplies it (``x *
    sigmoid(g)`` per token, head or channel: Afmoe, Qwen3-Next), the gate: a factor that is never zero
    keeps the positions where the node differs."""
    paths, _, first_in, last_in = module_spans(layout)
    found = {}
    for n in nodes:
        probe = n
        while True:
            if probe not in paths:
                break
            refs = [("out", m) for m in _ancestors(paths[probe]) if last_in.get(m) == probe]
            for reader, _ in layout.consumers(probe):
                if reader in paths:
                    refs += [("in", m) for m in _ancestors(paths[reader])
                             if first_in.get(m) == reader and not _inside(paths[probe], m)]
            if refs:
                found[n] = (*refs[0], probe)
                break
            readers = layout.consumers(probe)
            if len(readers) != 1 or layout.op(readers[0][0]) != "gate" or readers[0][1] != 0:
                break
            probe = readers[0][0]
    return found


def _profiles(model: nn.Module, graph_model: GraphModel, x: torch.Tensor, where: dict[str, tuple[str, str, str]],
              policy: str) -> dict[str, torch.Tensor]:
    """node -> per-position relative error ``(seq,)`` of its output against its source counterpart; one
    forward of each model (nodes without a comparable counterpart are left out)."""
    modules = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    got: dict[str, torch.Tensor] = {}

    def source_hook(path, kind):
        def hook(module, args, kwargs, out):
            obj = out if kind == "out" else (args, kwargs)
            t = next((t for t in _tensors(obj) if t.is_floating_point()), None)
            if t is not None:
                seen.setdefault(f"{kind}:{path}", t.detach().clone())
        return hook

    def graph_hook(node):
        def hook(module, args, out):
            got[node] = out.detach().clone()
        return hook

    handles = [modules[path].register_forward_hook(source_hook(path, kind), with_kwargs=True)
               for kind, path in {w[:2] for w in where.values()} if path in modules]
    handles += [graph_model.nodes[probe].register_forward_hook(graph_hook(n)) for n, (_, _, probe) in where.items()]
    try:
        checked_source_logits(model, x)
        graph_logits(graph_model, x, policy)
    finally:
        for h in handles:
            h.remove()
    b, t = x.shape
    out = {}
    for node, (kind, path, _) in where.items():
        ref, mine = seen.get(f"{kind}:{path}"), got.get(node)
        if ref is None or mine is None or ref.numel() != mine.numel():
            continue
        ref, mine = ref.double().reshape(b, t, -1), mine.double().reshape(b, t, -1)
        scale = ref.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
        out[node] = (mine - ref).abs().amax(dim=(0, 2)) / scale
    return out


def with_spans(layout: Layout, spans: dict[str, dict]) -> Layout:
    """``layout`` with the given attention nodes' parameters updated (``{"window": W}``, ``{"chunk": C}``; meta
    kept)."""
    nodes = []
    for n in layout.order:
        params = {**layout.params(n), **spans.get(n, {})}
        nodes.append((n, layout.op(n), params, list(layout.inputs(n))))
    return Layout.from_nodes(nodes, dict(layout.meta))


def with_windows(layout: Layout, windows: dict[str, int | None]) -> Layout:
    """``layout`` with the given attention nodes' ``window`` set (meta kept)."""
    return with_spans(layout, {n: {"window": w} for n, w in windows.items()})


def with_chunks(layout: Layout, chunks: dict[str, int | None]) -> Layout:
    """``layout`` with the given attention nodes' ``chunk`` set (meta kept)."""
    return with_spans(layout, {n: {"chunk": c} for n, c in chunks.items()})


def measure_windows(model: nn.Module, graph_model: GraphModel, rebuild, policy: str | None = None,
                    seed: int = 0) -> tuple[GraphModel, dict[str, dict]]:
    """``(graph_model, {attention node: {"window": W} or {"chunk": C}})``: the graph with every measured span
    set (see the module docstring); ``rebuild(layout) -> GraphModel`` makes the graph of a changed layout (same
    parameters)."""
    policy = policy or graph_model.numerics
    layout = graph_model.layout
    attention = layout.of_op("attention")
    where = _counterparts(layout, attention)
    if not where:
        return graph_model, {}
    length = max(check_lengths(model)[0])
    if length < 2:
        return graph_model, {}
    vocab = layout.params(layout.source)["vocab"]
    x = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))
    x = x.to(device_of(graph_model))
    found: dict[str, dict] = {}
    try:
        errors = _profiles(model, graph_model, x, where, policy)
    except BadInput:
        return graph_model, {}
    for node in attention:  # in execution order: a later node reads what the earlier ones compute
        e = errors.get(node)
        if e is None or bool((e <= AGREE).all()):
            continue
        start = int((~(e <= AGREE)).nonzero()[0, 0])
        if start < 1:  # differs where every key is visible: not a window (the check will say where)
            break
        for span in ({"window": start}, {"chunk": start}):  # a sliding window, else chunks of the same length
            candidate = rebuild(with_spans(graph_model.layout, {node: span}))
            try:
                again = _profiles(model, candidate, x, where, policy)
            except BadInput:
                return graph_model, found
            if node in again and bool((again[node] <= AGREE).all()):
                break
        else:
            break  # a limited span that is neither: left to the check's refusal
        graph_model, found[node], errors = candidate, span, again
    return graph_model, found
