"""Learned positions that follow the attention_mask (OPT's ``from_mask``) export to OpenVINO: the exported
graph takes token ids only (no attention_mask), where the mode reads rows ``start .. start + seq - 1`` like plain
positions, and matches PyTorch at CPU f32 within the gate."""

import pytest
import torch

from fuzz import DecoderSpec, LayerSpec, build, materialize


@pytest.mark.slow
def test_positions_from_mask_export_and_match(cpu_f32_parity):
    layout = build(DecoderSpec(position_embedding=True, positions_from_mask=True, layers=(LayerSpec(), LayerSpec())))
    assert layout.params("embed_positions")["from_mask"]
    model = materialize(layout, dtype=torch.float32, seed=3)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    cpu_f32_parity(model, ids)
