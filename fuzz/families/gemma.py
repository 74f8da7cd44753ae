"""Gemma (``GemmaForCausalLM``): ``1 + w`` RMSNorm, GeGLU (tanh), embeddings scaled by ``sqrt(hidden)``."""

from __future__ import annotations

from hypothesis import strategies as st

from ..decoder import DecoderSpec
from .base import Family, base_dims, base_fields, hf_common


def gemma(*, attention_bias: bool = False, **dims) -> DecoderSpec:
    """Gemma: ``1 + w`` RMSNorm, GeGLU (tanh GELU), embeddings times ``sqrt(hidden)``, tied by default."""
    dims.setdefault("tie_embeddings", True)
    base = base_fields(dims)
    return DecoderSpec(**base, qkv_bias=attention_bias, o_bias=attention_bias, mlp="geglu", norm_weight_form="1+w",
                       embedding_multiplier=base["hidden"] ** 0.5)


def knobs(s: DecoderSpec) -> dict:
    return dict(base_dims(s), attention_bias=s.qkv_bias)


def hf_config(s: DecoderSpec) -> dict:
    return dict(hf_common(s), hidden_act="gelu_pytorch_tanh", attention_bias=s.qkv_bias)


def draw_knobs(draw, dims: dict) -> dict:
    return dict(attention_bias=draw(st.booleans()))


FAMILY = Family("gemma", "GemmaForCausalLM", gemma, knobs, hf_config, draw_knobs=draw_knobs)
