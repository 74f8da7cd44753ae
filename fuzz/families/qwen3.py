"""Qwen3 (``Qwen3ForCausalLM``): per-head q/k RMSNorm before RoPE, ``attention_bias``."""

from __future__ import annotations

from hypothesis import strategies as st

from ..decoder import DecoderSpec
from .base import Family, base_dims, base_fields, hf_common


def qwen3(*, attention_bias: bool = False, **dims) -> DecoderSpec:
    """Qwen3: per-head q/k RMSNorm (one weight shared by the heads) before RoPE."""
    return DecoderSpec(**base_fields(dims, rope_theta=1e6), qk_norm="per_head", qkv_bias=attention_bias,
                       o_bias=attention_bias)


def knobs(s: DecoderSpec) -> dict:
    return dict(base_dims(s), attention_bias=s.qkv_bias)


def hf_config(s: DecoderSpec) -> dict:
    return dict(hf_common(s), attention_bias=s.qkv_bias)


def draw_knobs(draw, dims: dict) -> dict:
    return dict(attention_bias=draw(st.booleans()))


FAMILY = Family("qwen3", "Qwen3ForCausalLM", qwen3, knobs, hf_config, draw_knobs=draw_knobs)
