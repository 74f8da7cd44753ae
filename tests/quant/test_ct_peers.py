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
