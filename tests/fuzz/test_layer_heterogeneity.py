"""Issue 18, layers that differ: a layer's own RoPE scaling (Gemma3: global layers linear-scaled, local ones
unscaled) and its own dense MLP (a transform reading one ``config.hidden_act`` for every layer breaks there).
Old specs keep their JSON, a two-layer layout with two activations and two scalings carries both tags, builds
per-layer nodes, imports to itself node for node and every transform preserves or refuses it."""

from __future__ import annotations

import re

import networkx as nx
import pytest
import torch
from hypothesis import given, settings

import quant.transforms as T
from fuzz import DecoderSpec, LayerSpec, build, materialize, strategies
from fuzz.axes import LAYER_MLP_GROUPS, layer_mlps
from fuzz.errors import LayoutError
from fuzz.importer import import_model
from verifier import mutants, verify
from verifier.reduce import _candidates

# Gemma3-like: the first layer unscaled (the spec's), the second linear-scaled with its own gelu MLP
HETERO = DecoderSpec(layers=(LayerSpec(), LayerSpec(rope_scaling="linear", mlp="gelu")), rotary_dim=4,
                     head_dim=8)
RELU_THEN_RELU2 = DecoderSpec(mlp="relu", layers=(LayerSpec(), LayerSpec(mlp="relu2")))


def test_old_specs_keep_their_json_and_read_back():
    spec = DecoderSpec(layers=(LayerSpec(), LayerSpec(sparse=True, rope_theta=1e6)))
    d = spec.to_dict()
    assert [set(l) for l in d["layers"]] == [{"rope", "sparse", "sliding", "rope_theta"}] * 2  # no new keys
    assert DecoderSpec.from_dict(d) == spec
    assert DecoderSpec.from_dict(HETERO.to_dict()) == HETERO
    assert HETERO.to_dict()["layers"][1] == {"rope": True, "sparse": False, "sliding": True, "rope_theta": None,
                                             "rope_scaling": "linear", "mlp": "gelu"}


def test_a_layer_of_its_own_builds_its_nodes_and_carries_both_tags():
    layout = build(HETERO)
    assert layout.params("l0_mlp_act")["fn"] == "silu" and layout.params("l1_mlp_act")["fn"] == "gelu"
    assert "l0_mlp_glu" in layout.order and "l1_mlp_glu" not in layout.order  # a GLU, then a plain MLP
    assert layout.params("l0_q_rope")["scaling"] == "none" and layout.params("l1_q_rope")["scaling"] == "linear"
    features = set(layout.features())
    assert {"mlp:swiglu", "mlp:gelu", "mlp:per-layer", "rope:scaled:linear", "rope:per-layer-scaling"} <= features
    assert {"op:act:silu", "op:act:gelu", "op:rope:scaled:linear"} <= set(layout.op_features())
    # the same activation as the spec's is no second one; a uniform spec carries neither per-layer tag
    same = set(build(DecoderSpec(layers=(LayerSpec(), LayerSpec(mlp="swiglu")))).features())
    assert "mlp:per-layer" not in same and build(DecoderSpec(layers=(LayerSpec(), LayerSpec()))) == build(
        DecoderSpec(layers=(LayerSpec(), LayerSpec(mlp="swiglu"))))
    # a sparse layer's MLP is its experts: only the dense layers' MLPs are tagged
    mixed = build(DecoderSpec(layers=(LayerSpec(sparse=True), LayerSpec(mlp="relu"))))
    assert "mlp:relu" in mixed.features() and "mlp:swiglu" not in mixed.features()


def test_a_layer_of_its_own_is_checked():
    with pytest.raises(LayoutError, match="layer 1: mlp='tanh' is not one of"):
        build(DecoderSpec(layers=(LayerSpec(), LayerSpec(mlp="tanh"))))
    with pytest.raises(LayoutError, match="layer 0: rope_scaling='ntk' is not one of"):
        build(DecoderSpec(layers=(LayerSpec(rope_scaling="ntk"),)))
    with pytest.raises(LayoutError, match="layer 1: mlp='gelu' on a sparse layer"):
        build(DecoderSpec(layers=(LayerSpec(), LayerSpec(sparse=True, mlp="gelu"))))


def test_a_layer_of_its_own_materializes_and_imports_to_itself_node_for_node():
    layout = build(HETERO)
    gm = materialize(layout, seed=2)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(2))
    back = import_model(gm, ids)
    same = nx.algorithms.isomorphism.DiGraphMatcher(
        back.layout.graph, layout.graph, edge_match=lambda x, y: x["port"] == y["port"],
        node_match=_close)
    assert same.is_isomorphic()
    with torch.no_grad():
        assert torch.allclose(back(ids), gm(ids), rtol=0, atol=1e-12)


def _close(a: dict, b: dict) -> bool:
    """Same op and parameters, measured floats (RoPE tables, theta) within 1e-9 relative."""
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            if len(x) != len(y) or any(abs(u - v) > 1e-9 * max(abs(u), abs(v), 1.0) for u, v in zip(x, y)):
                return False
        elif isinstance(x, float) and isinstance(y, (int, float)):
            if abs(x - y) > 1e-9 * max(abs(x), abs(y), 1.0):
                return False
        elif x != y:
            return False
    return True


@pytest.mark.parametrize("spec", [HETERO, RELU_THEN_RELU2,
                                  DecoderSpec(rope_scaling="yarn", layers=(LayerSpec(), LayerSpec(rope_scaling="none",
                                                                                                  mlp="relu2")))],
                         ids=["swiglu-gelu-linear", "relu-relu2", "yarn-none"])
def test_every_transform_preserves_layers_of_their_own_or_refuses_by_name(spec):
    layout = build(spec)
    for name in T.names():
        verdict = verify(T.get(name), layout)
        assert verdict.status in ("invariant", "refused"), (name, str(verdict))
        if verdict.status == "refused":  # named: "<transform> refuses at <op> '<node>' [<feature>]: ..."
            assert re.match(r"\S+ refuses( at \S+ '[^']+')? \[[^\]]+\]: ", verdict.message), (name, verdict.message)


def test_reading_one_activation_for_every_layer_is_caught():
    verdict = verify(mutants.get("first_activation"), build(RELU_THEN_RELU2))
    assert verdict.status == "diverged" and verdict.first_divergent is not None, str(verdict)
    for uniform in (DecoderSpec(mlp="relu", layers=(LayerSpec(), LayerSpec())), DecoderSpec(mlp="relu2")):
        assert verify(mutants.get("first_activation"), build(uniform)).status == "invariant"


def test_every_mlp_is_in_one_group_with_mlps_of_other_kinds():
    from fuzz.axes import AXES
    grouped = [m for g in LAYER_MLP_GROUPS for m in g]
    assert sorted(grouped) == sorted(AXES["mlp"].choices)  # each MLP in exactly one group
    glu = {"swiglu", "geglu", "clamped_swiglu"}
    assert all(len(g) > 1 and set(g) - glu for g in LAYER_MLP_GROUPS)  # a plain MLP with each GLU


def test_the_reducer_turns_a_layer_of_its_own_back_to_the_spec():
    back = {s.layers for s in _candidates(HETERO)}
    assert (LayerSpec(), LayerSpec(mlp="gelu")) in back and (LayerSpec(), LayerSpec(rope_scaling="linear")) in back


def test_the_strategies_draw_layers_of_their_own_only_past_the_first_and_within_the_constraints():
    seen, pinned = set(), set()

    @settings(max_examples=150, derandomize=True, database=None, deadline=None)
    @given(strategies.specs(max_layers=2, moe=False, rope=True, mlp_xielu=False))  # where both can differ
    def draw(spec):
        assert spec.layers[0].mlp is None and spec.layers[0].rope_scaling is None
        for layer in spec.layers[1:]:  # an MLP of its own: another of the spec's MLP's group
            assert layer.mlp is None or layer.mlp in layer_mlps(spec.mlp)
        build(spec)
        seen.update(t for t in spec.features() if "per-layer" in t)

    @settings(max_examples=60, derandomize=True, database=None, deadline=None)
    @given(strategies.specs(max_layers=2, moe=False, rope=True, mlp_xielu=False, mlp=("relu", "relu2"),
                            rope_scaling=("none", "yarn")))
    def constrained(spec):  # relu and relu2 are of two MLP groups: no layer has an MLP of its own
        assert all(l.mlp is None for l in spec.layers)
        assert {l.rope_scaling for l in spec.layers} <= {None, "none", "yarn"}
        pinned.update(t for t in spec.features() if t in ("mlp:per-layer", "rope:per-layer-scaling"))

    draw()
    constrained()
    assert {"mlp:per-layer", "rope:per-layer-scaling"} <= seen
    assert pinned == {"rope:per-layer-scaling"}
