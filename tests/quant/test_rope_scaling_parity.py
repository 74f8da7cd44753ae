"""Scaled RoPE and per-layer theta export to OpenVINO and match PyTorch at CPU f32 (past the dynamic and
longrope switch length: 12 tokens > max_positions 8)."""

import pytest
import torch

from fuzz import DecoderSpec, LayerSpec, build, materialize


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dynamic", "proportional"])  # the length-dependent table, zero frequencies
def test_scaled_rope_exports_and_matches(kind, cpu_f32_parity):
    layout = build(DecoderSpec(rope_scaling=kind, layers=(LayerSpec(), LayerSpec(rope_theta=1e6))))
    model = materialize(layout, dtype=torch.float32, seed=3)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    assert cpu_f32_parity(model, ids)["ok"]
