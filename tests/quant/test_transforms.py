"""Transform library: preconditions that refuse with the documented feature, and the algebra itself."""

import copy

import pytest
import torch

import quant.transforms as T
from fuzz import DecoderSpec, LayerSpec, Refusal, build, materialize
from fuzz.hadamard import orthogonal
from quant.transforms.calibration import energy_scales
from verifier import Calibration, verify

CALIB = Calibration(torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(0)))
MOE = DecoderSpec(layers=(LayerSpec(), LayerSpec(sparse=True)), shared_expert=True, n_experts=4, top_k=2)


def run(name, spec, **options):
    """``(untouched copy, transformed)``: transforms edit the model they are given."""
    model = materialize(build(spec), seed=1)
    return copy.deepcopy(model), T.get(name, **options)(model, CALIB)


def refusal(name, spec, **options) -> Refusal:
    with pytest.raises(Refusal) as err:
        run(name, spec, **options)
    return err.value


def test_registry_lists_transforms_and_recipes_and_rejects_unknown_names():
    names = T.names()
    for expected in ("norm-absorb", "pair-pca", "residual-rotation", "up-down", "moe-absorb", "bbt-absorb",
                     "bbt-spectral", "bbt-pair-pca", "bbt-spectral-pca", "residual-hadamard"):
        assert expected in names
    with pytest.raises(ValueError, match="available"):
        T.get("quarot")


def test_energy_scales_formula():
    e = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    assert torch.allclose(energy_scales(e, 0.5), torch.full((4,), 2 ** 0.5, dtype=torch.float64))
    spike = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
    assert torch.allclose(energy_scales(spike, 0.5), torch.tensor([5 ** 0.5, 1, 1, 1], dtype=torch.float64))
    assert torch.equal(energy_scales(torch.rand(7, dtype=torch.float64), 0.0), torch.ones(7, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- T2
@pytest.mark.parametrize("spec, feature", [
    (DecoderSpec(placement="post"), "norm-feeds-residual"),
    (DecoderSpec(placement="sandwich"), "norm-feeds-residual"),
    (DecoderSpec(tie_embeddings=True), "tied-embeddings"),
    (DecoderSpec(qk_norm="full"), "nonlinear-consumer"),
])
def test_norm_absorb_refuses_what_it_cannot_absorb(spec, feature):
    err = refusal("norm-absorb", spec)
    assert err.feature == feature and err.op == "norm" and err.path


def test_norm_absorb_untie_and_skip_modes():
    spec = DecoderSpec(tie_embeddings=True)
    model, out = run("norm-absorb", spec, untie=True)
    assert out.layout.params("lm_head")["tied_to"] is None
    assert verify(T.get("norm-absorb", untie=True), build(spec)).ok
    _, skipped = run("norm-absorb", DecoderSpec(placement="post"), on_unsupported="skip")
    assert {e["skipped"] for e in skipped.transform_log if "skipped" in e} == {"norm-feeds-residual"}


def test_norm_absorb_reaches_router_experts_shared_expert_and_its_gate():
    before, after = run("norm-absorb", MOE)
    for node in ("l1_mlp_router_proj", "l1_mlp_shared_expert_gate", "l1_mlp_shared_expert_gate_proj",
                 "l1_mlp_shared_expert_up_proj"):
        assert not torch.equal(before.nodes[node].weight, after.nodes[node].weight), node
    b, a = before.nodes["l1_mlp_experts"], after.nodes["l1_mlp_experts"]
    ratio = a.gate_up_proj / b.gate_up_proj  # constant along the expert and row axes: the H axis was scaled
    assert torch.allclose(ratio, ratio[:1, :1, :].expand_as(ratio))
    assert torch.equal(a.down_proj, b.down_proj)


def test_norm_absorb_handles_one_plus_w_and_layernorm_bias():
    spec = DecoderSpec(norm="layer", norm_bias=True, norm_weight_form="1+w")
    assert verify(T.get("norm-absorb"), build(spec)).ok


# ---------------------------------------------------------------------------------------------- T3
def test_residual_rotation_matrix_kinds():
    assert orthogonal(576)[1] == "block-hadamard-64"
    assert orthogonal(64)[1] == "hadamard"
    assert orthogonal(30)[1] == "random"


@pytest.mark.parametrize("spec, feature", [
    (DecoderSpec(norm="layer"), "layernorm-residual"),
    (DecoderSpec(placement="post"), "norm-feeds-residual"),
    (DecoderSpec(tie_embeddings=True), "tied-embeddings"),
])
def test_residual_rotation_refusals(spec, feature):
    assert refusal("residual-rotation", spec).feature == feature


def test_residual_rotation_folds_norms_and_keeps_function_on_moe_and_tied():
    spec = MOE.with_(tie_embeddings=True, norm_weight_form="1+w", hidden=48)
    model, out = run("residual-rotation", spec, untie=True)
    for node in out.layout.of_op("norm"):
        if out.layout.params(node)["groups"] == 1 and node != "l0_q_norm":
            assert torch.all(out.nodes[node].weight == 0.0)  # 1 + w == 1
    assert verify(T.get("residual-rotation", untie=True), build(spec)).ok


# ---------------------------------------------------------------------------------------------- T4
def test_pair_pca_refuses_qk_norm_and_accepts_fused_output_gate():
    assert refusal("pair-pca", DecoderSpec(qk_norm="per_head")).feature == "qk-norm"
    layout = build(DecoderSpec(attn_gate="output_sigmoid", qkv_bias=True, rope_style="interleaved", rotary_dim=4))
    verdict = verify(T.get("pair-pca"), layout)
    assert verdict.ok and verdict.max_rel_err < 1e-12


def test_pair_pca_rotations_are_proper_and_rotate_biases():
    spec = DecoderSpec(qkv_bias=True)
    before, after = run("pair-pca", spec)
    assert not torch.equal(before.nodes["l0_k_proj"].bias, after.nodes["l0_k_proj"].bias)
    # per pair the 2x2 map from old rows to new rows is U^T with det +1
    d = spec.head_dim
    w0, w1 = before.nodes["l0_k_proj"].weight, after.nodes["l0_k_proj"].weight
    rows = [0, d // 2]
    u_t = torch.linalg.lstsq(w0[rows].T, w1[rows].T).solution.T
    assert torch.allclose(torch.det(u_t), torch.tensor(1.0, dtype=torch.float64), atol=1e-10)


# ---------------------------------------------------------------------------------------------- T6
def test_moe_absorb_refuses_dense_layouts_and_scales_every_expert():
    assert refusal("moe-absorb", DecoderSpec()).feature == "no-moe"
    before, after = run("moe-absorb", MOE)
    b, a = before.nodes["l1_mlp_experts"], after.nodes["l1_mlp_experts"]
    ratio = a.down_proj / b.down_proj  # (E, H, I): per expert, a column scaling of down_proj
    assert not torch.allclose(ratio, torch.ones_like(ratio))
    assert torch.allclose(ratio, ratio[:, :1, :].expand_as(ratio))
    assert not torch.allclose(ratio[0], ratio[1])  # each expert has its own s_e
    assert verify(T.get("moe-absorb"), build(MOE)).ok


def test_up_down_leaves_gelu_mlps_alone():
    before, after = run("up-down", DecoderSpec(mlp="gelu", mlp_bias=True))
    assert all(torch.equal(p, q) for p, q in zip(before.parameters(), after.parameters()))


# ---------------------------------------------------------------------------------------------- recipes
def test_recipes_pick_per_block_and_log_why():
    spec = DecoderSpec(layers=(LayerSpec(), LayerSpec(rope=False)), qk_norm="none", tie_embeddings=True)
    _, out = run("bbt-pair-pca", spec)
    applied = {e["transform"] for e in out.transform_log}
    assert {"pair-pca", "norm-absorb", "up-down"} <= applied
    skipped = [e for e in out.transform_log if e.get("skipped")]
    assert any(e["skipped"] == "tied-embeddings" for e in skipped)  # the final norm under tied embeddings


def test_transforms_refuse_foreign_modules():
    from torch import nn
    with pytest.raises(Refusal, match="import_model"):
        T.get("norm-absorb")(nn.Linear(2, 2), CALIB)
