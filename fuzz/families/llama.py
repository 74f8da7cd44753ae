"""Llama (``LlamaForCausalLM``): RMSNorm, SwiGLU, full half-style RoPE, ``attention_bias`` (q/k/v/o), ``mlp_bias``."""

from __future__ import annotations

from hypothesis import strategies as st

from ..decoder import DecoderSpec
from .base import Family, base_dims, base_fields, hf_common


def llama(*, attention_bias: bool = False, mlp_bias: bool = False, **dims) -> DecoderSpec:
    """Llama: RMSNorm, SwiGLU, full half-style RoPE; ``attention_bias`` biases q/k/v/o alike."""
    return DecoderSpec(**base_fields(dims), qkv_bias=attention_bias, o_bias=attention_bias, mlp_bias=mlp_bias)


def knobs(s: DecoderSpec) -> dict:
    return dict(base_dims(s), attention_bias=s.qkv_bias, mlp_bias=s.mlp_bias)


def hf_config(s: DecoderSpec) -> dict:
    return dict(hf_common(s), attention_bias=s.qkv_bias, mlp_bias=s.mlp_bias)


def supported(s: DecoderSpec) -> str | None:
    if s.hidden % s.n_heads:  # LlamaConfig.validate_architecture, even with an explicit head_dim
        return f"LlamaConfig needs hidden % n_heads == 0, got {s.hidden} % {s.n_heads}"
    return None


def draw_knobs(draw, dims: dict) -> dict:
    """LlamaConfig wants ``hidden % n_heads == 0`` (head_dim stays independent); then the two bias flags."""
    dims["hidden"] = dims["n_heads"] * draw(st.integers(1, 64 // dims["n_heads"]))
    return dict(attention_bias=draw(st.booleans()), mlp_bias=draw(st.booleans()))


FAMILY = Family("llama", "LlamaForCausalLM", llama, knobs, hf_config, supported=supported, draw_knobs=draw_knobs)
