"""Op kinds of the layout IR: what each node is and when it is legal, side by side.

Every activation in a layout is a ``(batch, seq, width)`` tensor (token ids are ``(batch, seq)``), so
shape inference only tracks the last-axis ``width``.  Each :class:`OpSpec` declares its parameters
(name -> type and default), its input ports and ``infer(params, in_widths) -> out_width``, which
raises :class:`~fuzz.errors.LayoutError` naming the node when the op is not legal; beside them the
parameter shapes and initialisers, the decoder-spec axes that draw the op and its feature tags.

Adding an op: one :func:`declare` block here, then ``@torch_impl(op)`` on its module in
:mod:`fuzz.materialize` and ``@import_pattern(op)`` (or :func:`fuzz.importer.patterns.refuse_import`) in
:mod:`fuzz.importer.patterns`; ``tests/fuzz/test_op_registry.py`` names whatever is missing.

Semantics (row vectors, ``linear(x, W) = x W^T + b``):

=============  ==========================================================================================
op             meaning
=============  ==========================================================================================
tokens         the input token ids (the single source)
embedding      ``E[ids]``, ``E: (vocab, dim)``
per_layer_embedding  ``E_pl[ids]``, ``E_pl: (vocab, layers * P)``: Gemma4's per-layer input table (no stream
               activation: the decoder mixes it with a projection of the embedding, each layer reads its slice)
position_embedding  ``x + P[start : start + seq]``, ``P: (max_pos, dim)``: learned absolute positions added to
               the token embedding (GPT-2, GPT-Neo, GPT-BigCode; OPT reads from row ``start = 2``);
               ``from_mask`` (OPT): under an ``attention_mask`` row ``b``'s positions are
               ``start + cumsum(mask[b]) - 1`` at its tokens (a left-padded row starts at ``start`` on its first
               token; a padded position reads row ``max(start - 1, 0)``); without padding both modes are equal
scale          ``factor * x`` (embedding / residual / logit multipliers)
norm           per group of ``dim`` channels: RMSNorm ``g * u / rms(u)`` or LayerNorm
               ``g * (u - mean) / std + b``; ``g = w`` or ``g = 1 + w`` (``weight_form``; ``none``: no weight,
               ``g = 1``, OLMo's LayerNorm, NanoChat's RMSNorm); ``groups > 1``
               is a per-head norm (one weight shared by the heads, Qwen3 ``q_norm``); ``group_weights``: each
               group its own weight (and bias), ``(groups, dim)`` (Cohere ``use_qk_norm`` LayerNorm per head);
               ``keep_dtype``: an RMSNorm computed in the model dtype under ``transformers`` numerics too (torch's
               ``nn.RMSNorm``, DiffLlama's groupnorm; no effect under ``exact`` numerics)
linear         ``x W^T (+ b)``
rope           rotary embedding per head on the first ``rotary_dim`` channels, pairs ``(i, i + r/2)``
               (``half``, Llama ``rotate_half``) or ``(2i, 2i+1)`` (``interleaved``, GPT-J); scaled RoPE
               (``scaling``: linear / llama3 / yarn with their ``inv_freq`` table, ``dynamic`` NTK theta
               past ``max_positions``, ``longrope`` short/long tables, ``proportional``: Gemma4's table of
               ``theta ** (-2i / r)`` on the first frequencies and 0 on the rest, pairs left unrotated) and
               cos/sin times ``attention_factor``;
               ``reversed``: the rotation by ``-theta`` (sin negated: NanoChat's ``rotate_half = cat(x2, -x1)``)
attention      causal softmax attention; ports q, k, v; GQA when ``n_kv_heads < n_heads``; ``window``
               (``None`` = full causal): query ``i`` sees keys ``j`` with ``0 <= i - j < window`` (keys at
               distance ``>= window`` masked: transformers' ``sliding_window`` convention); ``chunk`` (``None`` =
               full causal; never with a ``window``): chunked local attention, query ``i`` sees keys ``j <= i``
               with ``floor(i / chunk) == floor(j / chunk)`` (Llama-4's ``attention_chunk_size``; chunks count
               from a row's first token, transformers' left-padding convention); scores
               ``s = scale q.k`` (``scale`` None = ``head_dim ** -0.5``; Gemma2 ``query_pre_attn_scalar``,
               Granite ``attention_multiplier``), then ``softcap * tanh(s / softcap)`` (Gemma2), then
               ``+ alibi_slopes[h] * (j - i)`` (``alibi``: BLOOM / MPT / Falcon); ``sinks``: a learned
               per-head logit in the softmax denominator only (GPT-OSS); the value head is ``width(v) /
               n_kv_heads`` wide (MLA's ``v_head_dim`` may differ from ``head_dim``), the output ``n_heads`` of them;
               ``temperature_beta`` / ``temperature_length`` (``L``) / ``temperature_offset`` (``o``): attention
               temperature tuning, the query at position ``p`` times ``1 + beta log(1 + floor((p + o) / L))``
               before the scores (Ministral3 / Mistral4 ``llama_4_scaling_beta`` and
               ``original_max_position_embeddings``, ``o = 0``; Llama-4's ``attn_scale``, ``floor_scale``, ``o = 1``);
               ``temperature_form="power"``: the smooth factor ``(1 + (p + o) / L) ** beta`` instead (Beam's
               scalable-softmax query scale on its NoPE layers, ``beta = 0.1``, ``L = 2048``, ``o = 1``)
               ``differential`` (DiffLlama's differential attention): query heads ``i`` and ``i + h/2`` pair up and
               read the one ``2 dv``-wide value ``[V_j; V_{j + kv/2}]``, ``j = i // (h / kv)``; output group ``i``
               (``2 dv`` wide, ``h/2`` of them) is ``P_i Vc_j - lam P_{i + h/2} Vc_j`` with ``lam = exp(lambda_q1 .
               lambda_k1) - exp(lambda_q2 . lambda_k2) + lambda_init`` (four ``(head_dim,)`` parameters; the sums
               and exps in float32 under ``transformers`` numerics, as DiffLlama computes them); the group RMSNorm and
               the ``1 - lambda_init`` scale that follow are their own ``norm`` and ``scale`` nodes
               an optional fourth port ``select`` (an ``index_topk`` node's output): the query reads only the keys
               its indexer selected (DeepSeek Sparse Attention), on top of the causal / window / padding mask
softcap        ``cap * tanh(x / cap)`` (Gemma2's final-logit soft-cap)
head_slice     per head, channels ``[start, start + length)`` of a ``(heads, head_dim)`` view
head_concat    per head, ``[a_h, b_h]`` (``a: (heads, a_dim)``, ``b: (heads, b_dim)``); ``shared_b``: ``b`` is one
               head read by every head (MLA's decoupled RoPE key ``k_pe``, DeepSeek-V2/V3: the keys are
               ``[k_nope_h, rope(k_pe)]``, the queries ``[q_nope_h, rope(q_pe_h)]``)
gate           ``x * act(g)``; ``g`` elementwise (same width), per head (width ``n_heads``) or per token
               (width 1)
act            silu / gelu / gelu_tanh / relu / relu2 (``relu(x)^2``, Nemotron, Primer) / quick_gelu
               (``x sigmoid(1.702 x)``) / fast_gelu (transformers ``gelu_fast``: ``0.5 x (1 + tanh(0.7978845608
               x (1 + 0.044715 x^2)))``) / bloom_gelu (BLOOM's BloomGelu: ``x 0.5 (1 + tanh(0.79788456 x (1 +
               0.044715 x^2)))``, another truncated constant); ``gelu_new`` / ``gelu_pytorch_tanh`` are ``gelu_tanh``
xielu          xIELU (Apertus): ``a_p x^2 + beta x`` for ``x > 0``, else ``(expm1(min(x, eps)) - x) a_n + beta x``,
               with learned ``a_p = softplus(alpha_p)``, ``a_n = beta + softplus(alpha_n)`` (``alpha_p``, ``alpha_n``:
               shape ``(1,)``)
mul            ``a * b`` (the GLU product)
clamped_glu    the clamped SwiGLU of a dense MLP (MiniMax-M3's dense and shared-expert MLPs; GPT-OSS' expert
               GLU): ports gate, up; ``(clamp(up, -limit, limit) + 1) * g * sigmoid(alpha g)`` with
               ``g = clamp(gate, max=limit)``
add            sum of the inputs (residual adds)
residual_gate  Ergo's residual gate (``ErgoResidualGate``): ports branch, residual; ``sigmoid(w) * branch +
               sqrt(1 + sigmoid(w)) exp(-softplus(w) / 2) * residual`` with a learned ``w: (dim,)``, the residual
               stream times a per-channel factor (not diagonal after a rotation of the stream: ``Q^T diag(c) Q``)
router         softmax over expert logits, top-k, optional renormalisation; dense ``(.., E)`` weights
               with zeros off the top-k.  ``score="sigmoid"``: sigmoid scores (DeepSeek-V3);
               ``correction_bias``: ``e_score_correction_bias (E,)`` added to the scores for the choice
               only, never to the weights; ``n_group``/``topk_group``: group-limited top-k (a group
               scored by the sum of its top-2 selection scores, the best ``topk_group`` groups kept);
               ``scaling``: the routed scaling factor on the (renormalised) weights.  ``score="sparsemixer"``
               (Phimoe, eval): top-2 by the max, each weight the softmax over the scores within a relative
               ``2 jitter_eps`` of that max (``(m - s_j) / max(|s_j|, m) <= 2 jitter_eps``), the first
               choice masked out for the second
experts        fused experts ``gate_up_proj (E, 2I, H)`` gate first, ``down_proj (E, H, I)``; ports x,
               routing weights; ``sum_e w_e * down_e(act(gate_e x) * up_e x)``.  ``transposed``: stored
               ``(E, H, 2I)`` / ``(E, I, H)`` and read as ``x @ W``; ``interleaved``: gate rows ``0::2``,
               up rows ``1::2``; ``bias``: ``gate_up_proj_bias (E, 2I)``, ``down_proj_bias (E, H)``;
               ``act="clamped_swiglu"`` (GPT-OSS): ``(clamp(up, -limit, limit) + 1) * g * sigmoid(alpha g)``
               with ``g = clamp(gate, max=limit)``; ``scale_input`` (Llama 4: ``routed_in = x * score``): the
               routing weight scales each routed expert's input, not its output, ``sum_{e: w_e != 0}
               down_e(act(gate_e w_e x) * up_e w_e x)`` (not ``w_e`` times the expert: the GLU is not linear)
lm_head        ``x W^T (+ b)`` with ``W: (vocab, dim)``; ``tied_to`` names the embedding whose table it reads;
               ``bias``: a per-token-id logit bias ``b: (vocab,)`` (GPT-J, CodeGen)
wht_in         the online input of a spectrally transformed linear: ``fwht([x, 0]) / scale`` (zero-pad to
               ``d_pad``, orthonormal Walsh-Hadamard, divide by the per-coordinate scale); ``block`` (None:
               that padded form) the group-aligned form ``block_fwht(x, block) / scale``, ``x Q_b`` with
               ``Q_b = I_{d/b} (x) H_b / sqrt(b)``: no padding (``d_pad = in_features``), ``block`` a power of
               two dividing ``in_features``; ``exact`` (False: left out) the exact-width full form
               ``exact_fwht(x) / scale``, ``x Q_n`` with ``Q_n = (H_m (x) H_{2^k}) / sqrt(n)`` (Paley x Sylvester,
               ``fuzz.hadamard.exact_hadamard``), no padding (``d_pad = in_features``)
index_topk     DeepSeek Sparse Attention's lightning indexer: ports q ``(heads, head_dim)`` (RoPE'd indexer
               queries), k ``(head_dim,)`` (the one RoPE'd indexer key), w ``(heads,)`` (per-head weights);
               ``I[i, j] = sum_h weight_scale w[i, h] relu(scale q[i, h] . k[j])`` over the keys ``j`` query ``i``
               may read (causal, not padded), the ``topk`` largest selected per query (all of them when fewer);
               its output is the ``(batch, seq, seq)`` bool selection an attention's ``select`` port reads, no
               activation (width None).  Ties: torch's top-k picks any of equal scores; random float64 weights
               make ties among readable keys improbable (DeepSeek-V3.2, AXK2, Dots3: half RoPE in the indexer;
               GLM-MoE-DSA: interleaved, and its ``shared`` layers read an earlier layer's selection)
gamma_norm     RMS-normalise each group of ``dim`` channels, then apply its own matrix:
               ``out_g = Gamma_g (u_g / rms(u_g))`` (the matrix-Gamma norm of spectral-PCA)
=============  ==========================================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .errors import FormError, LayoutError
from .hadamard import EXACT, check_form

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu", "relu2", "quick_gelu", "fast_gelu", "bloom_gelu")
# transformers ACT2FN name -> act fn computing the same function (``gelu_new`` is the tanh GELU written out;
# ``gelu_fast`` uses the truncated constant 0.7978845608, hence its own fn ``fast_gelu``)
HF_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_python": "gelu", "relu": "relu",
                  "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_python_tanh": "gelu_tanh",
                  "relu2": "relu2", "quick_gelu": "quick_gelu", "gelu_fast": "fast_gelu"}
# act fns positively homogeneous of degree k (``act(s x) = s^k act(x)`` for ``s > 0``): a scale moves across them
HOMOGENEOUS_DEGREE = {"relu": 1, "relu2": 2}
GATE_ACTS = ("sigmoid", "softplus")

ALWAYS = "always"  # drawn_by: the layout of the default DecoderSpec contains the op


@dataclass(frozen=True)
class NotDrawn:
    """drawn_by of an op that no DecoderSpec axis draws; ``reason`` says what produces it instead."""

    reason: str


Initialiser = Callable[[torch.Tensor, dict], torch.Tensor]  # (standard-normal draw z, params) -> initial value
DrawnBy = str | tuple[dict[str, Any], ...] | NotDrawn


@dataclass(frozen=True)
class OpSpec:
    """Declaration of one op kind, everything that is the op's own, side by side.

    * ``params`` / ``ports`` / ``infer`` / ``choices``: parameters (name -> (type, default); default ``...``
      = required), named input ports (``("*",)`` = two or more inputs), shape inference and validity;
    * ``shapes(params) -> {name: shape}``: the trainable tensors a node owns;
    * ``init[name](z, params)``: the initial value of each of them from ``z``, a float64 standard-normal
      draw of its shape (:func:`fuzz.materialize.draw_parameter` makes ``z``);
    * ``drawn_by``: :data:`ALWAYS`, or switches (each a dict of DecoderSpec fields, in ``to_dict`` form,
      that make ``build`` emit the op when set on the default spec), or :class:`NotDrawn` with the reason;
    * ``features(params) -> tags``: the node's feature tags (``op:rope:interleaved``), see
      :meth:`fuzz.layout.Layout.op_features`.

    Backends register against ``name``: the torch module (``fuzz.materialize.torch_impl``) and the importer
    pattern (``fuzz.importer.patterns.import_pattern``); ``tests/fuzz/test_op_registry.py`` checks that
    every op has every piece.
    """

    name: str
    params: dict[str, tuple[type | tuple[type, ...], Any]]
    ports: tuple[str, ...]
    infer: Callable[[str, dict, list[int | None]], int | None]
    choices: dict[str, tuple] = field(default_factory=dict)
    shapes: Callable[[dict], dict[str, tuple[int, ...]]] | None = None
    init: dict[str, Initialiser] = field(default_factory=dict)
    drawn_by: DrawnBy | None = None
    features: Callable[[dict], tuple[str, ...]] | None = None
    min_ports: int | None = None  # trailing ports past this many are optional (attention's ``select``)
    # parameters added to an op after layouts with it were written: left out of the node while at their default,
    # so those layouts (and their hashes) stay as they were; readers use ``params.get``
    omit_default: tuple[str, ...] = ()

    def normalise(self, node: str, raw: dict) -> dict:
        """Fill defaults, reject unknown or ill-typed parameters (naming the node)."""
        unknown = set(raw) - set(self.params)
        if unknown:
            raise LayoutError(f"{self.name} has no parameter(s) {sorted(unknown)}; "
                              f"known: {sorted(self.params)}", node)
        out = {}
        for key, (typ, default) in self.params.items():
            if key in raw:
                value = raw[key]
            elif default is ...:
                raise LayoutError(f"{self.name} needs parameter {key!r}", node)
            else:
                value = default
            value = _coerce(self.name, node, key, typ, value)
            if key in self.choices and value not in self.choices[key]:
                raise LayoutError(f"{self.name}.{key}={value!r} is not one of {self.choices[key]}", node)
            if typ in (int,) and isinstance(value, int) and value <= 0 and key not in ("start", "temperature_offset"):
                raise LayoutError(f"{self.name}.{key} must be positive, got {value}", node)
            if key in self.omit_default and value == default:
                continue
            out[key] = value
        return out



SPECS: dict[str, OpSpec] = {}


def declare(op_spec: OpSpec) -> OpSpec:
    """Add ``op_spec`` to :data:`SPECS`; an op name is declared once."""
    if op_spec.name in SPECS:
        raise ValueError(f"op {op_spec.name!r} is declared twice: an op is declared once, in fuzz/ops.py")
    SPECS[op_spec.name] = op_spec
    return op_spec


def registrar(registry: dict[str, Any], piece: str) -> Callable[[str], Callable[[Any], Any]]:
    """A decorator factory filling ``registry`` (op name -> ``piece``, e.g. "a torch implementation") for the
    ops of :data:`SPECS`: an unknown op name or a second registration for the same op is an error."""

    def register(op: str) -> Callable[[Any], Any]:
        if op not in SPECS:
            raise ValueError(f"cannot register {piece} for unknown op {op!r}; known: {sorted(SPECS)}")
        if op in registry:
            raise ValueError(f"op {op!r} already has {piece} ({registry[op]!r}): register one per op")

        def decorate(obj):
            if op in registry:
                raise ValueError(f"op {op!r} already has {piece} ({registry[op]!r}): register one per op")
            registry[op] = obj
            return obj

        return decorate

    return register


def _coerce(op: str, node: str, key: str, typ, value):
    """Type-check one parameter; ints are accepted for floats, bools never for numbers."""
    if (typ is float or typ == (float, type(None))) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is tuple and isinstance(value, (list, tuple)):  # a table parameter read back from JSON
        return _tuple_of_floats(value)
    if isinstance(value, bool) and typ in (int, float) or not isinstance(value, typ):
        raise LayoutError(f"{op}.{key} must be {getattr(typ, '__name__', typ)}, got {value!r}", node)
    return value


def _need(cond: bool, node: str, msg: str) -> None:
    if not cond:
        raise LayoutError(msg, node)


# Float parameters that can make the function degenerate (a constant output: a zero multiplier, an
# infinite eps that zeroes a norm) or non-finite (inf / nan, an overflowing multiplier) are bounded here.
EPS_MAX = 0.1  # larger eps than any released model uses (1e-12 .. 1e-5) and still far from flattening a norm
FACTOR_RANGE = (1e-6, 1e6)  # |factor| of a multiplier; released models use ~0.01 (residual) .. ~60 (embedding)


def _finite(node: str, op: str, key: str, value: float, allowed: str, ok: bool) -> None:
    if not (math.isfinite(value) and ok):
        raise LayoutError(f"{op}.{key}={value!r} is not allowed: {key} must be {allowed}", node)


def _eps(node: str, op: str, value: float) -> None:
    _finite(node, op, "eps", value, f"a finite number in (0, {EPS_MAX:g}] (an infinite or huge eps zeroes the "
            "norm's output, a zero or negative one divides by zero)", 0 < value <= EPS_MAX)


def _widths(node: str, op: str, got: list, want: list) -> None:
    for i, (g, w) in enumerate(zip(got, want)):
        _need(g == w, node, f"{op} input {i} has width {g}, expected {w}")


# ====================================================================== initialisers
# Each maps ``z``, a standard-normal draw of the parameter's shape (``torch.randn`` from the generator
# of ``(seed, node, name)``, float64), to its initial value: random, never ones or zeros, or scaling
# bugs would hide behind them.


def _init_fan_in(z, p):
    """``z / sqrt(fan_in)``, ``fan_in = z.shape[-1]`` (a weight read as ``x W^T``)."""
    return z / math.sqrt(z.shape[-1])


def _init_unit(z, p):
    """``z`` (an embedding table)."""
    return z


def _init_small(z, p):
    """``0.1 z`` (biases)."""
    return 0.1 * z


def _init_norm_weight(z, p):
    """``g = 1 + 0.3 z`` around one: ``w = 0.3 z`` for the ``1 + w`` form, ``w = 1 + 0.3 z`` otherwise."""
    return 0.3 * z if p["weight_form"] == "1+w" else 1.0 + 0.3 * z


def _init_positive_scale(z, p):
    """``exp(0.3 z)``: a positive per-coordinate scale."""
    return torch.exp(0.3 * z)


def _init_orthogonal(z, p):
    """``Q`` of ``z = QR`` with the signs of ``diag(R)`` folded in: a Haar-random orthogonal matrix per group."""
    q, r = torch.linalg.qr(z)
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]


def _no_parameters(p):
    return {}


def _weight_and_bias(out_dim: int, in_dims: tuple[int, ...], bias: bool) -> dict[str, tuple[int, ...]]:
    shapes = {"weight": (out_dim, *in_dims)}
    if bias:
        shapes["bias"] = (out_dim,)
    return shapes


# ====================================================================== the ops, one block each
def _tokens(node, p, w):
    return None


declare(OpSpec("tokens", {"vocab": (int, ...)}, (), _tokens, shapes=_no_parameters, drawn_by=ALWAYS,
               features=lambda p: ("op:tokens",)))


def _embedding(node, p, w):
    _need(w == [None], node, "embedding reads the token ids")
    return p["dim"]


declare(OpSpec("embedding", {"vocab": (int, ...), "dim": (int, ...)}, ("ids",), _embedding,
               shapes=lambda p: {"weight": (p["vocab"], p["dim"])}, init={"weight": _init_unit},
               drawn_by=ALWAYS, features=lambda p: ("op:embedding",)))


def _per_layer_embedding(node, p, w):
    _need(w == [None], node, "per_layer_embedding reads the token ids")
    return p["dim"]


# Gemma4's per-layer input embeddings (PLE): a second table of the token ids, ``layers x width`` wide, which
# the decoder combines with a projection of the token embedding and hands each layer its slice of; its output is
# no residual-stream activation (transforms leave the table as it is and rotate the stream's readers)
declare(OpSpec("per_layer_embedding", {"vocab": (int, ...), "dim": (int, ...)}, ("ids",), _per_layer_embedding,
               shapes=lambda p: {"weight": (p["vocab"], p["dim"])}, init={"weight": _init_unit},
               drawn_by=({"per_layer_input": 4},), features=lambda p: ("op:per_layer_embedding",)))


def _position_embedding(node, p, w):
    _widths(node, "position_embedding", w, [p["dim"]])
    _need(p["start"] < p["max_pos"], node, f"start {p['start']} leaves no row of the {p['max_pos']}-row table")
    return p["dim"]


declare(OpSpec("position_embedding", {"max_pos": (int, ...), "dim": (int, ...), "start": (int, 0),
                                        "from_mask": (bool, False)}, ("x",),
               _position_embedding, shapes=lambda p: {"weight": (p["max_pos"], p["dim"])},
               init={"weight": _init_unit},
               drawn_by=({"position_embedding": True}, {"position_embedding": True, "positions_from_mask": True}),
               features=lambda p: ("op:position_embedding",) + (("op:position_embedding:offset",)
                                                                 if p["start"] else ())
               + (("op:position_embedding:from_mask",) if p["from_mask"] else ())))


def _same(node, p, w):
    _need(w[0] is not None, node, "reads token ids where an activation is expected")
    return w[0]


def _scale(node, p, w):
    lo, hi = FACTOR_RANGE
    f = p["factor"]
    _finite(node, "scale", "factor", f, f"finite with {lo:g} <= |factor| <= {hi:g} (0 makes the output "
            "constant, a tiny one underflows, a huge one overflows)", lo <= abs(f) <= hi)
    return _same(node, p, w)


declare(OpSpec("scale", {"factor": (float, ...)}, ("x",), _scale, shapes=_no_parameters,
               drawn_by=({"embedding_multiplier": 2.0}, {"residual_multiplier": 0.5}, {"logit_multiplier": 0.125}),
               features=lambda p: ("op:scale",)))


def _norm(node, p, w):
    _widths(node, "norm", w, [p["dim"] * p["groups"]])
    _need(p["bias"] is False or p["kind"] == "layer", node, "only LayerNorm has a bias")
    _need(not p["group_weights"] or p["groups"] > 1, node, "group_weights needs groups > 1 (one weight per group)")
    _need(p["weight_form"] != "none" or not (p["bias"] or p["group_weights"]), node,
          "a weight-free norm (weight_form 'none') has no bias and no per-group weights")
    _eps(node, "norm", p["eps"])
    return w[0]


def _norm_features(p):
    tags = [f"op:norm:{p['kind']}:{p['weight_form']}"]
    if p["bias"]:
        tags.append("op:norm:bias")
    if p["groups"] > 1:
        tags.append("op:norm:per_head")
    if p["group_weights"]:
        tags.append("op:norm:group_weights")
    return tuple(tags)


def _norm_shapes(p):
    if p["weight_form"] == "none":  # non-parametric (OLMo's LayerNorm, NanoChat's RMSNorm): g = 1
        return {}
    shape = (p["groups"], p["dim"]) if p["group_weights"] else (p["dim"],)
    return {"weight": shape, **({"bias": shape} if p["bias"] else {})}


declare(OpSpec("norm", {"kind": (str, "rms"), "dim": (int, ...), "groups": (int, 1), "eps": (float, 1e-6),
                        "weight_form": (str, "w"), "bias": (bool, False), "group_weights": (bool, False),
                        # computed in the model dtype under ``transformers`` numerics too (torch's nn.RMSNorm:
                        # DiffLlama's groupnorm), not upcast to float32 as transformers' RMSNorm modules do
                        "keep_dtype": (bool, False)}, ("x",),
               _norm, {"kind": ("rms", "layer"), "weight_form": ("w", "1+w", "none")}, shapes=_norm_shapes,
               init={"weight": _init_norm_weight, "bias": _init_small}, drawn_by=ALWAYS, features=_norm_features))


def _linear(node, p, w):
    _widths(node, "linear", w, [p["in_features"]])
    return p["out_features"]


declare(OpSpec("linear", {"in_features": (int, ...), "out_features": (int, ...), "bias": (bool, False)},
               ("x",), _linear, shapes=lambda p: _weight_and_bias(p["out_features"], (p["in_features"],), p["bias"]),
               init={"weight": _init_fan_in, "bias": _init_small}, drawn_by=ALWAYS,
               features=lambda p: ("op:linear:bias",) if p["bias"] else ("op:linear",)))


def _rope(node, p, w):
    _widths(node, "rope", w, [p["n_heads"] * p["head_dim"]])
    r = p["rotary_dim"]
    _need(r % 2 == 0, node, f"rotary_dim must be even, got {r}")
    _need(r <= p["head_dim"], node, f"rotary_dim {r} exceeds head_dim {p['head_dim']}")
    _finite(node, "rope", "theta", p["theta"], "a finite number > 0 (the base of the rotary frequencies)",
            p["theta"] > 0)
    _rope_scaling(node, p)
    return w[0]


ROPE_SCALINGS = ("none", "linear", "dynamic", "yarn", "llama3", "longrope", "proportional")


def _rope_scaling(node, p):
    """The scaled-RoPE parameters (transformers' ``rope_type``): ``inv_freq`` (the table, ``()`` = the default
    table of ``theta``), ``attention_factor`` (cos and sin multiplied by it), ``factor`` / ``max_positions``
    (``dynamic``: NTK theta growing past ``max_positions``), ``long_inv_freq`` (``longrope``: the table past
    ``max_positions``); ``proportional`` (Gemma4): an ``inv_freq`` table whose frequencies past the rotated
    proportion are 0 (those pairs unrotated)."""
    r, kind = p["rotary_dim"], p["scaling"]
    for key in ("inv_freq", "long_inv_freq"):
        table = p[key]
        zero_ok = kind == "proportional" and key == "inv_freq"
        _need(all(isinstance(v, float) and math.isfinite(v) and (v > 0 or zero_ok and v == 0) for v in table), node,
              f"rope.{key} must hold finite numbers > 0" + (" or 0" if zero_ok else ""))
        _need(not table or len(table) == r // 2, node, f"rope.{key} has {len(table)} frequencies, rotary_dim {r} "
              f"needs {r // 2}")
    _finite(node, "rope", "attention_factor", p["attention_factor"], "a finite number in [1e-3, 1e3] (the YaRN / "
            "LongRoPE cos/sin scale)", 1e-3 <= p["attention_factor"] <= 1e3)
    _finite(node, "rope", "factor", p["factor"], "a finite number in [1, 1e6] (the dynamic NTK factor)",
            1 <= p["factor"] <= 1e6)
    _need(kind == "longrope" or not p["long_inv_freq"], node, "rope.long_inv_freq needs scaling 'longrope'")
    _need(kind != "longrope" or len(p["long_inv_freq"]) == r // 2, node,
          f"rope scaling 'longrope' needs long_inv_freq ({r // 2} frequencies)")
    _need(kind != "proportional" or len(p["inv_freq"]) == r // 2, node,
          f"rope scaling 'proportional' needs its inv_freq table ({r // 2} frequencies, 0 past the rotated part)")
    _need(kind != "dynamic" or (r > 2 and not p["inv_freq"]), node,
          "rope scaling 'dynamic' computes its table from theta (no inv_freq) and needs rotary_dim > 2")


def _tuple_of_floats(v):
    return tuple(float(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in v)


def _rope_features(p):
    tags = (f"op:rope:{p['style']}",) + (("op:rope:partial",) if p["rotary_dim"] < p["head_dim"] else ())
    if p["scaling"] != "none":
        tags += (f"op:rope:scaled:{p['scaling']}",)
    if p["attention_factor"] != 1.0:
        tags += ("op:rope:attention_factor",)
    if p["reversed"]:
        tags += ("op:rope:reversed",)
    return tags


declare(OpSpec("rope", {"n_heads": (int, ...), "head_dim": (int, ...), "rotary_dim": (int, ...),
                        "style": (str, "half"), "theta": (float, 10000.0),
                        # scaled RoPE (defaults: the plain table of theta, as before)
                        "scaling": (str, "none"), "inv_freq": (tuple, ()), "attention_factor": (float, 1.0),
                        "factor": (float, 1.0), "max_positions": (int, 2048), "long_inv_freq": (tuple, ()),
                        "reversed": (bool, False)},  # the rotation by -theta (sin negated: NanoChat)
               ("x",), _rope, {"style": ("half", "interleaved"), "scaling": ROPE_SCALINGS}, shapes=_no_parameters,
               drawn_by=({"layers": [{"rope": True}]},), features=_rope_features))


def _attention(node, p, w):
    h, kv, d = p["n_heads"], p["n_kv_heads"], p["head_dim"]
    _need(h % kv == 0, node, f"n_heads {h} is not a multiple of n_kv_heads {kv}")
    v = w[2] if len(w) in (3, 4) else None
    _need(len(w) == 3 or w[3] is None, node, "attention's select port reads an index_topk selection (no activation), "
          f"got width {w[3] if len(w) == 4 else None}")
    _need(v is not None and v % kv == 0, node, f"attention v width {v} is not n_kv_heads {kv} value heads")
    dv = v // kv  # the value head (MLA's v_head_dim may differ from the q/k head_dim)
    _widths(node, "attention", w[:2], [h * d, kv * d])
    win = p["window"]
    _need(win is None or isinstance(win, int) and not isinstance(win, bool) and win >= 1, node,
          f"attention.window must be None (full causal) or an integer >= 1, got {win!r}")
    chunk = p["chunk"]
    _need(chunk is None or isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 1, node,
          f"attention.chunk must be None (full causal) or an integer >= 1, got {chunk!r}")
    _need(chunk is None or win is None, node, f"attention has both a sliding window {win!r} and chunks of {chunk!r} "
          f"(one local span per attention)")
    # the score modifiers: ``scale`` (None = ``head_dim ** -0.5``), ``softcap``; ``alibi``, ``sinks`` are flags
    lo, hi = FACTOR_RANGE
    if p["scale"] is not None:
        _finite(node, "attention", "scale", p["scale"], f"None (head_dim ** -0.5) or finite with {lo:g} <= scale "
                f"<= {hi:g}", lo <= p["scale"] <= hi)
    if p["softcap"] is not None:
        _finite(node, "attention", "softcap", p["softcap"], f"None (no soft-cap) or finite with {lo:g} <= softcap "
                f"<= {hi:g}", lo <= p["softcap"] <= hi)
    beta, length = p["temperature_beta"], p["temperature_length"]
    _need((beta is None) == (length is None), node, "attention temperature needs both temperature_beta and "
          f"temperature_length (or neither), got {beta!r} and {length!r}")
    if beta is not None:
        _finite(node, "attention", "temperature_beta", beta, f"None (no temperature) or finite with {lo:g} <= "
                f"|temperature_beta| <= {hi:g}", lo <= abs(beta) <= hi)
        _need(isinstance(length, int) and not isinstance(length, bool) and length >= 1, node,
              f"attention.temperature_length must be an integer >= 1, got {length!r}")
    _need(p["temperature_offset"] >= 0, node, f"attention.temperature_offset must be >= 0, got {p['temperature_offset']}")
    if p["differential"]:  # heads pair (i, i + h/2); the value pairs (j, j + kv/2): both counts even
        _need(h % 2 == 0 and kv % 2 == 0, node, f"differential attention pairs the heads: n_heads {h} and n_kv_heads "
              f"{kv} must both be even")
        _finite(node, "attention", "lambda_init", p["lambda_init"], "finite with |lambda_init| <= 10",
                abs(p["lambda_init"]) <= 10)
    return h * dv


def _attention_features(p):
    h, kv = p["n_heads"], p["n_kv_heads"]
    tags = ("op:attention:" + ("mha" if kv == h else "mqa" if kv == 1 else "gqa"),)
    if p["window"] is not None:
        tags += ("op:attention:window",)
    if p["chunk"] is not None:
        tags += ("op:attention:chunk",)
    if p["scale"] is not None:
        tags += ("op:attention:scale",)
    if p["softcap"] is not None:
        tags += ("op:attention:softcap",)
    if p["alibi"]:
        tags += ("op:attention:alibi",)
    if p["sinks"]:
        tags += ("op:attention:sinks",)
    if p["temperature_beta"] is not None:
        tags += ("op:attention:temperature",) + (("op:attention:temperature:power",)
                                                 if p["temperature_form"] == "power" else ())
    if p["differential"]:
        tags += ("op:attention:differential",)
    return tags


def _attention_shapes(p):
    """Per query head: the ALiBi slopes and the sink logits (GPT-OSS), when switched on."""
    shapes = {}
    if p["alibi"]:
        shapes["alibi_slopes"] = (p["n_heads"],)
    if p["sinks"]:
        shapes["sinks"] = (p["n_heads"],)
    if p["differential"]:  # lam = exp(q1 . k1) - exp(q2 . k2) + lambda_init
        shapes.update({name: (p["head_dim"],) for name in DIFF_LAMBDAS})
    return shapes


DIFF_LAMBDAS = ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")  # differential attention's lambda vectors


def _init_lambda(z, p):
    """``0.3 z``: ``exp(q1 . k1) - exp(q2 . k2)`` of order one, so ``lam`` moves with every vector."""
    return 0.3 * z


def _init_alibi_slopes(z, p):
    """BLOOM's geometric slopes ``2 ** (-8 (i + 1) / n)`` (for ``n`` a power of two), each times
    ``exp(0.1 z)``: positive, distinct per head, so a head permutation that forgets them shows."""
    n = z.shape[-1]
    base = torch.tensor([2.0 ** (-8.0 * (i + 1) / n) for i in range(n)], dtype=z.dtype)
    return base * torch.exp(0.1 * z)


_OPT_FLOAT = (float, type(None))
declare(OpSpec("attention", {"n_heads": (int, ...), "n_kv_heads": (int, ...), "head_dim": (int, ...),
                             "window": ((int, type(None)), None), "scale": (_OPT_FLOAT, None),
                             "softcap": (_OPT_FLOAT, None), "alibi": (bool, False), "sinks": (bool, False),
                             # attention temperature tuning (Llama-4 / Mistral4 / Ministral3): see the table above
                             "temperature_beta": (_OPT_FLOAT, None), "temperature_length": ((int, type(None)), None),
                             "temperature_offset": (int, 0), "temperature_form": (str, "log_floor"),
                             # chunked local attention (Llama-4's attention_chunk_size): see the table above
                             "chunk": ((int, type(None)), None),
                             # differential attention (DiffLlama): see the table above
                             "differential": (bool, False), "lambda_init": (float, 0.0)},
               ("q", "k", "v", "select"), _attention, {"temperature_form": ("log_floor", "power")},
               shapes=_attention_shapes, min_ports=3,
               init={"alibi_slopes": _init_alibi_slopes, "sinks": _init_unit,
                     **{name: _init_lambda for name in DIFF_LAMBDAS}}, drawn_by=ALWAYS,
               features=_attention_features))


def _softcap(node, p, w):
    lo, hi = FACTOR_RANGE
    _finite(node, "softcap", "cap", p["cap"], f"finite with {lo:g} <= cap <= {hi:g}", lo <= p["cap"] <= hi)
    return _same(node, p, w)


declare(OpSpec("softcap", {"cap": (float, ...)}, ("x",), _softcap, shapes=_no_parameters,
               drawn_by=({"final_softcap": 4.0},), features=lambda p: ("op:softcap",)))


def _head_slice(node, p, w):
    _widths(node, "head_slice", w, [p["n_heads"] * p["head_dim"]])
    _need(p["start"] >= 0 and p["start"] + p["length"] <= p["head_dim"], node,
          f"slice [{p['start']}, {p['start'] + p['length']}) outside head_dim {p['head_dim']}")
    return p["n_heads"] * p["length"]


declare(OpSpec("head_slice", {"n_heads": (int, ...), "head_dim": (int, ...), "start": (int, 0),
                              "length": (int, ...)}, ("x",), _head_slice, shapes=_no_parameters,
               drawn_by=({"attn_gate": "output_sigmoid"},), features=lambda p: ("op:head_slice",)))


def _head_concat(node, p, w):
    h, a, b = p["n_heads"], p["a_dim"], p["b_dim"]
    _widths(node, "head_concat", w, [h * a, (1 if p["shared_b"] else h) * b])
    return h * (a + b)


declare(OpSpec("head_concat", {"n_heads": (int, ...), "a_dim": (int, ...), "b_dim": (int, ...),
                               "shared_b": (bool, False)}, ("a", "b"), _head_concat, shapes=_no_parameters,
               drawn_by=({"mla": "q_lora"}, {"mla": "q_direct"}),
               features=lambda p: ("op:head_concat",) + (("op:head_concat:shared",) if p["shared_b"] else ())))


def _gate(node, p, w):
    x, g = w
    _need(x is not None and g is not None, node, "gate reads activations")
    _need(g in (x, p["n_heads"], 1), node,
          f"gate width {g} must equal the input width {x}, n_heads {p['n_heads']} or 1")
    _need(x % p["n_heads"] == 0, node, f"input width {x} not divisible by n_heads {p['n_heads']}")
    return x


declare(OpSpec("gate", {"act": (str, "sigmoid"), "n_heads": (int, 1)}, ("x", "g"), _gate, {"act": GATE_ACTS},
               shapes=_no_parameters,
               drawn_by=({"attn_gate": "head_softplus"}, {"attn_gate": "output_sigmoid"},
                         {"layers": [{"sparse": True}], "shared_expert": True, "shared_gate": True}),
               features=lambda p: (f"op:gate:{p['act']}",) + (("op:gate:per_head",) if p["n_heads"] > 1 else ())))


declare(OpSpec("act", {"fn": (str, "silu")}, ("x",), _same, {"fn": ACTIVATIONS}, shapes=_no_parameters,
               drawn_by=ALWAYS, features=lambda p: (f"op:act:{p['fn']}",)))


def _xielu(node, p, w):
    _finite(node, "xielu", "beta", p["beta"], "a finite number in (0, 10] (the linear slope)", 0 < p["beta"] <= 10)
    _finite(node, "xielu", "eps", p["eps"], "a finite number in [-0.1, 0] (the clamp of the negative side)",
            -0.1 <= p["eps"] <= 0)
    return _same(node, p, w)


def _init_xielu_alpha(z, p):
    """``0.3 z``: softplus of it around 0.7 (Apertus starts at ``a_p = 0.8``)."""
    return 0.3 * z


declare(OpSpec("xielu", {"beta": (float, 0.5), "eps": (float, -1e-6)}, ("x",), _xielu,
               shapes=lambda p: {"alpha_p": (1,), "alpha_n": (1,)},
               init={"alpha_p": _init_xielu_alpha, "alpha_n": _init_xielu_alpha},
               drawn_by=({"mlp_xielu": True},), features=lambda p: ("op:xielu",)))


def _mul(node, p, w):
    _need(w[0] is not None and w[0] == w[1], node, f"mul of widths {w[0]} and {w[1]}")
    return w[0]


declare(OpSpec("mul", {}, ("a", "b"), _mul, shapes=_no_parameters,
               drawn_by=({"mlp": "swiglu"}, {"mlp": "geglu"}), features=lambda p: ("op:mul",)))


def _clamped_glu(node, p, w):
    _need(w[0] is not None and w[0] == w[1], node, f"clamped_glu of widths {w[0]} and {w[1]}")
    _finite(node, "clamped_glu", "limit", p["limit"], "a finite number > 0 (the clamp of the gate and up)",
            p["limit"] > 0)
    _finite(node, "clamped_glu", "alpha", p["alpha"], "a finite number > 0 (sigmoid(alpha * gate))", p["alpha"] > 0)
    return w[0]


declare(OpSpec("clamped_glu", {"limit": (float, 7.0), "alpha": (float, 1.702)}, ("gate", "up"), _clamped_glu,
               shapes=_no_parameters, drawn_by=({"mlp": "clamped_swiglu"},),
               features=lambda p: ("op:clamped_glu",)))


def _add(node, p, w):
    _need(len(w) >= 2, node, f"add needs at least two inputs, got {len(w)}")
    _need(len(set(w)) == 1 and w[0] is not None, node, f"add of unequal widths {w}")
    return w[0]


declare(OpSpec("add", {}, ("*",), _add, shapes=_no_parameters, drawn_by=ALWAYS, features=lambda p: ("op:add",)))


def _residual_gate(node, p, w):
    _widths(node, "residual_gate", w, [p["dim"], p["dim"]])
    return p["dim"]


def _init_residual_gate(z, p):
    """``z``: per-channel factors far from uniform (``sigmoid(w)`` between about 0.1 and 0.9)."""
    return z


declare(OpSpec("residual_gate", {"dim": (int, ...)}, ("branch", "residual"), _residual_gate,
               shapes=lambda p: {"weight": (p["dim"],)}, init={"weight": _init_residual_gate},
               drawn_by=({"residual_gate": True},), features=lambda p: ("op:residual_gate",)))


def _router(node, p, w):
    _widths(node, "router", w, [p["n_experts"]])
    e, g, tg = p["n_experts"], p["n_group"], p["topk_group"]
    _need(p["top_k"] <= e, node, f"top_k {p['top_k']} > n_experts {e}")
    _need(e % g == 0, node, f"n_experts {e} is not a multiple of n_group {g}")
    _need(tg <= g, node, f"topk_group {tg} > n_group {g}")
    _need(g == 1 or e // g >= 2, node, f"group-limited routing scores a group by its top-2 experts: "
          f"n_experts / n_group = {e // g} < 2")
    _need(p["top_k"] <= tg * (e // g), node, f"top_k {p['top_k']} > the {tg * (e // g)} experts of "
          f"topk_group {tg} groups")
    lo, hi = FACTOR_RANGE
    _finite(node, "router", "scaling", p["scaling"], f"finite with {lo:g} <= scaling <= {hi:g} (the routed "
            "scaling factor)", lo <= p["scaling"] <= hi)
    if p["score"] == "sparsemixer":
        _need(p["top_k"] == 2 and not p["correction_bias"] and g == 1, node,
              "a sparsemixer router chooses exactly 2 experts, with no correction bias and no groups")
        _finite(node, "router", "jitter_eps", p["jitter_eps"], "a finite number >= 0 (the sparsemixer threshold)",
                p["jitter_eps"] >= 0)
    return e


def _router_features(p):
    tags = ["op:router:renorm" if p["renormalize"] else "op:router:no-renorm"]
    if p["score"] != "softmax":
        tags.append(f"op:router:{p['score']}")
    if p["correction_bias"]:
        tags.append("op:router:correction_bias")
    if p["n_group"] > 1:
        tags.append("op:router:group_limited")
    if p["scaling"] != 1.0:
        tags.append("op:router:scaled")
    return tuple(tags)


def _init_correction_bias(z, p):
    """``0.3 z``: large enough against sigmoid scores (0..1) to change which experts are chosen."""
    return 0.3 * z


declare(OpSpec("router", {"n_experts": (int, ...), "top_k": (int, ...), "renormalize": (bool, True),
                          "score": (str, "softmax"), "correction_bias": (bool, False), "n_group": (int, 1),
                          "topk_group": (int, 1), "scaling": (float, 1.0), "jitter_eps": (float, 0.01)},
               ("logits",), _router, {"score": ("softmax", "sigmoid", "sparsemixer")},
               shapes=lambda p: {"e_score_correction_bias": (p["n_experts"],)} if p["correction_bias"] else {},
               init={"e_score_correction_bias": _init_correction_bias},
               drawn_by=({"layers": [{"sparse": True}]}, {"layers": [{"sparse": True}], "router": "grouped",
                                                          "routed_scaling": 2.5},
                         {"layers": [{"sparse": True}], "router": "sparsemixer"}), features=_router_features))


def _experts(node, p, w):
    _widths(node, "experts", w, [p["hidden"], p["n_experts"]])
    if p["act"] == "clamped_swiglu":
        _finite(node, "experts", "limit", p["limit"], "a finite number > 0 (the clamp of the gate and up)",
                p["limit"] > 0)
        _finite(node, "experts", "alpha", p["alpha"], "a finite number > 0 (sigmoid(alpha * gate))", p["alpha"] > 0)
    return p["hidden"]


def _experts_shapes(p):
    e, h, i = p["n_experts"], p["hidden"], p["intermediate"]
    shapes = {"gate_up_proj": (e, h, 2 * i), "down_proj": (e, i, h)} if p["transposed"] else \
        {"gate_up_proj": (e, 2 * i, h), "down_proj": (e, h, i)}
    if p["bias"]:
        shapes.update(gate_up_proj_bias=(e, 2 * i), down_proj_bias=(e, h))
    return shapes


def _experts_features(p):
    tags = [f"op:experts:{p['act']}"]
    tags += [f"op:experts:{k}" for k in ("bias", "transposed", "interleaved", "scale_input") if p[k]]
    return tuple(tags)


def _init_expert(z, p):
    """``z / sqrt(fan_in)``; the fan-in is the last axis, or the middle one of transposed ``(E, in, out)``."""
    return z / math.sqrt(z.shape[-2] if p["transposed"] else z.shape[-1])


# the experts' own GLUs: ``act(gate) * up``, or GPT-OSS' clamped SwiGLU
EXPERT_ACTS = ACTIVATIONS + ("clamped_swiglu",)

declare(OpSpec("experts", {"n_experts": (int, ...), "hidden": (int, ...), "intermediate": (int, ...),
                           "act": (str, "silu"), "bias": (bool, False), "transposed": (bool, False),
                           "interleaved": (bool, False), "limit": (float, 7.0), "alpha": (float, 1.702),
                           "scale_input": (bool, False)},
               ("x", "weights"), _experts, {"act": EXPERT_ACTS},
               shapes=_experts_shapes, init={"gate_up_proj": _init_expert, "down_proj": _init_expert,
                                             "gate_up_proj_bias": _init_small, "down_proj_bias": _init_small},
               drawn_by=({"layers": [{"sparse": True}]}, {"layers": [{"sparse": True}], "expert_form": "gpt_oss"},
                         {"layers": [{"sparse": True}], "expert_scale_input": True}),
               features=_experts_features))


def _lm_head(node, p, w):
    _widths(node, "lm_head", w, [p["dim"]])
    return p["vocab"]


def _lm_head_shapes(p):
    return {**({"weight": (p["vocab"], p["dim"])} if p["tied_to"] is None else {}),
            **({"bias": (p["vocab"],)} if p["bias"] else {})}


declare(OpSpec("lm_head", {"dim": (int, ...), "vocab": (int, ...), "tied_to": ((str, type(None)), None),
                           "bias": (bool, False)},
               ("x",), _lm_head, shapes=_lm_head_shapes, init={"weight": _init_fan_in, "bias": _init_small},
               drawn_by=ALWAYS,
               features=lambda p: ("op:lm_head:untied" if p["tied_to"] is None else "op:lm_head:tied",)
               + (("op:lm_head:bias",) if p["bias"] else ())))


def wht_in_form(p: dict) -> int | str | None:
    """The T1 form (``fuzz.hadamard``'s ``block`` value) a ``wht_in`` node's parameters name."""
    return EXACT if p.get("exact") else p.get("block")


def wht_in_params(block: int | str | None) -> dict:
    """The ``wht_in`` parameters naming form ``block``, the defaults left out (padded layouts keep their hash)."""
    return {} if block is None else {"exact": True} if block == EXACT else {"block": block}


def _wht_in(node, p, w):
    _widths(node, "wht_in", w, [p["in_features"]])
    _need(not (p.get("exact") and p.get("block") is not None), node,
          f"wht_in exact and block {p.get('block')} are exclusive forms")
    try:
        return check_form(wht_in_form(p), p["in_features"], p["d_pad"])
    except FormError as exc:
        raise LayoutError(f"wht_in: {exc}", node) from exc


declare(OpSpec("wht_in", {"in_features": (int, ...), "d_pad": (int, ...), "block": ((int, type(None)), None),
                          "exact": (bool, False)},
               ("x",), _wht_in, omit_default=("block", "exact"),
               shapes=lambda p: {"scale": (p["d_pad"],)}, init={"scale": _init_positive_scale},
               drawn_by=NotDrawn("produced only by the T1 wht-scale transform on a linear's input edge; no "
                                 "decoder and no transformers model contains it"),
               features=lambda p: ("op:wht_in",)))


def _gamma_norm(node, p, w):
    _widths(node, "gamma_norm", w, [p["dim"] * p["groups"]])
    _eps(node, "gamma_norm", p["eps"])
    return w[0]


declare(OpSpec("gamma_norm", {"dim": (int, ...), "groups": (int, 1), "eps": (float, 1e-6)}, ("x",), _gamma_norm,
               shapes=lambda p: {"gamma": (p["groups"], p["dim"], p["dim"])}, init={"gamma": _init_orthogonal},
               drawn_by=NotDrawn("produced only by the T5 spectral-PCA transform from a q/k norm; no decoder and "
                                 "no transformers model contains it"),
               features=lambda p: ("op:gamma_norm",) + (("op:gamma_norm:per_head",) if p["groups"] > 1 else ())))


def _index_topk(node, p, w):
    h, d = p["n_heads"], p["head_dim"]
    _widths(node, "index_topk", w, [h * d, d, h])
    lo, hi = FACTOR_RANGE
    for key in ("scale", "weight_scale"):
        if p[key] is not None:
            _finite(node, "index_topk", key, p[key], f"None or finite with {lo:g} <= {key} <= {hi:g}",
                    lo <= p[key] <= hi)
    return None  # a (batch, seq, seq) selection, read by an attention's select port only


declare(OpSpec("index_topk", {"n_heads": (int, ...), "head_dim": (int, ...), "topk": (int, ...),
                              "scale": (_OPT_FLOAT, None), "weight_scale": (_OPT_FLOAT, None)},
               ("q", "k", "w"), _index_topk, shapes=_no_parameters,
               drawn_by=({"sparse_index_topk": 3},), features=lambda p: ("op:index_topk",)))


def spec(op: str, node: str | None = None) -> OpSpec:
    """The :class:`OpSpec` of ``op``; a clear error listing the known kinds otherwise."""
    try:
        return SPECS[op]
    except KeyError:
        raise LayoutError(f"unknown op kind {op!r}; known: {sorted(SPECS)}", node) from None


def parameter_shapes(op: str, p: dict) -> dict[str, tuple[int, ...]]:
    """Shapes of the trainable tensors a node of kind ``op`` owns (empty for weight-free ops)."""
    return spec(op).shapes(p)
