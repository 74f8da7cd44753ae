"""Hypothesis strategies that draw valid decoder layouts constructively.

Draws are dependent and ordered (layers -> widths -> kv heads -> group -> heads -> head_dim -> rotary
dims -> features -> local layers -> each later layer's own RoPE scaling and MLP), each from a strategy that shrinks toward the simplest choice: fewer layers, heads
and experts, small widths, features off.  Each field's options, in that order, come from its entry in
:data:`fuzz.axes.AXES`; the features are drawn in table order.  No ``filter``/``assume``: every draw is a valid model.
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

from dataclasses import fields, replace

from hypothesis import event
from hypothesis import strategies as st

from .axes import AXES, OWN_RULE, _is_int, layer_mlps
from .decoder import MLA_EXCLUDES, DecoderSpec, LayerSpec, build
from .errors import BadInput
from .layout import Layout

_LIMITS = {"max_layers": 2, "max_hidden": 48, "max_kv_heads": 3, "max_group": 3, "max_head_dim": 12,
           "max_experts": 4, "vocab": 48, "moe": None, "rope": None}
_FIELDS = {f.name for f in fields(DecoderSpec)}


# inclusive ranges of the size limits: the draws enumerate widths, so these keep one draw cheap; what a
# layout may cost in memory is the size guard's business (fuzz.materialize.check_size)
RANGES = {"max_layers": (1, 64), "max_hidden": (4, 65536), "max_kv_heads": (1, 256), "max_group": (1, 256),
          "max_head_dim": (2, 1024), "max_experts": (2, 1024), "vocab": (2, 2**31 - 1)}
_DRAWN = {"layers": "max_layers", "n_experts": "max_experts", "top_k": "max_experts"}


def _options(constraints: dict, name: str) -> tuple:
    c = constraints[name]
    return tuple(c) if isinstance(c, (tuple, list)) else (c,)


def check_constraints(constraints: dict) -> None:
    """Raise :class:`BadInput` unless ``constraints`` are what :func:`layouts` accepts: known keys,
    values of the field's kind (:data:`fuzz.axes.KINDS`; a value or a non-empty tuple/list of them),
    limits within ``RANGES``, ``moe``/``rope`` True, False or None, and pinned values that fit together."""
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
        axis = AXES[name]
        if axis.single and isinstance(constraints[name], (tuple, list)):
            raise BadInput(f"constraint {name}={constraints[name]!r} must be a single value, not a tuple")
        values = _options(constraints, name)
        if not values:
            raise BadInput(f"constraint {name}=() allows nothing; give a value or a non-empty tuple")
        for v in values:
            if not axis.is_valid(v):
                raise BadInput(f"constraint {name}={v!r} is not {axis.wanted()}")
    _check_together(constraints)


def _check_together(c: dict) -> None:
    """Pinned values that every draw must combine into a valid decoder."""
    lim = {**_LIMITS, **{k: v for k, v in c.items() if k in _LIMITS}}
    kvs = _options(c, "n_kv_heads") if "n_kv_heads" in c else AXES["n_kv_heads"].default_options(lim, {})
    if "n_heads" in c:
        bad = [kv for kv in kvs if c["n_heads"] % kv]
        if bad:
            raise BadInput(f"constraint n_heads={c['n_heads']} is not a multiple of n_kv_heads {bad[0]}, which "
                           f"the draws allow; pin n_kv_heads to divisors of n_heads")
    head_dims = _options(c, "head_dim") if "head_dim" in c else AXES["head_dim"].default_options(lim, {})
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


def _with_mla_excludes(c: dict) -> dict:
    """Constraints pinning MLA on: the axes MLA excludes (``decoder.MLA_EXCLUDES``, the fused output gate) pinned
    off unless the caller pinned them (then ``decoder.check`` names the clash)."""
    if "mla" not in c or "none" in _options(c, "mla"):
        return c
    return {**MLA_EXCLUDES, "attn_gate": ("none", "head_softplus"), **c}


def _with_extra_id_untied(c: dict) -> dict:
    """Constraints pinning ``extra_input_id`` on: ``tie_embeddings`` pinned off unless the caller pinned it (then
    ``decoder.check`` names the clash: a table with a row past the output vocabulary is not shared)."""
    if "extra_input_id" not in c or False in _options(c, "extra_input_id"):
        return c
    return {"tie_embeddings": False, **c}


def _with_chunk_unwindowed(c: dict) -> dict:
    """Constraints pinning ``attn_chunk`` on: ``sliding_window`` pinned off unless the caller pinned it (then
    ``decoder.check`` names the clash: one local span per attention)."""
    if "attn_chunk" not in c or None in _options(c, "attn_chunk"):
        return c
    return {"sliding_window": None, **c}


def _with_differential_pairs(c: dict) -> dict:
    """Constraints pinning ``attn_differential`` on: an even ``n_kv_heads`` (so ``n_heads`` is even too), no MLA,
    no output gate, unless the caller pinned them (then ``decoder.check`` names the clash)."""
    if "attn_differential" not in c or False in _options(c, "attn_differential"):
        return c
    top = c.get("max_kv_heads", _LIMITS["max_kv_heads"])
    return {"n_kv_heads": tuple(range(2, top + 1, 2)) or (2,), "mla": "none", "attn_gate": "none", **c}


def largest_spec(**constraints) -> DecoderSpec:
    """The spec with the most parameters that :func:`specs` can draw under ``constraints`` (the size
    guard's bound for a whole campaign); ``constraints`` are checked first.  Per axis: the widest width,
    the first of :meth:`~fuzz.axes.Axis.preference` allowed for a bool or choice, the first pinned value
    otherwise (else the spec default)."""
    check_constraints(constraints)
    constraints = _with_chunk_unwindowed(_with_extra_id_untied(_with_mla_excludes(_with_differential_pairs(constraints))))
    lim = {**_LIMITS, **{k: v for k, v in constraints.items() if k in _LIMITS}}
    kv = max(_options(constraints, "n_kv_heads") if "n_kv_heads" in constraints
             else AXES["n_kv_heads"].default_options(lim, {}))
    values = dict(vocab=lim["vocab"], n_kv_heads=kv, n_heads=constraints.get("n_heads", kv * lim["max_group"]),
                  n_experts=max(2, lim["max_experts"]), top_k=1)
    for axis in AXES.values():
        if axis.name in values:
            continue
        pinned = _options(constraints, axis.name) if axis.name in constraints else None
        if axis.kind == "width":
            values[axis.name] = max(pinned or axis.default_options(lim, {}))
        elif axis.kind in ("bool", "choice"):
            allowed = pinned or tuple(axis.default_options(lim, values))  # (extra_input_id: not with a tied table)
            values[axis.name] = next(v for v in axis.preference() if v in allowed)
        elif pinned:
            values[axis.name] = pinned[0]
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
    return spec_from(_Drawn(draw), constraints)


def _option_key(options: tuple) -> tuple:
    """A cache key that tells apart options equal as Python values but not as choices (``1``, ``1.0``, ``True``)."""
    return tuple((type(o), repr(o)) for o in options)


class _Drawn:
    """The choices of :func:`spec_from` drawn by hypothesis (each from a strategy that shrinks toward the
    simplest value).  Each strategy is built once per distinct argument and reused (a fresh one is
    validated again at every draw, about two thirds of a draw's time); a reused strategy draws exactly what a
    fresh one draws."""

    _strategies: dict = {}  # (kind, arguments) -> strategy, shared by every draw
    _FLAGS = {False: st.booleans(), True: st.booleans().map(lambda x: not x)}

    def __init__(self, draw):
        self.draw = draw

    @classmethod
    def _cached(cls, key: tuple, make):
        strategy = cls._strategies.get(key)
        if strategy is None:
            strategy = cls._strategies[key] = make()
        return strategy

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(self._cached(("integers", lo, hi), lambda: st.integers(lo, hi)))

    def even(self, lo: int, hi: int) -> int:
        """``2 * integer(lo, hi)``."""
        return self.draw(self._cached(("even", lo, hi), lambda: st.integers(lo, hi).map(lambda x: 2 * x)))

    def choice(self, options: tuple):
        return self.draw(self._cached(("sampled_from", _option_key(options)), lambda: st.sampled_from(options)))

    def flag(self, shrink_to: bool = False) -> bool:
        """A boolean that shrinks toward ``shrink_to``."""
        return self.draw(self._FLAGS[bool(shrink_to)])


class Picked:
    """The choices of :func:`spec_from` made uniformly by a :class:`random.Random` (the pool that
    :mod:`fuzz.covering` builds its covering examples from)."""

    def __init__(self, rng):
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def even(self, lo: int, hi: int) -> int:
        return 2 * self.rng.randint(lo, hi)

    def choice(self, options: tuple):
        return self.rng.choice(options)

    def flag(self, shrink_to: bool = False) -> bool:
        return self.rng.random() < 0.5


def spec_from(pick, constraints: dict) -> DecoderSpec:
    """The drawing rule of :func:`specs`: every choice goes through ``pick`` (``integer(lo, hi)``,
    ``even(lo, hi)``, ``choice(options)``, ``flag(shrink_to)``), hypothesis' draws or a :class:`Picked`
    random source; the constraints are assumed checked."""
    lim = {**_LIMITS, **{k: v for k, v in constraints.items() if k in _LIMITS}}
    c = {k: v for k, v in constraints.items() if k in _FIELDS}
    values: dict = {"vocab": lim["vocab"]}
    c = _with_chunk_unwindowed(_with_extra_id_untied(_with_mla_excludes(_with_differential_pairs(c))))

    def axis(name: str):
        a = AXES[name]
        options = _options(c, name) if name in c else a.default_options(lim, values)
        values[name] = pick.choice(tuple(options))
        return values[name]

    n_layers = pick.integer(1, lim["max_layers"])
    axis("hidden")
    kv = axis("n_kv_heads")
    group = pick.integer(1, lim["max_group"])
    values["n_heads"] = c.get("n_heads", kv * group)
    head_dim = axis("head_dim")

    want_rope = lim["rope"]
    layer_rope = [True if want_rope else False if want_rope is False else pick.flag(shrink_to=True)
                  for _ in range(n_layers)]
    axis("rope_style")
    partial = pick.flag() if "rotary_dim" not in c else False
    values["rotary_dim"] = c.get("rotary_dim", pick.even(1, head_dim // 2 - 1)
                                 if partial and head_dim >= 4 else None)

    moe = lim["moe"]
    layer_sparse = [True if moe else False if moe is False else pick.flag() for _ in range(n_layers)]
    values["n_experts"] = pick.integer(2, max(2, lim["max_experts"]))
    values["top_k"] = pick.integer(1, values["n_experts"])
    # per-layer RoPE theta (Gemma3: local layers keep the spec's theta, global ones their own)
    layer_theta = [pick.choice((None, 1e6)) if r and n_layers > 1 else None for r in layer_rope]
    values["layers"] = tuple(LayerSpec(rope=r, sparse=s, rope_theta=t)
                             for r, s, t in zip(layer_rope, layer_sparse, layer_theta))

    for rest in AXES.values():  # the features, in table order
        if rest.name not in values and rest.options is not OWN_RULE:
            axis(rest.name)
    local = values.get("sliding_window") is not None or values.get("attn_chunk") is not None
    if local and n_layers > 1:  # local / global layers (Gemma2 style; Llama-4's chunked / NoPE layers)
        sliding = [pick.flag(shrink_to=True) for _ in range(n_layers)]
        values["layers"] = tuple(replace(l, sliding=w) for l, w in zip(values["layers"], sliding))
    if n_layers > 1:  # layers past the first with their own RoPE scaling (Gemma3) or dense MLP
        values["layers"] = (values["layers"][0],) + tuple(_own_layer(pick, c, values, l) for l in values["layers"][1:])
    return DecoderSpec(**values)


def _own_layer(pick, c: dict, values: dict, layer: LayerSpec) -> LayerSpec:
    """``layer`` with its own RoPE scaling (a RoPE layer: any other recipe) and its own MLP (a dense layer, not
    xIELU: another of the spec's MLP's group, :data:`fuzz.axes.LAYER_MLP_GROUPS`): each a flag that shrinks to off
    (the spec's), then one of those values the constraints allow."""
    own = {}
    for name, here in (("rope_scaling", layer.rope), ("mlp", not layer.sparse and not values["mlp_xielu"])):
        values_of = AXES[name].choices if name == "rope_scaling" else layer_mlps(values["mlp"])
        others = tuple(v for v in values_of if v != values[name] and (name not in c or v in _options(c, name)))
        if here and others and pick.flag():
            own[name] = pick.choice(others)
    return replace(layer, **own) if own else layer


def layouts(**constraints) -> st.SearchStrategy[Layout]:
    """Draw a valid :class:`~fuzz.layout.Layout`; every feature is reported with ``event``.
    Bad constraints raise :class:`BadInput` here, before anything is drawn."""
    check_constraints(constraints)
    return _layouts(**constraints)


@st.composite
def _layouts(draw, **constraints) -> Layout:
    spec = draw(_specs(**constraints))
    layout = build(spec)
    for tag in layout.features() + layout.op_features():
        event(tag)
    return layout


def seeds() -> st.SearchStrategy[int]:
    """Weight seeds for :func:`fuzz.materialize`."""
    return st.integers(0, 2**31 - 1)
