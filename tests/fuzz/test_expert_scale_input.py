"""Experts whose routing weight scales their input, not their output (Llama 4's ``routed_in = x * sigmoid(score)``;
``experts(scale_input=True)``, axis ``expert_scale_input``): the semantics against transformers' own Llama4TextMoe,
the synthesizer drawing it, its import (the dataflow ``x * weights -> experts -> sum over the experts`` folded,
the router's dense sigmoid top-k weights measured, checked against the model), every recipe preserving it, the
OpenVINO export and the mutant that re-emits it as output-weighted experts caught."""

import pytest
import torch

from fuzz import DecoderSpec, LayerSpec, build, materialize
from fuzz.materialize import MODULES
from fuzz.ops import spec

_SCALED = DecoderSpec(layers=(LayerSpec(sparse=True), LayerSpec(sparse=True)), expert_scale_input=True,
                      router="sigmoid", renormalize=False, shared_expert=True)


def _experts(scale_input: bool, seed: int = 0):
    p = spec("experts").normalise("x", {"n_experts": 4, "hidden": 6, "intermediate": 5, "scale_input": scale_input})
    mod = MODULES["experts"]("x", p, "exact")
    gen = torch.Generator().manual_seed(seed)
    mod.register_buffer("gate_up_proj", torch.randn(4, 10, 6, generator=gen, dtype=torch.float64))
    mod.register_buffer("down_proj", torch.randn(4, 6, 5, generator=gen, dtype=torch.float64))
    return mod


def _weights(n: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    top, idx = logits.topk(2, dim=-1)
    return torch.zeros_like(logits).scatter(-1, idx, torch.sigmoid(top))


def test_scale_input_is_llama4_moe_routed_sum_and_not_the_output_weighted_one():
    tf = pytest.importorskip("transformers")
    from benchmarks.compat import tiny_config
    from benchmarks.import_check_families import instantiate
    cfg = tiny_config(tf.Llama4ForCausalLM)
    moe = instantiate(tf.Llama4ForCausalLM, cfg).model.layers[0].feed_forward
    x = torch.randn(11, cfg.hidden_size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        scores, _ = moe.router(x)
        want = moe(x)[0] - moe.shared_expert(x)
        e = moe.experts
        p = spec("experts").normalise("x", {"n_experts": e.num_experts, "hidden": e.hidden_size,
                                            "intermediate": e.expert_dim, "transposed": True, "scale_input": True})
        ours = MODULES["experts"]("x", p, "exact")
        ours.register_buffer("gate_up_proj", e.gate_up_proj.detach())
        ours.register_buffer("down_proj", e.down_proj.detach())
        assert torch.allclose(ours(x, scores), want, rtol=1e-12, atol=1e-12)
        assert torch.allclose(ours.export_forward(x, scores), want, rtol=1e-12, atol=1e-12)
        ours.p = {**ours.p, "scale_input": False}
        assert not torch.allclose(ours(x, scores), want, rtol=1e-3, atol=1e-3)  # w times the expert: not the same


def test_forward_and_export_forward_agree_and_differ_from_output_weighting():
    x = torch.randn(2, 7, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    w = _weights(14).reshape(2, 7, 4)
    scaled, plain = _experts(True), _experts(False)
    assert torch.allclose(scaled(x, w), scaled.export_forward(x, w), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(scaled(x, w), plain(x, w), rtol=1e-3, atol=1e-3)


def test_the_axis_draws_it_with_its_tags():
    layout = build(_SCALED)
    assert all(layout.params(n)["scale_input"] for n in layout.of_op("experts"))
    assert "moe:scale_input" in layout.features() and "op:experts:scale_input" in layout.op_features()
    assert "moe:scale_input" not in build(DecoderSpec(expert_scale_input=True)).features()  # no MoE layer


@pytest.mark.parametrize("recipe", ["bbt-absorb", "bbt-spectral", "bbt-pair-pca", "bbt-spectral-pca",
                                    "residual-hadamard", "wht-scale", "moe-absorb", "up-down", "norm-absorb"])
def test_transforms_preserve_input_scaled_experts(recipe):
    from quant import transforms
    from verifier import verify
    v = verify(transforms.get(recipe), build(_SCALED))
    assert v.status == "invariant", v


def test_the_mutant_that_moves_the_weight_to_the_output_is_caught():
    from verifier import mutants, verify
    v = verify(mutants.get("expert_scale_moved"), build(_SCALED))
    assert v.status == "diverged" and v.first_divergent is not None, v
    assert verify(mutants.get("expert_scale_moved"), build(DecoderSpec(layers=(LayerSpec(sparse=True),)))).status \
        == "invariant"  # experts weighting their outputs: nothing to lose


def _llama4(**changes):
    tf = pytest.importorskip("transformers")
    from benchmarks.compat import tiny_config
    from benchmarks.import_check_families import instantiate
    cfg = tiny_config(tf.Llama4ForCausalLM)
    for key, value in changes.items():
        setattr(cfg, key, value)
    return instantiate(tf.Llama4ForCausalLM, cfg)


def test_llama4_moe_imports_exactly_as_input_scaled_experts_and_a_sigmoid_router():
    from fuzz.importer import import_model
    hf = _llama4(attention_chunk_size=8192)  # chunked attention (its own feature) out of reach of the check
    gm = import_model(hf)  # checked against the model's logits
    check = gm.layout.meta["import_check"]
    assert max(check["max_rel_err"].values()) <= check["bound"]
    experts, routers = gm.layout.of_op("experts"), gm.layout.of_op("router")
    assert len(experts) == len(routers) == hf.config.num_hidden_layers
    for n in experts:
        p = gm.layout.params(n)
        assert p["scale_input"] and p["transposed"] and not p["bias"] and p["act"] == "silu"
        assert gm.layout.op(gm.layout.inputs(n)[0]) == "norm"  # the hidden states, not x * weights
    for r in routers:
        p = gm.layout.params(r)
        assert (p["score"], p["renormalize"], p["top_k"], p["scaling"]) == ("sigmoid", False, 2, 1.0)
    assert not [n for n in gm.layout.order if gm.layout.op(n) == "opaque"]


def test_llama4_tiny_config_imports_with_its_chunked_attention():
    """attention_chunk_size 8 < the check's 24 tokens: measured (tests/fuzz/test_chunked_attention.py), no refusal."""
    from fuzz.importer import import_model
    gm = import_model(_llama4())
    assert gm.layout.params("model_layers_0_self_attn__attention")["chunk"] == 8


@pytest.mark.slow
def test_an_input_scaled_experts_layout_exports_to_openvino(cpu_f32_parity):
    model = materialize(build(_SCALED), dtype=torch.float32, seed=3)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    cpu_f32_parity(model, ids)


def test_every_recipe_preserves_the_imported_llama4_moe():
    from benchmarks.compat import _recipe_verdicts
    from fuzz.importer import import_model
    verdicts = _recipe_verdicts(import_model(_llama4(attention_chunk_size=8192)))
    assert verdicts and all(v["status"] == "invariant" for v in verdicts.values()), verdicts
