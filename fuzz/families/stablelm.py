"""StableLM (``StableLmForCausalLM``): LayerNorm with bias, partial rotary, parallel residual, qkv bias."""

from __future__ import annotations

from hypothesis import strategies as st

from ..decoder import DecoderSpec
from ..errors import BadInput
from .base import (BASE_DEFAULTS, Family, base_dims, base_fields, draw_rotary, hf_common, partial_rotary,
                   rotary_supported)


def stablelm(*, rotary_dim: int | None = None, use_qkv_bias: bool = False, use_parallel_residual: bool = False,
             **dims) -> DecoderSpec:
    """StableLM: LayerNorm with bias, partial rotary, optional q/k/v bias and parallel residual (shared norm).

    ``head_dim`` is ``hidden // n_heads`` in StableLM; pass ``hidden`` and ``n_heads`` only.
    """
    if "head_dim" in dims:
        raise BadInput("stablelm derives head_dim = hidden // n_heads; do not pass head_dim")
    hidden, n_heads = dims.get("hidden", BASE_DEFAULTS["hidden"]), dims.get("n_heads", BASE_DEFAULTS["n_heads"])
    if hidden % n_heads:
        raise BadInput(f"stablelm needs hidden % n_heads == 0, got {hidden} % {n_heads}")
    dims["head_dim"] = hidden // n_heads
    base = base_fields(dims, norm_eps=1e-5)
    return DecoderSpec(**base, rotary_dim=None if rotary_dim == base["head_dim"] else rotary_dim, norm="layer",
                       norm_bias=True, qkv_bias=use_qkv_bias,
                       residual="parallel" if use_parallel_residual else "sequential", parallel_shared_norm=True)


def knobs(s: DecoderSpec) -> dict:
    d = base_dims(s)
    del d["head_dim"]
    return dict(d, rotary_dim=s.rotary_dim, use_qkv_bias=s.qkv_bias, use_parallel_residual=s.residual == "parallel")


def hf_config(s: DecoderSpec) -> dict:
    c = hf_common(s)
    del c["rms_norm_eps"], c["head_dim"]
    c["rope_parameters"].update(partial_rotary(s))
    return dict(c, layer_norm_eps=s.norm_eps, use_qkv_bias=s.qkv_bias, qk_layernorm=False,
                use_parallel_residual=s.residual == "parallel")


def supported(s: DecoderSpec) -> str | None:
    if s.head_dim * s.n_heads != s.hidden:
        return f"StableLM needs head_dim * n_heads == hidden, got {s.head_dim} * {s.n_heads} != {s.hidden}"
    return rotary_supported(s)


def draw_knobs(draw, dims: dict) -> dict:
    """``head_dim = hidden // n_heads``: draw an even head width per head, then rotary, qkv bias, parallel."""
    dims.pop("head_dim")
    dims["hidden"] = dims["n_heads"] * draw(st.integers(1, 32 // dims["n_heads"]).map(lambda x: 2 * x))
    head_dim = dims["hidden"] // dims["n_heads"]
    return dict(rotary_dim=draw_rotary(draw, head_dim), use_qkv_bias=draw(st.booleans()),
                use_parallel_residual=draw(st.booleans()))


FAMILY = Family("stablelm", "StableLmForCausalLM", stablelm, knobs, hf_config, supported=supported,
                draw_knobs=draw_knobs)
