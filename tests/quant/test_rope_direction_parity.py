"""A RoPE by -theta (the rope's ``reversed``, NanoChat) exports to OpenVINO and matches PyTorch at CPU f32; the same
weights rotated by +theta are past the gate, so the export did carry the direction."""

import pytest
import torch

from fuzz import DecoderSpec, LayerSpec, build, materialize
from quant.parity import GATE


@pytest.mark.slow
def test_reversed_rope_exports_and_matches(cpu_f32_parity):
    spec = DecoderSpec(rope_reversed=True, layers=(LayerSpec(), LayerSpec()))
    model = materialize(build(spec), dtype=torch.float32, seed=3)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    cpu_f32_parity(model, ids)
    forward = materialize(build(spec.with_(rope_reversed=False)), dtype=torch.float32, seed=3)
    with torch.no_grad():
        a, b = model(ids), forward(ids)
    assert float((a - b).abs().max() / b.abs().max()) > GATE["rel_err"]
