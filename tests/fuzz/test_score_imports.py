"""Attention-score and projection forms the importer measures from a recording (issue 14): unscaled scores
(GPT-Neo), ``x @ W.T`` projections (Falcon), ALiBi slopes (MPT, BLOOM), and the classes refused by name.
Every import here is checked against the model's logits (also on a padded batch) by ``import_model``."""

import pytest
import torch

from benchmarks.compat import build
from fuzz.errors import BadInput
from fuzz.importer import import_model


def _exact(gm, model, length=24):
    ids = torch.randint(0, 64, (2, length), generator=torch.Generator().manual_seed(3))
    check = gm.layout.meta["import_check"]
    assert check["max_rel_err"][check["numerics"]] <= check["bound"]
    with torch.no_grad():
        want = model(ids).logits
        assert torch.allclose(gm(ids), want, rtol=0, atol=10 * check["bound"] * float(want.abs().max()))


def test_gpt_neo_scores_are_not_scaled_and_import_with_scale_one():
    model = build("GPTNeoForCausalLM")
    gm = import_model(model)
    layout = gm.layout
    assert [layout.params(a)["scale"] for a in layout.of_op("attention")] == [1.0, 1.0]
    _exact(gm, model)
