"""Proportional RoPE (transformers' ``rope_type='proportional'``, Gemma4's full-attention layers): the first
``int(p * r // 2)`` frequencies ``theta ** (-2i / r)``, the rest 0 (pairs left unrotated).  The synthesizer's
table is transformers' own, the layout validates it (zeros only for this kind), the importer keeps the table
the recording shows (Gemma4Unified imports exactly), transforms preserve it, and the oracle catches a rewrite
that drops it (``rope_scaling_dropped``: the unrotated pairs rotated)."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from benchmarks.compat import build as build_class
from fuzz import DecoderSpec, LayerSpec, build
from fuzz.errors import LayoutError
from fuzz.importer import import_model
from fuzz.layout import Layout
from fuzz.rope_scaling import recipe_table
from verifier import mutants, verify


def test_the_recipe_is_transformers_own():
    import transformers as tf

    params = {"rope_type": "proportional", "rope_theta": 5000.0, "partial_rotary_factor": 0.25, "factor": 2.0}
    cfg = tf.LlamaConfig(vocab_size=64, hidden_size=32, num_attention_heads=4, head_dim=16, num_hidden_layers=1,
                         rope_parameters=params)
    want, want_af = ROPE_INIT_FUNCTIONS["proportional"](cfg, "cpu")
    got, af = recipe_table("proportional", 5000.0, 16, factor=2.0, proportion=0.25)
    assert torch.equal(torch.tensor(got, dtype=torch.float32), want) and af == want_af == 1.0
    assert got[2:] == (0.0,) * 6 and min(got[:2]) > 0  # 2 of 8 pairs rotated, the rest not


def test_the_layout_draws_validates_and_computes_another_function():
    spec = DecoderSpec(rope_scaling="proportional", layers=(LayerSpec(), LayerSpec()))
    layout = build(spec)
    p = layout.params(layout.of_op("rope")[0])
    assert p["scaling"] == "proportional" and p["inv_freq"][2:] == (0.0, 0.0) and min(p["inv_freq"][:2]) > 0
    assert "rope:scaled:proportional" in spec.features()
    assert "op:rope:scaled:proportional" in layout.op_features()
    assert Layout.from_json(layout.to_json()).hash() == layout.hash()
    from fuzz.materialize import materialize
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    plain = build(DecoderSpec(layers=(LayerSpec(), LayerSpec())))
    with torch.no_grad():
        a, b = materialize(layout, seed=1)(ids), materialize(plain, seed=1)(ids)
    assert float((a - b).abs().max() / a.abs().max()) > 1e-6
    d = build(DecoderSpec(rope_scaling="linear")).to_dict()  # zeros belong to the proportional table only
    node = next(n for n in d["nodes"] if n["op"] == "rope")
    node["inv_freq"] = [*node["inv_freq"][:-1], 0.0]
    with pytest.raises(LayoutError, match=r"inv_freq must hold finite numbers > 0"):
        Layout.from_dict(d)


def test_the_strategies_draw_it():
    from hypothesis import given, settings

    from fuzz import strategies

    seen = set()

    @settings(max_examples=150, derandomize=True, database=None, deadline=None)
    @given(strategies.specs(rope=True, max_layers=2, rope_scaling="proportional"))
    def draw(spec):
        seen.update(spec.features())

    draw()
    assert "rope:scaled:proportional" in seen


@pytest.mark.parametrize("name", ["pair-pca", "wht-scale", "bbt-spectral"])
def test_transforms_preserve_proportional_rope(name):
    from quant import transforms

    layout = build(DecoderSpec(rope_scaling="proportional", qkv_bias=True))
    verdict = verify(transforms.get(name), layout)
    assert verdict.status in ("invariant", "refused"), str(verdict)


def test_dropping_it_in_a_rewrite_is_caught():
    layout = build(DecoderSpec(rope_scaling="proportional", layers=(LayerSpec(), LayerSpec())))
    verdict = verify(mutants.get("rope_scaling_dropped"), layout)
    assert verdict.status == "diverged", str(verdict)


def test_gemma4_unified_imports_its_proportional_full_attention_layer_exactly():
    hf = build_class("Gemma4UnifiedForCausalLM")
    gm = import_model(hf)
    check = gm.layout.meta["import_check"]
    assert check["max_rel_err"]["transformers"] <= check["bound"]
    ropes = {n: gm.layout.params(n) for n in gm.layout.of_op("rope")}
    proportional = [p for p in ropes.values() if p["scaling"] == "proportional"]
    assert proportional and {p["scaling"] for p in ropes.values()} == {"none", "proportional"}
    table = hf.model.rotary_emb.full_attention_inv_freq.double()
    for p in proportional:
        assert torch.equal(torch.tensor(p["inv_freq"], dtype=torch.float64), table)
        assert p["inv_freq"][-1] == 0.0 and p["rotary_dim"] == p["head_dim"]


def test_a_llama_with_proportional_rope_imports_exactly():
    import transformers as tf

    from benchmarks.import_check_families import randomize

    cfg = tf.LlamaConfig(rope_parameters={"rope_type": "proportional", "rope_theta": 10000.0,
                                          "partial_rotary_factor": 0.5}, vocab_size=64, hidden_size=32,
                         intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=32, pad_token_id=None, bos_token_id=None, eos_token_id=None)
    hf = randomize(tf.LlamaForCausalLM._from_config(cfg, dtype=torch.float64))
    gm = import_model(hf, numerics="transformers")
    check = gm.layout.meta["import_check"]
    assert check["max_rel_err"]["transformers"] <= check["bound"]
    ropes = [gm.layout.params(n) for n in gm.layout.of_op("rope")]
    assert {p["scaling"] for p in ropes} == {"proportional"}
    assert all(p["inv_freq"][-1] == 0.0 < p["inv_freq"][0] for p in ropes)
