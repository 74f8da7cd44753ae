"""Mixtral (``MixtralForCausalLM``): every layer sparse, top-k weights always renormalised."""

from __future__ import annotations

from ..decoder import DecoderSpec, LayerSpec
from .base import Family, base_dims, base_fields, draw_moe, hf_common


def mixtral(*, n_experts: int = 4, top_k: int = 2, sliding_window: int | None = None, **dims) -> DecoderSpec:
    """Mixtral: every layer sparse, top-k weights always renormalised; ``intermediate`` is the expert width;
    ``sliding_window`` on every layer."""
    base = base_fields(dims, rope_theta=1e6, norm_eps=1e-5)
    inter = base.pop("intermediate")
    base["layers"] = tuple(LayerSpec(sparse=True) for _ in base["layers"])
    return DecoderSpec(**base, n_experts=n_experts, top_k=top_k, moe_intermediate=inter, renormalize=True,
                      sliding_window=sliding_window)


def knobs(s: DecoderSpec) -> dict:
    return dict(base_dims(s), intermediate=s.moe_intermediate, n_experts=s.n_experts, top_k=s.top_k,
                sliding_window=s.sliding_window if any(l.sliding for l in s.layers) else None)


def hf_config(s: DecoderSpec) -> dict:
    return dict(hf_common(s), intermediate_size=s.moe_intermediate, num_local_experts=s.n_experts,
                num_experts_per_tok=s.top_k, sliding_window=knobs(s)["sliding_window"])


def draw_knobs(draw, dims: dict) -> dict:
    """Expert count and top-k; the shared MoE draw also draws a width and a renormalise flag Mixtral ignores."""
    k = draw_moe(draw, dims["n_layers"], mixed=False)
    return dict(n_experts=k["n_experts"], top_k=k["top_k"])


FAMILY = Family("mixtral", "MixtralForCausalLM", mixtral, knobs, hf_config, moe=True, draw_knobs=draw_knobs)
