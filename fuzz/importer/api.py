"""The public surface of the importer: :func:`import_model` and its way back, :func:`export_weights`."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ArchfuzzError, BadInput
from ..layout import Layout
from ..materialize import NUMERICS, GraphModel
from ..record import _input_ids, record
from .check import check_import
from .converter import Converter
from .positions import measure_position_mode
from .window import measure_windows


def import_model(model: nn.Module, input_ids: torch.Tensor | None = None, *, check: bool = True,
                 numerics: str = "exact") -> GraphModel:
    """The :class:`GraphModel` of ``model``, sharing its parameters; see :mod:`fuzz.importer`.

    ``input_ids`` (default: 8 fixed ids) drive the recording and the check.  ``numerics`` is the
    returned model's precision policy (``"exact"``: everything in the model dtype; ``"transformers"``:
    transformers' float32 RMSNorm / RoPE tables / router softmax); the check passes when the GraphModel
    reproduces the source under either policy.  The layout meta holds ``name`` (the source class),
    ``source="import"``, ``param_map`` (node -> role -> qualified parameter name, every source parameter
    once), ``aliases`` and ``tied`` (further names, for :func:`export_weights`), ``reshaped`` (source parameter
    -> its shape, where the layout reads it as a view of another shape), ``head_biases`` (a source ``(heads,)``
    bias -> heads, where a linear reads it repeated over each head's channels: Beam's attention gate bias), ``module_paths`` (node ->
    the source module it ran in), the attention nodes' sliding ``window`` or ``chunk`` measured against the source
    (:mod:`fuzz.importer.window`) and ``import_check`` (what :func:`check_import` measured; ``None`` when
    ``check=False``: only for tests and for inspecting a refused model, never for a proof).
    """
    if numerics not in NUMERICS:
        raise BadInput(f"numerics must be one of {NUMERICS}, got {numerics!r}")
    if not isinstance(model, nn.Module):
        raise BadInput(f"import_model expects a torch.nn.Module, got {type(model).__name__}")
    ids = _input_ids(model, input_ids)
    graph_model, layout = _imported(model, ids, numerics)
    layout.meta["import_check"] = check_import(model, graph_model, ids) if check else None
    return graph_model.eval()


def _imported(model: nn.Module, ids: torch.Tensor, numerics: str) -> tuple[GraphModel, Layout]:
    """Record, convert and build; any failure on a model the importer was not written for is a refusal
    (:class:`BadInput` naming the stage, and the module where the converter knows it), never a crash."""
    stage = "recording its forward"
    try:
        rec = record(model, ids)
        stage = "rewriting its recorded graph"
        converter = Converter(model, rec)
        layout = converter.layout()
        stage = "building the GraphModel of its layout"
        graph_model = _build(layout, converter.parameters, numerics)
        stage = "measuring its attention windows"
        # sliding windows are measured (the recorder sees no mask): each attention node against its source
        graph_model, _ = measure_windows(model, graph_model, lambda lay: _build(lay, converter.parameters, numerics))
        stage = "measuring its position mode"
        # learned positions that follow the attention_mask (OPT) show on a padded batch only: measured there
        graph_model, modes = measure_position_mode(model, graph_model,
                                                   lambda lay: _build(lay, converter.parameters, numerics))
        if modes is not None:
            graph_model.layout.meta["position_mode"] = modes
        return graph_model, graph_model.layout
    except ArchfuzzError:
        raise
    except Exception as exc:  # noqa: BLE001  (an importer limitation: refused by name)
        raise BadInput(f"cannot import {type(model).__name__} (an unsupported feature while {stage}: "
                       f"{type(exc).__name__}: {exc})") from exc


def export_weights(graph_model: GraphModel) -> dict[str, torch.Tensor]:
    """Qualified source parameter name -> tensor of an imported (possibly transformed) GraphModel.

    Names come from the layout meta: ``param_map`` (node -> role -> name), ``aliases`` (further names of
    a parameter) and ``tied`` (the name under which a tied lm_head reads the embedding table).  A tied
    lm_head exports the table under its own name too, so ``fresh.load_state_dict(export_weights(gm),
    strict=True)`` passes on a fresh model of the source class; once a transform has untied it, its own
    weight is exported under that name (load it into a model built with ``tie_word_embeddings=False``).
    A node that a transform replaced or re-parametrised is refused.  Tensors are detached and share
    the GraphModel's storage.
    """
    layout = getattr(graph_model, "layout", None)
    param_map = layout.meta.get("param_map") if isinstance(layout, Layout) else None
    if not isinstance(graph_model, GraphModel) or not isinstance(param_map, dict):
        raise BadInput(f"export_weights needs a GraphModel made by import_model (its layout meta has a "
                       f"'param_map'), got {type(graph_model).__name__}")

    def tensor(node: str, role: str, name: str) -> torch.Tensor:
        param = graph_model.nodes[node]._parameters.get(role) if node in graph_model.nodes else None
        if param is None:
            raise BadInput(f"cannot export {name}: the GraphModel has no parameter {role!r} at node {node!r} "
                           f"(a transform replaced or removed it)")
        return param.detach()

    out = {name: tensor(node, role, name) for node, roles in param_map.items() for role, name in roles.items()}
    for name, shape in layout.meta.get("reshaped", {}).items():  # read as a view of another shape (Ernie's (1, E))
        out[name] = out[name].reshape(shape)
    for name, heads in layout.meta.get("head_biases", {}).items():  # a (heads,) bias the layout reads repeated
        per_head = out[name].reshape(heads, -1)
        if not torch.equal(per_head, per_head[:, :1].expand_as(per_head)):
            raise BadInput(f"cannot export {name}: one bias value per head in the source, but the GraphModel's "
                           f"bias differs within a head (a transform changed it per channel)")
        out[name] = per_head[:, 0].contiguous()
    for alias, canonical in layout.meta.get("aliases", {}).items():
        out[alias] = out[canonical]
    for node, roles in layout.meta.get("tied", {}).items():
        out.update({name: tensor(node, role, name) for role, name in roles.items()})
    return out


def _build(layout: Layout, parameters: dict[str, dict[str, nn.Parameter]], numerics: str) -> GraphModel:
    """A GraphModel of ``layout`` whose parameters are the given source Parameter objects (no copies)."""
    dtype = next(p for roles in parameters.values() for p in roles.values()).dtype
    with torch.device("meta"):  # placeholders only: every one is replaced below
        model = GraphModel(layout, dtype=dtype, numerics=numerics)
    for node, roles in parameters.items():
        for role, param in roles.items():
            model.nodes[node].register_parameter(role, param)
    for node in layout.of_op("lm_head"):
        tied = layout.params(node)["tied_to"]
        if tied is not None:
            model.nodes[node].register_parameter("weight", model.nodes[tied].weight)
    left = [n for n, p in model.named_parameters(remove_duplicate=False) if p.is_meta]
    if left:
        raise RuntimeError(f"import left placeholder parameters {left}")  # a bug here, not bad input
    return model
