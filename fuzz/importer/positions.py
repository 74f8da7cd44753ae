"""Learned positions that follow the ``attention_mask``, measured: which mode of ``position_embedding``
reproduces the source on a left-padded batch.

Without padding a learned position table reads rows ``start .. start + seq - 1`` whatever the source's code
says, so the recording cannot tell GPT-2's ``arange`` positions (a left-padded row reads rows from 0 at its
padding) from OPT's ``cumsum(attention_mask) - 1`` (a left-padded row reads row ``start`` at its first token).
The padded batch of the import check (:func:`~fuzz.importer.check.padded_batch`) can: both models run on it,
the graph once per mode (``from_mask`` False, True), and the mode whose logits at the non-padded positions are
closer to the source's is kept (``from_mask`` only when strictly closer).  Nothing here decides an import:
:func:`~fuzz.importer.check.check_padding` still compares the result within the check's bound.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layout import Layout
from ..materialize import GraphModel
from .check import check_lengths, masked_source_logits, padded_batch
from .logits import numerics_policy, relative_error


def with_position_mode(layout: Layout, from_mask: bool) -> Layout:
    """``layout`` with every ``position_embedding`` node's ``from_mask`` set (meta kept)."""
    nodes = []
    for n in layout.order:
        params = dict(layout.params(n))
        if layout.op(n) == "position_embedding":
            params["from_mask"] = from_mask
        nodes.append((n, layout.op(n), params, list(layout.inputs(n))))
    return Layout.from_nodes(nodes, dict(layout.meta))


def measure_position_mode(model: nn.Module, graph_model: GraphModel, rebuild,
                          policy: str | None = None) -> tuple[GraphModel, dict | None]:
    """``(graph_model, measured)``: the graph in the position mode that reproduces the source's padded batch
    (see the module docstring); ``measured`` maps each mode to its error (``None``: nothing to measure: no
    learned positions, a batch too short to pad, or a source that takes no ``attention_mask`` or is not
    finite on it: the import check says which).  ``rebuild(layout) -> GraphModel`` keeps the parameters."""
    layout = graph_model.layout
    if not layout.of_op("position_embedding"):
        return graph_model, None
    vocab = layout.params(layout.source)["vocab"]
    batch = padded_batch(graph_model, check_lengths(model)[0][0], vocab)
    if batch is None:
        return graph_model, None
    ids, mask = batch
    keep = mask.bool()
    try:
        want = masked_source_logits(model, ids, mask)
    except Exception:  # noqa: BLE001  (the check's padded batch names how the source fails)
        return graph_model, None
    if not torch.is_tensor(want) or want.shape[:2] != ids.shape or not bool(torch.isfinite(want[keep]).all()):
        return graph_model, None
    policy = policy or graph_model.numerics
    current = {bool(layout.params(n)["from_mask"]) for n in layout.of_op("position_embedding")}
    candidates = {mode: graph_model if current == {mode} else rebuild(with_position_mode(layout, mode))
                  for mode in (False, True)}
    errors = {}
    for mode, candidate in candidates.items():
        with numerics_policy(candidate, policy), torch.no_grad():
            errors[mode] = relative_error(candidate(ids, attention_mask=mask)[keep], want[keep])
    chosen = errors[True] < errors[False]
    return candidates[chosen], {"arange": errors[False], "from_mask": errors[True]}
