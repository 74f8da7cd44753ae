"""T1's group-aligned block form (wht-scale-block): ``x Q_b D^-1``, ``W Q_b D`` with ``Q_b = I (x) H_b / sqrt(b)``.

Exact on every drawn layout, the unfold restores the original layout, the scales follow the block-basis
energy, misaligned blocks are refused by name, the ``wht_in`` op's shape rule, the online forms agree, and
the oracle catches the scale folded before the block rotation."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fuzz import Layout, LayoutError, Refusal, build, materialize
from fuzz import strategies as S
from fuzz.hadamard import block_fwht, fwht, hadamard, online_input
from quant.online import MODES, OnlineRotation
from quant.quantize import ONLINE, RECIPES, WHTInput
from quant.transforms import get
from quant.transforms.calibration import collect
from quant.transforms.recipes import RECIPES as GRAPH_RECIPES
from quant.transforms.wht_scale import fitted_block, folded_weight, unfold, wht_scale, wht_scale_block
from verifier import mutants, verify
from verifier.transform import Calibration
from tests.quant.test_wht_scale import ODD, POW2

OPTIONS = [dict(alpha=0.0), dict(alpha=0.5), dict(alpha=0.25, max_block=16), dict(scales="random")]


def calib(vocab: int = 64, seed: int = 0) -> Calibration:
    return Calibration(torch.randint(0, vocab, (4, 12), generator=torch.Generator().manual_seed(seed)), seed)


def block_matrix(n: int, b: int) -> torch.Tensor:
    """``I_{n/b} (x) H_b / sqrt(b)`` built densely (independent of the butterfly)."""
    return torch.kron(torch.eye(n // b, dtype=torch.float64), hadamard(b))


@given(layout=S.layouts(), options=st.sampled_from(OPTIONS), seed=st.integers(0, 999))
def test_exact_and_roundtrip_on_every_layout(layout, options, seed):
    options = {**options, "seed": seed} if options.get("scales") == "random" else options
    verdict = verify(get("wht-scale-block", **options), layout, seed=seed % 97)
    assert verdict.ok and verdict.max_rel_err <= 1e-12, verdict
    back = verify(get("wht-scale-block-roundtrip", **options), layout, seed=seed % 97)
    assert back.ok and back.max_rel_err <= 1e-12, back

    model = materialize(layout, seed=seed)
    out = wht_scale_block(model, calib(layout.params(layout.source)["vocab"], seed), **options)
    for node in layout.of_op("linear"):  # no padding: every linear keeps its width
        d_in = layout.params(node)["in_features"]
        assert out.layout.params(node)["in_features"] == d_in
        assert out.layout.params(f"{node}_wht")["block"] == fitted_block(d_in, options.get("max_block", 64))
    plain = unfold(out)
    assert plain.layout.hash() == layout.hash()
    for node in layout.of_op("linear"):
        w, w_back = model.nodes[node].weight, plain.nodes[node].weight
        assert (w_back - w).abs().max() <= 1e-13 * w.abs().max()


def test_block_fwht_is_the_block_diagonal_hadamard():
    x = torch.randn(3, 96, dtype=torch.float64)
    for b in (1, 2, 8, 32):
        torch.testing.assert_close(block_fwht(x, b), x @ block_matrix(96, b), rtol=0, atol=1e-14)
        torch.testing.assert_close(block_fwht(block_fwht(x, b), b), x, rtol=0, atol=1e-14)  # its own inverse
    assert torch.equal(block_fwht(x, 1), x)
    y = torch.randn(2, 64, dtype=torch.float64)
    assert torch.equal(block_fwht(y, 64), fwht(y))
    for bad in (3, 64, 0):
        with pytest.raises(ValueError):
            block_fwht(x, bad)


def test_fitted_block():
    assert [fitted_block(d) for d in (576, 1536, 48, 40, 12, 7, 128)] == [64, 64, 16, 8, 4, 1, 64]
    assert fitted_block(1536, 16) == 16


@pytest.mark.parametrize("spec", [ODD, POW2])
def test_weight_scales_and_layout(spec):
    layout = build(spec)
    model = materialize(layout)
    c = calib()
    energy = collect(model, c, wht_energy=[("l0_q_proj", 16)])["wht_energy"]["l0_q_proj"]
    out = wht_scale(model, c, alpha=0.5, block=16, targets=["l0_q_proj"])
    d = spec.hidden
    assert out.layout.params("l0_q_proj_wht") == {"in_features": d, "d_pad": d, "block": 16}
    assert out.layout.params("l0_q_proj")["in_features"] == d
    s = out.nodes["l0_q_proj_wht"].scale.detach()
    torch.testing.assert_close(s, (1 + d * energy / energy.sum()) ** 0.5, rtol=1e-15, atol=0)
    # the energy is E[(x Q_b)^2] of the linear's input, taken densely here
    x = []
    h = model.nodes["l0_q_proj"].register_forward_pre_hook(lambda m, a: x.append(a[0].detach().reshape(-1, d)))
    for batch in c.batches(size=c.input_ids.shape[0]):
        model(batch)
    h.remove()
    dense = (torch.cat(x).double() @ block_matrix(d, 16)).pow(2).mean(0)
    torch.testing.assert_close(energy, dense, rtol=1e-12, atol=0)
    w = model.nodes["l0_q_proj"].weight.detach().double()
    torch.testing.assert_close(out.nodes["l0_q_proj"].weight.detach(), w @ block_matrix(d, 16) * s, rtol=0, atol=1e-14)
    w_hat = out.nodes["l0_q_proj"].weight.detach() + 1e-3  # a "quantized" W^: the unfold is W^ D^-1 Q_b
    torch.testing.assert_close(folded_weight(w_hat, s, d, 16), (w_hat / s) @ block_matrix(d, 16), rtol=0, atol=1e-14)


def test_padded_wht_in_nodes_are_unchanged():
    """``block`` is left out of a padded ``wht_in`` node, so layouts written before it keep their hash."""
    out = wht_scale(materialize(build(ODD)), calib())
    assert out.layout.params("l0_q_proj_wht") == {"in_features": 48, "d_pad": 64}
    again = Layout.from_json(out.layout.to_json())
    assert again.hash() == out.layout.hash() and '"block"' not in out.layout.to_json()


def test_misaligned_blocks_are_refused_by_name():
    layout = build(ODD)  # hidden 48, intermediate 40
    with pytest.raises(Refusal) as exc:
        wht_scale(materialize(layout), calib(), block=32)
    assert exc.value.feature == "block-misaligned" and exc.value.op == "linear"
    assert exc.value.path in layout.of_op("linear") and "32" in str(exc.value)
    with pytest.raises(Refusal) as exc:
        wht_scale(materialize(layout), calib(), block=16, targets=["l0_mlp_down_proj"])  # 40 = 8 * 5
    assert exc.value.path == "l0_mlp_down_proj" and exc.value.feature == "block-misaligned"
    with pytest.raises(Refusal) as exc:
        wht_scale(materialize(layout), calib(), block=3)
    assert exc.value.feature == "block-misaligned"
    verdict = verify(get("wht-scale", block=32), layout)
    assert verdict.status == "refused" and "block-misaligned" in verdict.message
    # the op's own shape rule names the node
    out = wht_scale(materialize(layout), calib(), block=16, targets=["l0_q_proj"])
    data = out.layout.to_dict()
    for node in data["nodes"]:
        if node["id"] == "l0_q_proj_wht":
            node["block"] = 32
    with pytest.raises(LayoutError, match="l0_q_proj_wht.*block-misaligned|block-misaligned.*l0_q_proj_wht"):
        Layout.from_dict(data)


def test_odd_width_gets_block_one_a_plain_scaling():
    out = wht_scale(materialize(build(ODD)), calib(), scales="random", block=1, targets=["l0_q_proj"])
    mod = out.nodes["l0_q_proj_wht"]
    x = torch.randn(2, 3, 48, dtype=torch.float64)
    assert torch.equal(mod(x), x / mod.scale)


def test_online_forms_agree_with_the_wht_in_module():
    out = wht_scale(materialize(build(ODD)), calib(), scales="random", block=16, targets=["l0_q_proj"])
    mod = out.nodes["l0_q_proj_wht"]
    s = mod.scale.detach()
    x = torch.randn(2, 5, 48, dtype=torch.float64)
    ref = x @ block_matrix(48, 16) / s
    torch.testing.assert_close(mod(x), ref, rtol=0, atol=1e-14)
    assert torch.equal(online_input(x, s, 48, 16), mod(x))
    hook = WHTInput(s, 48, torch.float64, block=16)
    torch.testing.assert_close(hook(None, (x,))[0], ref, rtol=0, atol=1e-14)
    for mode in MODES:
        rot = OnlineRotation(48, 48, 1, s, mode, block=16).double()
        torch.testing.assert_close(rot(x), ref, rtol=0, atol=1e-6)  # float32 buffers
    with pytest.raises(Exception, match="block"):
        OnlineRotation(48, 64, 1, None, "kron", block=16)
    with pytest.raises(Exception, match="block"):
        OnlineRotation(48, 48, 1, None, "kron", block=32)


def test_recipe_is_registered_and_exact():
    assert "bbt-spectral-block" in GRAPH_RECIPES and "bbt-spectral-block" in RECIPES
    assert "bbt-spectral-block" in ONLINE
    for spec in (ODD, POW2):
        verdict = verify(get("bbt-spectral-block", alpha=0.25), build(spec))
        assert verdict.ok and verdict.max_rel_err <= 1e-12, verdict


@pytest.mark.parametrize("spec", [ODD, POW2])
def test_oracle_catches_the_scale_folded_before_the_block_rotation(spec):
    verdict = verify(mutants.get("block_scale_before_rotation"), build(spec))
    assert verdict.status == "diverged", verdict
    assert verdict.first_divergent["op"] == "linear", verdict


def test_make_online_gives_one_block_rotation_per_distinct_input():
    """The hooked transformers model (x Q_b D^-1 per linear) and its explicit online form compute the same logits."""
    from quant.online import count_rotations, make_online
    from quant.quantize import prepare
    from tests.quant.test_quantize import DIMS, tiny, windows
    model = tiny()
    prepare(model, "bbt-spectral-block", windows())
    online, info = make_online(model, windows()[:1, :16])
    assert info["rotations"] == 4 * DIMS["n_layers"] and {g["block"] for g in info["groups"]} == {64}
    assert count_rotations(online) == (4 * DIMS["n_layers"], 7 * DIMS["n_layers"])
    ids = windows(1)
    with torch.no_grad():
        torch.testing.assert_close(online(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)


def test_block_rtn_error_rounds_each_group_to_its_grid():
    """benchmarks.block_rtn_error's RTN: at most 2^bits levels per group, every weight within half a step (the
    integer zero point moves the grid by up to half a step), grid points fixed."""
    from benchmarks.block_rtn_error import rtn
    w = torch.randn(3, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    q = rtn(w, 2, 64)
    for g in q.reshape(3, 2, 64).unbind(1):
        for row in g:
            assert row.unique().numel() <= 4
    groups, qg = w.reshape(3, 2, 64), q.reshape(3, 2, 64)
    step = (groups.amax(-1, keepdim=True) - groups.amin(-1, keepdim=True)) / 3
    assert ((qg - groups).abs() <= step / 2 + 1e-12).all()
    torch.testing.assert_close(rtn(q, 2, 64), q, rtol=0, atol=1e-12)
