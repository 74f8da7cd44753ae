"""llm-compressor's SpinQuant / QuIP transforms through compressed-tensors 0.20 (``quant.ct_peers``) under the
oracle: the registry, refusals, and what they measurably do on tiny float64 models (each assertion is the
measured behaviour on this install: compressed-tensors 0.20.1, transformers 5.25)."""

import pytest
import torch

import quant.ct_peers as C
import quant.peers as P
from fuzz import DecoderSpec, Refusal, build, materialize
from fuzz.errors import BadInput
from fuzz.families import family_spec, to_transformers
from verifier import Calibration, verify
from verifier.registry import available, resolve

POW2 = dict(hidden=32, intermediate=64, n_heads=4, n_kv_heads=2, head_dim=8)


def layout(family="llama", **dims):
    return build(family_spec(family, **{**POW2, **dims}), name=family)


def exact(lay):
    """The float64-everywhere subject (transformers' float32 RMSNorm/RoPE policy off)."""
    return P.ExactFloat64(to_transformers(materialize(lay, dtype=torch.float64, seed=0)))


def test_registry_lists_the_peers_and_resolves_them():
    assert available()["ct-peers"] == C.names()
    for name in ("ct-spinquant", "ct-spinquant-random-hadamard", "ct-spinquant-random-matrix", "ct-spinquant-r1234",
                 "ct-spinquant-b8", "ct-quip", "ct-quip-hadamard", "ct-quip-uv"):
        assert name in C.names()
    t = resolve("ct-peers:ct-spinquant", precision="float64")
    assert t.spec() == {"name": "ct-spinquant", "options": {"precision": "float64"}, "registry": "quant.ct_peers"}
    assert C.peer("ct-spinquant-b16").config == C.Config("spinquant", ("R1", "R2"), "hadamard", 16)
    with pytest.raises(BadInput, match="available") as err:
        C.get("ct-spinquant-r5")
    assert "ct-spinquant-b<k>" in str(err.value)


def test_the_transform_configs_are_llm_compressors_schemes():
    hf = to_transformers(materialize(layout(), dtype=torch.float64))
    cfg = C.peer("ct-spinquant-r1234").transform_config(hf).config_groups
    assert list(cfg) == ["R1", "R2", "R3", "R4"]
    r1 = cfg["R1"]
    assert r1.type == "hadamard" and r1.head_dim is None and r1.precision == torch.float64
    assert [(a.location, a.inverse) for a in r1.apply] == [("weight_output", False), ("weight_input", True)]
    assert r1.apply[0].targets == ["re:.*embed_tokens$", "re:.*o_proj$", "re:.*down_proj$"]
    assert r1.apply[1].targets[-1] == "lm_head"
    assert cfg["R2"].head_dim == cfg["R3"].head_dim == 8  # get_head_dim(config)
    assert [a.location for a in cfg["R3"].apply] == ["q_attn", "k_cache"]
    quip = C.peer("ct-quip-uv").transform_config(hf).config_groups
    assert quip["v"].type == "random-hadamard" and quip["v"].apply[0].ignore == ["lm_head"]
    assert [a.location for a in quip["u"].apply] == ["weight_output", "output"]
    # the mapping registry: Llama and Cohere2-MoE, everything else falls back to Llama's
    assert C.mappings_for(hf)[2] is False
    qwen = to_transformers(materialize(layout("qwen2"), dtype=torch.float64))
    assert C.mappings_for(qwen) == (C._LLAMA, C._LLAMA_NORMS, True)


def test_a_layout_that_is_no_transformers_family_is_refused_naming_module_and_feature():
    lay = build(DecoderSpec(rope_style="interleaved"), name="interleaved")
    v = verify(C.get("ct-spinquant"), lay, dtype=torch.float32)
    assert v.status == "refused" and f"[{P.FEATURE}]" in v.message and "model 'interleaved'" in v.message
    with pytest.raises(Refusal) as err:
        C.get("ct-quip")(materialize(lay), Calibration(torch.zeros(1, 4, dtype=torch.long)))
    assert err.value.feature == "not-a-transformers-family" and err.value.op == "model"
    with pytest.raises(Refusal) as err:
        C.get("ct-quip")(torch.nn.Linear(2, 2), Calibration(torch.zeros(1, 4, dtype=torch.long)))
    assert err.value.feature == "not-a-transformers-model" and err.value.path == "Linear"


@pytest.mark.parametrize("name", ["ct-quip", "ct-quip-hadamard", "ct-quip-uv"])
def test_quip_is_exact_on_plain_llama_in_float64(name):
    t = C.get(name)
    v = verify(t, exact(layout()))
    assert v.ok and v.max_rel_err < 1e-13
    assert t.fn.last["weights_changed"] == 14 and t.fn.last["hooks_added"] >= 14  # 7 linears x 2 layers
    # the GraphModel subject run float64 everywhere (what a campaign does) is as exact
    assert verify(C.get(name, precision="float64"), layout()).max_rel_err < 1e-13


@pytest.mark.parametrize("name", ["ct-spinquant", "ct-spinquant-random-hadamard", "ct-spinquant-b8"])
def test_spinquant_breaks_plain_llama_by_centering_the_embeddings(name):
    # Finding: SpinQuantModifier centres every embedding row (mean over hidden removed) before rotating.  That
    # is invariant for LayerNorm models only: RMSNorm does not remove the mean, so the function moves.  This
    # is the logits MSE its own test tolerates (8e-3, even float64).  Without the centring (not an
    # llm-compressor setting) the untie + norm fusion + R1/R2 rotations are exact.
    t = C.get(name)
    v = verify(t, exact(layout()))
    assert v.status == "diverged" and v.max_rel_err > 0.1
    assert t.fn.last["mapping"] == "LlamaForCausalLM" and t.fn.last["norms_fused"] == 5
    assert verify(C.get(name, center=False), exact(layout())).max_rel_err < 1e-13


def test_spinquant_random_matrix_is_not_orthogonal_so_rmsnorm_breaks_it():
    v = verify(C.get("ct-spinquant-random-matrix", center=False), exact(layout()))
    assert v.status == "diverged" and v.max_rel_err > 0.1


def test_spinquant_r3_rotates_queries_only_under_transformers_5_25():
    # Finding: compressed-tensors 0.20.1 hooks the key states through the attention's `past_key_values` /
    # `past_key_value` kwarg; transformers 5.x attention takes `cache` instead, so the hooked cache is never
    # called: R3's key rotation never runs while the query rotation does.  R4 alone is exact.
    import compressed_tensors.modeling.kvcache as K

    t = C.get("ct-spinquant-r1234", center=False)
    lay = layout()
    v = verify(t, exact(lay))
    assert v.status == "diverged" and v.max_rel_err > 0.1
    hf = to_transformers(materialize(lay, dtype=torch.float64))
    C.get("ct-spinquant-r1234", center=False)(hf, None)
    calls = []
    attn = hf.model.layers[0].self_attn
    attn.get_submodule(K.KV_CACHE_ATTR).register_forward_pre_hook(lambda *a: calls.append(1))
    hf(torch.zeros(1, 4, dtype=torch.long))
    assert calls == []  # the key hook's module is never entered
    r4 = C.Peer("r4", C.Config("spinquant", ("R4",), "hadamard"))
    assert verify(lambda m, c: r4(m, c, center=False), exact(lay)).max_rel_err < 1e-13


SMALL = dict(n_layers=1, hidden=16, n_heads=2, n_kv_heads=1, head_dim=8, intermediate=32, vocab=32)


def small(family="llama", **dims):
    return build(family_spec(family, **{**SMALL, **dims}), name=family)


def run64(name, lay, **options):
    """float64 everywhere on a layout subject, as the corpus entries replay."""
    return verify(C.get(name, precision="float64", **options), lay, dtype=torch.float64)


def test_gemma_offset_norm_is_fused_as_if_it_were_w():
    # llm-compressor issue 2005 (SpinQuant on Gemma): no Gemma mapping, the Llama fallback fuses the stored
    # w of Gemma's (1 + w) RMSNorm into the linears and sets w to ones, which Gemma then reads as a scale of 2.
    t = C.get("ct-spinquant", precision="float64", center=False)
    v = verify(t, small("gemma"), dtype=torch.float64)
    assert v.status == "diverged" and v.max_rel_err > 0.1
    assert t.fn.last["mapping"] == "llama-fallback" and t.fn.last["untied"]
    assert verify(C.get("ct-quip", precision="float64"), small("gemma"), dtype=torch.float64).ok  # no norm fusion


def test_phi3_fused_qkv_and_fused_expert_moe_crash_the_norm_fusion():
    phi3 = run64("ct-spinquant", small("phi3", rotary_dim=4), center=False)
    # `.*v_proj$` matches qkv_proj: an incomplete {input_layernorm, q, k, v} set
    assert phi3.status == "error" and "Found a final incomplete set" in phi3.message and "v_proj" in phi3.message
    moe = run64("ct-spinquant", small("qwen3_moe"), center=False)
    assert moe.status == "error" and "post_attention_layernorm" in moe.message and "gate_proj" in moe.message
    assert run64("ct-quip", small("qwen3_moe")).ok  # QuIP targets Linear modules only: the experts are skipped


def test_non_power_of_two_widths():
    # SpinQuant issue 33, QuaRot issues 41/44: "hadamard" needs 2^n ...
    v = run64("ct-spinquant", small(hidden=24), center=False)
    assert v.status == "error" and "Cannot construct deterministic hadamard of size != 2^n" in v.message
    # ... random-hadamard takes a known Hadamard order times 2^n (12 x 2 = 24, 12) exactly ...
    lay = small(hidden=24, head_dim=12, intermediate=48)
    assert run64("ct-spinquant-random-hadamard", lay, center=False).max_rel_err < 1e-13
    # ... and no order it has no matrix for (6); a block size that divides the widths is exact
    v = run64("ct-spinquant-random-hadamard", small(hidden=12, head_dim=6), center=False)
    assert v.status == "error" and "Cannot construct random hadamard matrix of size 6" in v.message
    assert run64("ct-spinquant-b8", small(hidden=24), center=False).max_rel_err < 1e-13


def test_tied_lm_head_and_qkv_bias_are_handled():
    # SpinQuant issue 13 (R1 applied twice to a tied lm_head) is fixed: the modifier unties first.
    t = C.get("ct-spinquant", precision="float64", center=False)
    assert verify(t, small(tie_embeddings=True), dtype=torch.float64).max_rel_err < 1e-13
    assert t.fn.last["untied"]
    # compressed-tensors rotates a weight_output bias too: Qwen2's v_proj bias stays consistent under R2
    assert run64("ct-spinquant", small("qwen2"), center=False).max_rel_err < 1e-13


def test_cohere2_moe_uses_its_registered_mapping_which_needs_llm_compressors_preparation():
    from benchmarks.ct_peer_classes import instance

    model = instance("Cohere2MoeForCausalLM")
    t = C.get("ct-spinquant", center=False)
    v = verify(t, P.ExactFloat64(model))
    # the registered mapping fuses only model.norm and expects the router as mlp.gate.linear (llm-compressor's
    # prepare_cohere2_moe_for_spinquant, which linearizes the experts, is not part of the modifier): on the
    # stock class R1 rotates the residual writers while the parallel block's input norm and experts stay as is
    assert t.fn.last["mapping"] == "Cohere2MoeForCausalLM" and t.fn.last["norms_fused"] == 1
    assert v.status == "diverged" and v.max_rel_err > 0.1


def test_gemma3_multimodal_config_has_no_head_dim_for_spinquant():
    # llm-compressor issue 2005's first error (gemma-3-27b-it): SpinQuantModifier.on_initialize asks
    # compressed-tensors' get_head_dim for the top-level config, which for Gemma-3 nests it in text_config.
    import types

    import transformers as tf

    subject = types.SimpleNamespace(config=tf.Gemma3Config())
    with pytest.raises(ValueError, match="Cannot determine head_dim from config"):
        C.peer("ct-spinquant").transform_config(subject)


def test_olmo2_post_norms_crash_the_llama_fallback_norm_fusion():
    from benchmarks.ct_peer_classes import instance

    # OLMo2 normalizes after attention / MLP (no input_layernorm): the fallback's {input_layernorm, q, k, v}
    # set is incomplete, while QuIP (no norm fusion) stays exact
    v = verify(C.get("ct-spinquant", center=False), P.ExactFloat64(instance("Olmo2ForCausalLM")))
    assert v.status == "error" and "Found a final incomplete set" in v.message and "input_layernorm" in v.message
    assert verify(C.get("ct-quip"), P.ExactFloat64(instance("Olmo2ForCausalLM"))).max_rel_err < 1e-13


def test_breaks_the_layout_campaign_found():
    # a shared expert completes the fallback's norm set: no crash, but router and fused experts stay unrotated
    moe = run64("ct-spinquant", small("qwen2_moe"), center=False)
    assert moe.status == "diverged" and moe.max_rel_err > 0.1
    # StableLM: the parallel block's missing post_attention_layernorm crashes; LayerNorm breaks R1 silently
    dims = {k: v for k, v in SMALL.items() if k != "head_dim"}
    parallel = build(family_spec("stablelm", use_parallel_residual=True, **dims), name="stablelm")
    v = run64("ct-spinquant", parallel, center=False)
    assert v.status == "error" and "Found a final incomplete set" in v.message and "up_proj" in v.message
    v = run64("ct-spinquant", build(family_spec("stablelm", **dims), name="stablelm"), center=False)
    assert v.status == "diverged" and v.max_rel_err > 0.1
    # a block size that does not divide hidden raises at the embedding
    v = run64("ct-spinquant-b8", small(hidden=20), center=False)
    assert v.status == "error" and "8 must divide 20" in v.message
    # QuIP on Linear widths without a (known) Hadamard order
    v = run64("ct-quip", small(intermediate=26))
    assert v.status == "error" and "Cannot construct random hadamard matrix of size 26" in v.message
    v = run64("ct-quip-hadamard", small(intermediate=24))
    assert v.status == "error" and "size != 2^n" in v.message


def test_the_main_job_runs_the_ct_peers_float64_everywhere():
    import verifier.campaign as campaign
    from archfuzz.cli.fuzz import default_transforms

    ct = [n for n in default_transforms() if n.startswith("ct-peers:")]
    assert ct == [f"ct-peers:{n}" for n in C.names()]
    assert all(campaign.campaign_transform(n).options == {"precision": "float64"} for n in ct)
