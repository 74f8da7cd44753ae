"""What every family module composes: :class:`Family`, the shared dims, config kwargs, weight names and draws."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from hypothesis import strategies as st

from ..decoder import DecoderSpec, LayerSpec
from ..errors import BadInput


def _no_knobs(draw, dims: dict) -> dict:
    return {}


@dataclass(frozen=True)
class Family:
    """One transformers family: its preset, how to read its knobs back, its config, its class and its draws."""

    name: str
    model_class: str  # transformers class name
    preset: Callable[..., DecoderSpec]  # knobs -> spec
    knobs: Callable[[DecoderSpec], dict]  # spec -> knobs (inverse of preset on members)
    hf_config: Callable[[DecoderSpec], dict]  # spec -> config kwargs
    supported: Callable[[DecoderSpec], str | None] = lambda s: None  # extra limits of the config, as a reason
    fuse: Callable[[dict, DecoderSpec], dict] | None = None  # state-dict rewrite (fused weights)
    moe: bool = False
    # the family's own knobs, drawn after the shared dims; may adjust the dims it constrains (hidden, head_dim)
    draw_knobs: Callable[[Any, dict], dict] = _no_knobs

    def config(self, spec: DecoderSpec, max_positions: int = 4096):
        """The transformers config object of a member spec."""
        import transformers
        cls = getattr(transformers, self.model_class).config_class
        return cls(**self.hf_config(spec), max_position_embeddings=max_positions)


# ---------------------------------------------------------------------------------------- shared dims

BASE_DEFAULTS = dict(vocab=64, hidden=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, intermediate=48,
                      rope_theta=10000.0, norm_eps=1e-6, tie_embeddings=False)


def base_fields(dims: dict, **defaults) -> dict:
    """DecoderSpec fields for the dims every family shares; rejects unknown dims by name."""
    unknown = set(dims) - set(BASE_DEFAULTS)
    if unknown:
        raise BadInput(f"unknown family dim(s) {sorted(unknown)}; known: {sorted(BASE_DEFAULTS)} "
                       f"plus the family's own knobs")
    d = {**BASE_DEFAULTS, **defaults, **dims}
    if d["n_layers"] < 1:
        raise BadInput(f"n_layers must be >= 1, got {d['n_layers']}")
    return dict(vocab=d["vocab"], hidden=d["hidden"], layers=tuple(LayerSpec() for _ in range(d["n_layers"])),
                n_heads=d["n_heads"], n_kv_heads=d["n_kv_heads"], head_dim=d["head_dim"],
                intermediate=d["intermediate"], rope_theta=float(d["rope_theta"]), norm_eps=float(d["norm_eps"]),
                tie_embeddings=d["tie_embeddings"])


def base_dims(s: DecoderSpec) -> dict:
    """The shared dims read back from a spec (inverse of :func:`base_fields`)."""
    return dict(vocab=s.vocab, hidden=s.hidden, n_layers=len(s.layers), n_heads=s.n_heads, n_kv_heads=s.n_kv_heads,
                head_dim=s.head_dim, intermediate=s.intermediate, rope_theta=s.rope_theta, norm_eps=s.norm_eps,
                tie_embeddings=s.tie_embeddings)


def sparse_layers(n_layers: int, decoder_sparse_step: int, mlp_only_layers) -> tuple[LayerSpec, ...]:
    """Qwen-MoE's rule: layer ``i`` is sparse iff ``i not in mlp_only_layers and (i + 1) % step == 0``."""
    if decoder_sparse_step < 1:
        raise BadInput(f"decoder_sparse_step must be >= 1, got {decoder_sparse_step}")
    only = set(mlp_only_layers)
    return tuple(LayerSpec(sparse=i not in only and (i + 1) % decoder_sparse_step == 0) for i in range(n_layers))


def moe_dims(s: DecoderSpec) -> dict:
    """The Qwen-MoE knobs read back from a spec (every dense layer listed in ``mlp_only_layers``)."""
    return dict(n_experts=s.n_experts, top_k=s.top_k, moe_intermediate=s.moe_intermediate,
                norm_topk_prob=s.renormalize, decoder_sparse_step=1,
                mlp_only_layers=tuple(i for i, l in enumerate(s.layers) if not l.sparse))


def partial_rotary(s: DecoderSpec) -> dict:
    """``partial_rotary_factor`` for the rope config (transformers rebuilds ``int(head_dim * factor)``)."""
    return {"partial_rotary_factor": (s.rotary_dim or s.head_dim) / s.head_dim}


def rotary_supported(s: DecoderSpec) -> str | None:
    r = s.rotary_dim or s.head_dim
    if int(s.head_dim * (r / s.head_dim)) != r:
        return (f"rotary_dim {r} of head_dim {s.head_dim} is not representable as partial_rotary_factor "
                f"(int(head_dim * factor) = {int(s.head_dim * (r / s.head_dim))})")
    return None


def or_one(x: float | None) -> float:
    return 1.0 if x is None else float(x)


# --------------------------------------------------------------------------------- spec -> HF config


def hf_common(s: DecoderSpec) -> dict:
    """Config kwargs every family takes; special tokens cleared (a tiny vocab has none of the defaults)."""
    return dict(vocab_size=s.vocab, hidden_size=s.hidden, num_hidden_layers=len(s.layers),
                num_attention_heads=s.n_heads, num_key_value_heads=s.n_kv_heads, head_dim=s.head_dim,
                intermediate_size=s.intermediate, hidden_act="silu", rms_norm_eps=s.norm_eps,
                rope_parameters={"rope_type": "default", "rope_theta": s.rope_theta},
                tie_word_embeddings=s.tie_embeddings, pad_token_id=None, bos_token_id=None, eos_token_id=None)


def hf_moe(s: DecoderSpec) -> dict:
    dense = [i for i, l in enumerate(s.layers) if not l.sparse]
    return dict(num_experts=s.n_experts, num_experts_per_tok=s.top_k, moe_intermediate_size=s.moe_intermediate,
                norm_topk_prob=s.renormalize, decoder_sparse_step=1, mlp_only_layers=dense)


# ------------------------------------------------------------------------------- weight name mapping

_TOP = {"embed": "model.embed_tokens", "final_norm": "model.norm", "lm_head": "lm_head"}
_LAYER = {
    "attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
    "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj", "q_norm": "self_attn.q_norm", "k_norm": "self_attn.k_norm",
    "mlp_gate_proj": "mlp.gate_proj", "mlp_up_proj": "mlp.up_proj", "mlp_down_proj": "mlp.down_proj",
    "mlp_router_proj": "mlp.gate", "mlp_experts": "mlp.experts",
    "mlp_shared_expert_gate_proj": "mlp.shared_expert.gate_proj",
    "mlp_shared_expert_up_proj": "mlp.shared_expert.up_proj",
    "mlp_shared_expert_down_proj": "mlp.shared_expert.down_proj",
    "mlp_shared_expert_gate": "mlp.shared_expert_gate",
}
_LAYER_ID = re.compile(r"^l(\d+)_(\w+)$")


def hf_name(node: str) -> str:
    """transformers module path of a decoder.py node id (``l3_q_proj`` -> ``model.layers.3.self_attn.q_proj``)."""
    if node in _TOP:
        return _TOP[node]
    m = _LAYER_ID.match(node)
    if m and m.group(2) in _LAYER:
        return f"model.layers.{m.group(1)}.{_LAYER[m.group(2)]}"
    raise BadInput(f"node {node!r} has no transformers counterpart")


# ------------------------------------------------------------------------------------------ draws


def draw_moe(draw, n_layers: int, mixed: bool) -> dict:
    n_experts = draw(st.integers(2, 4))
    knobs = dict(n_experts=n_experts, top_k=draw(st.integers(1, n_experts)),
                 moe_intermediate=draw(st.integers(2, 32)), norm_topk_prob=draw(st.booleans()))
    if mixed:  # shrinks toward all-sparse; the last layer the step makes sparse stays sparse
        step = draw(st.integers(1, n_layers))
        kept = max(i for i in range(n_layers) if (i + 1) % step == 0)
        knobs["decoder_sparse_step"] = step
        knobs["mlp_only_layers"] = tuple(i for i in range(n_layers) if i != kept and draw(st.booleans()))
    return knobs


def draw_rotary(draw, head_dim: int) -> int:
    return draw(st.sampled_from([r for r in range(head_dim, 1, -2) if int(head_dim * (r / head_dim)) == r]))
