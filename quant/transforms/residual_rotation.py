"""T3: residual-stream rotation (QuaRot R1 style) with an orthogonal ``Q`` of the exact hidden width.

The residual basis (embedding, residual adds, the norms and scales on the stream, and every writer into
it) comes from the dataflow (``fuzz.dataflow.residual_basis``).  First every norm on the stream is folded
into its readers, ``W <- W diag(g)`` and ``g <- 1`` (``w <- 0`` for ``1 + w`` norms): an RMSNorm without
weight commutes with any orthogonal map because ``rms(x Q) = rms(x)``.  Then, row-vector convention:

    E' = E Q  (embeddings),   W' = W Q  (readers: linears, experts' gate_up_proj, lm_head),
    W' = Q^T W, b' = b Q  (writers: o_proj, down_proj, experts' down_proj).

``Q`` is Hadamard where the width is a power of two, block-diagonal Hadamard where a power-of-two
block of at least 8 divides it (576 = 9 x 64), otherwise a seeded random orthogonal matrix; always
float64 (a float32 matrix is orthogonal only to ~1e-8).

Gemma4's per-layer input embeddings (PLE) need nothing of their own: the per-layer table is no stream activation
(left as it is), its projection from the token embedding and each layer's gate read the stream (``W Q``), each
layer's output projection writes to it (``Q^T W``).

Refusals: LayerNorm on the stream (mean subtraction does not commute with ``Q``; ``layernorm-residual``),
a norm whose output also feeds the residual add (post-norm, sandwich; ``norm-feeds-residual``), a reader
of the stream that is not linear in it (``nonlinear-residual-reader``), tied embeddings unless
``untie=True`` (folding the final norm into the lm_head would rescale the embedding table), a residual gate
(Ergo's ``sigmoid(w) * branch + c(w) * residual``, ``residual-gate``: the stream times ``diag(c)``, and
``Q^T diag(c) Q`` is not diagonal unless ``c`` is uniform; the factor cannot fold into a writer or a reader
either, since the next RMSNorm is not invariant under a per-channel scale).
"""

from __future__ import annotations

import torch
from torch import nn

from fuzz.dataflow import per_layer_projections, residual_basis
from fuzz.errors import Refusal
from fuzz.hadamard import orthogonal
from fuzz.layout import Layout
from fuzz.materialize import GraphModel
from verifier._faults import fault
from verifier.transform import Calibration

from . import register
from .graph_edit import require_graph_model, untie as untie_model

NAME = "residual-rotation"
_LINEAR_READERS = ("linear", "lm_head")


def _gate_ignored() -> frozenset[str]:
    """Mutant only (``residual_gate_rotated``): the residual gate taken as a plain residual add."""
    return frozenset({"residual_gate"}) if fault("residual_gate_rotated") is not None else frozenset()


def check(layout: Layout, untie: bool) -> set[str]:
    """The residual basis, once every precondition holds (raises :class:`Refusal` otherwise)."""
    for node in layout.of_op("residual_gate"):
        if not _gate_ignored():
            raise Refusal(NAME, "residual gate (per-channel residual scale): the residual stream times a learned "
                          "per-channel factor diag(c) (Ergo: sqrt(1 + sigmoid(w)) exp(-softplus(w) / 2)), and "
                          "Q^T diag(c) Q is not diagonal unless c is uniform", op="residual_gate", path=node,
                          feature="residual-gate")
    basis = residual_basis(layout, NAME, _gate_ignored())
    for node in layout.order:
        op = layout.op(node)
        if node in basis and op == "norm":
            p = layout.params(node)
            if p["kind"] != "rms":
                raise Refusal(NAME, "LayerNorm on the residual stream does not commute with a rotation", op=op,
                              path=node, feature="layernorm-residual")
            for reader, port in layout.consumers(node):
                if layout.op(reader) not in _LINEAR_READERS + ("experts",) or port != 0:
                    raise Refusal(NAME, f"its output also feeds {layout.op(reader)} {reader!r}: the weight cannot "
                                  "be folded", op=op, path=node, feature="norm-feeds-residual")
        if node in basis and op == "gate" and layout.widths[layout.inputs(node)[1]] != 1:
            raise Refusal(NAME, "an elementwise gate on the residual stream", op=op, path=node,
                          feature="nonlinear-residual-reader")
        if node not in basis and op not in _LINEAR_READERS + ("experts",):
            for src in layout.inputs(node)[:1] if op in ("experts", "gate") else layout.inputs(node):
                if src in basis:
                    raise Refusal(NAME, f"{op} reads the residual stream and is not linear in it", op=op, path=node,
                                  feature="nonlinear-residual-reader")
        if op == "lm_head" and layout.params(node)["tied_to"] is not None and not untie:
            raise Refusal(NAME, "tied embeddings: folding the final norm rescales the embedding table (untie=True)",
                          op=op, path=node, feature="tied-embeddings")
    return basis


def _scale_reader(model: GraphModel, node: str, g: torch.Tensor) -> None:
    mod = model.nodes[node]
    if model.layout.op(node) == "experts":
        mod.w_in().mul_(g[None, None, :])
    else:
        mod.weight.mul_(g[None, :])


@register(NAME)
def residual_rotation(model: nn.Module, calib: Calibration, seed: int = 0, untie: bool = False) -> GraphModel:
    """Fold the stream's norms, then rotate the residual stream by ``Q``; see the module docstring."""
    m = require_graph_model(NAME, model)
    check(m.layout, untie)
    if untie:
        m = untie_model(m, NAME)
    layout = m.layout
    basis = residual_basis(layout, NAME, _gate_ignored())
    hidden = layout.widths[layout.of_op("embedding")[0]]
    q, kind = orthogonal(hidden, seed)
    q = q.to(m.dtype)
    # mutant only: the per-layer input projection (Gemma4 PLE) left in the old basis
    skipped = per_layer_projections(layout) if fault("ple_unrotated") is not None else set()
    with torch.no_grad():
        for node in layout.order:  # fold g into the readers, leave a weightless RMSNorm (a weight-free one: g = 1)
            if node in basis and layout.op(node) == "norm" and m.nodes[node].p["weight_form"] != "none":
                mod = m.nodes[node]
                g = mod.weight if mod.p["weight_form"] == "w" else 1.0 + mod.weight
                for reader, _ in layout.consumers(node):
                    _scale_reader(m, reader, g.detach().clone())
                mod.weight.fill_(1.0 if mod.p["weight_form"] == "w" else 0.0)
        for node in layout.order:
            op, mod = layout.op(node), m.nodes[node]
            reads = bool(layout.inputs(node)) and layout.inputs(node)[0] in basis
            if op == "embedding":  # every row, the ids never predicted too (extra_input_id: Moshi's initial token)
                rows = layout.widths[layout.sink] if fault("extra_rows_unrotated") is not None else None  # mutant
                mod.weight[:rows].copy_(mod.weight[:rows] @ q)
            elif op == "position_embedding" and fault("position_table_unrotated") is None:  # the table: P Q
                mod.weight.copy_(mod.weight @ q)
            elif (op in _LINEAR_READERS and reads and not (op == "lm_head" and mod.p["tied_to"] is not None)
                  and node not in skipped
                  and not (fault("indexer_key_unrotated") is not None and _indexer_key(layout, node))):  # mutant
                mod.weight.copy_(mod.weight @ q)
            elif op == "experts" and reads:  # canonical (E, 2I, H) view, whatever the storage
                mod.w_in().copy_(mod.w_in() @ q)
            if op == "linear" and node in basis:
                mod.weight.copy_(q.T @ mod.weight)
                if mod.p["bias"]:
                    mod.bias.copy_(mod.bias @ q)
            elif op == "experts" and node in basis:
                mod.w_out().copy_(q.T @ mod.w_out())
                if mod.p["bias"]:  # down_proj_bias (E, H) is written to the stream
                    mod.down_proj_bias.copy_(mod.down_proj_bias @ q)
    m.transform_log = getattr(m, "transform_log", []) + [{"transform": NAME, "width": hidden, "matrix": kind}]
    return m


def _indexer_key(layout, node: str) -> bool:
    """Whether the linear ``node`` is a sparse-attention indexer's key projection: what it writes reaches an
    ``index_topk``'s ``k`` port (port 1) through single-input steps (its key norm, RoPE)."""
    frontier = [node]
    while frontier:
        n = frontier.pop()
        for c, port in layout.consumers(n):
            if layout.op(c) == "index_topk" and port == 1:
                return True
            if layout.op(c) in ("norm", "rope"):
                frontier.append(c)
    return False
