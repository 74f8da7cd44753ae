"""Layers of their own (issue 18) export to OpenVINO and match PyTorch at CPU f32: a GLU layer then a plain gelu
layer, unscaled RoPE then linear-scaled (Gemma3 style), past the scaled table's lengths (12 tokens)."""

import pytest
import torch

from fuzz import DecoderSpec, LayerSpec, build, materialize


@pytest.mark.slow
def test_layers_with_their_own_mlp_and_rope_scaling_export_and_match(cpu_f32_parity):
    layout = build(DecoderSpec(layers=(LayerSpec(), LayerSpec(rope_scaling="linear", mlp="gelu"))))
    assert {layout.params(n)["fn"] for n in layout.of_op("act")} == {"silu", "gelu"}
    model = materialize(layout, dtype=torch.float32, seed=3)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    assert cpu_f32_parity(model, ids)["ok"]
