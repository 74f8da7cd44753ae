"""A logit bias (the lm_head's ``bias``, GPT-J / CodeGen) exports to OpenVINO and matches PyTorch at CPU f32."""

import pytest
import torch

from fuzz import DecoderSpec, LayerSpec, build, materialize


@pytest.mark.slow
def test_lm_head_bias_exports_and_matches(cpu_f32_parity):
    layout = build(DecoderSpec(lm_head_bias=True, layers=(LayerSpec(), LayerSpec())))
    model = materialize(layout, dtype=torch.float32, seed=3)
    with torch.no_grad():  # a bias that matters at f32: as large as the logits themselves
        model.nodes["lm_head"].bias.mul_(50.0)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    assert cpu_f32_parity(model, ids)["ok"]
