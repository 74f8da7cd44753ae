"""Known transformers families as :class:`~fuzz.decoder.DecoderSpec` presets, and the bridge to them.

A *family* is a transformers decoder class (``LlamaForCausalLM``, ``Qwen3MoeForCausalLM``, ...) seen as
a region of the spec space: a preset function (:func:`family_spec`) maps the family's config knobs
(tiny dims, bias flags, expert counts) to the spec that switches on exactly that family's features.

Membership is decided by round trip, not by a feature checklist: a layout is an instance of a family
iff reading the family's knobs back from its spec (``layout.meta["spec"]``) and rebuilding the preset
gives the *same graph* (:func:`families_of`, :func:`family_of`).  A knob the family cannot express
(interleaved RoPE in Llama, a LayerNorm in Qwen3, a dense layer in Mixtral) changes the graph, so the
layout is not a member; :func:`check_family` names the spec fields that are to blame.

:func:`to_transformers` builds the real transformers model of a member layout and copies a
:class:`~fuzz.materialize.GraphModel`'s weights into it.  With ``numerics="transformers"`` and float64
weights, the two agree to float64 rounding (``sdpa`` attention: transformers' eager attention upcasts
the softmax to float32, sdpa on CPU stays in the model dtype).

Registered families, in :func:`family_of` priority order (the first member wins; e.g. a Granite layout
without multipliers is a Llama, a Qwen3-MoE layout without sparse layers is a Qwen3):

=========  ============================  =====================================================================
name       transformers class            features
=========  ============================  =====================================================================
llama      LlamaForCausalLM              RMSNorm, SwiGLU, ``attention_bias`` (q/k/v/o), ``mlp_bias``
qwen2      Qwen2ForCausalLM              q/k/v bias, no o bias
qwen3      Qwen3ForCausalLM              per-head q/k RMSNorm, ``attention_bias``
qwen3_moe  Qwen3MoeForCausalLM           Qwen3 attention, fused experts, ``norm_topk_prob``, sparse/dense mix
mixtral    MixtralForCausalLM            all layers sparse, top-k always renormalised
granite    GraniteForCausalLM            Llama plus embedding / residual / logit multipliers
gemma      GemmaForCausalLM              ``1 + w`` RMSNorm, GeGLU (tanh), embeddings scaled by sqrt(hidden)
qwen2_moe  Qwen2MoeForCausalLM           q/k/v bias, experts plus a sigmoid-gated shared expert
phi3       Phi3ForCausalLM               fused qkv / gate_up weights, partial rotary
stablelm   StableLmForCausalLM           LayerNorm with bias, partial rotary, parallel residual, qkv bias
=========  ============================  =====================================================================

Not registered: OLMo2 (q/k norm over the full width, but norms only *after* each branch with no
pre-norm, a placement :class:`DecoderSpec` has no value for) and Cohere (its RoPE and LayerNorm follow
a float32 policy of their own that ``numerics="transformers"`` does not model).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, Callable, NamedTuple

from hypothesis import strategies as st

from .decoder import DecoderSpec, LayerSpec, build
from .errors import BadInput, LayoutError
from .layout import Layout

# ---------------------------------------------------------------------------------------------- presets

_BASE_DEFAULTS = dict(vocab=64, hidden=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, intermediate=48,
                      rope_theta=10000.0, norm_eps=1e-6, tie_embeddings=False)


def _base(dims: dict, **defaults) -> dict:
    """DecoderSpec fields for the dims every family shares; rejects unknown dims by name."""
    unknown = set(dims) - set(_BASE_DEFAULTS)
    if unknown:
        raise BadInput(f"unknown family dim(s) {sorted(unknown)}; known: {sorted(_BASE_DEFAULTS)} "
                       f"plus the family's own knobs")
    d = {**_BASE_DEFAULTS, **defaults, **dims}
    if d["n_layers"] < 1:
        raise BadInput(f"n_layers must be >= 1, got {d['n_layers']}")
    return dict(vocab=d["vocab"], hidden=d["hidden"], layers=tuple(LayerSpec() for _ in range(d["n_layers"])),
                n_heads=d["n_heads"], n_kv_heads=d["n_kv_heads"], head_dim=d["head_dim"],
                intermediate=d["intermediate"], rope_theta=float(d["rope_theta"]), norm_eps=float(d["norm_eps"]),
                tie_embeddings=d["tie_embeddings"])


def _base_dims(s: DecoderSpec) -> dict:
    """The shared dims read back from a spec (inverse of :func:`_base`)."""
    return dict(vocab=s.vocab, hidden=s.hidden, n_layers=len(s.layers), n_heads=s.n_heads, n_kv_heads=s.n_kv_heads,
                head_dim=s.head_dim, intermediate=s.intermediate, rope_theta=s.rope_theta, norm_eps=s.norm_eps,
                tie_embeddings=s.tie_embeddings)


def _sparse_layers(n_layers: int, decoder_sparse_step: int, mlp_only_layers) -> tuple[LayerSpec, ...]:
    """Qwen-MoE's rule: layer ``i`` is sparse iff ``i not in mlp_only_layers and (i + 1) % step == 0``."""
    if decoder_sparse_step < 1:
        raise BadInput(f"decoder_sparse_step must be >= 1, got {decoder_sparse_step}")
    only = set(mlp_only_layers)
    return tuple(LayerSpec(sparse=i not in only and (i + 1) % decoder_sparse_step == 0) for i in range(n_layers))


def llama(*, attention_bias: bool = False, mlp_bias: bool = False, **dims) -> DecoderSpec:
    """Llama: RMSNorm, SwiGLU, full half-style RoPE; ``attention_bias`` biases q/k/v/o alike."""
    return DecoderSpec(**_base(dims), qkv_bias=attention_bias, o_bias=attention_bias, mlp_bias=mlp_bias)


def qwen2(**dims) -> DecoderSpec:
    """Qwen2: Llama with q/k/v biases and no o_proj bias."""
    return DecoderSpec(**_base(dims, rope_theta=1e6), qkv_bias=True)


def qwen3(*, attention_bias: bool = False, **dims) -> DecoderSpec:
    """Qwen3: per-head q/k RMSNorm (one weight shared by the heads) before RoPE."""
    return DecoderSpec(**_base(dims, rope_theta=1e6), qk_norm="per_head", qkv_bias=attention_bias,
                       o_bias=attention_bias)


def qwen3_moe(*, attention_bias: bool = False, n_experts: int = 4, top_k: int = 2, moe_intermediate: int = 16,
              norm_topk_prob: bool = False, decoder_sparse_step: int = 1, mlp_only_layers=(), **dims) -> DecoderSpec:
    """Qwen3-MoE: Qwen3 attention, fused 3D experts; dense layers per ``decoder_sparse_step``/``mlp_only_layers``."""
    base = _base(dims, rope_theta=1e6)
    base["layers"] = _sparse_layers(len(base["layers"]), decoder_sparse_step, mlp_only_layers)
    return DecoderSpec(**base, qk_norm="per_head", qkv_bias=attention_bias, o_bias=attention_bias,
                       n_experts=n_experts, top_k=top_k, moe_intermediate=moe_intermediate,
                       renormalize=norm_topk_prob)


def mixtral(*, n_experts: int = 4, top_k: int = 2, **dims) -> DecoderSpec:
    """Mixtral: every layer sparse, top-k weights always renormalised; ``intermediate`` is the expert width."""
    base = _base(dims, rope_theta=1e6, norm_eps=1e-5)
    inter = base.pop("intermediate")
    base["layers"] = tuple(LayerSpec(sparse=True) for _ in base["layers"])
    return DecoderSpec(**base, n_experts=n_experts, top_k=top_k, moe_intermediate=inter, renormalize=True)


def granite(*, attention_bias: bool = False, mlp_bias: bool = False, embedding_multiplier: float | None = None,
            residual_multiplier: float | None = None, logit_multiplier: float | None = None, **dims) -> DecoderSpec:
    """Granite: Llama plus multipliers (``logits_scaling = 1 / logit_multiplier``; None = 1.0)."""
    return DecoderSpec(**_base(dims), qkv_bias=attention_bias, o_bias=attention_bias, mlp_bias=mlp_bias,
                       embedding_multiplier=embedding_multiplier, residual_multiplier=residual_multiplier,
                       logit_multiplier=logit_multiplier)


def gemma(*, attention_bias: bool = False, **dims) -> DecoderSpec:
    """Gemma: ``1 + w`` RMSNorm, GeGLU (tanh GELU), embeddings times ``sqrt(hidden)``, tied by default."""
    dims.setdefault("tie_embeddings", True)
    base = _base(dims)
    return DecoderSpec(**base, qkv_bias=attention_bias, o_bias=attention_bias, mlp="geglu", norm_weight_form="1+w",
                       embedding_multiplier=base["hidden"] ** 0.5)


def qwen2_moe(*, qkv_bias: bool = True, n_experts: int = 4, top_k: int = 2, moe_intermediate: int = 16,
              shared_intermediate: int = 24, norm_topk_prob: bool = False, decoder_sparse_step: int = 1,
              mlp_only_layers=(), **dims) -> DecoderSpec:
    """Qwen2-MoE: q/k/v bias, fused experts plus a shared expert behind a sigmoid gate."""
    base = _base(dims, rope_theta=1e6)
    base["layers"] = _sparse_layers(len(base["layers"]), decoder_sparse_step, mlp_only_layers)
    return DecoderSpec(**base, qkv_bias=qkv_bias, n_experts=n_experts, top_k=top_k,
                       moe_intermediate=moe_intermediate, renormalize=norm_topk_prob, shared_expert=True,
                       shared_intermediate=shared_intermediate, shared_gate=True)


def phi3(*, rotary_dim: int | None = None, **dims) -> DecoderSpec:
    """Phi-3: Llama without biases, fused qkv / gate_up weights, optional partial rotary."""
    base = _base(dims, norm_eps=1e-5)
    return DecoderSpec(**base, rotary_dim=None if rotary_dim == base["head_dim"] else rotary_dim)


def stablelm(*, rotary_dim: int | None = None, use_qkv_bias: bool = False, use_parallel_residual: bool = False,
             **dims) -> DecoderSpec:
    """StableLM: LayerNorm with bias, partial rotary, optional q/k/v bias and parallel residual (shared norm).

    ``head_dim`` is ``hidden // n_heads`` in StableLM; pass ``hidden`` and ``n_heads`` only.
    """
    if "head_dim" in dims:
        raise BadInput("stablelm derives head_dim = hidden // n_heads; do not pass head_dim")
    hidden, n_heads = dims.get("hidden", _BASE_DEFAULTS["hidden"]), dims.get("n_heads", _BASE_DEFAULTS["n_heads"])
    if hidden % n_heads:
        raise BadInput(f"stablelm needs hidden % n_heads == 0, got {hidden} % {n_heads}")
    dims["head_dim"] = hidden // n_heads
    base = _base(dims, norm_eps=1e-5)
    return DecoderSpec(**base, rotary_dim=None if rotary_dim == base["head_dim"] else rotary_dim, norm="layer",
                       norm_bias=True, qkv_bias=use_qkv_bias,
                       residual="parallel" if use_parallel_residual else "sequential", parallel_shared_norm=True)


# ------------------------------------------------------------------------------------- spec -> knobs


def _moe_dims(s: DecoderSpec) -> dict:
    return dict(n_experts=s.n_experts, top_k=s.top_k, moe_intermediate=s.moe_intermediate,
                norm_topk_prob=s.renormalize, decoder_sparse_step=1,
                mlp_only_layers=tuple(i for i, l in enumerate(s.layers) if not l.sparse))


def _stablelm_dims(s: DecoderSpec) -> dict:
    d = _base_dims(s)
    del d["head_dim"]
    return dict(d, rotary_dim=s.rotary_dim, use_qkv_bias=s.qkv_bias, use_parallel_residual=s.residual == "parallel")


def _partial_rotary(s: DecoderSpec) -> dict:
    """``partial_rotary_factor`` for the rope config (transformers rebuilds ``int(head_dim * factor)``)."""
    return {"partial_rotary_factor": (s.rotary_dim or s.head_dim) / s.head_dim}


def _rotary_supported(s: DecoderSpec) -> str | None:
    r = s.rotary_dim or s.head_dim
    if int(s.head_dim * (r / s.head_dim)) != r:
        return (f"rotary_dim {r} of head_dim {s.head_dim} is not representable as partial_rotary_factor "
                f"(int(head_dim * factor) = {int(s.head_dim * (r / s.head_dim))})")
    return None


def _llama_supported(s: DecoderSpec) -> str | None:
    if s.hidden % s.n_heads:  # LlamaConfig.validate_architecture, even with an explicit head_dim
        return f"LlamaConfig needs hidden % n_heads == 0, got {s.hidden} % {s.n_heads}"
    return None


def _granite_supported(s: DecoderSpec) -> str | None:
    if s.logit_multiplier == 0:
        return "logit_multiplier 0 has no logits_scaling (1 / 0)"
    return None


def _stablelm_supported(s: DecoderSpec) -> str | None:
    if s.head_dim * s.n_heads != s.hidden:
        return f"StableLM needs head_dim * n_heads == hidden, got {s.head_dim} * {s.n_heads} != {s.hidden}"
    return _rotary_supported(s)


def _one(x: float | None) -> float:
    return 1.0 if x is None else float(x)


# --------------------------------------------------------------------------------- spec -> HF config


def _hf_common(s: DecoderSpec) -> dict:
    """Config kwargs every family takes; special tokens cleared (a tiny vocab has none of the defaults)."""
    return dict(vocab_size=s.vocab, hidden_size=s.hidden, num_hidden_layers=len(s.layers),
                num_attention_heads=s.n_heads, num_key_value_heads=s.n_kv_heads, head_dim=s.head_dim,
                intermediate_size=s.intermediate, hidden_act="silu", rms_norm_eps=s.norm_eps,
                rope_parameters={"rope_type": "default", "rope_theta": s.rope_theta},
                tie_word_embeddings=s.tie_embeddings, pad_token_id=None, bos_token_id=None, eos_token_id=None)


def _hf_moe(s: DecoderSpec) -> dict:
    dense = [i for i, l in enumerate(s.layers) if not l.sparse]
    return dict(num_experts=s.n_experts, num_experts_per_tok=s.top_k, moe_intermediate_size=s.moe_intermediate,
                norm_topk_prob=s.renormalize, decoder_sparse_step=1, mlp_only_layers=dense)


def _hf_llama(s):
    return dict(_hf_common(s), attention_bias=s.qkv_bias, mlp_bias=s.mlp_bias)


def _hf_qwen3(s):
    return dict(_hf_common(s), attention_bias=s.qkv_bias)


def _hf_qwen3_moe(s):
    return dict(_hf_qwen3(s), **_hf_moe(s))


def _hf_mixtral(s):
    return dict(_hf_common(s), intermediate_size=s.moe_intermediate, num_local_experts=s.n_experts,
                num_experts_per_tok=s.top_k)


def _hf_granite(s):
    return dict(_hf_llama(s), embedding_multiplier=_one(s.embedding_multiplier),
                residual_multiplier=_one(s.residual_multiplier), logits_scaling=1.0 / _one(s.logit_multiplier),
                attention_multiplier=s.head_dim ** -0.5)


def _hf_gemma(s):
    return dict(_hf_common(s), hidden_act="gelu_pytorch_tanh", attention_bias=s.qkv_bias)


def _hf_qwen2_moe(s):
    return dict(_hf_common(s), **_hf_moe(s), qkv_bias=s.qkv_bias,
                shared_expert_intermediate_size=s.shared_intermediate)


def _hf_phi3(s):
    c = _hf_common(s)
    c["rope_parameters"].update(_partial_rotary(s))
    return c


def _hf_stablelm(s):
    c = _hf_common(s)
    del c["rms_norm_eps"], c["head_dim"]
    c["rope_parameters"].update(_partial_rotary(s))
    return dict(c, layer_norm_eps=s.norm_eps, use_qkv_bias=s.qkv_bias, qk_layernorm=False,
                use_parallel_residual=s.residual == "parallel")


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


def _hf_name(node: str) -> str:
    """transformers module path of a decoder.py node id (``l3_q_proj`` -> ``model.layers.3.self_attn.q_proj``)."""
    if node in _TOP:
        return _TOP[node]
    m = _LAYER_ID.match(node)
    if m and m.group(2) in _LAYER:
        return f"model.layers.{m.group(1)}.{_LAYER[m.group(2)]}"
    raise BadInput(f"node {node!r} has no transformers counterpart")


def _fuse_phi3(state: dict, s: DecoderSpec) -> dict:
    """Phi-3 stores ``qkv_proj = [q; k; v]`` and ``gate_up_proj = [gate; up]`` as single linears."""
    import torch
    for i in range(len(s.layers)):
        p = f"model.layers.{i}."
        state[p + "self_attn.qkv_proj.weight"] = torch.cat(
            [state.pop(f"{p}self_attn.{x}_proj.weight") for x in "qkv"], dim=0)
        state[p + "mlp.gate_up_proj.weight"] = torch.cat(
            [state.pop(f"{p}mlp.{x}_proj.weight") for x in ("gate", "up")], dim=0)
    return state


# ------------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class Family:
    """One transformers family: its preset, how to read its knobs back, its config and its class."""

    name: str
    model_class: str  # transformers class name
    preset: Callable[..., DecoderSpec]  # knobs -> spec
    knobs: Callable[[DecoderSpec], dict]  # spec -> knobs (inverse of preset on members)
    hf_config: Callable[[DecoderSpec], dict]  # spec -> config kwargs
    supported: Callable[[DecoderSpec], str | None] = lambda s: None  # extra limits of the config, as a reason
    fuse: Callable[[dict, DecoderSpec], dict] | None = None  # state-dict rewrite (fused weights)
    moe: bool = False

    def config(self, spec: DecoderSpec, max_positions: int = 4096):
        """The transformers config object of a member spec."""
        import transformers
        cls = getattr(transformers, self.model_class).config_class
        return cls(**self.hf_config(spec), max_position_embeddings=max_positions)


_REGISTRY: dict[str, Family] = {f.name: f for f in [
    Family("llama", "LlamaForCausalLM", llama,
           lambda s: dict(_base_dims(s), attention_bias=s.qkv_bias, mlp_bias=s.mlp_bias), _hf_llama,
           supported=_llama_supported),
    Family("qwen2", "Qwen2ForCausalLM", qwen2, _base_dims, _hf_common),
    Family("qwen3", "Qwen3ForCausalLM", qwen3, lambda s: dict(_base_dims(s), attention_bias=s.qkv_bias), _hf_qwen3),
    Family("qwen3_moe", "Qwen3MoeForCausalLM", qwen3_moe,
           lambda s: dict(_base_dims(s), attention_bias=s.qkv_bias, **_moe_dims(s)), _hf_qwen3_moe, moe=True),
    Family("mixtral", "MixtralForCausalLM", mixtral,
           lambda s: dict(_base_dims(s), intermediate=s.moe_intermediate, n_experts=s.n_experts, top_k=s.top_k),
           _hf_mixtral, moe=True),
    Family("granite", "GraniteForCausalLM", granite,
           lambda s: dict(_base_dims(s), attention_bias=s.qkv_bias, mlp_bias=s.mlp_bias,
                          embedding_multiplier=s.embedding_multiplier, residual_multiplier=s.residual_multiplier,
                          logit_multiplier=s.logit_multiplier), _hf_granite, supported=_granite_supported),
    Family("gemma", "GemmaForCausalLM", gemma, lambda s: dict(_base_dims(s), attention_bias=s.qkv_bias), _hf_gemma),
    Family("qwen2_moe", "Qwen2MoeForCausalLM", qwen2_moe,
           lambda s: dict(_base_dims(s), qkv_bias=s.qkv_bias, shared_intermediate=s.shared_intermediate,
                          **_moe_dims(s)), _hf_qwen2_moe, moe=True),
    Family("phi3", "Phi3ForCausalLM", phi3, lambda s: dict(_base_dims(s), rotary_dim=s.rotary_dim), _hf_phi3,
           supported=_rotary_supported, fuse=_fuse_phi3),
    Family("stablelm", "StableLmForCausalLM", stablelm, _stablelm_dims, _hf_stablelm,
           supported=_stablelm_supported),
]}

FAMILIES: list[str] = list(_REGISTRY)


def family(name: str) -> Family:
    """The registered :class:`Family` called ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BadInput(f"unknown family {name!r}; known: {FAMILIES}") from None


def family_spec(name: str, **dims) -> DecoderSpec:
    """The :class:`DecoderSpec` of family ``name`` with the given dims and knobs (see the preset functions)."""
    return family(name).preset(**dims)


# ---------------------------------------------------------------------------------------- membership


class _Subject(NamedTuple):
    """What membership is decided on: the layout, its spec (None if unusable) and why it is unusable."""

    layout: Layout
    spec: DecoderSpec | None
    why_no_spec: str | None = None


def _subject(x) -> _Subject:
    """Accept a Layout, a GraphModel or a DecoderSpec (an invalid spec raises LayoutError)."""
    if isinstance(x, DecoderSpec):
        return _Subject(build(x), x)
    layout = getattr(x, "layout", x)
    if not isinstance(layout, Layout):
        raise BadInput(f"expected a Layout, DecoderSpec or GraphModel, got {type(x).__name__}")
    raw = layout.meta.get("spec")
    if not isinstance(raw, dict):
        return _Subject(layout, None, "the layout carries no decoder spec (meta['spec'])")
    try:
        spec = DecoderSpec.from_dict(raw)
        same = build(spec) == layout
    except (TypeError, ValueError) as exc:  # LayoutError is a ValueError
        return _Subject(layout, None, f"meta['spec'] is not a valid decoder spec: {exc}")
    if not same:
        return _Subject(layout, None, "the layout graph differs from build(meta['spec']) "
                                      "(it was transformed after synthesis)")
    return _Subject(layout, spec)


def _mismatch(fam: Family, subject: _Subject, explain: bool = False) -> str | None:
    """None when the layout is exactly an instance of ``fam``, else why not (field by field if ``explain``)."""
    spec, layout = subject.spec, subject.layout
    if spec is None:
        return subject.why_no_spec
    reason = fam.supported(spec)
    if reason:
        return reason
    try:
        preset = fam.preset(**fam.knobs(spec))
        if build(preset) == layout:
            return None
    except BadInput as exc:  # LayoutError included
        return f"the family cannot express these dims: {exc}"
    if not explain:
        return "unsupported feature(s)"
    blame = []
    for f in fields(DecoderSpec):
        mine, theirs = getattr(spec, f.name), getattr(preset, f.name)
        if mine == theirs:
            continue
        try:  # a field whose change leaves the graph unchanged is not to blame (e.g. mlp_bias, all-sparse)
            if build(spec.with_(**{f.name: theirs})) == layout:
                continue
        except LayoutError:
            pass
        blame.append(f"{f.name}={_short(mine)} (family: {_short(theirs)})")
    return "unsupported feature(s): " + (", ".join(blame) or "a combination of fields")


def _short(v: Any) -> str:
    if isinstance(v, tuple) and v and isinstance(v[0], LayerSpec):
        return "[" + ", ".join(("sparse" if l.sparse else "dense") + ("" if l.rope else "/nope") for l in v) + "]"
    return repr(v)


def families_of(layout_or_spec) -> list[str]:
    """Every registered family whose transformers class reproduces the layout exactly.

    Accepts a Layout, a GraphModel or a DecoderSpec (an invalid spec raises LayoutError).
    """
    subject = _subject(layout_or_spec)
    return [name for name, fam in _REGISTRY.items() if _mismatch(fam, subject) is None]


def family_of(layout_or_spec) -> str | None:
    """The first family (registry order) that the layout is exactly an instance of, or None."""
    subject = _subject(layout_or_spec)
    return next((name for name, fam in _REGISTRY.items() if _mismatch(fam, subject) is None), None)


def check_family(layout_or_spec, name: str | None = None) -> tuple[str, DecoderSpec]:
    """``(family name, spec)`` for a member layout; :class:`BadInput` naming what blocks it otherwise.

    With ``name``, membership of that family is required; without, the first member family is used.
    """
    subject = _subject(layout_or_spec)
    names = [name] if name is not None else FAMILIES
    reasons = []
    for n in names:
        why = _mismatch(family(n), subject, explain=True)
        if why is None:
            return n, subject.spec
        reasons.append(f"  {n}: {why}")
    layout = subject.layout
    what = f"family {name!r}" if name else "any known transformers family"
    if subject.spec is None:
        reasons = [f"  {subject.why_no_spec}"]
    raise BadInput(f"layout {layout.meta.get('name', layout.hash())} is not an instance of {what}:\n"
                   + "\n".join(reasons))


# ------------------------------------------------------------------------------------ to transformers


def to_transformers(model, *, family: str | None = None, max_positions: int = 4096,
                    attn_implementation: str = "sdpa"):
    """The transformers model of a member layout, carrying ``model``'s weights in ``model``'s dtype.

    ``model`` is a :class:`~fuzz.materialize.GraphModel`; ``family`` forces one family (else
    :func:`family_of`); ``max_positions`` becomes ``max_position_embeddings``.  ``sdpa`` attention keeps
    float64 semantics on CPU (``eager`` upcasts the attention softmax to float32).  MoE families use the
    eager experts loop (the default grouped_mm path rejects float64 on CPU).  Raises :class:`BadInput`
    when the layout is not an instance of a registered family.
    """
    import torch
    import transformers

    from .materialize import GraphModel

    if not isinstance(model, GraphModel):
        raise BadInput(f"to_transformers expects a fuzz GraphModel, got {type(model).__name__}")
    name, spec = check_family(model.layout, family)
    fam = _REGISTRY[name]
    cls = getattr(transformers, fam.model_class)
    cfg = fam.config(spec, max_positions)
    kwargs = dict(dtype=model.dtype, attn_implementation=attn_implementation)
    if fam.moe:
        kwargs["experts_implementation"] = "eager"
    hf = cls._from_config(cfg, **kwargs)

    state = {}
    for node, module in model.nodes.items():
        if model.layout.params(node).get("tied_to") is not None:
            continue
        for pname, param in module.named_parameters(recurse=False):
            state[f"{_hf_name(node)}.{pname}"] = param.detach()
    if fam.fuse is not None:
        state = fam.fuse(state, spec)

    target = hf.state_dict(keep_vars=True)
    tied = spec.tie_embeddings and target["lm_head.weight"] is target["model.embed_tokens.weight"]
    missing = set(target) - set(state) - ({"lm_head.weight"} if tied else set())
    unexpected = set(state) - set(target)
    bad_shape = [k for k in set(state) & set(target) if tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or bad_shape:  # a bug in this module, not bad input
        raise RuntimeError(f"{fam.model_class} weight mapping is incomplete: missing {sorted(missing)}, "
                           f"unexpected {sorted(unexpected)}, shape mismatch {sorted(bad_shape)}")
    with torch.no_grad():
        for key, value in state.items():
            target[key].copy_(value)
    return hf.eval()


# ------------------------------------------------------------------------------------ hypothesis draws


class FamilyCase(NamedTuple):
    """One drawn family instance: the family, its layout, a weight seed and a sequence length."""

    family: str
    layout: Layout
    seed: int
    seq: int


def _draw_moe(draw, n_layers: int, mixed: bool) -> dict:
    n_experts = draw(st.integers(2, 4))
    knobs = dict(n_experts=n_experts, top_k=draw(st.integers(1, n_experts)),
                 moe_intermediate=draw(st.integers(2, 32)), norm_topk_prob=draw(st.booleans()))
    if mixed:  # shrinks toward all-sparse; the last layer the step makes sparse stays sparse
        step = draw(st.integers(1, n_layers))
        kept = max(i for i in range(n_layers) if (i + 1) % step == 0)
        knobs["decoder_sparse_step"] = step
        knobs["mlp_only_layers"] = tuple(i for i in range(n_layers) if i != kept and draw(st.booleans()))
    return knobs


def _draw_rotary(draw, head_dim: int) -> int:
    return draw(st.sampled_from([r for r in range(head_dim, 1, -2) if int(head_dim * (r / head_dim)) == r]))


def _draw_knobs(draw, name: str, dims: dict) -> dict:
    """The family's own knobs; adjusts in place the shared dims the family constrains (hidden, head_dim)."""
    b = st.booleans()
    n = dims["n_layers"]
    if name in ("llama", "granite"):
        if name == "llama":  # LlamaConfig wants hidden % n_heads == 0 (head_dim stays independent)
            dims["hidden"] = dims["n_heads"] * draw(st.integers(1, 64 // dims["n_heads"]))
        knobs = dict(attention_bias=draw(b), mlp_bias=draw(b))
        if name == "granite":
            knobs.update(embedding_multiplier=draw(st.sampled_from((None, 12.0, 0.5))),
                         residual_multiplier=draw(st.sampled_from((None, 0.22, 1.5))),
                         logit_multiplier=draw(st.sampled_from((None, 0.125, 1 / 3))))
        return knobs
    if name in ("qwen3", "gemma"):
        return dict(attention_bias=draw(b))
    if name == "qwen3_moe":
        return dict(attention_bias=draw(b), **_draw_moe(draw, n, mixed=True))
    if name == "mixtral":
        k = _draw_moe(draw, n, mixed=False)
        return dict(n_experts=k["n_experts"], top_k=k["top_k"])
    if name == "qwen2_moe":
        return dict(qkv_bias=draw(b), shared_intermediate=draw(st.integers(2, 32)), **_draw_moe(draw, n, mixed=True))
    if name == "phi3":
        return dict(rotary_dim=_draw_rotary(draw, dims["head_dim"]))
    if name == "stablelm":
        dims.pop("head_dim")
        dims["hidden"] = dims["n_heads"] * draw(st.integers(1, 32 // dims["n_heads"]).map(lambda x: 2 * x))
        head_dim = dims["hidden"] // dims["n_heads"]
        return dict(rotary_dim=_draw_rotary(draw, head_dim), use_qkv_bias=draw(b), use_parallel_residual=draw(b))
    return {}


@st.composite
def family_specs(draw, names: tuple[str, ...] | None = None) -> tuple[str, DecoderSpec]:
    """Draw ``(family, spec)``: layers 1-2, kv heads -> group -> heads (MQA/GQA/MHA), head_dim independent of
    hidden, tiny widths (hidden <= 64, vocab <= 128), tied or not, then the family's own knobs."""
    name = draw(st.sampled_from(tuple(names or FAMILIES)))
    kv = draw(st.integers(1, 3))
    group = draw(st.integers(1, 3))
    dims = dict(n_layers=draw(st.integers(1, 2)), vocab=draw(st.integers(8, 128)), hidden=draw(st.integers(4, 64)),
                n_kv_heads=kv, n_heads=kv * group, head_dim=draw(st.integers(1, 8).map(lambda x: 2 * x)),
                intermediate=draw(st.integers(2, 64)), rope_theta=draw(st.sampled_from((10000.0, 1e6, 500.0))),
                norm_eps=draw(st.sampled_from((1e-6, 1e-5))), tie_embeddings=draw(st.booleans()))
    knobs = _draw_knobs(draw, name, dims)
    return name, family_spec(name, **dims, **knobs)


@st.composite
def family_cases(draw, names: tuple[str, ...] | None = None, max_seq: int = 8) -> FamilyCase:
    """Draw a :class:`FamilyCase`: a family instance layout (named after its family), a seed, a length."""
    name, spec = draw(family_specs(names))
    return FamilyCase(name, build(spec, name=name), draw(st.integers(0, 2**31 - 1)), draw(st.integers(1, max_seq)))


def family_layouts(names: tuple[str, ...] | None = None) -> st.SearchStrategy[Layout]:
    """Layouts that are instances of a registered family."""
    return family_cases(names).map(lambda c: c.layout)
