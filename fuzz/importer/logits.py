"""Running both sides of an import on token ids: the source model's logits, the GraphModel's under a
precision policy, and the relative error ``max|got - want| / max|want|`` the check compares them by."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from ..errors import BadInput
from ..materialize import GraphModel
from ..record import _logits, evaluating


@contextlib.contextmanager
def numerics_policy(model: GraphModel, numerics: str):
    """Run ``model`` under another precision policy for the duration of the block."""
    before = model.numerics
    for module in (model, *model.nodes.values()):
        module.numerics = numerics
    try:
        yield model
    finally:
        for module in (model, *model.nodes.values()):
            module.numerics = before


def source_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The source model's logits on ``ids`` (eval mode, no grad; training flags restored)."""
    with evaluating(model):
        try:
            out = model(input_ids=ids, use_cache=False)
        except TypeError:  # not a transformers model: the calling conventions record() accepts
            try:
                out = model(input_ids=ids)
            except TypeError:
                out = model(ids)
    return _logits(out, ids, type(model).__name__)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``max|got - want| / max|want|`` in float64; ``inf`` when not finite or the shapes differ."""
    if got.shape != want.shape:
        return math.inf
    got, want = got.detach().double(), want.detach().double()
    scale = want.abs().max().item()
    err = (got - want).abs().max().item()
    value = err / scale if scale > 0 else (0.0 if err == 0 else math.inf)
    return value if math.isfinite(value) else math.inf


def graph_logits(graph_model: GraphModel, ids: torch.Tensor, policy: str) -> torch.Tensor:
    name = graph_model.layout.meta.get("name", "model")
    try:
        with numerics_policy(graph_model, policy), torch.no_grad():
            return graph_model(ids)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        raise BadInput(f"{name}: the imported graph does not run on {tuple(ids.shape)} token ids "
                       f"(numerics={policy!r}): {type(exc).__name__}: {exc}") from exc


def checked_source_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    try:
        return source_logits(model, ids)
    except BadInput:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        raise BadInput(f"{type(model).__name__} does not run on {tuple(ids.shape)} token ids, so the import "
                       f"cannot be checked at that length: {type(exc).__name__}: {exc}") from exc
