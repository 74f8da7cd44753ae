"""T1's group-aligned block form (wht-scale-block): ``x Q_b D^-1``, ``W Q_b D`` with ``Q_b = I (x) H_b / sqrt(b)``.

The block-diagonal butterfly, the fitted block, padded nodes left as they were, misaligned blocks refused by name
(and by the ``wht_in`` op's shape rule), block 1 a plain scaling, one block rotation per distinct input, and the
oracle catching the scale folded before the block rotation.  What every form shares (exact on drawn layouts, the
unfold, the scales, the online forms, the recipe): ``test_wht_scale.py``."""

import pytest
import torch

from fuzz import Layout, LayoutError, Refusal, build, materialize
from fuzz.hadamard import block_fwht, fwht, hadamard
from quant.transforms import get
from quant.transforms.wht_scale import fitted_block, wht_scale
from verifier import mutants, verify
from tests.quant.test_wht_scale import ODD, POW2, calib


def block_matrix(n: int, b: int) -> torch.Tensor:
    """``I_{n/b} (x) H_b / sqrt(b)`` built densely (independent of the butterfly)."""
    return torch.kron(torch.eye(n // b, dtype=torch.float64), hadamard(b))


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
    """The group-wise RTN (``quant.transforms.rtn``, which benchmarks.block_rtn_error and T1's alpha search use): at most 2^bits levels per group, every weight within half a step (the
    integer zero point moves the grid by up to half a step), grid points fixed."""
    from quant.transforms.rtn import rtn
    w = torch.randn(3, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    q = rtn(w, 2, 64)
    for g in q.reshape(3, 2, 64).unbind(1):
        for row in g:
            assert row.unique().numel() <= 4
    groups, qg = w.reshape(3, 2, 64), q.reshape(3, 2, 64)
    step = (groups.amax(-1, keepdim=True) - groups.amin(-1, keepdim=True)) / 3
    assert ((qg - groups).abs() <= step / 2 + 1e-12).all()
    torch.testing.assert_close(rtn(q, 2, 64), q, rtol=0, atol=1e-12)
