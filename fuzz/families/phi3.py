"""Phi-3 (``Phi3ForCausalLM``): fused qkv / gate_up weights, partial rotary."""

from __future__ import annotations

from ..decoder import DecoderSpec
from .base import Family, base_dims, base_fields, draw_rotary, hf_common, partial_rotary, rotary_supported


def phi3(*, rotary_dim: int | None = None, sliding_window: int | None = None, **dims) -> DecoderSpec:
    """Phi-3: Llama without biases, fused qkv / gate_up weights, optional partial rotary and sliding window."""
    base = base_fields(dims, norm_eps=1e-5)
    return DecoderSpec(**base, rotary_dim=None if rotary_dim == base["head_dim"] else rotary_dim,
                       sliding_window=sliding_window)


def knobs(s: DecoderSpec) -> dict:
    return dict(base_dims(s), rotary_dim=s.rotary_dim,
                sliding_window=s.sliding_window if any(l.sliding for l in s.layers) else None)


def hf_config(s: DecoderSpec) -> dict:
    c = hf_common(s)
    c["rope_parameters"].update(partial_rotary(s))
    c["sliding_window"] = knobs(s)["sliding_window"]
    return c


def fuse(state: dict, s: DecoderSpec) -> dict:
    """Phi-3 stores ``qkv_proj = [q; k; v]`` and ``gate_up_proj = [gate; up]`` as single linears."""
    import torch
    for i in range(len(s.layers)):
        p = f"model.layers.{i}."
        state[p + "self_attn.qkv_proj.weight"] = torch.cat(
            [state.pop(f"{p}self_attn.{x}_proj.weight") for x in "qkv"], dim=0)
        state[p + "mlp.gate_up_proj.weight"] = torch.cat(
            [state.pop(f"{p}mlp.{x}_proj.weight") for x in ("gate", "up")], dim=0)
    return state


def draw_knobs(draw, dims: dict) -> dict:
    return dict(rotary_dim=draw_rotary(draw, dims["head_dim"]))


FAMILY = Family("phi3", "Phi3ForCausalLM", phi3, knobs, hf_config, supported=rotary_supported, fuse=fuse,
                draw_knobs=draw_knobs)
