"""T1 (wht-scale): exact on every drawn layout, the unfold restores the original layout, the scales follow
the WHT-basis energy, and the oracle catches a scale applied the wrong way round."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from fuzz import BadInput, DecoderSpec, LayerSpec, Refusal, build, materialize
from fuzz import strategies as S
from fuzz.hadamard import hadamard, online_input
from quant.transforms import get
from quant.transforms.calibration import collect, energy_scales
from quant.transforms.wht_scale import folded_weight, unfold, wht_scale
from verifier import verify
from verifier.transform import Calibration

OPTIONS = [dict(alpha=0.0), dict(alpha=0.5), dict(alpha=1.0), dict(scales="random")]
ODD = DecoderSpec(hidden=48, n_heads=4, n_kv_heads=2, head_dim=12, intermediate=40,
                  layers=(LayerSpec(), LayerSpec(sparse=True)), shared_expert=True, qkv_bias=True)
POW2 = DecoderSpec(hidden=32, n_heads=4, n_kv_heads=2, head_dim=8, intermediate=64, mlp_bias=True, qkv_bias=True)


def calib(vocab: int = 64, seed: int = 0) -> Calibration:
    return Calibration(torch.randint(0, vocab, (4, 12), generator=torch.Generator().manual_seed(seed)), seed)


def padded_rotation(w: torch.Tensor, d_pad: int) -> torch.Tensor:
    """``[W, 0] Q`` with the dense Hadamard (independent of the butterfly)."""
    return torch.nn.functional.pad(w.double(), (0, d_pad - w.shape[1])) @ hadamard(d_pad)


@given(layout=S.layouts(), options=st.sampled_from(OPTIONS), seed=st.integers(0, 999))
def test_exact_and_roundtrip_on_every_layout(layout, options, seed):
    options = {**options, "seed": seed} if options.get("scales") == "random" else options
    verdict = verify(get("wht-scale", **options), layout, seed=seed % 97)
    assert verdict.ok and verdict.max_rel_err <= 1e-12, verdict
    back = verify(get("wht-scale-roundtrip", **options), layout, seed=seed % 97)
    assert back.ok and back.max_rel_err <= 1e-12, back

    model = materialize(layout, seed=seed)
    plain = unfold(wht_scale(model, calib(layout.params(layout.source)["vocab"], seed), **options))
    assert plain.layout.hash() == layout.hash()
    assert not plain.layout.of_op("wht_in")
    for node in layout.of_op("linear"):
        w, w_back = model.nodes[node].weight, plain.nodes[node].weight
        assert (w_back - w).abs().max() <= 1e-13 * w.abs().max()


@pytest.mark.parametrize("spec, padded", [(ODD, True), (POW2, False)])
def test_padded_and_power_of_two_widths(spec, padded):
    layout = build(spec)
    model = materialize(layout)
    out = wht_scale(model, calib())
    q = out.layout.params("l0_q_proj")
    assert q["in_features"] == (64 if padded else 32)
    assert out.layout.params("l0_q_proj_wht") == {"in_features": spec.hidden, "d_pad": q["in_features"]}
    assert out.layout.inputs("l0_q_proj") == ["l0_q_proj_wht"]
    assert out.layout.inputs("l0_q_proj_wht") == layout.inputs("l0_q_proj")
    assert torch.equal(out.nodes["l0_q_proj"].bias, model.nodes["l0_q_proj"].bias)  # bias unchanged
    assert len(out.layout.of_op("wht_in")) == len(layout.of_op("linear"))
    assert "l0_lm_head_wht" not in out.layout.graph and not any(
        out.layout.op(out.layout.inputs(h)[0]) == "wht_in" for h in out.layout.of_op("lm_head"))
    for name in ("wht-scale", "wht-scale-roundtrip"):
        for options in OPTIONS:
            verdict = verify(get(name, **options), layout)
            assert verdict.ok and verdict.max_rel_err <= 1e-12, verdict


def test_weight_and_scales_follow_the_wht_energy():
    layout = build(ODD)
    model = materialize(layout)
    c = calib()
    energy = collect(model, c, wht_energy=[("l0_q_proj", None)])["wht_energy"]["l0_q_proj"]
    out = wht_scale(model, c, alpha=0.5)
    s = out.nodes["l0_q_proj_wht"].scale.detach()
    assert s.shape == (64,)
    torch.testing.assert_close(s, (1 + 64 * energy / energy.sum()) ** 0.5, rtol=1e-15, atol=0)
    assert (s >= 1).all() and s[energy.argmax()] == s.max() > 1
    assert torch.equal(torch.argsort(s), torch.argsort(energy))  # s is monotone in the energy

    rotated = padded_rotation(model.nodes["l0_q_proj"].weight, 64)
    w_t = out.nodes["l0_q_proj"].weight.detach()
    torch.testing.assert_close(w_t, rotated * s, rtol=0, atol=1e-14)
    # the high-energy WHT coordinates' columns are boosted by exactly s
    torch.testing.assert_close(w_t.norm(dim=0), rotated.norm(dim=0) * s, rtol=1e-13, atol=0)


def test_alpha_zero_is_the_rotation_alone():
    layout = build(ODD)
    model = materialize(layout)
    out = wht_scale(model, calib(), alpha=0.0)
    for wht in out.layout.of_op("wht_in"):
        assert torch.equal(out.nodes[wht].scale, torch.ones_like(out.nodes[wht].scale))
    torch.testing.assert_close(out.nodes["l0_o_proj"].weight.detach(),
                               padded_rotation(model.nodes["l0_o_proj"].weight, 64), rtol=0, atol=1e-14)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 1.0])
def test_uniform_energy_gives_two_to_the_alpha(alpha):
    s = energy_scales(torch.full((64,), 3.7, dtype=torch.float64), alpha)
    torch.testing.assert_close(s, torch.full_like(s, 2.0 ** alpha), rtol=1e-15, atol=0)
    # zero energy falls back to uniform; torch's pow may differ from Python's by an ulp on some CPUs
    torch.testing.assert_close(energy_scales(torch.zeros(8, dtype=torch.float64), alpha),
                               torch.full((8,), 2.0 ** alpha, dtype=torch.float64), rtol=1e-15, atol=0)


def test_online_input_is_the_wht_in_module():
    out = wht_scale(materialize(build(ODD)), calib(), scales="random")
    mod = out.nodes["l0_q_proj_wht"]
    x = torch.randn(2, 5, 48, dtype=torch.float64)
    assert torch.equal(online_input(x, mod.scale, 64), mod(x))
    dense = torch.nn.functional.pad(x, (0, 16)) @ hadamard(64) / mod.scale
    torch.testing.assert_close(mod(x), dense, rtol=0, atol=1e-14)


def test_unfold_of_a_perturbed_weight_is_the_dense_formula():
    """``W_eff = (W^ D^-1 Q^T)[:, :d_in]`` for a quantized ``W^`` (here: W~ plus noise)."""
    out = wht_scale(materialize(build(ODD)), calib(), scales="random", seed=5)
    s = out.nodes["l0_q_proj_wht"].scale.detach()
    with torch.no_grad():
        out.nodes["l0_q_proj"].weight.add_(1e-3 * torch.randn_like(out.nodes["l0_q_proj"].weight))
    w_hat = out.nodes["l0_q_proj"].weight.detach().clone()
    plain = unfold(out)
    dense = (w_hat @ torch.diag(1 / s) @ hadamard(64).T)[:, :48]
    torch.testing.assert_close(plain.nodes["l0_q_proj"].weight.detach(), dense, rtol=0, atol=1e-14)
    torch.testing.assert_close(folded_weight(w_hat, s, 48), dense, rtol=0, atol=1e-14)
    assert plain.layout.hash() == build(ODD).hash()


def test_targets_and_float32():
    layout = build(ODD)
    out = wht_scale(materialize(layout), calib(), targets=["l0_k_proj", "l0_mlp_down_proj"])
    assert sorted(out.layout.of_op("wht_in")) == ["l0_k_proj_wht", "l0_mlp_down_proj_wht"]
    verdict = verify(get("wht-scale", targets=["l1_mlp_router_proj"]), layout)
    assert verdict.ok and verdict.max_rel_err <= 1e-12, verdict
    f32 = verify(get("wht-scale-roundtrip"), layout, dtype=torch.float32)
    assert f32.ok and f32.max_rel_err < 5e-6, f32


def test_refusals():
    layout = build(ODD)
    with pytest.raises(Refusal) as exc:
        wht_scale(nn.Linear(4, 4), calib())
    assert exc.value.feature == "module-without-layout"
    once = wht_scale(materialize(layout), calib())
    with pytest.raises(Refusal) as exc:
        wht_scale(once, calib())
    assert exc.value.feature == "already-transformed" and exc.value.op == "linear"
    with pytest.raises(Refusal) as exc:
        wht_scale(materialize(layout), calib(), targets=["lm_head"])
    assert exc.value.feature == "not-a-linear" and exc.value.op == "lm_head"
    with pytest.raises(BadInput):
        wht_scale(materialize(layout), calib(), targets=["no_such_node"])
    with pytest.raises(BadInput):
        wht_scale(materialize(layout), calib(), scales="ones")
    twice = verify(lambda m, c: wht_scale(wht_scale(m, c), c), layout)
    assert twice.status == "refused" and "already-transformed" in twice.message


def scale_as_d(node: str | None = None, **options):
    """Mutant: the online input multiplies by D instead of dividing (``x~ = [x, 0] Q D``)."""
    def transform(model, c):
        out = wht_scale(model, c, **options)
        with torch.no_grad():
            for wht in out.layout.of_op("wht_in"):
                if node is None or wht == f"{node}_wht":
                    out.nodes[wht].scale.reciprocal_()
        return out
    return transform


@pytest.mark.parametrize("options", [dict(alpha=0.5), dict(scales="random")])
def test_oracle_catches_scale_applied_as_d(options):
    verdict = verify(scale_as_d(**options), build(ODD))
    assert verdict.status == "diverged", verdict
    assert verdict.max_rel_err > 1e-3


def test_oracle_names_the_linear_behind_a_wrong_scale():
    verdict = verify(scale_as_d("l0_k_proj", scales="random", targets=["l0_k_proj"]), build(ODD))
    assert verdict.status == "diverged", verdict
    assert verdict.first_divergent["node"] == "l0_k_proj", verdict
