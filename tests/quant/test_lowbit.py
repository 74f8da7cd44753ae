"""The low-bit OpenVINO artifact: exact integer codes, u2/u4 packing, the compressed IR's parity and size,
and the refusals (a folded rotation off the grid, unsupported requests)."""

import numpy as np
import openvino as ov
import pytest
import torch

from fuzz import BadInput, build, materialize
from fuzz.families import family_spec, to_transformers
from quant.checkpoints import word_tokenizer
from quant.lowbit import artifact_markdown, artifact_report, check_lowbit_request, grid_codes, pack
from quant.quantize import QuantConfig, quantize

pytest.importorskip("auto_round")

DIMS = dict(vocab=64, hidden=64, n_heads=4, n_kv_heads=2, head_dim=16, intermediate=128, n_layers=2)


def quantized(recipe: str, bits: int):
    model = to_transformers(materialize(build(family_spec("llama", **DIMS)), seed=3)).float().eval()
    windows = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(0))
    cfg = QuantConfig(bits=bits, group_size=16, iters=0, nsamples=4, seqlen=32, batch_size=2)
    quantize(model, word_tokenizer(64), recipe, cfg, windows)
    return model


@pytest.mark.parametrize("bits", [2, 4])
def test_packing_matches_openvino_layout(bits):
    q = np.random.default_rng(bits).integers(0, 2 ** bits, (5, 3, 8)).astype(np.uint8)
    t = ov.Tensor(ov.Type.u2 if bits == 2 else ov.Type.u4, ov.Shape(list(q.shape)))
    t.data[:] = pack(q, bits).reshape(t.data.shape)
    out = ov.Core().compile_model(ov.Model([ov.opset13.convert(ov.op.Constant(t), ov.Type.f32)], [], "t"), "CPU")({})
    assert np.array_equal(next(iter(out.values())), q.astype(np.float32))


def test_codes_reconstruct_every_quantized_weight_exactly():
    model = quantized("bbt-absorb", 4)
    codes = grid_codes(model, 4, 16)
    assert len(codes) == 7 * DIMS["n_layers"]
    c = codes["model.layers.0.mlp.down_proj.weight"]
    w = model.model.layers[0].mlp.down_proj.weight.detach()
    back = (c.codes.astype(np.float32) - c.zero) * c.scale.astype(np.float32)
    assert c.codes.max() < 16 and np.array_equal(back.reshape(w.shape), w.numpy())


@pytest.mark.slow
def test_lowbit_ir_is_smaller_and_as_exact_as_the_dequantized_one(tmp_path):
    model = quantized("none", 2)
    codes = grid_codes(model, 2, 16)
    ids = torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(1))
    report = artifact_report(model, codes, ids, tmp_path, repeats=2)
    rows = {r["artifact"]: r for r in report["rows"]}
    f32, f16, low = rows["dequantized f32 IR"], rows["dequantized f16 IR"], rows["low-bit u2 IR"]
    assert all(r["symptom"] == "ok" for r in rows.values()), rows
    assert report["compressed"]["replaced"] == len(codes)
    assert low["rel_err"] <= 1e-5 and low["top1"] == 1.0 and abs(low["dppl"]) <= 0.01
    assert low["rel_err"] == pytest.approx(f32["rel_err"], rel=0.5, abs=1e-6)  # decompression is exact
    assert low["ir_mib"] < f16["ir_mib"] < f32["ir_mib"]
    xml = (tmp_path / "prefill" / "u2" / "model.xml").read_text()
    assert 'element_type="u2"' in xml
    assert "| low-bit u2 IR |" in artifact_markdown(report, "tiny")


def test_a_folded_rotation_is_refused_by_name():
    model = quantized("bbt-spectral", 2)  # T1 unfold: W_eff = fwht(W^/s)[:, :d] is dense, off the grid
    with pytest.raises(BadInput, match=r"model\.layers\.0\..*not on its 2-bit grid"):
        grid_codes(model, 2, 16)


@pytest.mark.parametrize("recipe,bits,sym,why", [("autoround-hadamard", 2, False, "not on a 2-bit grid"),
                                                 ("none", 3, False, "2 or 4 bits"), ("none", 4, True, "asymmetric")])
def test_unsupported_requests_are_refused_up_front(recipe, bits, sym, why):
    with pytest.raises(BadInput, match=why):
        check_lowbit_request(recipe, QuantConfig(bits=bits, group_size=16, iters=0, nsamples=4, seqlen=32, sym=sym))


def test_bbt_spectral_is_accepted_its_rotation_runs_online():
    for bits in (2, 4):
        check_lowbit_request("bbt-spectral", QuantConfig(bits=bits, group_size=16, iters=0, nsamples=4, seqlen=32))


def test_no_quantized_linear_is_bad_input():
    model = to_transformers(materialize(build(family_spec("llama", **DIMS)), seed=3)).float()
    with pytest.raises(BadInput, match="quantize the model first"):
        grid_codes(model, 4, 16)
