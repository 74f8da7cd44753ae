"""T1's exact-width full form (wht-scale-exact): ``x Q_n D^-1``, ``W Q_n D`` with ``Q_n = (H_m (x) H_b) / sqrt(n)``.

Every order the Paley x Sylvester construction claims is a Hadamard matrix, the kron application is the dense
matrix (and its transpose), widths without a construction are refused by name, the ``wht_in`` op's shape rule, the
oracle catches ``Q_n`` used where ``Q_n^T`` is needed, and the form through ``prepare`` and the stateful artifact.
What every form shares (exact on drawn layouts, the unfold, the scales, the online forms, the recipe):
``test_wht_scale.py``."""

import math

import pytest
import torch

from fuzz import Layout, LayoutError, Refusal, build, materialize
from fuzz.decoder import DecoderSpec
from fuzz.hadamard import exact_fwht, exact_hadamard, hadamard_split, paley
from quant.transforms import get
from quant.transforms.wht_scale import wht_scale_exact
from verifier import mutants, verify
from tests.quant.test_wht_scale import ASYMMETRIC, SYMMETRIC, calib

CLAIMED = [n for n in range(1, 257) if hadamard_split(n) is not None] + [576, 1536, 2304, 3072]


@pytest.mark.parametrize("n", CLAIMED)
def test_every_claimed_order_is_a_hadamard_matrix(n):
    """``H H^T = n I`` with entries +-1, for every order :func:`hadamard_split` claims."""
    h = exact_hadamard(n) * math.sqrt(n)
    torch.testing.assert_close(h.abs(), torch.ones(n, n, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(h @ h.T, n * torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-9)


def test_the_orders_that_matter_are_claimed():
    assert hadamard_split(576) == (36, 16) and hadamard_split(1536) == (12, 128)  # SmolLM2
    for m in (12, 20, 24, 28, 36, 44, 48, 60, 72):  # Paley I (q = m - 1) or II (q = m / 2 - 1)
        assert paley(m) is not None, m
    # no Hadamard matrix of order 2 mod 4 (> 2) or odd (> 1) exists: none is claimed
    assert all(hadamard_split(n) is None for n in (3, 5, 6, 10, 14, 18, 22, 30, 33, 578))
    assert hadamard_split(52) is None  # Paley II over q = 25, a prime power: not constructed here


def test_kron_application_is_the_dense_matrix_and_its_transpose():
    for n in (12, 24, 36, 96, 576, 1536):
        q = exact_hadamard(n)
        x = torch.randn(3, 2, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
        torch.testing.assert_close(exact_fwht(x), x @ q, rtol=0, atol=1e-12)
        torch.testing.assert_close(exact_fwht(x, transpose=True), x @ q.T, rtol=0, atol=1e-12)
        torch.testing.assert_close(exact_fwht(exact_fwht(x), transpose=True), x, rtol=0, atol=1e-12)
    assert not torch.allclose(exact_hadamard(12), exact_hadamard(12).T)  # Paley I: Q_n is not symmetric
    with pytest.raises(ValueError, match="order 22"):
        exact_fwht(torch.zeros(22))


def test_a_width_without_a_construction_is_refused_naming_the_linear():
    model = materialize(build(DecoderSpec(hidden=24, intermediate=22, n_heads=4, n_kv_heads=2, head_dim=6)))
    with pytest.raises(Refusal) as exc:
        wht_scale_exact(model, calib())
    assert exc.value.feature == "no-hadamard-order" and "down_proj" in str(exc.value) and "22" in str(exc.value)
    out = wht_scale_exact(model, calib(), targets=["l0_q_proj"])  # a linear whose width has one: fine
    assert out.layout.params("l0_q_proj_wht")["exact"] is True


def test_wht_in_exact_parameter_is_left_out_at_default_and_checked():
    plain = get("wht-scale", alpha=0.0)(materialize(build(ASYMMETRIC)), calib())
    assert "exact" not in plain.layout.params("l0_q_proj_wht")  # padded layouts and their hashes unchanged
    assert '"exact"' not in plain.layout.to_json()
    out = wht_scale_exact(materialize(build(ASYMMETRIC)), calib())
    assert Layout.from_json(out.layout.to_json()).hash() == out.layout.hash()
    odd = get("wht-scale", alpha=0.0)(materialize(build(DecoderSpec(hidden=24, intermediate=22, n_heads=4,
                                                                     n_kv_heads=2, head_dim=6))), calib())
    for layout, node_id, change, match in [(out.layout, "l0_q_proj_wht", {"d_pad": 32}, "not padded"),
                                           (out.layout, "l0_q_proj_wht", {"block": 8}, "exclusive"),
                                           (odd.layout, "l0_mlp_down_proj_wht", {"exact": True, "d_pad": 22},
                                            "no-hadamard-order")]:
        data = layout.to_dict()
        for node in data["nodes"]:
            if node["id"] == node_id:
                node.update(change)
        with pytest.raises(LayoutError, match=match):
            Layout.from_dict(data)


def test_oracle_catches_q_where_q_transpose_is_needed():
    """The unfold with ``Q_n`` instead of ``Q_n^T`` breaks the function where ``Q_n`` is not symmetric (Paley I),
    and only there: on Paley II / Sylvester widths the two are the same matrix."""
    verdict = verify(mutants.get("exact_q_not_transposed"), build(ASYMMETRIC))
    assert verdict.status == "diverged", verdict
    assert verdict.first_divergent["op"] == "linear", verdict
    for n in (36, 72):
        assert torch.equal(exact_hadamard(n), exact_hadamard(n).T)
    assert verify(mutants.get("exact_q_not_transposed"), build(SYMMETRIC)).status == "invariant"


def test_prepare_keeps_every_width_and_the_function():
    """bbt-spectral-exact on a transformers model: W~ = W Q_n D in place (no padding), the hook x Q_n D^-1;
    same logits before auto-round, and one online rotation per distinct input gives them too."""
    from fuzz.families import family_spec, to_transformers
    from quant.online import make_online
    from quant.quantize import prepare
    dims = dict(vocab=64, hidden=48, n_heads=4, n_kv_heads=2, head_dim=12, intermediate=96, n_layers=2)

    def tiny():
        return to_transformers(materialize(build(family_spec("llama", **dims)), seed=3)).float().eval()
    model, ref = tiny(), tiny()
    ids = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(0))
    prepared = prepare(model, "bbt-spectral-exact", ids)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert len(prepared.hooked) == 7 * dims["n_layers"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids[:1]).logits, ref(ids[:1]).logits, rtol=1e-4, atol=1e-4)
    online, info = make_online(model, ids[:1, :16])
    assert info["rotations"] == 4 * dims["n_layers"] and {g["block"] for g in info["groups"]} == {"exact"}
    with torch.no_grad():
        torch.testing.assert_close(online(ids[:1]).logits, model(ids[:1]).logits, rtol=1e-5, atol=1e-5)


def test_stateful_lowbit_artifact_with_the_exact_rotation_online(tmp_path):
    """bbt-spectral-exact ships like bbt-spectral: W^ kept at vanilla's width as u2 codes, the rotation online
    (kron: Q_m^T X Q_b); the stateful IR matches the fake-quantized transformed model."""
    pytest.importorskip("auto_round")
    pytest.importorskip("openvino_genai")
    from fuzz.families import family_spec, to_transformers
    from quant.checkpoints import word_tokenizer
    from quant.lowbit import grid_codes
    from quant.online import count_rotations, make_online
    from quant.quantize import QuantConfig, quantize
    from quant.stateful import MODEL_XML, build_artifact, stateful_parity
    # 96 = 12 x 8, 192 = 12 x 16 (Paley I: Q_n not symmetric)
    dims = dict(vocab=64, hidden=96, n_heads=4, n_kv_heads=4, head_dim=24, intermediate=192, n_layers=2)
    model = to_transformers(materialize(build(family_spec("llama", **dims)), seed=3)).float().eval()
    windows = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(0))
    held = {}
    quantize(model, word_tokenizer(64), "bbt-spectral-exact",
             QuantConfig(bits=2, group_size=16, iters=0, nsamples=4, seqlen=32, batch_size=2), windows,
             before_unfold=lambda prepared: held.update(online=make_online(prepared.model, windows[:1, :8])))
    om, info = held["online"]
    assert count_rotations(om) == (4 * dims["n_layers"], 7 * dims["n_layers"])
    codes = grid_codes(om, 2, 16)
    assert codes["model.layers.0.mlp.down_proj.linear.weight"].codes.shape == (96, 192 // 16, 16)  # no padding
    built = build_artifact(om, word_tokenizer(64), tmp_path / "genai", codes)
    assert built["compressed"] == {"replaced": 7 * dims["n_layers"], "bits": 2}
    prompt = torch.randint(0, 64, (1, 9), generator=torch.Generator().manual_seed(1))
    report = stateful_parity(om, tmp_path / "genai" / MODEL_XML, prompt, steps=4)
    assert report["max_rel_err"] <= 1e-5 and report["tokens_agree"], report
