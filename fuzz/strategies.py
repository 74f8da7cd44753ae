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
axes.  :func:`check_constraints` states what is accepted (keys, types, ranges: ``RANGES``); ``specs`` and
``layouts`` run it when the strategy is built, so a bad constraint is a :class:`BadInput` up front, not a
failure in the middle of a campaign.  ``layers``, ``n_experts`` and ``top_k`` are drawn, never pinned.
"""

from __future__ import annotations

import math
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


# inclusive ranges of the size limits: the draws enumerate widths, so these keep one draw cheap; what a
# layout may cost in memory is the size guard's business (fuzz.materialize.check_size)
RANGES = {"max_layers": (1, 64), "max_hidden": (4, 65536), "max_kv_heads": (1, 256), "max_group": (1, 256),
          "max_head_dim": (2, 1024), "max_experts": (2, 1024), "vocab": (2, 2**31 - 1)}
_DRAWN = {"layers": "max_layers", "n_experts": "max_experts", "top_k": "max_experts"}
_BOOLS = {"qkv_bias", "o_bias", "mlp_bias", "renormalize", "shared_expert", "shared_gate", "norm_bias",
          "tie_embeddings", "parallel_shared_norm"}
_WIDTHS = {"hidden", "n_kv_heads", "head_dim", "intermediate", "moe_intermediate", "shared_intermediate"}
_POSITIVE_FLOATS = {"rope_theta", "norm_eps"}
_MULTIPLIERS = {"embedding_multiplier", "residual_multiplier", "logit_multiplier"}
_SINGLE = {"n_heads", "rotary_dim"}  # used as given: one value, not a tuple of choices


def _options(constraints: dict, name: str) -> tuple:
    c = constraints[name]
    return tuple(c) if isinstance(c, (tuple, list)) else (c,)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_constraints(constraints: dict) -> None:
    """Raise :class:`BadInput` unless ``constraints`` are what :func:`layouts` accepts: known keys,
    values of the field's type and range (a value or a non-empty tuple/list of them), limits within
    ``RANGES``, ``moe``/``rope`` True, False or None, and pinned values that fit together."""
    unknown = set(constraints) - _FIELDS - set(_LIMITS)
    if unknown:
        raise BadInput(f"unknown constraint(s) {sorted(unknown)}; use DecoderSpec fields or {sorted(_LIMITS)}")
    for name, limit in _DRAWN.items():
        if name in constraints:
            raise BadInput(f"constraint {name!r} cannot be pinned (it is drawn); bound it with {limit!r}")
    for name, (lo, hi) in RANGES.items():
        if name in constraints:
            v = constraints[name]
            if not _is_int(v) or not lo <= v <= hi:
                raise BadInput(f"constraint {name}={v!r} must be an integer in [{lo}, {hi}]")
    for name in ("moe", "rope"):
        if name in constraints and not isinstance(constraints[name], (bool, type(None))):
            raise BadInput(f"constraint {name}={constraints[name]!r} must be True, False or None (either)")
    for name in set(constraints) & _FIELDS - set(_LIMITS):
        if name in _SINGLE and isinstance(constraints[name], (tuple, list)):
            raise BadInput(f"constraint {name}={constraints[name]!r} must be a single value, not a tuple")
        values = _options(constraints, name)
        if not values:
            raise BadInput(f"constraint {name}=() allows nothing; give a value or a non-empty tuple")
        for v in values:
            if name in _CHOICES:
                ok, want = v in _CHOICES[name] and isinstance(v, str), f"one of {_CHOICES[name]}"
            elif name in _BOOLS:
                ok, want = isinstance(v, bool), "True or False"
            elif name in _WIDTHS or name == "n_heads":
                ok, want = _is_int(v) and v >= 1, "a positive integer"
            elif name in _POSITIVE_FLOATS:
                ok, want = _is_real(v) and v > 0, "a finite number > 0"
            elif name in _MULTIPLIERS:
                ok, want = v is None or _is_real(v) and v != 0, "None or a finite non-zero number"
            elif name == "rotary_dim":
                ok, want = v is None or _is_int(v) and v >= 2 and v % 2 == 0, "None or an even integer >= 2"
            else:
                ok, want = True, ""
            if not ok:
                raise BadInput(f"constraint {name}={v!r} is not {want}")
    _check_together(constraints)


def _check_together(c: dict) -> None:
    """Pinned values that every draw must combine into a valid decoder."""
    lim = {**_LIMITS, **{k: v for k, v in c.items() if k in _LIMITS}}
    kvs = _options(c, "n_kv_heads") if "n_kv_heads" in c else range(1, lim["max_kv_heads"] + 1)
    if "n_heads" in c:
        bad = [kv for kv in kvs if c["n_heads"] % kv]
        if bad:
            raise BadInput(f"constraint n_heads={c['n_heads']} is not a multiple of n_kv_heads {bad[0]}, which "
                           f"the draws allow; pin n_kv_heads to divisors of n_heads")
    head_dims = _options(c, "head_dim") if "head_dim" in c else range(2, lim["max_head_dim"] + 1, 2)
    if lim["rope"] is not False:
        odd = [d for d in head_dims if d % 2]
        if odd and c.get("rotary_dim") is None:
            raise BadInput(f"constraint head_dim={odd[0]} is odd, but RoPE rotates pairs; pin an even head_dim, "
                           f"an even rotary_dim, or rope=False")
        if c.get("rotary_dim") is not None and c["rotary_dim"] > min(head_dims):
            raise BadInput(f"constraint rotary_dim={c['rotary_dim']} exceeds head_dim {min(head_dims)}, which the "
                           f"draws allow")
    if "residual" in c and "parallel" in _options(c, "residual") and \
            "post" in (_options(c, "placement") if "placement" in c else ("post",)):
        raise BadInput("constraint residual='parallel' needs placement without 'post' (post-norm with a "
                       "parallel residual is not a known layout); pin placement='pre' or 'sandwich'")


# per field, the option with the most parameters first (largest_spec)
_MOST = {"qk_norm": ("full", "per_head", "none"), "attn_gate": ("output_sigmoid", "head_softplus", "none"),
         "mlp": ("swiglu", "geglu", "gelu"), "norm": ("layer", "rms"), "placement": ("sandwich", "pre", "post"),
         "residual": ("sequential", "parallel"), "tie_embeddings": (False, True),
         "parallel_shared_norm": (False, True)}


def largest_spec(**constraints) -> DecoderSpec:
    """The spec with the most parameters that :func:`specs` can draw under ``constraints`` (the size
    guard's bound for a whole campaign); ``constraints`` are checked first."""
    check_constraints(constraints)
    lim = {**_LIMITS, **{k: v for k, v in constraints.items() if k in _LIMITS}}

    def pick(name, default_options, order=None):
        options = _options(constraints, name) if name in constraints else tuple(default_options)
        for v in order or ():
            if v in options:
                return v
        return max(options) if order is None else options[0]

    kv = pick("n_kv_heads", [lim["max_kv_heads"]])
    values = dict(
        vocab=lim["vocab"], hidden=pick("hidden", [lim["max_hidden"]]), n_kv_heads=kv,
        n_heads=constraints.get("n_heads", kv * lim["max_group"]),
        head_dim=pick("head_dim", [lim["max_head_dim"] // 2 * 2]), rotary_dim=constraints.get("rotary_dim"),
        intermediate=pick("intermediate", [2 * lim["max_hidden"]]),
        moe_intermediate=pick("moe_intermediate", [lim["max_hidden"]]),
        shared_intermediate=pick("shared_intermediate", [lim["max_hidden"]]),
        n_experts=max(2, lim["max_experts"]), top_k=1)
    for name in _BOOLS:
        values[name] = pick(name, (True, False), _MOST.get(name, (True, False)))
    for name in ("qk_norm", "attn_gate", "mlp", "norm", "placement"):
        values[name] = pick(name, _MOST[name], _MOST[name])
    values["residual"] = pick("residual", ("sequential",) if values["placement"] == "post" else _MOST["residual"],
                              _MOST["residual"])
    for name in ("rope_style", "norm_weight_form"):
        values[name] = pick(name, _CHOICES[name], _CHOICES[name])
    for name in _POSITIVE_FLOATS | _MULTIPLIERS:
        if name in constraints:
            values[name] = _options(constraints, name)[0]
    rope = lim["rope"] is not False
    sparse = [lim["moe"]] if lim["moe"] is not None else [False, True]
    candidates = [DecoderSpec(**values, layers=tuple(LayerSpec(rope=rope, sparse=s) for _ in range(lim["max_layers"])))
                  for s in sparse]
    return max(candidates, key=lambda spec: build(spec).parameter_bytes())


def specs(**constraints) -> st.SearchStrategy[DecoderSpec]:
    """Draw a :class:`DecoderSpec` (see the module docstring for the constraints, checked here)."""
    check_constraints(constraints)
    return _specs(**constraints)


@st.composite
def _specs(draw, **constraints) -> DecoderSpec:
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


def layouts(**constraints) -> st.SearchStrategy[Layout]:
    """Draw a valid :class:`~fuzz.layout.Layout`; every feature is reported with ``event``.
    Bad constraints raise :class:`BadInput` here, before anything is drawn."""
    check_constraints(constraints)
    return _layouts(**constraints)


@st.composite
def _layouts(draw, **constraints) -> Layout:
    spec = draw(_specs(**constraints))
    layout = build(spec)
    for tag in layout.features():
        event(tag)
    return layout


def seeds() -> st.SearchStrategy[int]:
    """Weight seeds for :func:`fuzz.materialize`."""
    return st.integers(0, 2**31 - 1)
