"""Sliding windows survive the OpenVINO export: a windowed layout exported past 2 W + 8 tokens matches PyTorch
at CPU f32 within the gate, while dropping the window moves the logits far beyond it (so the gate would see an
exporter that dropped it)."""

import pytest
import torch

from fuzz import DecoderSpec, LayerSpec, build, materialize
from fuzz.importer.window import with_windows
from quant.parity import GATE


@pytest.mark.slow
def test_a_windowed_layout_exports_with_its_window(cpu_f32_parity):
    layout = build(DecoderSpec(layers=(LayerSpec(), LayerSpec(sliding=False)), sliding_window=3))
    model = materialize(layout, dtype=torch.float32, seed=3)
    ids = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(0))
    dropped = materialize(with_windows(layout, {n: None for n in layout.of_op("attention")}), dtype=torch.float32,
                          seed=3)
    with torch.no_grad():
        ref, wrong = model(ids), dropped(ids)
    assert ((wrong - ref).abs().max() / ref.abs().max()).item() > 1e3 * GATE["rel_err"]
    cpu_f32_parity(model, ids)
