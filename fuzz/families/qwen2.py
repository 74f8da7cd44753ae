"""Qwen2 (``Qwen2ForCausalLM``): Llama with q/k/v biases and no o_proj bias; an optional sliding window on the
layers ``layer_types`` names ``sliding_attention`` (the config derives them from ``use_sliding_window`` and
``max_window_layers``: layer ``i`` slides iff ``i >= max_window_layers``)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import strategies as st

from ..decoder import DecoderSpec
from .base import Family, base_dims, base_fields, hf_common


def qwen2(*, sliding_window: int | None = None, max_window_layers: int = 0, **dims) -> DecoderSpec:
    """Qwen2: Llama with q/k/v biases and no o_proj bias; with ``sliding_window`` W, layers from
    ``max_window_layers`` on mask the keys at distance >= W."""
    base = base_fields(dims, rope_theta=1e6)
    if sliding_window is not None:
        base["layers"] = tuple(replace(l, sliding=i >= max_window_layers) for i, l in enumerate(base["layers"]))
    return DecoderSpec(**base, qkv_bias=True, sliding_window=sliding_window)


def knobs(s: DecoderSpec) -> dict:
    sliding = [l.sliding for l in s.layers]
    if s.sliding_window is None or not any(sliding):
        return dict(base_dims(s))
    first = sliding.index(True)  # layers before it are full; a full layer after it is no Qwen2 (round trip fails)
    return dict(base_dims(s), sliding_window=s.sliding_window, max_window_layers=first)


def hf_config(s: DecoderSpec) -> dict:
    k = knobs(s)
    if k.get("sliding_window") is None:
        return hf_common(s)
    return dict(hf_common(s), use_sliding_window=True, sliding_window=k["sliding_window"],
                max_window_layers=k["max_window_layers"])


def draw_knobs(draw, dims: dict) -> dict:
    window = draw(st.sampled_from((None, 4, 2)))
    if window is None:
        return {}
    return dict(sliding_window=window, max_window_layers=draw(st.integers(0, dims["n_layers"] - 1)))


FAMILY = Family("qwen2", "Qwen2ForCausalLM", qwen2, knobs, hf_config, draw_knobs=draw_knobs)
