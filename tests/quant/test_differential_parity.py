"""A differential attention (DiffLlama: heads i and i + h/2 paired over [V_j; V_{j + kv/2}], P_i - lam P_{i + h/2}) exports
to OpenVINO and matches PyTorch at CPU f32; the same weights with lam's vectors moved are past the gate, so the export
did carry lam."""

import pytest
import torch

from fuzz import DecoderSpec, LayerSpec, build, materialize
from quant.parity import GATE


@pytest.mark.slow
def test_differential_attention_exports_and_matches(cpu_f32_parity):
    spec = DecoderSpec(attn_differential=True, n_heads=4, n_kv_heads=2, layers=(LayerSpec(), LayerSpec()))
    model = materialize(build(spec), dtype=torch.float32, seed=3)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    cpu_f32_parity(model, ids)
    other = materialize(build(spec), dtype=torch.float32, seed=3)
    with torch.no_grad():
        for attn in other.layout.of_op("attention"):
            other.nodes[attn].lambda_q1.mul_(-1.0)  # exp(q1 . k1) -> exp(-q1 . k1): another lam
        a, b = model(ids), other(ids)
    assert float((a - b).abs().max() / b.abs().max()) > GATE["rel_err"]
