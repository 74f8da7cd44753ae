"""Hypothesis strategies that draw valid decoder layouts constructively.

Draws are dependent and ordered (layers -> widths -> kv heads -> group -> heads -> head_dim -> rotary
dims -> features), each from a strategy that shrinks toward the simplest choice: fewer layers, heads
and experts, small widths, features off.  No ``filter``/``assume``: every draw is a valid model.
Each drawn feature is tagged with ``hypothesis.event`` so ``--hypothesis-show-statistics`` reports
what a campaign covered.

Constraints: any :class:`~fuzz.decoder.DecoderSpec` field may be pinned (``qk_norm="per_head"``) or
restricted to a tuple of choices (``mlp=("swiglu", "gelu")``); booleans likewise (``qkv_bias=True``).
Size limits: ``max_layers``, ``max_hidden``, ``max_kv_heads``, ``max_group``, ``max_head_dim``,
``max_experts``, ``vocab``; ``moe`` (True / False / None = either) and ``rope`` (same) switch whole
axes.
"""

from __future__ import annotations

from dataclasses import fields

from hypothesis import event
from hypothesis import strategies as st

from .decoder import _CHOICES, DecoderSpec, LayerSpec, build
from .errors import BadInput
from .layout import Layout

_LIMITS = {"max_layers": 2, "max_hidden": 48, "max_kv_heads": 3, "max_group": 3, "max_head_dim": 12,
           "max_experts": 4, "vocab": 48, "moe": None, "rope": None}
_FIELDS = {f.name for f in fields(DecoderSpec)}


def _choice(draw, constraints: dict, name: str, default_options):
    """Draw field ``name``: pinned value, a tuple of allowed values, or the default options."""
    if name in constraints:
        c = constraints[name]
        options = c if isinstance(c, (tuple, list)) else (c,)
    else:
        options = default_options
    return draw(st.sampled_from(tuple(options)))


def _check(constraints: dict) -> None:
    unknown = set(constraints) - _FIELDS - set(_LIMITS)
    if unknown:
        raise BadInput(f"layouts() got unknown constraint(s) {sorted(unknown)}; "
                       f"use DecoderSpec fields or {sorted(_LIMITS)}")
    for name, allowed in _CHOICES.items():
        if name in constraints:
            c = constraints[name]
            for v in (c if isinstance(c, (tuple, list)) else (c,)):
                if v not in allowed:
                    raise BadInput(f"layouts({name}=...) value {v!r} is not one of {allowed}")


@st.composite
def specs(draw, **constraints) -> DecoderSpec:
    """Draw a :class:`DecoderSpec` (see the module docstring for the constraints)."""
    _check(constraints)
    lim = {**_LIMITS, **{k: v for k, v in constraints.items() if k in _LIMITS}}
    c = {k: v for k, v in constraints.items() if k in _FIELDS}
    b = st.booleans()

    n_layers = draw(st.integers(1, lim["max_layers"]))
    vocab = lim["vocab"]
    hidden = _choice(draw, c, "hidden", range(4, lim["max_hidden"] + 1))
    kv = _choice(draw, c, "n_kv_heads", range(1, lim["max_kv_heads"] + 1))
    group = draw(st.integers(1, lim["max_group"]))
    heads = c.get("n_heads", kv * group)
    head_dim = _choice(draw, c, "head_dim", range(2, lim["max_head_dim"] + 1, 2))

    want_rope = lim["rope"]
    layer_rope = [True if want_rope else False if want_rope is False else draw(st.booleans().map(lambda x: not x))
                  for _ in range(n_layers)]
    rope_style = _choice(draw, c, "rope_style", ("half", "interleaved"))
    partial = draw(b) if "rotary_dim" not in c else False
    rotary_dim = c.get("rotary_dim", draw(st.integers(1, head_dim // 2 - 1).map(lambda x: 2 * x))
                       if partial and head_dim >= 4 else None)

    moe = lim["moe"]
    layer_sparse = [True if moe else False if moe is False else draw(b) for _ in range(n_layers)]
    n_experts = draw(st.integers(2, max(2, lim["max_experts"])))
    top_k = draw(st.integers(1, n_experts))

    values = dict(
        vocab=vocab, hidden=hidden, n_heads=heads, n_kv_heads=kv, head_dim=head_dim,
        layers=tuple(LayerSpec(rope=r, sparse=s) for r, s in zip(layer_rope, layer_sparse)),
        qk_norm=_choice(draw, c, "qk_norm", ("none", "per_head", "full")),
        rope_style=rope_style, rotary_dim=rotary_dim,
        rope_theta=_choice(draw, c, "rope_theta", (10000.0, 500.0, 1e6)),
        qkv_bias=_choice(draw, c, "qkv_bias", (False, True)),
        o_bias=_choice(draw, c, "o_bias", (False, True)),
        attn_gate=_choice(draw, c, "attn_gate", ("none", "head_softplus", "output_sigmoid")),
        mlp=_choice(draw, c, "mlp", ("swiglu", "geglu", "gelu")),
        intermediate=_choice(draw, c, "intermediate", range(4, 2 * lim["max_hidden"] + 1)),
        mlp_bias=_choice(draw, c, "mlp_bias", (False, True)),
        n_experts=n_experts, top_k=top_k,
        renormalize=_choice(draw, c, "renormalize", (True, False)),
        moe_intermediate=_choice(draw, c, "moe_intermediate", range(2, lim["max_hidden"] + 1)),
        shared_expert=_choice(draw, c, "shared_expert", (False, True)),
        shared_intermediate=_choice(draw, c, "shared_intermediate", range(2, lim["max_hidden"] + 1)),
        shared_gate=_choice(draw, c, "shared_gate", (True, False)),
        norm=_choice(draw, c, "norm", ("rms", "layer")),
        norm_weight_form=_choice(draw, c, "norm_weight_form", ("w", "1+w")),
        norm_bias=_choice(draw, c, "norm_bias", (False, True)),
        norm_eps=_choice(draw, c, "norm_eps", (1e-6, 1e-5)),
        placement=_choice(draw, c, "placement", ("pre", "sandwich", "post")),
        tie_embeddings=_choice(draw, c, "tie_embeddings", (False, True)),
        embedding_multiplier=_choice(draw, c, "embedding_multiplier", (None, 3.0, 0.5)),
        residual_multiplier=_choice(draw, c, "residual_multiplier", (None, 0.25)),
        logit_multiplier=_choice(draw, c, "logit_multiplier", (None, 0.125)),
    )
    values["residual"] = _choice(draw, c, "residual", ("sequential",) if values["placement"] == "post"
                                 else ("sequential", "parallel"))
    values["parallel_shared_norm"] = _choice(draw, c, "parallel_shared_norm", (True, False))
    return DecoderSpec(**values)


@st.composite
def layouts(draw, **constraints) -> Layout:
    """Draw a valid :class:`~fuzz.layout.Layout`; every feature is reported with ``event``."""
    spec = draw(specs(**constraints))
    layout = build(spec)
    for tag in layout.features():
        event(tag)
    return layout


def seeds() -> st.SearchStrategy[int]:
    """Weight seeds for :func:`fuzz.materialize`."""
    return st.integers(0, 2**31 - 1)
