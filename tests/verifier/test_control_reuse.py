"""The verdict's forwards reused: the positive control's stepped forwards rerun only what a step reaches
(``GraphModel.forward``'s ``keep`` / ``given``), with the same logits as a whole forward and the same control as
one that runs whole forwards; the padded batch rides the verdict's own forwards with the same figures."""

from __future__ import annotations

import random

import networkx as nx
import pytest
import torch

from fuzz import DecoderSpec, LayerSpec, build, materialize
from fuzz.materialize import _ROPE_TABLES, GraphModel, attention_mask
from fuzz.strategies import Picked, spec_from
from verifier import reference, verify


def _model(k: int) -> GraphModel:
    return materialize(build(spec_from(Picked(random.Random(k)), {"max_hidden": 128, "max_layers": 2})), seed=k)


@pytest.mark.parametrize("k", [9, 19])  # tied embeddings (the head's weight is the embedding's)
def test_given_outputs_give_the_whole_forwards_logits(k):
    model = _model(k)
    layout = model.layout
    vocab = layout.params(layout.source)["vocab"]
    ids = torch.randint(0, vocab, (3, 11), generator=torch.Generator().manual_seed(k))
    recorded: dict = {}
    with torch.no_grad():
        base = model(ids, keep=recorded)
    assert set(recorded) == set(layout.order)
    tied = next(n for n in layout.of_op("lm_head") if layout.params(n)["tied_to"])
    names = {id(p): n for n, p in model.named_parameters()}
    for node in [layout.params(tied)["tied_to"], *layout.of_op("norm")[-2:]]:
        params = list(model.nodes[node].parameters(recurse=False))
        moved = {names[id(p)]: p.detach() * 1.01 for p in params}
        holders = {n for n, m in model.nodes.items() if any(q is p for q in m.parameters(recurse=False) for p in params)}
        rerun = holders.union(*(nx.descendants(layout.graph, n) for n in holders))
        front = {i for n in rerun for i in layout.inputs(n)} - rerun
        ran = []
        hooks = [m.register_forward_hook(lambda mod, a, o, n=n: ran.append(n)) for n, m in model.nodes.items()]
        try:
            with torch.no_grad():
                whole = torch.func.functional_call(model, moved, (ids[1:],))
                ran.clear()
                part = torch.func.functional_call(model, moved, (ids[1:],),
                                                  {"given": {i: recorded[i][1:] for i in front}})
        finally:
            for h in hooks:
                h.remove()
        assert set(ran) == rerun and len(rerun) < len(layout.order)
        assert not torch.equal(whole, base[1:])  # the step shows
        assert torch.allclose(part, whole, rtol=0, atol=1e-12 * whole.abs().max().item())


def _no_reuse(monkeypatch):
    monkeypatch.setattr(GraphModel, "reusable", lambda self: False)


@pytest.mark.parametrize("k", [0, 9, 10, 19])  # 5, 28, 16, 16 units stepped alone (10: the gradient not confirmed)
def test_the_control_is_the_same_with_whole_forwards(k, monkeypatch):
    model = _model(k)
    assert model.reusable()
    got = verify(reference.get("permute_hidden", seed=1), model, seed=1)
    with monkeypatch.context() as m:
        _no_reuse(m)
        want = verify(reference.get("permute_hidden", seed=1), model, seed=1)
    assert got.status == want.status == "invariant"
    a, b = got.control, want.control
    assert a.keys() == b.keys() and a["measured"].keys() == b["measured"].keys() and len(a["measured"]) >= 5
    assert a["gradient_confirmed"] == b["gradient_confirmed"] and a.get("gradient_error") == b.get("gradient_error")
    for unit, change in b["measured"].items():
        assert a["measured"][unit] == pytest.approx(change, rel=1e-7)
    if "weakest" in b:
        assert a["weakest"]["unit"] == b["weakest"]["unit"]
        assert a["weakest"]["linearity"] == pytest.approx(b["weakest"]["linearity"], rel=1e-7)


def test_a_hooked_node_gets_whole_forwards():
    model = _model(9)
    node = model.layout.order[3]
    handle = model.nodes[node].register_forward_hook(lambda mod, a, o: None)
    try:
        assert not model.reusable()
        assert verify(reference.get("permute_hidden", seed=1), model, seed=1).ok
    finally:
        handle.remove()
    assert model.reusable()


LAYOUT = build(DecoderSpec(layers=(LayerSpec(), LayerSpec(sliding=False)), sliding_window=3))


@pytest.mark.parametrize("name", ["permute_hidden", "permute_heads"])
def test_the_padded_rows_ride_the_verdicts_forwards(name, monkeypatch):
    """Subject and transformed GraphModels run the padded batch in the verdict's forwards: two forwards fewer,
    the same padded figures as the padded batch run on its own."""
    calls = []
    forward = GraphModel.forward
    monkeypatch.setattr(GraphModel, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    got = verify(reference.get(name, seed=1), LAYOUT, padding=4)
    merged = len(calls)
    calls.clear()
    with monkeypatch.context() as m:
        _no_reuse(m)
        want = verify(reference.get(name, seed=1), LAYOUT, padding=4)
    assert got.status == want.status == "invariant" and merged == len(calls) - 2
    a, b = got.control["padded"], want.control["padded"]
    assert a.keys() == b.keys() and a["positions_compared"] == b["positions_compared"] == 4 * 15 - 2 * 4
    assert a["max_rel_err"] <= 1e-12 and b["max_rel_err"] <= 1e-12
    assert got.max_rel_err == pytest.approx(want.max_rel_err, abs=1e-13)


def test_tables_first_built_under_inference_mode_serve_a_later_backward():
    """The oracle runs a GraphModel's gradient-free forwards under ``torch.inference_mode``; the RoPE tables and
    attention masks cached there are ordinary tensors, so a later forward can still be differentiated."""
    _ROPE_TABLES.clear()
    attention_mask.cache_clear()
    model = materialize(LAYOUT, seed=3)
    ids = torch.randint(0, LAYOUT.params(LAYOUT.source)["vocab"], (2, 23), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        first = model(ids)
    assert _ROPE_TABLES and attention_mask.cache_info().currsize
    assert not any(t.is_inference() for tables in _ROPE_TABLES.values() for t in tables)
    assert not attention_mask(23, 3, "cpu").is_inference()
    y = model(ids)
    (grad,) = torch.autograd.grad(y[0, -1, 0], [next(model.parameters())])
    assert torch.equal(y.detach(), first) and torch.isfinite(grad).all()
