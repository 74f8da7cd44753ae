"""fuzz.axes: every DecoderSpec field is one axis (or structural), and every reader covers every axis.

The readers are ``decoder.check`` (choice axes), ``strategies.check_constraints`` / ``_specs`` /
``largest_spec``, the reducer (``verifier.reduce._candidates``) and ``DecoderSpec.features``.
"""

from __future__ import annotations

from dataclasses import fields

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz import BadInput
from fuzz.axes import AXES, KEEP, KINDS, NARROWED, OFF_ORDER, OWN_RULE, STRUCTURAL
from fuzz.decoder import DecoderSpec, LayerSpec, build, check
from fuzz.errors import LayoutError
from fuzz.strategies import _LIMITS, check_constraints, largest_spec, specs
from verifier.reduce import _candidates

SPEC_FIELDS = [f.name for f in fields(DecoderSpec)]
# a spec where every tag-gated axis is visible: sparse and rope layers, parallel residual, LayerNorm
RICH = DecoderSpec(layers=(LayerSpec(rope=True, sparse=True),), norm="layer", residual="parallel")
ALL_ON = RICH.with_(qkv_bias=True, o_bias=True, mlp_bias=True, shared_expert=True, norm_bias=True, rotary_dim=4,
                   fused_qkv=True, position_embedding=True, attn_gate="head_softplus", embedding_multiplier=2.0,
                   residual_multiplier=2.0, logit_multiplier=2.0, sliding_window=4, rope_scaling="yarn", attn_scale=0.2,
                   attn_softcap=2.0, final_softcap=4.0, alibi=True, attn_sinks=True,
                   lm_head_bias=True, extra_input_id=True, positions_from_mask=True, attn_temperature=0.5,
                   norm_weightless=True, mlp_xielu=True, rope_reversed=True)
ALL_ON = ALL_ON.with_(router="grouped", routed_scaling=2.5, expert_form="gpt_oss",  # MoE router variants
                      expert_scale_input=True, per_layer_input=4, residual_gate=True,
                      sparse_index_topk=3)  # DeepSeek Sparse Attention
# one invalid value per kind (a constraint check_constraints must refuse)
INVALID = {"choice": "no-such-choice", "bool": 1, "width": 0, "positive_float": -1.0, "multiplier": 0,
           "rotary": 3, "window": 0, "cap": -1.0}


def test_every_field_is_an_axis_or_structural():
    assert set(AXES) | set(STRUCTURAL) == set(SPEC_FIELDS)
    assert not set(AXES) & set(STRUCTURAL)
    assert all(name == axis.name for name, axis in AXES.items())


@pytest.mark.parametrize("name", list(AXES))
def test_an_axis_entry_is_consistent(name):
    axis = AXES[name]
    assert axis.kind in KINDS
    default = getattr(DecoderSpec(), name)
    assert axis.is_valid(default), f"{name}: the spec default {default!r} is not {axis.wanted()}"
    if axis.options is not OWN_RULE:
        drawn = axis.default_options(_LIMITS, {"placement": "pre"})
        assert drawn and all(axis.is_valid(v) for v in drawn)
    if axis.kind == "choice":
        assert set(axis.default_options(_LIMITS, {"placement": "pre"})) == set(axis.choices)
    if axis.kind == "bool":  # (extra_input_id: both where the table is not tied)
        assert set(axis.default_options(_LIMITS, {"placement": "pre"})) == {True, False}
    if axis.kind in ("bool", "choice"):
        assert sorted(map(str, axis.preference())) == sorted(map(str, axis.choices or (True, False)))
    if axis.off is not KEEP:
        assert axis.is_valid(axis.off)
    if axis.floor is not None:
        assert axis.floor % axis.step == 0


def test_the_reducer_passes_cover_the_axes_once_in_rank_order():
    ranks = [a.off_rank for a in OFF_ORDER if a.off_rank is not None]
    assert ranks == list(range(len(ranks)))  # the ranked ones first, each rank once
    unranked = [a.name for a in OFF_ORDER[len(ranks):]]
    assert all(a.off_rank is None for a in OFF_ORDER[len(ranks):])
    assert unranked == [n for n, a in AXES.items() if a.off is not KEEP and a.off_rank is None]  # table order
    assert [a.name for a in NARROWED][-1] == "vocab"  # the vocabulary is narrowed last
    # what the reducer leaves alone: kv heads and heads are halved by a rule of their own
    untouched = {a.name for a in AXES.values() if a.off is KEEP and a.floor is None}
    assert untouched == {"n_kv_heads", "n_heads", "rope_theta", "norm_eps"}


@pytest.mark.parametrize("name", [n for n, a in AXES.items() if a.kind != "size"])
def test_check_constraints_reads_the_kind(name):
    axis = AXES[name]
    partners = {"n_heads": {"n_kv_heads": 2}, "residual": {"placement": "pre"}}.get(name, {})
    valid = tuple(axis.choices) if axis.kind == "choice" else getattr(DecoderSpec(), name)
    check_constraints({name: valid, **partners})
    with pytest.raises(BadInput, match=f"constraint {name}="):
        check_constraints({name: INVALID[axis.kind]})


@pytest.mark.parametrize("name", [n for n, a in AXES.items() if a.kind == "choice"])
def test_decoder_check_rejects_a_value_outside_the_choices(name):
    with pytest.raises(LayoutError, match=f"{name}='bogus' is not one of"):
        check(DecoderSpec(**{name: "bogus"}))


@pytest.mark.parametrize("name", [n for n, a in AXES.items() if a.options is not OWN_RULE])
@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_specs_honour_a_pinned_axis(name, data):
    axis = AXES[name]
    value = data.draw(st.sampled_from(tuple(axis.default_options(_LIMITS, {"placement": "pre"}))))
    pin = {name: value, **({"placement": "pre"} if name == "residual" else {})}
    spec = data.draw(specs(**pin))
    assert getattr(spec, name) == value
    build(spec)


@pytest.mark.parametrize("name", [n for n, a in AXES.items() if a.kind in ("bool", "choice")])
def test_largest_spec_prefers_the_axis_order_among_the_allowed(name):
    axis = AXES[name]
    order = axis.preference()
    assert getattr(largest_spec(), name) == order[0]
    allowed = order[1:]
    partners = {"placement": "pre"} if name == "residual" else {}
    assert getattr(largest_spec(**{name: allowed}, **partners), name) == allowed[0]


@pytest.mark.parametrize("axis", OFF_ORDER, ids=lambda a: a.name)
def test_the_reducer_tries_each_axis_off(axis):
    on = next(v for v in (*axis.choices, True, False, 2.0, 4) if v != axis.off and axis.is_valid(v))
    spec = RICH.with_(**{axis.name: on})
    assert RICH.with_(**{axis.name: axis.off}) in list(_candidates(spec))


@pytest.mark.parametrize("axis", NARROWED, ids=lambda a: a.name)
def test_the_reducer_narrows_each_width(axis):
    wide = RICH.with_(**{axis.name: 8 * axis.floor + axis.step})
    narrowed = [getattr(c, axis.name) for c in _candidates(wide) if getattr(c, axis.name) != getattr(wide, axis.name)]
    assert narrowed and all(v >= axis.floor and v % axis.step == 0 for v in narrowed)


def test_features_are_the_union_of_the_axis_tags():
    tags = {t for axis in AXES.values() for t in axis.tags(RICH)}
    assert tags <= set(RICH.features())
    assert set(RICH.features()) - tags == {"moe", "layers:1"}  # the layer list's own tags
    untagged = {a.name for a in AXES.values()
                if not any(a.tags(spec) for spec in (RICH, ALL_ON, RICH.with_(hidden=33, head_dim=6),
                                                    RICH.with_(mla="q_lora"), RICH.with_(attn_chunk=4),
                                                    ALL_ON.with_(residual="sequential"),  # the residual gate
                                                    ALL_ON.with_(attn_temperature_form="power"),
                                                    RICH.with_(attn_differential=True)))}
    # MLA excludes ALL_ON's fused_qkv; chunks exclude its sliding window; differential its attention gate
    assert untagged == {"n_kv_heads", "rope_theta", "moe_intermediate", "shared_intermediate", "shared_gate",
                        "norm_eps", "vocab", "attn_temperature_length"}
    assert "moe:shared_expert+gate" in RICH.with_(shared_expert=True).features()  # shared_gate shows here
