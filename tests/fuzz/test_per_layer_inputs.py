"""Per-layer input embeddings (Gemma4 PLE): ``ple = (norm_P(W e / sqrt(hidden)) + sqrt(P) E_pl[ids]) / sqrt(2)``,
layer ``l`` adding ``[post-norm] W_out(act(W_gate h) * ple_l)`` to the stream.  The axis draws it, the layout
materializes it, Gemma4ForCausalLM imports exactly (the second token table measured from the recorded dataflow),
a table whose values reach the stream otherwise is refused naming the feature, every transform preserves or
refuses it, and the oracle catches residual rotation leaving the PLE projection in the old basis."""

from __future__ import annotations

import pytest
import torch

from fuzz import DecoderSpec, LayerSpec, build
from fuzz.errors import BadInput
from fuzz.importer import import_model
from fuzz.layout import Layout
from fuzz.materialize import materialize
from verifier import mutants, verify

SPEC = DecoderSpec(per_layer_input=4, layers=(LayerSpec(), LayerSpec(sparse=True)))
IDS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))


def test_the_layout_draws_round_trips_and_its_inputs_matter():
    layout = build(SPEC)
    assert "embeddings:per_layer_input" in SPEC.features() and "op:per_layer_embedding" in layout.op_features()
    (table,) = layout.of_op("per_layer_embedding")
    assert layout.params(table) == {"vocab": 64, "dim": 2 * 4}
    slices = sorted(layout.params(n)["start"] for n in layout.of_op("head_slice"))
    assert slices == [0, 4]  # each layer reads its own slice
    assert Layout.from_json(layout.to_json()).hash() == layout.hash()
    assert build(DecoderSpec()).hash() == build(SPEC.with_(per_layer_input=None, layers=(LayerSpec(),))).hash()
    model = materialize(layout, seed=1)
    with torch.no_grad():
        before = model(IDS)
        model.nodes[table].weight.mul_(2.0)
        assert float((model(IDS) - before).abs().max() / before.abs().max()) > 1e-6


def test_the_strategies_draw_it():
    from hypothesis import given, settings

    from fuzz import strategies

    seen = set()

    @settings(max_examples=100, derandomize=True, database=None, deadline=None)
    @given(strategies.specs(max_layers=2))
    def draw(spec):
        seen.update(spec.features())

    draw()
    assert "embeddings:per_layer_input" in seen


def test_gemma4_imports_its_per_layer_inputs_exactly():
    from benchmarks.compat import build as build_class

    hf = build_class("Gemma4ForCausalLM")
    gm = import_model(hf)
    check = gm.layout.meta["import_check"]
    assert check["max_rel_err"]["transformers"] <= check["bound"]
    (table,) = gm.layout.of_op("per_layer_embedding")
    cfg = hf.config
    assert gm.layout.params(table)["dim"] == cfg.num_hidden_layers * cfg.hidden_size_per_layer_input
    assert torch.equal(gm.nodes[table].weight, hf.model.embed_tokens_per_layer.weight)
    assert len(gm.layout.of_op("head_slice")) == cfg.num_hidden_layers


def test_a_synthesized_layout_imports_back_exactly():
    layout = build(SPEC.with_(placement="sandwich", layers=(LayerSpec(), LayerSpec())))
    gm = import_model(materialize(layout, seed=2), IDS)
    check = gm.layout.meta["import_check"]
    assert max(check["max_rel_err"].values()) <= check["bound"]
    assert len(gm.layout.of_op("per_layer_embedding")) == 1


def test_a_second_table_summed_into_the_stream_is_refused_naming_the_feature():
    d = build(DecoderSpec(per_layer_input=32, layers=(LayerSpec(),))).to_dict()  # table width = hidden
    d["edges"].append({"source": "ple_embed_scale", "target": "l0_attn_add", "port": 2})  # table added to the stream
    source = materialize(Layout.from_dict(d), seed=3)
    with pytest.raises(BadInput, match=r"per-layer input embeddings \(Gemma4\).*reaches"):
        import_model(source, IDS)


@pytest.mark.parametrize("placement", ["pre", "sandwich"])
def test_every_transform_preserves_or_refuses_it(placement):
    from quant import transforms

    layout = build(SPEC.with_(placement=placement))
    for name in transforms.names():
        verdict = verify(transforms.get(name), layout)
        assert verdict.status in ("invariant", "refused"), (name, str(verdict))
        if placement == "pre" and name in ("residual-rotation", "norm-absorb", "wht-scale", "up-down"):
            assert verdict.status == "invariant", (name, str(verdict))


def test_residual_rotation_leaving_the_projection_unrotated_is_caught():
    layout = build(SPEC)
    assert verify(mutants.get("ple_unrotated"), layout).status == "diverged"
    from fuzz.dataflow import per_layer_projections
    assert per_layer_projections(layout) == {"ple_proj"}
