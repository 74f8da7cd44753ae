"""Mistral (``MistralForCausalLM``): Llama without biases, sliding-window attention on every layer."""

from __future__ import annotations

from hypothesis import strategies as st

from ..decoder import DecoderSpec
from .base import Family, base_dims, base_fields, hf_common

WINDOWS = (None, 4, 2)  # drawn, simplest first (None: full causal attention, a Llama without biases)


def mistral(*, sliding_window: int | None = None, **dims) -> DecoderSpec:
    """Mistral: Llama without biases; ``sliding_window`` W masks the keys at distance >= W on every layer."""
    return DecoderSpec(**base_fields(dims), sliding_window=sliding_window)


def knobs(s: DecoderSpec) -> dict:
    return dict(base_dims(s), sliding_window=s.sliding_window if any(l.sliding for l in s.layers) else None)


def hf_config(s: DecoderSpec) -> dict:
    return dict(hf_common(s), sliding_window=knobs(s)["sliding_window"])


def draw_knobs(draw, dims: dict) -> dict:
    return dict(sliding_window=draw(st.sampled_from(WINDOWS)))


FAMILY = Family("mistral", "MistralForCausalLM", mistral, knobs, hf_config, draw_knobs=draw_knobs)
