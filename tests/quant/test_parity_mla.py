"""Multi-head latent attention survives the OpenVINO export: an MLA layout (latent q and kv, the decoupled RoPE key
shared by every head, value heads narrower than the score heads) exported to OpenVINO matches PyTorch at CPU f32
within the gate, while a key whose shared RoPE part is dropped moves the logits far beyond it."""

import pytest
import torch

from fuzz import DecoderSpec, LayerSpec, build, materialize
from quant.parity import GATE


@pytest.mark.slow
def test_an_mla_layout_exports_and_matches(cpu_f32_parity):
    layout = build(DecoderSpec(mla="q_lora", rope_style="interleaved", head_dim=4, rotary_dim=2, n_heads=3,
                               n_kv_heads=1, hidden=24, layers=(LayerSpec(), LayerSpec(sparse=True))))
    model = materialize(layout, dtype=torch.float32, seed=3)
    ids = torch.randint(0, 64, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids)
        for n in layout.of_op("head_concat"):  # zero the shared k_pe: the RoPE key is gone
            if layout.params(n)["shared_b"]:
                model.nodes[n].register_forward_pre_hook(lambda mod, args: (args[0], torch.zeros_like(args[1])))
        wrong = model(ids)
    assert ((wrong - ref).abs().max() / ref.abs().max()).item() > 1e3 * GATE["rel_err"]
    model = materialize(layout, dtype=torch.float32, seed=3)
    cpu_f32_parity(model, ids)
