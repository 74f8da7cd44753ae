"""Layout IR: JSON round trip, canonical hash, and validation that names the offending node."""

import json

import networkx as nx
import pytest
from hypothesis import given

from fuzz import BadInput, DecoderSpec, Layout, LayerSpec, LayoutError, build, strategies as S


@given(S.layouts())
def test_json_round_trip_and_stable_hash(layout):
    again = Layout.from_json(layout.to_json())
    assert again == layout and again.hash() == layout.hash()
    assert again.to_json() == layout.to_json()
    assert again.features() == layout.features()


def test_hash_ignores_insertion_order_and_meta():
    layout = build(DecoderSpec())
    data = layout.to_dict()
    data["nodes"].reverse()
    data["edges"].reverse()
    data["meta"] = {"name": "other"}
    assert Layout.from_dict(data).hash() == layout.hash()


def test_hash_changes_with_any_parameter():
    a = build(DecoderSpec())
    b = build(DecoderSpec(norm_eps=1e-5))
    assert a.hash() != b.hash()


def _mutate(layout, fn):
    data = json.loads(layout.to_json())
    fn(data)
    return json.dumps(data)


def _node(data, node_id):
    return next(n for n in data["nodes"] if n["id"] == node_id)


@pytest.mark.parametrize("mutation, node, words", [
    (lambda d: _node(d, "l0_q_proj").update(out_features=30), "l0_q_rope", "width"),
    (lambda d: _node(d, "l0_q_rope").update(rotary_dim=3), "l0_q_rope", "even"),
    (lambda d: _node(d, "l0_mlp_router").update(top_k=9), "l0_mlp_router", "top_k 9 > n_experts"),
    (lambda d: _node(d, "l0_attn").update(n_kv_heads=3), "l0_attn", "multiple"),
    (lambda d: _node(d, "l0_attn_norm").update(op="softmax"), "l0_attn_norm", "unknown op kind"),
    (lambda d: _node(d, "l0_attn_norm").update(kind="batch"), "l0_attn_norm", "not one of"),
    (lambda d: _node(d, "l0_attn_norm").update(eps=True), "l0_attn_norm", "must be float"),
    (lambda d: _node(d, "l0_attn_norm").update(momentum=0.1), "l0_attn_norm", "no parameter"),
    (lambda d: d["edges"].append({"source": "ghost", "target": "l0_q_proj", "port": 1}), "ghost", "dangling"),
    (lambda d: d["edges"].append({"source": "lm_head", "target": "l0_attn_norm", "port": 1}), None, "cycle"),
    (lambda d: d["nodes"].append({"id": "stray", "op": "act", "fn": "relu"}), None, "dangling node"),
])
def test_invalid_layouts_are_rejected_naming_the_node(mutation, node, words):
    layout = build(DecoderSpec(layers=(LayerSpec(sparse=True),)))
    with pytest.raises(LayoutError) as err:
        Layout.from_json(_mutate(layout, mutation))
    assert words in str(err.value)
    if node is not None:
        assert node in str(err.value)


@pytest.mark.parametrize("text, words", [
    ("{not json", "not valid JSON"),
    ('{"format": "something/else"}', "not an archfuzz layout"),
    ('[]', "not an archfuzz layout"),
    ('{"format": "archfuzz.layout/1", "nodes": {}, "edges": []}', "list 'nodes'"),
    ('{"format": "archfuzz.layout/1", "nodes": [{"op": "act"}], "edges": []}', "has no 'id'"),
])
def test_malformed_json_gets_a_clear_error(text, words):
    with pytest.raises(BadInput, match=words):
        Layout.from_json(text)


def test_spec_constraints_are_checked():
    with pytest.raises(LayoutError, match="post-norm with a parallel"):
        build(DecoderSpec(placement="post", residual="parallel"))
    with pytest.raises(LayoutError, match="not one of"):
        build(DecoderSpec(mlp="swish"))
    with pytest.raises(LayoutError, match="multiple"):
        build(DecoderSpec(n_heads=3, n_kv_heads=2))


def test_save_is_atomic_and_load_names_the_path(tmp_path):
    layout = build(DecoderSpec())
    path = layout.save(tmp_path / "sub" / "layout.json")
    assert Layout.load(path) == layout
    assert [p.name for p in path.parent.iterdir()] == ["layout.json"]  # no temp file left behind
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(BadInput, match="bad.json"):
        Layout.load(bad)
    with pytest.raises(BadInput, match="cannot read"):
        Layout.load(tmp_path / "missing.json")


def test_consumers_come_from_the_dataflow():
    layout = build(DecoderSpec(attn_gate="head_softplus", residual="parallel"))
    readers = [c for c, _ in layout.consumers("l0_attn_norm")]
    assert readers == sorted(["l0_q_proj", "l0_k_proj", "l0_v_proj", "l0_g_proj",
                              "l0_mlp_gate_proj", "l0_mlp_up_proj"])


def test_graph_is_networkx_node_link():
    layout = build(DecoderSpec())
    g = nx.node_link_graph({**layout.to_dict(), "directed": True, "multigraph": False, "graph": {}},
                           edges="edges")
    assert nx.is_isomorphic(g, layout.graph)


def test_strategy_rejects_unknown_constraints():
    with pytest.raises(BadInput, match="unknown constraint"):
        S.layouts(flash=True).example()
    with pytest.raises(BadInput, match="not one of"):
        S.layouts(qk_norm="sometimes").example()


def test_inputs_are_read_once_and_equal_the_graphs_ports():
    """``Layout.inputs`` (kept from the validation) is the producers in port order as the graph gives them,
    and a caller that edits the returned list edits its own copy."""
    layout = build(DecoderSpec(layers=(LayerSpec(sparse=True), LayerSpec()), n_experts=3, top_k=2, qkv_bias=True))
    for node in layout.order:
        ports = sorted(layout.graph.in_edges(node, data="port"), key=lambda e: e[2])
        assert layout.inputs(node) == [src for src, _, _ in ports], node
    node = layout.order[-1]
    layout.inputs(node).append("x")
    assert "x" not in layout.inputs(node)
