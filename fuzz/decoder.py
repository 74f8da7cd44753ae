"""A decoder described by its features (:class:`DecoderSpec`), lowered to a :class:`~fuzz.layout.Layout`.

The spec is the synthesizer's vocabulary: every axis the fuzzer draws is one field here, and
:func:`build` turns any valid combination into the op graph.  Families (Llama, Qwen3-MoE, ...) are
specs with some features switched on, in the spirit of transformers' ``modular_*.py``.

Block wiring, with ``h`` the residual stream:

* pre-norm, sequential:  ``h = h + attn(n1(h)); h = h + mlp(n2(h))``
* pre-norm, parallel:    ``h = h + attn(n1(h)) + mlp(n1(h) or n2(h))``
* sandwich:              ``h = h + p1(attn(n1(h))); h = h + p2(mlp(n2(h)))``
* post-norm:             ``h = n1(h + attn(h)); h = n2(h + mlp(h))``

``residual_multiplier`` scales each branch before its add (Granite style).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from .axes import AXES
from .rope_scaling import recipe_table
from .layout import Layout


@dataclass(frozen=True)
class LayerSpec:
    rope: bool = True  # RoPE on this layer (off = NoPE layer)
    sparse: bool = False  # MoE MLP instead of the dense MLP
    sliding: bool = True  # with DecoderSpec.sliding_window (attn_chunk) set: a sliding-window (chunked) layer
    # (False = full attention)
    rope_theta: float | None = None  # this layer's RoPE theta (None = the spec's; Gemma3 local layers)
    # this layer's scaled-RoPE recipe, one of DecoderSpec.rope_scaling's values (None = the spec's; Gemma3: the
    # global layers linear-scaled, the local ones unscaled)
    rope_scaling: str | None = None
    # this (dense) layer's MLP, one of DecoderSpec.mlp's values (None = the spec's MLP, xIELU with mlp_xielu); a
    # transform reading one activation for every layer (transformers' config.hidden_act) breaks here
    mlp: str | None = None


# the LayerSpec fields a spec's dict leaves out while they are None (their defaults): the JSON of a layout drawn
# before they existed stays the same
_LAYER_OPTIONAL = ("rope_scaling", "mlp")


def layer_dict(layer: LayerSpec) -> dict:
    """``layer`` as a dict, the :data:`_LAYER_OPTIONAL` fields only where set."""
    return {k: v for k, v in asdict(layer).items() if not (k in _LAYER_OPTIONAL and v is None)}


@dataclass(frozen=True)
class DecoderSpec:
    """One point of the spec space; each field's valid values, draws and tags: :data:`fuzz.axes.AXES`."""

    vocab: int = 64
    hidden: int = 32
    layers: tuple[LayerSpec, ...] = (LayerSpec(),)
    # attention
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 8
    qk_norm: str = "none"
    rope_style: str = "half"
    rotary_dim: int | None = None  # None = head_dim (full rotary)
    rope_theta: float = 10000.0
    rope_scaling: str = "none"  # scaled RoPE recipe (fuzz.rope_scaling): none/linear/llama3/yarn/dynamic/longrope/
    # proportional (Gemma4: half of the pairs rotated, theta ** (-2i / r), the rest unrotated)
    qkv_bias: bool = False
    o_bias: bool = False
    attn_gate: str = "none"
    sliding_window: int | None = None  # keys at distance >= W masked on the layers with LayerSpec.sliding
    position_embedding: bool = False  # learned absolute positions added to the token embedding (GPT-2)
    fused_qkv: bool = False  # one qkv_proj linear, q / k / v its row slices (Phi3 qkv_proj, GPT-NeoX query_key_value)
    # mlp
    mlp: str = "swiglu"
    intermediate: int = 48
    mlp_bias: bool = False
    # moe
    n_experts: int = 4
    top_k: int = 2
    renormalize: bool = True
    moe_intermediate: int = 16
    shared_expert: bool = False
    shared_intermediate: int = 24
    shared_gate: bool = True
    router: str = "softmax"  # softmax | sigmoid | sigmoid_bias | grouped | sparsemixer (see router_params)
    routed_scaling: float = 1.0  # routed_scaling_factor on the routing weights
    expert_form: str = "plain"  # plain | bias | transposed | interleaved | clamped | gpt_oss (see expert_params)
    # norms and residual
    norm: str = "rms"
    norm_weight_form: str = "w"
    norm_bias: bool = False  # LayerNorm bias
    norm_eps: float = 1e-6
    placement: str = "pre"
    residual: str = "sequential"
    parallel_shared_norm: bool = True
    # embeddings and multipliers
    tie_embeddings: bool = False
    embedding_multiplier: float | None = None
    residual_multiplier: float | None = None
    logit_multiplier: float | None = None
    # attention scores and final logits
    attn_scale: float | None = None  # None = head_dim ** -0.5
    attn_softcap: float | None = None  # cap * tanh(s / cap) on the scores
    final_softcap: float | None = None  # cap * tanh(z / cap) on the logits
    alibi: bool = False  # per-head linear position bias on the scores
    attn_sinks: bool = False  # a learned per-head logit in the softmax denominator
    # multi-head latent attention (DeepSeek-V2/V3): "q_lora" (q through q_a_proj -> norm -> q_b_proj) or
    # "q_direct" (q_proj, V2-Lite); see _mla for the widths it derives from head_dim / rotary_dim / hidden
    mla: str = "none"
    lm_head_bias: bool = False  # a learned per-token-id bias on the logits (GPT-J, CodeGen)
    # one token id (``vocab``) the model reads and never predicts: an embedding row past the logits' vocabulary
    # (Moshi's ``vocab_size + 1`` rows, its initial text token); the tokens and the table have vocab + 1 ids
    extra_input_id: bool = False
    positions_from_mask: bool = False  # learned positions counted from each row's first token (OPT); needs them
    # attention temperature tuning (Ministral3 / Mistral4 llama_4_scaling_beta): the query at position p times
    # 1 + beta log(1 + floor(p / L)); a small L (original_max_position_embeddings) so it shows in a short test
    attn_temperature: float | None = None  # beta (None: off)
    attn_temperature_length: int = 4  # L
    lm_head_bias: bool = False  # a learned per-token-id bias on the logits (GPT-J, CodeGen, Phi)
    norm_weightless: bool = False  # every norm without weight or bias, g = 1 (OLMo LayerNorm, NanoChat RMSNorm)
    mlp_xielu: bool = False  # the dense MLP is down(xielu(up x)) (Apertus), whatever ``mlp`` says
    rope_reversed: bool = False  # RoPE rotates by -theta (NanoChat's rotate_half = cat(x2, -x1))
    expert_scale_input: bool = False  # the routing weight scales each expert's input, not its output (Llama 4)
    # per-layer input embeddings (Gemma4 PLE) of this width P (None: off): see _per_layer_inputs
    per_layer_input: int | None = None
    residual_gate: bool = False  # Ergo: each sequential pre-norm / sandwich residual add a residual_gate
    # chunked local attention (Llama-4 attention_chunk_size C) on the layers with LayerSpec.sliding: query i reads
    # keys j <= i with floor(i / C) == floor(j / C); never with sliding_window (one local span per layer)
    attn_chunk: int | None = None
    # the form of the attention temperature: "log_floor" (1 + beta log(1 + floor(p / L))) or "power" (Beam's
    # scalable-softmax query scale (1 + p / L) ** beta)
    attn_temperature_form: str = "log_floor"
    # differential attention (DiffLlama): heads (i, i + h/2) paired over the value [V_j; V_{j + kv/2}], P_i - lam
    # P_{i + h/2}, then a weight-free group RMSNorm over the h/2 groups of 2d and the scale 1 - lambda_init
    attn_differential: bool = False
    # DeepSeek Sparse Attention (DeepSeek-V3.2): a lightning indexer (its own linears reading the normed input, or
    # MLA's q latent, a LayerNorm'd key, RoPE, relu scores weighted per indexer head) chooses the top-k keys each
    # query reads (None: off); see _indexer
    sparse_index_topk: int | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = [layer_dict(l) for l in self.layers]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DecoderSpec":
        d = dict(d)
        d["layers"] = tuple(LayerSpec(**l) for l in d.get("layers", [{}]))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def with_(self, **changes) -> "DecoderSpec":
        return replace(self, **changes)

    def features(self) -> list[str]:
        """The feature tags this spec switches on (what coverage statistics count): each axis' tags
        (:data:`fuzz.axes.AXES`) plus the layer list's."""
        f = [tag for axis in AXES.values() for tag in axis.tags(self)]
        if not all(l.rope for l in self.layers):
            f.append("rope:none-on-some-layers")
        if any(l.rope and l.rope_theta is not None and l.rope_theta != self.rope_theta for l in self.layers):
            f.append("rope:per-layer-theta")
        if len({effective_rope_scaling(self, l) for l in self.layers if l.rope}) > 1:
            f.append("rope:per-layer-scaling")
        if len({effective_mlp(self, l) for l in self.layers if not l.sparse}) > 1:
            f.append("mlp:per-layer")
        if any(l.sparse for l in self.layers):
            f.append("moe")
            if not all(l.sparse for l in self.layers):
                f.append("moe:mixed-dense-sparse")
        f.append(f"layers:{len(self.layers)}")
        return sorted(set(f))


def effective_rope_scaling(s: DecoderSpec, layer: LayerSpec) -> str:
    """The scaled-RoPE recipe ``layer`` runs: its own or the spec's, ``"none"`` where ``decoder.build`` lowers it
    to plain RoPE (dynamic NTK and proportional at ``rotary_dim <= 2``)."""
    kind = s.rope_scaling if layer.rope_scaling is None else layer.rope_scaling
    return "none" if kind in ("dynamic", "proportional") and (s.rotary_dim or s.head_dim) <= 2 else kind


def effective_mlp(s: DecoderSpec, layer: LayerSpec) -> str:
    """The dense MLP ``layer`` runs: its own, else ``"xielu"`` with ``mlp_xielu``, else the spec's ``mlp``."""
    return layer.mlp if layer.mlp is not None else "xielu" if s.mlp_xielu else s.mlp


class _Graph:
    """Accumulates ``(id, op, params, inputs)`` tuples for :meth:`Layout.from_nodes`."""

    def __init__(self):
        self.nodes: list[tuple[str, str, dict, list[str]]] = []

    def add(self, node: str, op: str, inputs: list[str], **params) -> str:
        self.nodes.append((node, op, params, inputs))
        return node


def _norm(g: _Graph, s: DecoderSpec, node: str, x: str, dim: int, groups: int = 1, group_weights: bool = False) -> str:
    if s.norm_weightless:  # non-parametric: no weight, no bias
        return g.add(node, "norm", [x], kind=s.norm, dim=dim, groups=groups, eps=s.norm_eps, weight_form="none")
    return g.add(node, "norm", [x], kind=s.norm, dim=dim, groups=groups, eps=s.norm_eps,
                 weight_form=s.norm_weight_form, bias=s.norm == "layer" and s.norm_bias, group_weights=group_weights)


# the synthesized scaled-RoPE recipes: transformers' formulas at lengths the oracle reaches (seq 12 > 8)
ROPE_RECIPE = {"factor": 4.0, "original_max_positions": 16, "max_positions": 8, "proportion": 0.5}


def _rope_params(s: DecoderSpec, layer: LayerSpec, r: int) -> dict:
    """The rope node's parameters: style, the layer's theta and scaling (its own or the spec's; fuzz.rope_scaling)."""
    theta = s.rope_theta if layer.rope_theta is None else layer.rope_theta
    out = {"style": s.rope_style, "theta": theta, **({"reversed": True} if s.rope_reversed else {})}
    kind = s.rope_scaling if layer.rope_scaling is None else layer.rope_scaling
    # NTK needs rotary_dim > 2; proportional at rotary_dim 2 rotates no pair (RoPE would vanish): plain RoPE there
    if kind == "none" or kind in ("dynamic", "proportional") and r <= 2:
        return out
    out["scaling"] = kind
    if kind == "dynamic":
        return {**out, "factor": 2.0, "max_positions": ROPE_RECIPE["max_positions"]}
    short = [1.0 + 0.5 * i for i in range(r // 2)] if kind == "longrope" else None
    inv, af = recipe_table(kind, theta, r, factor=ROPE_RECIPE["factor"],
                           original_max_positions=ROPE_RECIPE["original_max_positions"], short_factor=short,
                           proportion=ROPE_RECIPE["proportion"])
    out.update(inv_freq=inv, attention_factor=af)
    if kind == "longrope":
        long, _ = recipe_table(kind, theta, r, factor=ROPE_RECIPE["factor"],
                               original_max_positions=ROPE_RECIPE["original_max_positions"],
                               short_factor=[2.0 + i for i in range(r // 2)])
        out.update(long_inv_freq=long, max_positions=ROPE_RECIPE["max_positions"])
    return out


MLA_EXCLUDES = {"qk_norm": "none", "fused_qkv": False}  # MLA has its own projections and latent norms


def mla_dims(s: DecoderSpec) -> dict[str, int]:
    """The MLA widths of spec ``s``: ``qk_nope = head_dim``, ``qk_rope = rotary_dim or head_dim`` (the decoupled
    RoPE head, one ``k_pe`` shared by all heads), ``qk_head = qk_nope + qk_rope`` (the score head),
    ``v_head = head_dim`` (so the value head differs from the score head), latent ranks ``max(2, hidden // 2)``."""
    nope, rope = s.head_dim, s.rotary_dim or s.head_dim
    rank = max(2, s.hidden // 2)
    return {"nope": nope, "rope": rope, "qk": nope + rope, "v": nope, "q_rank": rank, "kv_rank": rank}


def _mla(g: _Graph, s: DecoderSpec, p: str, x: str, layer: LayerSpec) -> str:
    """DeepSeek-V2/V3 multi-head latent attention: ``q = q_b(norm(q_a(x)))`` (or ``q_proj(x)``), per head
    ``[q_nope, q_pe]``; ``kv_a(x) = [c (kv_rank), k_pe (qk_rope)]``; ``kv_b(norm(c))`` per head ``[k_nope, v]``;
    RoPE on ``q_pe`` and on the one shared ``k_pe``; ``k_h = [k_nope_h, rope(k_pe)]``; scores over ``qk_head``."""
    h, m = s.n_heads, mla_dims(s)
    nope, r, qk, dv = m["nope"], m["rope"], m["qk"], m["v"]
    if s.mla == "q_lora":
        q = g.add(f"{p}q_a_proj", "linear", [x], in_features=s.hidden, out_features=m["q_rank"], bias=s.qkv_bias)
        q = q_latent = _norm(g, s, f"{p}q_a_layernorm", q, m["q_rank"])
        q = g.add(f"{p}q_b_proj", "linear", [q], in_features=m["q_rank"], out_features=h * qk, bias=False)
    else:
        q_latent = None
        q = g.add(f"{p}q_proj", "linear", [x], in_features=s.hidden, out_features=h * qk, bias=False)
    q_nope = g.add(f"{p}q_nope", "head_slice", [q], n_heads=h, head_dim=qk, start=0, length=nope)
    q_pe = g.add(f"{p}q_pe", "head_slice", [q], n_heads=h, head_dim=qk, start=nope, length=r)
    kv_a = g.add(f"{p}kv_a_proj_with_mqa", "linear", [x], in_features=s.hidden, out_features=m["kv_rank"] + r,
                 bias=s.qkv_bias)
    c = g.add(f"{p}kv_latent", "head_slice", [kv_a], n_heads=1, head_dim=m["kv_rank"] + r, start=0,
              length=m["kv_rank"])
    k_pe = g.add(f"{p}k_pe", "head_slice", [kv_a], n_heads=1, head_dim=m["kv_rank"] + r, start=m["kv_rank"],
                 length=r)
    c = _norm(g, s, f"{p}kv_a_layernorm", c, m["kv_rank"])
    kv = g.add(f"{p}kv_b_proj", "linear", [c], in_features=m["kv_rank"], out_features=h * (nope + dv), bias=False)
    k_nope = g.add(f"{p}k_nope", "head_slice", [kv], n_heads=h, head_dim=nope + dv, start=0, length=nope)
    v = g.add(f"{p}v", "head_slice", [kv], n_heads=h, head_dim=nope + dv, start=nope, length=dv)
    if layer.rope:
        rp = _rope_params(s, layer, r)
        q_pe = g.add(f"{p}q_rope", "rope", [q_pe], n_heads=h, head_dim=r, rotary_dim=r, **rp)
        k_pe = g.add(f"{p}k_rope", "rope", [k_pe], n_heads=1, head_dim=r, rotary_dim=r, **rp)
    q = g.add(f"{p}q", "head_concat", [q_nope, q_pe], n_heads=h, a_dim=nope, b_dim=r)
    k = g.add(f"{p}k", "head_concat", [k_nope, k_pe], n_heads=h, a_dim=nope, b_dim=r, shared_b=True)
    select = _indexer(g, s, p, x, q_latent, layer)
    window = s.sliding_window if layer.sliding else None
    chunk = s.attn_chunk if layer.sliding else None
    a = g.add(f"{p}attn", "attention", [q, k, v, *select], n_heads=h, n_kv_heads=h, head_dim=qk, **_score_params(s),
              **({"window": window} if window is not None else {}), **({"chunk": chunk} if chunk is not None else {}))
    if s.attn_gate == "head_softplus":
        gl = g.add(f"{p}g_proj", "linear", [x], in_features=s.hidden, out_features=h, bias=False)
        a = g.add(f"{p}attn_gate", "gate", [a, gl], act="softplus", n_heads=h)
    return g.add(f"{p}o_proj", "linear", [a], in_features=h * dv, out_features=s.hidden, bias=s.o_bias)


INDEX_HEADS = 2  # the indexer's heads (index_n_heads) in a synthesized layout


def _indexer(g: _Graph, s: DecoderSpec, p: str, x: str, q_latent: str | None, layer: LayerSpec) -> list[str]:
    """DeepSeek Sparse Attention's lightning indexer, as DeepSeek-V3.2 writes it: queries ``wq_b(q_latent)``
    (MLA's normed q latent; the normed input ``x`` without one), one key ``k_norm(wk(x))`` (a LayerNorm with
    bias), RoPE on the first channels of each, per-head weights ``weights_proj(x)``; the ``index_topk`` node
    choosing the ``sparse_index_topk`` keys each query reads.  Returns ``[selection]`` for the attention's
    ``select`` port (empty when off)."""
    if s.sparse_index_topk is None:
        return []
    h, d = INDEX_HEADS, s.head_dim
    src = x if q_latent is None else q_latent
    width = s.hidden if q_latent is None else mla_dims(s)["q_rank"]
    q = g.add(f"{p}indexer_wq_b", "linear", [src], in_features=width, out_features=h * d, bias=False)
    k = g.add(f"{p}indexer_wk", "linear", [x], in_features=s.hidden, out_features=d, bias=False)
    k = g.add(f"{p}indexer_k_norm", "norm", [k], kind="layer", dim=d, eps=1e-6, bias=True)
    r = min(s.rotary_dim or d, d) // 2 * 2
    if layer.rope and r >= 2:
        rp = _rope_params(s, layer, r)
        q = g.add(f"{p}indexer_q_rope", "rope", [q], n_heads=h, head_dim=d, rotary_dim=r, **rp)
        k = g.add(f"{p}indexer_k_rope", "rope", [k], n_heads=1, head_dim=d, rotary_dim=r, **rp)
    w = g.add(f"{p}indexer_weights_proj", "linear", [x], in_features=s.hidden, out_features=h, bias=False)
    return [g.add(f"{p}indexer", "index_topk", [q, k, w], n_heads=h, head_dim=d, topk=s.sparse_index_topk)]


def _attention(g: _Graph, s: DecoderSpec, p: str, x: str, layer: LayerSpec) -> str:
    if s.mla != "none":
        return _mla(g, s, p, x, layer)
    h, kv, d = s.n_heads, s.n_kv_heads, s.head_dim
    fused_gate = s.attn_gate == "output_sigmoid"
    if s.fused_qkv:  # rows [q (h d, or h 2d with a fused gate) | k (kv d) | v (kv d)], read as whole-width slices
        qw = h * d * (2 if fused_gate else 1)
        width = qw + 2 * kv * d
        qkv = g.add(f"{p}qkv_proj", "linear", [x], in_features=s.hidden, out_features=width, bias=s.qkv_bias)
        q, k, v = (g.add(f"{p}{name}_slice", "head_slice", [qkv], n_heads=1, head_dim=width, start=start, length=n)
                   for name, start, n in (("q", 0, qw), ("k", qw, kv * d), ("v", qw + kv * d, kv * d)))
    else:
        q = g.add(f"{p}q_proj", "linear", [x], in_features=s.hidden,
                  out_features=h * d * (2 if fused_gate else 1), bias=s.qkv_bias)
        k = g.add(f"{p}k_proj", "linear", [x], in_features=s.hidden, out_features=kv * d, bias=s.qkv_bias)
        v = g.add(f"{p}v_proj", "linear", [x], in_features=s.hidden, out_features=kv * d, bias=s.qkv_bias)
    gate_src = None
    if fused_gate:  # Qwen3-Next: q_proj rows are [q | gate] per head
        gate_src = g.add(f"{p}q_gate", "head_slice", [q], n_heads=h, head_dim=2 * d, start=d, length=d)
        q = g.add(f"{p}q_only", "head_slice", [q], n_heads=h, head_dim=2 * d, start=0, length=d)
    if s.qk_norm == "per_head":
        q = _norm(g, s, f"{p}q_norm", q, d, h)
        k = _norm(g, s, f"{p}k_norm", k, d, kv)
    elif s.qk_norm == "per_head_own":  # Cohere use_qk_norm: per head, each head its own weight (and bias)
        q = _norm(g, s, f"{p}q_norm", q, d, h, group_weights=h > 1)
        k = _norm(g, s, f"{p}k_norm", k, d, kv, group_weights=kv > 1)
    elif s.qk_norm == "full":
        q = _norm(g, s, f"{p}q_norm", q, h * d)
        k = _norm(g, s, f"{p}k_norm", k, kv * d)
    if layer.rope:
        r = s.rotary_dim or d
        rp = _rope_params(s, layer, r)
        q = g.add(f"{p}q_rope", "rope", [q], n_heads=h, head_dim=d, rotary_dim=r, **rp)
        k = g.add(f"{p}k_rope", "rope", [k], n_heads=kv, head_dim=d, rotary_dim=r, **rp)
    select = _indexer(g, s, p, x, None, layer)
    window = s.sliding_window if layer.sliding else None
    chunk = s.attn_chunk if layer.sliding else None
    a = g.add(f"{p}attn", "attention", [q, k, v, *select], n_heads=h, n_kv_heads=kv, head_dim=d, **_score_params(s),
              **({"window": window} if window is not None else {}), **({"chunk": chunk} if chunk is not None else {}),
              **(differential_params(int(p[1:-1])) if s.attn_differential else {}))
    if s.attn_differential:  # DiffLlama's groupnorm (weight-free RMSNorm over each pair's 2d) and 1 - lambda_init
        a = g.add(f"{p}attn_subln", "norm", [a], kind="rms", dim=2 * d, groups=h // 2, eps=s.norm_eps,
                  weight_form="none")
        a = g.add(f"{p}attn_subln_scale", "scale", [a], factor=1.0 - differential_params(int(p[1:-1]))["lambda_init"])
    if fused_gate:
        a = g.add(f"{p}attn_gate", "gate", [a, gate_src], act="sigmoid", n_heads=h)
    elif s.attn_gate == "head_softplus":  # Laguna: a per-head gate computed from the normed input
        gl = g.add(f"{p}g_proj", "linear", [x], in_features=s.hidden, out_features=h, bias=False)
        a = g.add(f"{p}attn_gate", "gate", [a, gl], act="softplus", n_heads=h)
    return g.add(f"{p}o_proj", "linear", [a], in_features=h * d, out_features=s.hidden, bias=s.o_bias)


def differential_params(layer: int) -> dict:
    """DiffLlama's ``lambda_init = 0.8 - 0.6 exp(-0.3 layer)`` on a differential attention."""
    return {"differential": True, "lambda_init": 0.8 - 0.6 * math.exp(-0.3 * layer)}


def _score_params(s: DecoderSpec) -> dict:
    """The attention op's score modifiers, only those switched on (a default layout keeps its old params)."""
    out = {}
    if s.attn_scale is not None and not math.isclose(s.attn_scale, s.head_dim ** -0.5, rel_tol=1e-15):
        out["scale"] = float(s.attn_scale)  # head_dim ** -0.5 is the default: one layout per function
    if s.attn_softcap is not None:
        out["softcap"] = float(s.attn_softcap)
    if s.alibi:
        out["alibi"] = True
    if s.attn_sinks:
        out["sinks"] = True
    if s.attn_temperature is not None:
        out.update(temperature_beta=float(s.attn_temperature), temperature_length=s.attn_temperature_length)
        if s.attn_temperature_form != "log_floor":
            out["temperature_form"] = s.attn_temperature_form
    return out


def _glu_or_gelu(g: _Graph, s: DecoderSpec, p: str, x: str, inter: int, bias: bool) -> str:
    if s.mlp_xielu:  # Apertus: a plain MLP with the learned xIELU activation
        up = g.add(f"{p}up_proj", "linear", [x], in_features=s.hidden, out_features=inter, bias=bias)
        a = g.add(f"{p}act", "xielu", [up])
    elif s.mlp == "clamped_swiglu":  # MiniMax-M3's dense MLP: the clamped SwiGLU of GPT-OSS' experts
        gate = g.add(f"{p}gate_proj", "linear", [x], in_features=s.hidden, out_features=inter, bias=bias)
        up = g.add(f"{p}up_proj", "linear", [x], in_features=s.hidden, out_features=inter, bias=bias)
        a = g.add(f"{p}glu", "clamped_glu", [gate, up], limit=1.5)
    elif s.mlp not in ("swiglu", "geglu"):  # a plain MLP: act is named by the mlp axis (gelu, relu2, ...)
        up = g.add(f"{p}up_proj", "linear", [x], in_features=s.hidden, out_features=inter, bias=bias)
        a = g.add(f"{p}act", "act", [up], fn=s.mlp)
    else:
        gate = g.add(f"{p}gate_proj", "linear", [x], in_features=s.hidden, out_features=inter, bias=bias)
        up = g.add(f"{p}up_proj", "linear", [x], in_features=s.hidden, out_features=inter, bias=bias)
        act = g.add(f"{p}act", "act", [gate], fn="silu" if s.mlp == "swiglu" else "gelu_tanh")
        a = g.add(f"{p}glu", "mul", [act, up])
    return g.add(f"{p}down_proj", "linear", [a], in_features=inter, out_features=s.hidden, bias=bias)


def router_groups(s: DecoderSpec) -> tuple[int, int]:
    """``(n_group, topk_group)`` of a ``router="grouped"`` spec: two groups, the best one kept when top-k fits
    in one group (else both, which still scores and orders the groups); ``(1, 1)`` when ``n_experts`` cannot
    be split into two groups of two or more (the tags then say no group-limited routing)."""
    if s.router != "grouped" or s.n_experts % 2 or s.n_experts < 4:
        return 1, 1
    return 2, 1 if s.top_k <= s.n_experts // 2 else 2


def router_params(s: DecoderSpec) -> dict:
    """The ``router`` op parameters of spec ``s`` (DeepSeek-V3 style for the sigmoid kinds)."""
    n_group, topk_group = router_groups(s)
    if s.router == "sparsemixer":  # Phimoe: always top-2 (needs n_experts >= 2, which every spec has)
        return dict(n_experts=s.n_experts, top_k=2, renormalize=False, score="sparsemixer",
                    scaling=float(s.routed_scaling), jitter_eps=0.01)
    return dict(n_experts=s.n_experts, top_k=s.top_k, renormalize=s.renormalize,
                score="softmax" if s.router == "softmax" else "sigmoid",
                correction_bias=s.router in ("sigmoid_bias", "grouped"), n_group=n_group, topk_group=topk_group,
                scaling=float(s.routed_scaling))


EXPERT_FORMS = {  # expert_form -> experts op parameters (GPT-OSS: all four at once)
    "plain": {}, "bias": {"bias": True}, "transposed": {"transposed": True}, "interleaved": {"interleaved": True},
    "clamped": {"act": "clamped_swiglu"},
    "gpt_oss": {"bias": True, "transposed": True, "interleaved": True, "act": "clamped_swiglu"},
}


def expert_params(s: DecoderSpec) -> dict:
    """The ``experts`` op parameters of spec ``s``.  The clamp limit is 1.5 (GPT-OSS: 7.0) so that the
    clamp is active on a fuzzed layout's small activations."""
    form = EXPERT_FORMS[s.expert_form]
    return {"n_experts": s.n_experts, "hidden": s.hidden, "intermediate": s.moe_intermediate, "act": "silu",
            **form, **({"limit": 1.5} if form.get("act") == "clamped_swiglu" else {}),
            **({"scale_input": True} if s.expert_scale_input else {})}


def _moe(g: _Graph, s: DecoderSpec, p: str, x: str) -> str:
    logits = g.add(f"{p}router_proj", "linear", [x], in_features=s.hidden, out_features=s.n_experts, bias=False)
    w = g.add(f"{p}router", "router", [logits], **router_params(s))
    out = g.add(f"{p}experts", "experts", [x, w], **expert_params(s))
    if s.shared_expert:
        sh = _glu_or_gelu(g, s.with_(mlp="swiglu", mlp_xielu=False), f"{p}shared_expert_", x, s.shared_intermediate,
                          False)
        if s.shared_gate:
            gl = g.add(f"{p}shared_expert_gate", "linear", [x], in_features=s.hidden, out_features=1, bias=False)
            sh = g.add(f"{p}shared_expert_gating", "gate", [sh, gl], act="sigmoid", n_heads=1)
        out = g.add(f"{p}moe_sum", "add", [out, sh])
    return out


def _branch_scale(g: _Graph, s: DecoderSpec, node: str, x: str) -> str:
    if s.residual_multiplier is None:
        return x
    return g.add(node, "scale", [x], factor=s.residual_multiplier)


def _residual_add(g: _Graph, s: DecoderSpec, node: str, h: str, branch: str) -> str:
    """``h + branch``, or Ergo's residual gate of the two (``residual_gate``)."""
    if s.residual_gate:
        return g.add(node, "residual_gate", [branch, h], dim=s.hidden)
    return g.add(node, "add", [h, branch])


def check(s: DecoderSpec) -> None:
    """Spec-level constraints (graph-level ones are checked by :class:`Layout`)."""
    from .errors import LayoutError
    if not s.layers:
        raise LayoutError("a decoder has at least one layer")
    if s.placement == "post" and s.residual == "parallel":
        raise LayoutError("post-norm with a parallel residual is not a known layout")

    if s.n_heads % s.n_kv_heads:
        raise LayoutError(f"n_heads {s.n_heads} is not a multiple of n_kv_heads {s.n_kv_heads}")
    if s.mla != "none":
        for name, value in MLA_EXCLUDES.items():
            if getattr(s, name) != value:
                raise LayoutError(f"mla={s.mla!r} needs {name}={value!r} (MLA has its own projections and latent "
                                  f"norms), got {getattr(s, name)!r}")
        if s.attn_gate == "output_sigmoid":
            raise LayoutError(f"mla={s.mla!r} has no fused q/gate projection for attn_gate='output_sigmoid'")
    if s.attn_chunk is not None and s.sliding_window is not None:
        raise LayoutError(f"attn_chunk={s.attn_chunk!r} with sliding_window={s.sliding_window!r}: one local span "
                          "per attention (chunks or a window)")
    if s.attn_differential:
        if s.n_heads % 2 or s.n_kv_heads % 2:
            raise LayoutError(f"attn_differential pairs the heads and the value heads: n_heads {s.n_heads} and "
                              f"n_kv_heads {s.n_kv_heads} must both be even")
        if s.mla != "none" or s.attn_gate != "none":
            raise LayoutError(f"attn_differential needs mla='none' and attn_gate='none' (DiffLlama has neither), got "
                              f"mla={s.mla!r}, attn_gate={s.attn_gate!r}")
    for i, layer in enumerate(s.layers):  # a layer's own RoPE scaling / MLP: a value of the spec's axis
        for name, own in (("rope_scaling", layer.rope_scaling), ("mlp", layer.mlp)):
            if own is not None and own not in AXES[name].choices:
                raise LayoutError(f"layer {i}: {name}={own!r} is not one of {AXES[name].choices}")
        if layer.mlp is not None and layer.sparse:
            raise LayoutError(f"layer {i}: mlp={layer.mlp!r} on a sparse layer (it has no dense MLP)")
    if s.extra_input_id and s.tie_embeddings:
        raise LayoutError("extra_input_id: a table with a row past the output vocabulary is not shared with the "
                          "lm_head (tie_embeddings)")
    for f in fields(s):  # in field order: the first bad choice is the one reported
        axis = AXES.get(f.name)
        if axis is not None and axis.kind == "choice" and getattr(s, f.name) not in axis.choices:
            raise LayoutError(f"{f.name}={getattr(s, f.name)!r} is not one of {axis.choices}")


def _layer(g: _Graph, s: DecoderSpec, i: int, layer: LayerSpec, h: str) -> str:
    """One decoder layer on the residual stream ``h`` (pre / sandwich / post placement, sequential or parallel)."""
    p = f"l{i}_"
    own = s if layer.mlp is None else s.with_(mlp=layer.mlp, mlp_xielu=False)  # this layer's dense MLP
    mlp_fn = (lambda x, pre: _moe(g, s, pre, x)) if layer.sparse else \
        (lambda x, pre: _glu_or_gelu(g, own, pre, x, s.intermediate, s.mlp_bias))
    if s.placement == "post":
        a = _branch_scale(g, s, f"{p}attn_scale", _attention(g, s, f"{p}", h, layer))
        h = _norm(g, s, f"{p}attn_norm", g.add(f"{p}attn_add", "add", [h, a]), s.hidden)
        m = _branch_scale(g, s, f"{p}mlp_scale", mlp_fn(h, f"{p}mlp_"))
        h = _norm(g, s, f"{p}mlp_norm", g.add(f"{p}mlp_add", "add", [h, m]), s.hidden)
        return h
    n1 = _norm(g, s, f"{p}attn_norm", h, s.hidden)
    a = _attention(g, s, p, n1, layer)
    if s.placement == "sandwich":
        a = _norm(g, s, f"{p}attn_post_norm", a, s.hidden)
    a = _branch_scale(g, s, f"{p}attn_scale", a)
    if s.residual == "parallel":
        n2 = n1 if s.parallel_shared_norm else _norm(g, s, f"{p}mlp_norm", h, s.hidden)
        m = mlp_fn(n2, f"{p}mlp_")
        if s.placement == "sandwich":
            m = _norm(g, s, f"{p}mlp_post_norm", m, s.hidden)
        m = _branch_scale(g, s, f"{p}mlp_scale", m)
        h = g.add(f"{p}add", "add", [h, a, m])
        return h
    h = _residual_add(g, s, f"{p}attn_add", h, a)
    m = mlp_fn(_norm(g, s, f"{p}mlp_norm", h, s.hidden), f"{p}mlp_")
    if s.placement == "sandwich":
        m = _norm(g, s, f"{p}mlp_post_norm", m, s.hidden)
    m = _branch_scale(g, s, f"{p}mlp_scale", m)
    return _residual_add(g, s, f"{p}mlp_add", h, m)


def _per_layer_inputs(g: _Graph, s: DecoderSpec, ids: str, h: str, read: int) -> str:
    """Gemma4's per-layer input embeddings (PLE) of width ``P``, for ``L`` layers: ``t = sqrt(P) E_pl[ids]``
    (the second table, ``L P`` wide), ``c = norm_P(W e / sqrt(hidden))`` (a grouped norm, one per layer's slice,
    of a projection of the token embedding ``e``), ``ple = (c + t) / sqrt(2)``; layer ``l`` reads slice ``l``."""
    n, w = len(s.layers), s.per_layer_input
    t = g.add("ple_embed", "per_layer_embedding", [ids], vocab=read, dim=n * w)
    t = g.add("ple_embed_scale", "scale", [t], factor=float(w ** 0.5))
    c = g.add("ple_proj", "linear", [h], in_features=s.hidden, out_features=n * w, bias=False)
    c = g.add("ple_proj_scale", "scale", [c], factor=float(s.hidden ** -0.5))
    c = _norm(g, s, "ple_norm", c, w, groups=n)
    return g.add("ple_scale", "scale", [g.add("ple_add", "add", [c, t])], factor=2.0 ** -0.5)


def _per_layer_input(g: _Graph, s: DecoderSpec, p: str, i: int, h: str, ple: str) -> str:
    """Layer ``i``'s per-layer input block: ``h + [post-norm] W_out (act(W_gate h) * ple_i)`` (Gemma4: gelu_tanh,
    the post-norm with the sandwich placement)."""
    n, w = len(s.layers), s.per_layer_input
    x = g.add(f"{p}ple_gate", "linear", [h], in_features=s.hidden, out_features=w, bias=False)
    x = g.add(f"{p}ple_act", "act", [x], fn="gelu_tanh")
    mine = g.add(f"{p}ple_slice", "head_slice", [ple], n_heads=1, head_dim=n * w, start=i * w, length=w)
    x = g.add(f"{p}ple_out", "linear", [g.add(f"{p}ple_mul", "mul", [x, mine])], in_features=w,
              out_features=s.hidden, bias=False)
    if s.placement == "sandwich":
        x = _norm(g, s, f"{p}ple_post_norm", x, s.hidden)
    return g.add(f"{p}ple_add", "add", [h, x])


MAX_POSITIONS = 256  # rows of a synthesized learned position table (the longest sequence such a layout runs)


def build(s: DecoderSpec, name: str | None = None) -> Layout:
    """Lower a spec to its op graph; raises :class:`~fuzz.errors.LayoutError` if it is not a valid model."""
    check(s)
    g = _Graph()
    read = s.vocab + int(s.extra_input_id)  # the ids the model reads; it predicts the first s.vocab
    ids = g.add("tokens", "tokens", [], vocab=read)
    h = g.add("embed", "embedding", [ids], vocab=read, dim=s.hidden)
    if s.position_embedding:
        h = g.add("embed_positions", "position_embedding", [h], max_pos=MAX_POSITIONS, dim=s.hidden,
                  **({"from_mask": True} if s.positions_from_mask else {}))
    if s.embedding_multiplier is not None:
        h = g.add("embed_scale", "scale", [h], factor=s.embedding_multiplier)
    ple = _per_layer_inputs(g, s, ids, h, read) if s.per_layer_input else None
    for i, layer in enumerate(s.layers):
        h = _layer(g, s, i, layer, h)
        if ple is not None:
            h = _per_layer_input(g, s, f"l{i}_", i, h, ple)
    if s.placement != "post":
        h = _norm(g, s, "final_norm", h, s.hidden)
    out = g.add("lm_head", "lm_head", [h], dim=s.hidden, vocab=s.vocab,
                tied_to="embed" if s.tie_embeddings else None, **({"bias": True} if s.lm_head_bias else {}))
    if s.logit_multiplier is not None:
        out = g.add("logit_scale", "scale", [out], factor=s.logit_multiplier)
    if s.final_softcap is not None:
        g.add("logit_softcap", "softcap", [out], cap=float(s.final_softcap))
    meta = {"spec": s.to_dict(), "features": s.features()}
    if name:
        meta["name"] = name
    return Layout.from_nodes(g.nodes, meta)
