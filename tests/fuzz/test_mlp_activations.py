"""Issue 14, MLP activations: the act op's functions against transformers' ACT2FN, the mlp axis, the importer
recognising activation modules by probing them (and refusing an unknown one by its class name), transforms
on the new plain MLPs."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from transformers.activations import ACT2FN

import quant.transforms as T
from benchmarks.import_check_families import randomize
from fuzz import DecoderSpec, build, materialize
from fuzz.axes import AXES
from fuzz.errors import BadInput
from fuzz.importer import import_model
from fuzz.materialize import ACT
from fuzz.ops import ACTIVATIONS, HF_ACTIVATIONS
from fuzz.record.contract import identify_activation
from verifier import Calibration, verify

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=None, bos_token_id=None,
            eos_token_id=None)
PLAIN = [m for m in AXES["mlp"].choices if m not in ("swiglu", "geglu", "clamped_swiglu")]  # clamped: test_clamped_glu


@pytest.mark.parametrize("hf_name", sorted(HF_ACTIVATIONS))
def test_every_mapped_transformers_activation_is_its_act_fn_exactly(hf_name):
    x = torch.randn(4096, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 4
    ours, theirs = ACT[HF_ACTIVATIONS[hf_name]](x), ACT2FN[hf_name](x)
    assert (ours - theirs).abs().max() <= 32 * torch.finfo(torch.float64).eps * (1 + theirs.abs().max())
    assert identify_activation(ACT2FN[hf_name]) == HF_ACTIVATIONS[hf_name]


def test_fast_gelu_is_told_apart_from_the_tanh_gelu_and_unknown_modules_are_not_guessed():
    x = torch.linspace(-8, 8, 4097, dtype=torch.float64)
    assert (ACT["fast_gelu"](x) - ACT["gelu_tanh"](x)).abs().max() > 1e-13  # truncated sqrt(2/pi)
    for unknown in ("relu6", "leaky_relu", "mish", "sigmoid", "tanh", "gelu_10"):
        assert identify_activation(ACT2FN[unknown]) is None, unknown


@pytest.mark.parametrize("mlp", PLAIN)
def test_plain_mlp_axis_builds_its_act_and_is_tagged(mlp):
    layout = build(DecoderSpec(mlp=mlp))
    fns = {layout.params(n)["fn"] for n in layout.of_op("act")}
    assert fns == {mlp} and mlp in ACTIVATIONS
    assert not layout.of_op("mul")
    assert f"mlp:{mlp}" in DecoderSpec(mlp=mlp).features()
    assert f"op:act:{mlp}" in layout.op_features()
    model = materialize(layout)
    logits = model(torch.tensor([[1, 2, 3, 4, 5]]))
    assert torch.isfinite(logits).all()


def _tiny(cls, cfg) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize(cls(cfg).to(torch.float64))


@pytest.mark.parametrize("hf_name", ["relu2", "quick_gelu", "gelu_new", "gelu_fast"])
def test_llama_with_a_transformers_activation_imports_exactly(hf_name):
    gm = import_model(_tiny(tf.LlamaForCausalLM, tf.LlamaConfig(hidden_act=hf_name, **TINY)))
    assert {gm.layout.params(n)["fn"] for n in gm.layout.of_op("act")} == {HF_ACTIVATIONS[hf_name]}
    check = gm.layout.meta["import_check"]
    assert max(check["max_rel_err"].values()) <= check["bound"] == check["exact_bound"]


def test_nemotron_relu2_imports_exactly():
    gm = import_model(_tiny(tf.NemotronForCausalLM, tf.NemotronConfig(**TINY)))
    assert {gm.layout.params(n)["fn"] for n in gm.layout.of_op("act")} == {"relu2"}
    check = gm.layout.meta["import_check"]
    assert max(check["max_rel_err"].values()) <= check["bound"]


def test_an_unknown_activation_module_is_refused_by_its_class_name():
    with pytest.raises(BadInput, match=r"mlp\.act_fn \(activation module ReLU6 computes none"):
        import_model(_tiny(tf.LlamaForCausalLM, tf.LlamaConfig(hidden_act="relu6", **TINY)))


@pytest.mark.parametrize("name", ["wht-scale", "up-down", "bbt-spectral", "residual-hadamard"])
@pytest.mark.parametrize("mlp", ["relu2", "quick_gelu"])
def test_transforms_preserve_plain_mlps_with_the_new_activations(name, mlp):
    verdict = verify(T.get(name), build(DecoderSpec(mlp=mlp, mlp_bias=True)))
    assert verdict.ok, verdict


@pytest.mark.parametrize("mlp", ["relu", "relu2"])
def test_up_down_moves_a_scale_across_a_homogeneous_activation_exactly(mlp):
    layout = build(DecoderSpec(mlp=mlp, mlp_bias=True))
    verdict = verify(T.get("up-down"), layout)
    assert verdict.ok, verdict
    before = materialize(layout, seed=1)  # the weights really moved (not a vacuous proof)
    after = T.get("up-down")(materialize(layout, seed=1), Calibration(torch.randint(0, 32, (4, 16))))
    ratio = after.nodes["l0_mlp_down_proj"].weight / before.nodes["l0_mlp_down_proj"].weight
    assert not torch.allclose(ratio, torch.ones_like(ratio))


@pytest.mark.parametrize("mlp", ["relu2", "gelu", "quick_gelu"])
def test_assumed_homogeneous_mutant_is_caught_on_a_non_relu_plain_mlp(mlp):
    from verifier import mutants
    verdict = verify(mutants.get("assumed_homogeneous"), build(DecoderSpec(mlp=mlp)))
    assert verdict.status == "diverged" and verdict.first_divergent is not None, verdict


def test_the_mutant_is_correct_where_its_assumption_holds():
    from verifier import mutants
    for spec in (DecoderSpec(mlp="relu"), DecoderSpec(mlp="swiglu")):
        assert verify(mutants.get("assumed_homogeneous"), build(spec)).ok


def test_bloom_gelu_is_its_own_act_told_apart_from_both_tanh_gelus():
    import transformers.models.bloom.modeling_bloom as mb
    x = torch.linspace(-8, 8, 4097, dtype=torch.float64)
    assert identify_activation(mb.BloomGelu()) == "bloom_gelu"
    assert torch.equal(ACT["bloom_gelu"](x), mb.bloom_gelu_forward(x))
    for other in ("fast_gelu", "gelu_tanh"):  # 0.79788456 vs 0.7978845608 vs sqrt(2 / pi)
        assert (ACT["bloom_gelu"](x) - ACT[other](x)).abs().max() > 1e-13


@pytest.mark.parametrize("name", ["wht-scale", "up-down", "bbt-spectral", "residual-hadamard"])
def test_transforms_preserve_a_plain_bloom_gelu_mlp(name):
    verdict = verify(T.get(name), build(DecoderSpec(mlp="bloom_gelu", mlp_bias=True)))
    assert verdict.ok, verdict


def test_assumed_homogeneous_mutant_is_caught_on_a_bloom_gelu_mlp():
    from verifier import mutants
    verdict = verify(mutants.get("assumed_homogeneous"), build(DecoderSpec(mlp="bloom_gelu")))
    assert verdict.status == "diverged" and verdict.first_divergent is not None, verdict
