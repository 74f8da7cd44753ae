"""Qwen2-MoE (``Qwen2MoeForCausalLM``): q/k/v bias, fused experts plus a sigmoid-gated shared expert."""

from __future__ import annotations

from hypothesis import strategies as st

from ..decoder import DecoderSpec
from .base import Family, base_dims, base_fields, draw_moe, hf_common, hf_moe, moe_dims, sparse_layers


def qwen2_moe(*, qkv_bias: bool = True, n_experts: int = 4, top_k: int = 2, moe_intermediate: int = 16,
              shared_intermediate: int = 24, norm_topk_prob: bool = False, decoder_sparse_step: int = 1,
              mlp_only_layers=(), **dims) -> DecoderSpec:
    """Qwen2-MoE: q/k/v bias, fused experts plus a shared expert behind a sigmoid gate."""
    base = base_fields(dims, rope_theta=1e6)
    base["layers"] = sparse_layers(len(base["layers"]), decoder_sparse_step, mlp_only_layers)
    return DecoderSpec(**base, qkv_bias=qkv_bias, n_experts=n_experts, top_k=top_k,
                       moe_intermediate=moe_intermediate, renormalize=norm_topk_prob, shared_expert=True,
                       shared_intermediate=shared_intermediate, shared_gate=True)


def knobs(s: DecoderSpec) -> dict:
    return dict(base_dims(s), qkv_bias=s.qkv_bias, shared_intermediate=s.shared_intermediate, **moe_dims(s))


def hf_config(s: DecoderSpec) -> dict:
    return dict(hf_common(s), **hf_moe(s), qkv_bias=s.qkv_bias,
                shared_expert_intermediate_size=s.shared_intermediate)


def draw_knobs(draw, dims: dict) -> dict:
    return dict(qkv_bias=draw(st.booleans()), shared_intermediate=draw(st.integers(2, 32)),
                **draw_moe(draw, dims["n_layers"], mixed=True))


FAMILY = Family("qwen2_moe", "Qwen2MoeForCausalLM", qwen2_moe, knobs, hf_config, moe=True, draw_knobs=draw_knobs)
