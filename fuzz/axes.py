"""The decoder-spec axes: one entry per :class:`~fuzz.decoder.DecoderSpec` field, read by everything.

An :class:`Axis` says, for one field, how a value is validated (its ``kind``), what
:func:`fuzz.strategies.specs` draws (``options``, simplest first: that order is hypothesis' shrink
order), what the reducer tries (``off``, ``floor``), what :func:`fuzz.strategies.largest_spec` prefers
(``most``) and which feature tags it switches on (``tags``).  ``decoder.check``, the strategies, the
reducer (``verifier.reduce``) and ``DecoderSpec.features`` all iterate :data:`AXES`; adding an axis is
one entry here plus the field and its lowering in ``decoder.build``.

:data:`AXES` is in the strategies' draw order.  Fields that are no axis (:data:`STRUCTURAL`) are drawn
by rules of their own: the layer list, the expert count and top-k.  Per-layer values live in the layer list
(:class:`~fuzz.decoder.LayerSpec`: RoPE on or off, sparse, sliding, its own RoPE theta, RoPE scaling and MLP,
``None`` = the spec's); an axis' ``tags`` read them where a layer's own value replaces the spec's
(``rope_scaling``, ``mlp``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

KEEP = object()  # ``off`` of an axis the reducer leaves as it is (no simpler value)
OWN_RULE = None  # ``options`` of an axis that ``strategies._specs`` draws by a rule of its own

STRUCTURAL = ("layers", "n_experts", "top_k")  # drawn, never pinned; not axes


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# kind -> (is the value valid for the axis, what a valid value is, in words)
KINDS: dict[str, tuple[Callable[["Axis", Any], bool], Callable[["Axis"], str]]] = {
    "choice": (lambda a, v: v in a.choices and isinstance(v, str), lambda a: f"one of {a.choices}"),
    "bool": (lambda a, v: isinstance(v, bool), lambda a: "True or False"),
    "width": (lambda a, v: _is_int(v) and v >= 1, lambda a: "a positive integer"),
    "positive_float": (lambda a, v: _is_real(v) and v > 0, lambda a: "a finite number > 0"),
    "multiplier": (lambda a, v: v is None or _is_real(v) and v != 0, lambda a: "None or a finite non-zero number"),
    "rotary": (lambda a, v: v is None or _is_int(v) and v >= 2 and v % 2 == 0,
               lambda a: "None or an even integer >= 2"),
    "size": (lambda a, v: _is_int(v) and v >= 1, lambda a: "a positive integer"),  # set by a limit, not pinned
    "window": (lambda a, v: v is None or _is_int(v) and v >= 1, lambda a: "None or an integer >= 1"),
    "cap": (lambda a, v: v is None or _is_real(v) and v > 0, lambda a: "None or a finite number > 0"),
}


@dataclass(frozen=True)
class Axis:
    """One DecoderSpec field as the fuzzer sees it.

    ``options``: a tuple, or ``options(limits, drawn_so_far)``; ``OWN_RULE`` when ``_specs`` draws it
    otherwise.  ``choices``: the valid values of a ``choice`` axis (default: ``options``).  ``off``: the
    value the reducer sets, ``off_rank`` order first (the reducer's order before issue 14), then the
    unranked axes in table order (``KEEP``: none).  ``floor``/``step``: the reducer
    narrows a width to ``max(floor, v // 2)``, rounded down to a multiple of ``step``.  ``most``:
    largest_spec's preference, most parameters first (default: the kind's rule).  ``single``: a
    constraint gives one value, not a tuple.  ``tags(spec)``: the feature tags it switches on.
    """

    name: str
    kind: str
    options: tuple | Callable[[dict, dict], Sequence] | None
    off: Any
    tags: Callable[[Any], Iterable[str]]
    choices: tuple = ()
    off_rank: int | None = None
    floor: int | None = None
    step: int = 1
    most: tuple | None = None
    single: bool = False

    def __post_init__(self):
        if self.kind == "choice" and not self.choices:
            object.__setattr__(self, "choices", tuple(self.options))

    def default_options(self, limits: dict, drawn: dict) -> Sequence:
        """What the strategies draw from when the axis is not constrained."""
        return self.options(limits, drawn) if callable(self.options) else self.options

    def is_valid(self, value) -> bool:
        return KINDS[self.kind][0](self, value)

    def wanted(self) -> str:
        return KINDS[self.kind][1](self)

    def preference(self) -> tuple:
        """largest_spec's order of a bool or choice axis, most parameters first."""
        if self.most is not None:
            return self.most
        return (True, False) if self.kind == "bool" else self.choices


def _no_tags(s) -> tuple:
    return ()


def _if(tag: str, name: str) -> Callable[[Any], tuple]:
    return lambda s: (tag,) if getattr(s, name) else ()


def _named(prefix: str, name: str) -> Callable[[Any], tuple]:
    return lambda s: (f"{prefix}:{getattr(s, name)}",)


def _non_pow2(name: str) -> Callable[[Any], tuple]:
    return lambda s: ("width:non-pow2",) if getattr(s, name) & (getattr(s, name) - 1) else ()


def _multiplier(name: str) -> Callable[[Any], tuple]:
    return lambda s: (f"multiplier:{name.split('_')[0]}",) if getattr(s, name) is not None else ()


def _any_rope(s) -> bool:
    return any(l.rope for l in s.layers)


def _scaling_tags(s) -> tuple:
    """``rope:scaled:<recipe>`` for each scaled recipe a RoPE layer runs (its own or the spec's)."""
    from .decoder import effective_rope_scaling  # decoder imports this module
    return tuple(sorted({f"rope:scaled:{effective_rope_scaling(s, l)}" for l in s.layers if l.rope}
                        - {"rope:scaled:none"}))


def _mlp_tags(s) -> tuple:
    """``mlp:<kind>`` of the spec (whether or not a layer is dense); with a dense layer's own MLP, of each
    dense layer's: its own or the spec's."""
    if not any(l.mlp is not None and not l.sparse for l in s.layers):
        return (f"mlp:{s.mlp}",)
    return tuple(sorted({f"mlp:{l.mlp or s.mlp}" for l in s.layers if not l.sparse}))


def _any_sparse(s) -> bool:
    return any(l.sparse for l in s.layers)


def _window_tags(s) -> tuple:
    """``attn:sliding_window`` when some layer attends over a window; ``+global`` when others do not."""
    if s.sliding_window is None or not any(l.sliding for l in s.layers):
        return ()
    return ("attn:sliding_window",) + (("attn:sliding_window+global",) if not all(l.sliding for l in s.layers)
                                       else ())
def _chunk_tags(s) -> tuple:
    """``attn:chunked`` when some layer attends within chunks; ``+global`` when others do not."""
    if s.attn_chunk is None or not any(l.sliding for l in s.layers):
        return ()
    return ("attn:chunked",) + (("attn:chunked+global",) if not all(l.sliding for l in s.layers) else ())


def _router_tags(s) -> tuple:
    """``moe:router:<kind>`` of a spec with MoE layers; ``grouped`` only where the expert count splits."""
    if not _any_sparse(s) or s.router == "softmax":
        return ()
    from .decoder import router_groups  # decoder imports this module
    kind = "sigmoid_bias" if s.router == "grouped" and router_groups(s)[0] == 1 else s.router
    return (f"moe:router:{kind}",)


def _attn_kind(s) -> str:
    if s.n_kv_heads == s.n_heads:
        return "mha"
    return "mqa" if s.n_kv_heads == 1 else "gqa"


def _mla_options(lim: dict, drawn: dict) -> tuple:
    """MLA where the drawn spec leaves room for it (decoder.check: no q/k norm, fused qkv or fused output gate)."""
    if drawn.get("qk_norm", "none") != "none" or drawn.get("fused_qkv") or drawn.get("attn_gate") == "output_sigmoid":
        return ("none",)
    return ("none", "q_lora", "q_direct")


def _temperature_lengths(lim: dict, drawn: dict) -> tuple:
    """L where the spec tunes the attention temperature; the default alone otherwise (one option: no draw)."""
    return (4, 2) if drawn.get("attn_temperature") is not None else (4,)


def _differential_options(lim: dict, drawn: dict) -> tuple:
    """Differential attention where the drawn spec leaves room for it (decoder.check: even head counts, no MLA,
    no output gate)."""
    h, kv = drawn.get("n_heads", 4), drawn.get("n_kv_heads", 2)
    if h % 2 or kv % 2 or drawn.get("mla", "none") != "none" or drawn.get("attn_gate", "none") != "none":
        return (False,)
    return (False, True)


# the MLPs that may share a decoder, a later layer's own (``LayerSpec.mlp``) from the spec's MLP's group: three
# groups hold a GLU (swiglu, geglu, the clamped SwiGLU) with plain MLPs of other kinds (homogeneous relu / relu2 and
# not), the fourth two plain ones, so a transform that reads one activation for every layer meets each kind of
# difference it could mishandle.  With two layers a decoder holds at most two MLPs, so each pair of them needs a
# layout of its own: 10 pairs within these groups, where all 11 MLPs together would take 55 (covering.lower_bound)
LAYER_MLP_GROUPS: tuple[tuple[str, ...], ...] = (("swiglu", "relu", "gelu"), ("geglu", "relu2", "gelu_tanh"),
                                                 ("clamped_swiglu", "quick_gelu", "fast_gelu"),
                                                 ("silu", "bloom_gelu"))


def layer_mlps(mlp: str) -> tuple[str, ...]:
    """The MLPs a later layer may have of its own where the spec's is ``mlp``: the others of its group."""
    return next(tuple(m for m in g if m != mlp) for g in LAYER_MLP_GROUPS if mlp in g)


def _axes(*axes: Axis) -> dict[str, Axis]:
    return {a.name: a for a in axes}


AXES: dict[str, Axis] = _axes(
    # the shape, drawn first (the order strategies._specs interleaves with layers, groups and experts)
    Axis("hidden", "width", lambda lim, _: range(4, lim["max_hidden"] + 1), KEEP, _non_pow2("hidden"), floor=4),
    Axis("n_kv_heads", "width", lambda lim, _: range(1, lim["max_kv_heads"] + 1), KEEP, _no_tags),
    Axis("n_heads", "width", OWN_RULE, KEEP, lambda s: (f"attn:{_attn_kind(s)}",), single=True),
    Axis("head_dim", "width", lambda lim, _: range(2, lim["max_head_dim"] + 1, 2), KEEP,
         lambda s: ("head_dim:independent",) if s.head_dim * s.n_heads != s.hidden else (), floor=2, step=2),
    Axis("rope_style", "choice", ("half", "interleaved"), "half",
         lambda s: (f"rope:{s.rope_style}",) if _any_rope(s) else (), off_rank=16),
    Axis("rotary_dim", "rotary", OWN_RULE, None,  # None = head_dim (full rotary)
         lambda s: ("rope:partial",) if _any_rope(s) and (s.rotary_dim or s.head_dim) < s.head_dim else (),
         off_rank=17, single=True),
    # features, in draw order
    Axis("qk_norm", "choice", ("none", "per_head", "full", "per_head_own"), "none", _named("qk_norm", "qk_norm"),
         off_rank=9, most=("full", "per_head_own", "per_head", "none")),  # per_head_own: a weight per head (Cohere)
    Axis("rope_theta", "positive_float", (10000.0, 500.0, 1e6), KEEP, _no_tags),
    Axis("rope_scaling", "choice", ("none", "linear", "llama3", "yarn", "dynamic", "longrope", "proportional"),
         "none", _scaling_tags,
         most=("longrope", "yarn", "llama3", "dynamic", "linear", "proportional", "none")),
    Axis("qkv_bias", "bool", (False, True), False, _if("bias:qkv", "qkv_bias"), off_rank=0),
    Axis("o_bias", "bool", (False, True), False, _if("bias:o", "o_bias"), off_rank=1),
    Axis("attn_gate", "choice", ("none", "head_softplus", "output_sigmoid"), "none",
         lambda s: (f"attn_gate:{s.attn_gate}",) if s.attn_gate != "none" else (), off_rank=8,
         most=("output_sigmoid", "head_softplus", "none")),
    # swiglu / geglu: GLU; any other value: a plain MLP ``down(act(up x))`` with that act fn
    Axis("position_embedding", "bool", (False, True), False, _if("embeddings:positions", "position_embedding")),
    Axis("fused_qkv", "bool", (False, True), False, _if("attn:fused_qkv", "fused_qkv")),
    Axis("mlp", "choice", ("swiglu", "geglu", "gelu", "gelu_tanh", "relu", "relu2", "quick_gelu", "fast_gelu",
                           "silu", "clamped_swiglu", "bloom_gelu"), "swiglu", _mlp_tags, off_rank=15),
    Axis("intermediate", "width", lambda lim, _: range(4, 2 * lim["max_hidden"] + 1), KEEP,
         _non_pow2("intermediate"), floor=4),
    Axis("mlp_bias", "bool", (False, True), False, _if("bias:mlp", "mlp_bias"), off_rank=2),
    Axis("renormalize", "bool", (True, False), True,
         lambda s: ("moe:renorm" if s.renormalize else "moe:no-renorm",)
         if _any_sparse(s) and s.router != "sparsemixer" else (), off_rank=19),  # sparsemixer: never renormalised
    Axis("moe_intermediate", "width", lambda lim, _: range(2, lim["max_hidden"] + 1), KEEP, _no_tags, floor=2),
    Axis("shared_expert", "bool", (False, True), False,
         lambda s: ("moe:shared_expert" + ("+gate" if s.shared_gate else ""),)
         if _any_sparse(s) and s.shared_expert else (), off_rank=3),
    Axis("shared_intermediate", "width", lambda lim, _: range(2, lim["max_hidden"] + 1), KEEP, _no_tags, floor=2),
    Axis("shared_gate", "bool", (True, False), True, _no_tags, off_rank=20),  # tagged with shared_expert
    Axis("router", "choice", ("softmax", "sigmoid", "sigmoid_bias", "grouped", "sparsemixer"), "softmax", _router_tags,
         most=("grouped", "sigmoid_bias", "sparsemixer", "sigmoid", "softmax")),
    Axis("routed_scaling", "positive_float", (1.0, 2.5), 1.0,
         lambda s: ("moe:routed_scaling",) if _any_sparse(s) and s.routed_scaling != 1.0 else ()),
    Axis("expert_form", "choice", ("plain", "bias", "transposed", "interleaved", "clamped", "gpt_oss"), "plain",
         lambda s: (f"moe:experts:{s.expert_form}",) if _any_sparse(s) and s.expert_form != "plain" else (),
         most=("gpt_oss", "bias", "clamped", "transposed", "interleaved", "plain")),
    Axis("norm", "choice", ("rms", "layer"), "rms", _named("norm", "norm"), off_rank=10, most=("layer", "rms")),
    Axis("norm_weight_form", "choice", ("w", "1+w"), "w", _named("norm_form", "norm_weight_form"), off_rank=12),
    Axis("norm_bias", "bool", (False, True), False,  # LayerNorm bias
         lambda s: ("norm:layer+bias",) if s.norm == "layer" and s.norm_bias else (), off_rank=11),
    Axis("norm_eps", "positive_float", (1e-6, 1e-5), KEEP, _no_tags),
    Axis("placement", "choice", ("pre", "sandwich", "post"), "pre", _named("placement", "placement"),
         choices=("pre", "post", "sandwich"), off_rank=13, most=("sandwich", "pre", "post")),
    Axis("tie_embeddings", "bool", (False, True), False,
         lambda s: ("embeddings:tied" if s.tie_embeddings else "embeddings:untied",), off_rank=4, most=(False, True)),
    Axis("embedding_multiplier", "multiplier", (None, 3.0, 0.5), None, _multiplier("embedding_multiplier"),
         off_rank=5),
    Axis("residual_multiplier", "multiplier", (None, 0.25), None, _multiplier("residual_multiplier"), off_rank=6),
    Axis("logit_multiplier", "multiplier", (None, 0.125), None, _multiplier("logit_multiplier"), off_rank=7),
    Axis("residual", "choice", lambda lim, drawn: ("sequential",) if drawn["placement"] == "post"
         else ("sequential", "parallel"), "sequential", _named("residual", "residual"),
         choices=("sequential", "parallel"), off_rank=14),  # post-norm has no parallel residual
    Axis("parallel_shared_norm", "bool", (True, False), True,
         lambda s: ("parallel:shared_norm" if s.parallel_shared_norm else "parallel:two_norms",)
         if s.residual == "parallel" else (), off_rank=18, most=(False, True)),
    # attention scores (Gemma2 / Granite scale, Gemma2 soft-caps, BLOOM / MPT ALiBi, GPT-OSS sinks)
    Axis("attn_scale", "cap", (None, 0.2), None, lambda s: ("attn:scale",) if s.attn_scale is not None else ()),
    Axis("attn_softcap", "cap", (None, 2.0), None, lambda s: ("attn:softcap",) if s.attn_softcap is not None else ()),
    Axis("final_softcap", "cap", (None, 4.0), None, lambda s: ("logits:softcap",) if s.final_softcap is not None
         else ()),
    Axis("alibi", "bool", (False, True), False, _if("attn:alibi", "alibi")),
    Axis("attn_sinks", "bool", (False, True), False, _if("attn:sinks", "attn_sinks")),
    # sliding-window attention on the layers whose ``LayerSpec.sliding`` is set (Mistral: every layer;
    # Gemma2 / Qwen2 ``max_window_layers``: some); small windows keep the oracle's length 2 W + 9 short
    Axis("sliding_window", "window", (None, 4, 2), None, _window_tags),
    # set from the ``vocab`` limit, narrowed last by the reducer
    Axis("vocab", "size", OWN_RULE, KEEP, _no_tags, floor=8),
    # multi-head latent attention (DeepSeek-V2/V3, MiniCPM3, GLM-4-MoE-Lite): drawn only where the spec has no
    # q/k norm, no fused qkv and no fused output gate (MLA has its own projections); off by default
    Axis("mla", "choice", _mla_options, "none", lambda s: (f"attn:mla:{s.mla}",) if s.mla != "none" else (),
         choices=("none", "q_lora", "q_direct"), most=("none", "q_lora", "q_direct")),
    # a bias on the logits (GPT-J, CodeGen): after vocab so the draws before it stay as they were
    Axis("lm_head_bias", "bool", (False, True), False, _if("logits:bias", "lm_head_bias")),
    # one id the model reads and never predicts (an embedding row past the logits' vocabulary: Moshi's initial
    # token); never with a tied table (decoder.check)
    Axis("extra_input_id", "bool", lambda lim, drawn: (False,) if drawn.get("tie_embeddings") else (False, True),
         False, _if("embeddings:extra_input_id", "extra_input_id")),
    # learned positions that follow the attention_mask (OPT: cumsum(mask) - 1, a left-padded row starts at its
    # first token): a mode of learned positions (nothing without them); shows on a padded batch only (the oracle
    # pads one then)
    Axis("positions_from_mask", "bool", (False, True), False,
         lambda s: ("embeddings:positions:from_mask",) if s.position_embedding and s.positions_from_mask else ()),
    # attention temperature tuning (Ministral3 / Mistral4 / Llama-4): the query at position p times
    # 1 + beta log(1 + floor(p / L)); L 4 or 2 so the factor steps within the oracle's 12 tokens (twice or more)
    Axis("attn_temperature", "cap", (None, 0.5, 0.1), None,
         lambda s: ("attn:temperature",) if s.attn_temperature is not None else ()),
    Axis("attn_temperature_length", "width", _temperature_lengths, 2, _no_tags),  # the reducer tries the shortest L
    # non-parametric norms (OLMo's LayerNorm, NanoChat's RMSNorm: no weight, g = 1)
    Axis("norm_weightless", "bool", (False, True), False, _if("norm:weightless", "norm_weightless")),
    # the dense MLP as ``down(xielu(up x))`` (Apertus' learned xIELU activation)
    Axis("mlp_xielu", "bool", (False, True), False, _if("mlp:xielu", "mlp_xielu")),
    # RoPE by -theta (NanoChat: rotate_half = cat(x2, -x1)); on every RoPE layer
    Axis("rope_reversed", "bool", (False, True), False,
         lambda s: ("rope:reversed",) if s.rope_reversed and _any_rope(s) else ()),
    # the routing weight scales each routed expert's input, w_e down_e(..(x)) -> down_e(..(w_e x)) (Llama 4's
    # routed_in = x * sigmoid(score)); on every MoE layer
    Axis("expert_scale_input", "bool", (False, True), False,
         lambda s: ("moe:scale_input",) if s.expert_scale_input and _any_sparse(s) else ()),
    # per-layer input embeddings (Gemma4 PLE) of width P: a second token table, L x P wide, mixed with a
    # projection of the token embedding; each layer adds W_out(act(W_gate h) * its slice) to the stream
    Axis("per_layer_input", "window", (None, 4), None,
         lambda s: ("embeddings:per_layer_input",) if s.per_layer_input else ()),
    # Ergo's residual gate: each sequential residual add is sigmoid(w) * branch + sqrt(1 + sigmoid(w))
    # exp(-softplus(w) / 2) * residual (a per-channel factor on the stream); pre-norm or sandwich, sequential only
    Axis("residual_gate", "bool", lambda lim, drawn: (False,) if drawn.get("placement") == "post"
         or drawn.get("residual") == "parallel" else (False, True), False,
         lambda s: ("residual:gate",) if s.residual_gate and _gated(s) else ()),
    # chunked local attention (Llama-4 attention_chunk_size C) on the layers whose LayerSpec.sliding is set: query i
    # reads keys j <= i in its own chunk, floor(i / C) == floor(j / C); never with a sliding window; C 4 or 2 so the
    # chunks show within the oracle's 12 tokens
    Axis("attn_chunk", "window", lambda lim, drawn: (None,) if drawn.get("sliding_window") is not None
         else (None, 4, 2), None, _chunk_tags),
    # the attention temperature's form: Llama-4's steps or Beam's smooth (1 + p / L) ** beta (scalable softmax)
    # (drawn always: it changes nothing without a temperature)
    Axis("attn_temperature_form", "choice", ("log_floor", "power"), "log_floor",
         lambda s: ("attn:temperature:power",) if s.attn_temperature is not None
         and s.attn_temperature_form == "power" else (), choices=("log_floor", "power")),
    # differential attention (DiffLlama): paired heads and value heads (both counts even), no MLA, no output gate
    Axis("attn_differential", "bool", _differential_options, False, _if("attn:differential", "attn_differential"),
         most=(False, True)),  # the largest spec has an odd kv head count (max_kv_heads 3): no pairs
    # DeepSeek Sparse Attention (DeepSeek-V3.2, GLM-MoE-DSA): a lightning indexer per attention layer whose top-k
    # keys are the only ones each query reads; top-k 3 < the oracle's 12 tokens, so the selection drops keys
    Axis("sparse_index_topk", "window", (None, 3), None,
         lambda s: ("attn:sparse_index",) if s.sparse_index_topk is not None else ()),
)

def _gated(s) -> bool:
    """Where ``residual_gate`` acts: the sequential residual adds of a pre-norm or sandwich layout."""
    return s.placement != "post" and s.residual == "sequential"


# the reducer's "turn a feature off" pass, in this order
OFF_ORDER: tuple[Axis, ...] = tuple(a for _, a in sorted(
    ((a.off_rank if a.off_rank is not None else len(AXES) + i, a) for i, a in enumerate(AXES.values())
     if a.off is not KEEP), key=lambda pair: pair[0]))
# the reducer's "narrow a width" pass, in table order
NARROWED: tuple[Axis, ...] = tuple(a for a in AXES.values() if a.floor is not None)
