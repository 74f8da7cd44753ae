"""The bridge to transformers: build the real model of a member layout and copy a GraphModel's weights in."""

from __future__ import annotations

from ..errors import BadInput
from .base import hf_name
from .membership import check_family
from .registry import _REGISTRY


def to_transformers(model, *, family: str | None = None, max_positions: int = 4096,
                    attn_implementation: str = "sdpa"):
    """The transformers model of a member layout, carrying ``model``'s weights in ``model``'s dtype.

    ``model`` is a :class:`~fuzz.materialize.GraphModel`; ``family`` forces one family (else
    :func:`family_of`); ``max_positions`` becomes ``max_position_embeddings``.  ``sdpa`` attention keeps
    float64 semantics on CPU (``eager`` upcasts the attention softmax to float32).  MoE families use the
    eager experts loop (the default grouped_mm path rejects float64 on CPU).  Raises :class:`BadInput`
    when the layout is not an instance of a registered family.
    """
    import torch
    import transformers

    from ..materialize import GraphModel

    if not isinstance(model, GraphModel):
        raise BadInput(f"to_transformers expects a fuzz GraphModel, got {type(model).__name__}")
    name, spec = check_family(model.layout, family)
    fam = _REGISTRY[name]
    cls = getattr(transformers, fam.model_class)
    cfg = fam.config(spec, max_positions)
    kwargs = dict(dtype=model.dtype, attn_implementation=attn_implementation)
    if fam.moe:
        kwargs["experts_implementation"] = "eager"
    hf = cls._from_config(cfg, **kwargs)

    state = {}
    for node, module in model.nodes.items():
        if model.layout.params(node).get("tied_to") is not None:
            continue
        for pname, param in module.named_parameters(recurse=False):
            state[f"{hf_name(node)}.{pname}"] = param.detach()
    if fam.fuse is not None:
        state = fam.fuse(state, spec)

    target = hf.state_dict(keep_vars=True)
    tied = spec.tie_embeddings and target["lm_head.weight"] is target["model.embed_tokens.weight"]
    missing = set(target) - set(state) - ({"lm_head.weight"} if tied else set())
    unexpected = set(state) - set(target)
    bad_shape = [k for k in set(state) & set(target) if tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or bad_shape:  # a bug in this module, not bad input
        raise RuntimeError(f"{fam.model_class} weight mapping is incomplete: missing {sorted(missing)}, "
                           f"unexpected {sorted(unexpected)}, shape mismatch {sorted(bad_shape)}")
    with torch.no_grad():
        for key, value in state.items():
            target[key].copy_(value)
    return hf.eval()
