"""verify(..., padding=N): once the logits match, a left-padded batch runs through the subject and the
transformed model and only the non-padded positions are compared."""

import pytest
import torch
from torch import nn

import quant.transforms as T
from fuzz import BadInput, DecoderSpec, LayerSpec, build
from verifier import verify


class IgnoresPadding(nn.Module):
    """The transformed model drops the attention_mask: the same function on unpadded rows, another on padded."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, attention_mask=None):
        return self.model(ids)


LAYOUT = build(DecoderSpec(layers=(LayerSpec(), LayerSpec(sliding=False)), sliding_window=3))


@pytest.mark.parametrize("name", ["wht-scale", "residual-rotation", "bbt-spectral"])
def test_transforms_preserve_a_padded_batch(name):
    verdict = verify(T.get(name), LAYOUT, padding=4)
    assert verdict.ok, verdict
    padded = verdict.control["padded"]
    assert padded["rows_padded"] == 2 and padded["positions_compared"] == 4 * 15 - 2 * 4, padded
    assert padded["max_rel_err"] <= 1e-12


def test_a_model_that_ignores_the_attention_mask_is_caught_only_on_the_padded_batch():
    assert verify(lambda m, c: IgnoresPadding(m), LAYOUT).ok
    verdict = verify(lambda m, c: IgnoresPadding(m), LAYOUT, padding=4)
    assert verdict.status == "diverged" and "left-padded batch" in verdict.message, verdict


def test_padding_is_checked():
    with pytest.raises(BadInput, match="padding"):
        verify(T.get("wht-scale"), LAYOUT, padding=-1)
    verdict = verify(T.get("wht-scale"), LAYOUT, padding=100)
    assert verdict.status == "error" and "leaves no token" in verdict.message
