"""Granite (``GraniteForCausalLM``): Llama plus embedding / residual / logit multipliers."""

from __future__ import annotations

from hypothesis import strategies as st

from ..decoder import DecoderSpec
from .llama import hf_config as llama_hf_config
from .base import Family, base_dims, base_fields, or_one


def granite(*, attention_bias: bool = False, mlp_bias: bool = False, embedding_multiplier: float | None = None,
            residual_multiplier: float | None = None, logit_multiplier: float | None = None,
            attention_multiplier: float | None = None, **dims) -> DecoderSpec:
    """Granite: Llama plus multipliers (``logits_scaling = 1 / logit_multiplier``; None = 1.0) and the attention
    score scale ``attention_multiplier`` (None = ``head_dim ** -0.5``)."""
    return DecoderSpec(**base_fields(dims), qkv_bias=attention_bias, o_bias=attention_bias, mlp_bias=mlp_bias,
                       embedding_multiplier=embedding_multiplier, residual_multiplier=residual_multiplier,
                       logit_multiplier=logit_multiplier, attn_scale=attention_multiplier)


def knobs(s: DecoderSpec) -> dict:
    return dict(base_dims(s), attention_bias=s.qkv_bias, mlp_bias=s.mlp_bias,
                embedding_multiplier=s.embedding_multiplier, residual_multiplier=s.residual_multiplier,
                logit_multiplier=s.logit_multiplier, attention_multiplier=s.attn_scale)


def hf_config(s: DecoderSpec) -> dict:
    return dict(llama_hf_config(s), embedding_multiplier=or_one(s.embedding_multiplier),
                residual_multiplier=or_one(s.residual_multiplier), logits_scaling=1.0 / or_one(s.logit_multiplier),
                attention_multiplier=s.head_dim ** -0.5 if s.attn_scale is None else s.attn_scale)


def supported(s: DecoderSpec) -> str | None:
    if s.logit_multiplier == 0:
        return "logit_multiplier 0 has no logits_scaling (1 / 0)"
    return None


def draw_knobs(draw, dims: dict) -> dict:
    """Llama's bias flags, then multipliers of the sizes Granite checkpoints use (None = 1.0)."""
    return dict(attention_bias=draw(st.booleans()), mlp_bias=draw(st.booleans()),
                embedding_multiplier=draw(st.sampled_from((None, 12.0, 0.5))),
                residual_multiplier=draw(st.sampled_from((None, 0.22, 1.5))),
                logit_multiplier=draw(st.sampled_from((None, 0.125, 1 / 3))),
                attention_multiplier=draw(st.sampled_from((None, 0.0625, 0.5))))


FAMILY = Family("granite", "GraniteForCausalLM", granite, knobs, hf_config, supported=supported,
                draw_knobs=draw_knobs)
