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


def test_score_bias_tells_alibi_from_a_mask_and_from_any_other_bias():
    from fuzz.record.contract import score_bias
    t, slopes = 6, torch.tensor([0.5, 0.125, 0.03125], dtype=torch.float64)
    pos = torch.arange(t, dtype=torch.float64)
    causal = torch.full((t, t), torch.finfo(torch.float64).min, dtype=torch.float64).triu(1)
    alibi_abs = (slopes[:, None, None] * pos[None, None, :]).to(torch.float64)  # BLOOM/MPT: slope * key position
    shape = [1, 3, t, t]
    assert score_bias([(alibi_abs, shape), (causal, shape)], 3) == {"kind": "alibi", "slopes": slopes.tolist()}
    assert score_bias([(causal[None, None], shape)], 3) == {"kind": "none"}
    assert score_bias([(torch.randn(1, 3, t, t, dtype=torch.float64), shape)], 3) == {"kind": "other"}
    window = causal.clone()
    window[torch.arange(t)[:, None] - torch.arange(t)[None, :] >= 2] = float("-inf")  # a sliding window: a mask
    assert score_bias([(window, shape)], 3) == {"kind": "none"}


def test_mpt_imports_with_alibi_exact_against_the_model():
    model = build("MptForCausalLM")
    gm = import_model(model)
    assert all(gm.layout.params(a)["alibi"] for a in gm.layout.of_op("attention"))
    _exact(gm, model)
