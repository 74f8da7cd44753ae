"""Per-layer input embeddings (Gemma4 PLE) export to OpenVINO and match PyTorch at CPU f32: the second token
table, the grouped norm of the embedding's projection and each layer's slice."""

import pytest
import torch

from fuzz import DecoderSpec, LayerSpec, build, materialize


@pytest.mark.slow
def test_a_per_layer_input_layout_exports_and_matches(cpu_f32_parity):
    layout = build(DecoderSpec(per_layer_input=4, placement="sandwich", layers=(LayerSpec(), LayerSpec())))
    model = materialize(layout, dtype=torch.float32, seed=3)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    assert cpu_f32_parity(model, ids)["ok"]
