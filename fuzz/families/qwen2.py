"""Qwen2 (``Qwen2ForCausalLM``): Llama with q/k/v biases and no o_proj bias; no knobs of its own."""

from __future__ import annotations

from ..decoder import DecoderSpec
from .base import Family, base_dims, base_fields, hf_common


def qwen2(**dims) -> DecoderSpec:
    """Qwen2: Llama with q/k/v biases and no o_proj bias."""
    return DecoderSpec(**base_fields(dims, rope_theta=1e6), qkv_bias=True)


FAMILY = Family("qwen2", "Qwen2ForCausalLM", qwen2, base_dims, hf_common)
