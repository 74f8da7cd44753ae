"""A logit bias (the lm_head's ``bias``, GPT-J / CodeGen) exports to OpenVINO and matches PyTorch at CPU f32."""

import pytest
import torch

from fuzz import DecoderSpec, LayerSpec, build, materialize
from quant.parity import GATE, compare


@pytest.mark.slow
def test_lm_head_bias_exports_and_matches():
    layout = build(DecoderSpec(lm_head_bias=True, layers=(LayerSpec(), LayerSpec())))
    model = materialize(layout, dtype=torch.float32, seed=3)
    with torch.no_grad():  # a bias that matters at f32: as large as the logits themselves
        model.nodes["lm_head"].bias.mul_(50.0)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    report = compare(model, ids, devices=["CPU"], hints=["f32"], timeout=300)
    assert report["ok"], report["export"]
    (row,) = report["rows"]
    assert row["rel_err"] <= GATE["rel_err"]
