"""Qwen3-MoE (``Qwen3MoeForCausalLM``): Qwen3 attention, fused experts, ``norm_topk_prob``, sparse/dense mix."""

from __future__ import annotations

from hypothesis import strategies as st

from ..decoder import DecoderSpec
from .qwen3 import hf_config as qwen3_hf_config
from .base import Family, base_dims, base_fields, draw_moe, hf_moe, moe_dims, sparse_layers


def qwen3_moe(*, attention_bias: bool = False, n_experts: int = 4, top_k: int = 2, moe_intermediate: int = 16,
              norm_topk_prob: bool = False, decoder_sparse_step: int = 1, mlp_only_layers=(), **dims) -> DecoderSpec:
    """Qwen3-MoE: Qwen3 attention, fused 3D experts; dense layers per ``decoder_sparse_step``/``mlp_only_layers``."""
    base = base_fields(dims, rope_theta=1e6)
    base["layers"] = sparse_layers(len(base["layers"]), decoder_sparse_step, mlp_only_layers)
    return DecoderSpec(**base, qk_norm="per_head", qkv_bias=attention_bias, o_bias=attention_bias,
                       n_experts=n_experts, top_k=top_k, moe_intermediate=moe_intermediate,
                       renormalize=norm_topk_prob)


def knobs(s: DecoderSpec) -> dict:
    return dict(base_dims(s), attention_bias=s.qkv_bias, **moe_dims(s))


def hf_config(s: DecoderSpec) -> dict:
    return dict(qwen3_hf_config(s), **hf_moe(s))


def draw_knobs(draw, dims: dict) -> dict:
    return dict(attention_bias=draw(st.booleans()), **draw_moe(draw, dims["n_layers"], mixed=True))


FAMILY = Family("qwen3_moe", "Qwen3MoeForCausalLM", qwen3_moe, knobs, hf_config, moe=True, draw_knobs=draw_knobs)
