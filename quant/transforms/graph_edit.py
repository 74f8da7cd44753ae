"""Editing a materialized model's graph: new layout, same weights where they still fit.

Weight-only transforms edit parameters in place and keep the layout.  Transforms that add an operator
(T1's online input, T5's matrix-Gamma norm) or change a node (untying the lm_head) describe the change
as a :class:`LayoutEdit`; :func:`rebuild` lowers it to a new :class:`~fuzz.Layout` (validated like any
other) and a new :class:`~fuzz.GraphModel` whose parameters are copied from the old one node by node,
except the tensors the transform supplies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fuzz.errors import Refusal
from fuzz.layout import Layout
from fuzz.materialize import GraphModel
from verifier._faults import fault


def require_graph_model(transform: str, model: nn.Module) -> GraphModel:
    """The transform library works on GraphModels (import a transformers model with fuzz.importer)."""
    if not isinstance(model, GraphModel):
        raise Refusal(transform, f"works on archfuzz GraphModels, got {type(model).__name__}; import a "
                      "transformers model with fuzz.importer.import_model first", feature="module-without-layout")
    return model


@dataclass
class LayoutEdit:
    """Changes to a layout: parameter updates, op replacements and nodes inserted on an edge."""

    params: dict[str, dict] = field(default_factory=dict)  # node -> parameter updates
    replace: dict[str, tuple[str, dict]] = field(default_factory=dict)  # node -> (new op, its params)
    insert: dict[tuple[str, int], tuple[str, str, dict]] = field(default_factory=dict)  # (reader, port) -> (id, op, params)
    tensors: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)  # (node, name) -> value

    def apply(self, layout: Layout) -> Layout:
        nodes = []
        inserted = []
        for node in layout.order:
            op, params = layout.op(node), layout.params(node)
            if node in self.replace:
                op, params = self.replace[node]
            params = {**params, **self.params.get(node, {})}
            if op == "attention" and fault("window_dropped") is not None:  # mutant only (verifier._faults)
                params["window"] = None
            if op == "attention" and fault("chunk_dropped") is not None:  # mutant only: full causal, no chunks
                params["chunk"] = None
            if op == "attention" and fault("temperature_dropped") is not None:  # mutant only: the factor lost
                params = {**params, "temperature_beta": None, "temperature_length": None, "temperature_offset": 0,
                          "temperature_form": "log_floor"}
            if op == "attention" and params.get("temperature_form") == "power" \
                    and fault("temperature_form_confused") is not None:  # mutant only: Beam's power read as steps
                params = {**params, "temperature_form": "log_floor"}
            if op == "router" and params.get("score") == "sparsemixer" and fault("sparsemixer_dropped") is not None:
                params = {**params, "score": "softmax"}  # the mutant: re-emitted as the plain top-2 router
            if op == "experts" and fault("expert_scale_moved") is not None:  # mutant only: w on the output
                params = {**params, "scale_input": False}
            if op == "lm_head" and fault("lm_head_bias_dropped") is not None:  # mutant only: the bias lost
                params["bias"] = False
            if op == "position_embedding" and fault("positions_unmasked") is not None:  # mutant only: arange
                params["from_mask"] = False
            if op == "rope" and fault("rope_unscaled") is not None:  # the mutant: RoPE rebuilt from theta
                params = {k: params[k] for k in ("n_heads", "head_dim", "rotary_dim", "style", "theta")}
            if op == "rope" and fault("rope_direction_lost") is not None:  # mutant only: re-emitted by +theta
                params = {**params, "reversed": False}
            inputs = list(layout.inputs(node))
            for port, src in enumerate(inputs):
                if (node, port) in self.insert:
                    new_id, new_op, new_params = self.insert[(node, port)]
                    inserted.append((new_id, new_op, new_params, [src]))
                    inputs[port] = new_id
            nodes.append((node, op, params, inputs))
        meta = {k: v for k, v in layout.meta.items() if k not in ("spec", "features")}
        meta["features"] = layout.meta.get("features", [])
        meta["derived_from"] = layout.hash()
        return Layout.from_nodes(inserted + nodes, meta)


def rebuild(model: GraphModel, edit: LayoutEdit) -> GraphModel:
    """A new GraphModel for ``edit.apply(model.layout)``: old tensors where shapes still fit, new ones given."""
    layout = edit.apply(model.layout)
    new = GraphModel(layout, dtype=model.dtype, numerics=model.numerics)
    old_params = dict(model.named_parameters())
    with torch.no_grad():
        for name, param in new.named_parameters():
            _, node, pname = name.split(".", 2)
            if (node, pname) in edit.tensors:
                value = edit.tensors[(node, pname)]
            elif name in old_params and old_params[name].shape == param.shape:
                value = old_params[name]
            else:
                raise ValueError(f"rebuild: no value for {node}.{pname} {tuple(param.shape)}")  # a bug in the edit
            param.copy_(value)
    return new.train(model.training)


def untie(model: GraphModel, transform: str) -> GraphModel:
    """Give a tied lm_head its own copy of the embedding table (the function is unchanged)."""
    heads = [n for n in model.layout.of_op("lm_head") if model.layout.params(n)["tied_to"] is not None]
    if not heads:
        return model
    edit = LayoutEdit()
    for head in heads:
        table = model.layout.params(head)["tied_to"]
        edit.params[head] = {"tied_to": None}
        edit.tensors[(head, "weight")] = model.nodes[table].weight.detach().clone()
    return rebuild(model, edit)
