"""Padding masks: ``GraphModel.forward(ids, attention_mask)`` with left padding, against structural oracles and
transformers' own ``attention_mask`` handling (the import check runs one padded batch)."""

import pytest
import torch

from fuzz import BadInput, DecoderSpec, LayerSpec, build, materialize
from fuzz.materialize import GraphModel

PAD = 5


def _batch(vocab=64, seq=16, seed=0):
    ids = torch.randint(0, vocab, (2, seq), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, :PAD] = 0
    return ids, mask


def test_no_mask_and_an_all_ones_mask_compute_as_before():
    model = materialize(build(DecoderSpec(layers=(LayerSpec(), LayerSpec()), sliding_window=4)), seed=1)
    ids, _ = _batch()
    with torch.no_grad():
        plain = model(ids)
        assert torch.equal(model(ids, attention_mask=torch.ones_like(ids)), plain)
        assert torch.equal(model(ids, attention_mask=None), plain)


@pytest.mark.parametrize("window", [None, 3])
def test_left_padding_is_invisible_to_the_real_tokens_without_positions(window):
    """Without RoPE (positions enter nowhere) a left-padded row computes, at its tokens, exactly the logits of
    the same tokens unpadded; the padded positions stay finite."""
    layout = build(DecoderSpec(layers=(LayerSpec(rope=False), LayerSpec(rope=False, sliding=False)),
                               sliding_window=window))
    model = materialize(layout, seed=2)
    ids, mask = _batch()
    with torch.no_grad():
        padded = model(ids, attention_mask=mask)
        alone = model(ids[1:, PAD:])
        unmasked = model(ids)
    assert torch.isfinite(padded).all()
    assert torch.allclose(padded[1, PAD:], alone[0], rtol=0, atol=1e-12)
    assert torch.equal(padded[0], unmasked[0])  # the unpadded row is untouched
    assert (padded[1, PAD:] - unmasked[1, PAD:]).abs().max() > 1e-3  # the padding was masked, not read


def test_a_bad_attention_mask_is_bad_input():
    model = materialize(build(DecoderSpec()), seed=0)
    ids, mask = _batch()
    with pytest.raises(BadInput, match="attention_mask must be a"):
        model(ids, attention_mask=mask[:, :3])
    with pytest.raises(BadInput, match="1 \\(token\\) and 0 \\(padding\\)"):
        model(ids, attention_mask=mask * 2)


def test_the_import_check_runs_a_padded_batch_and_refuses_a_graph_that_ignores_padding(monkeypatch):
    from benchmarks import import_check_families as families
    from fuzz.importer import import_model
    hf = families.from_config("mistral (sliding_window=8)")
    padded = import_model(hf).layout.meta["import_check"]["padded"]
    assert padded["shape"] == [2, 24] and padded["left_padding"] == 7 and padded["max_rel_err"] <= 1e-10, padded
    forward = GraphModel.forward
    monkeypatch.setattr(GraphModel, "forward", lambda self, ids, attention_mask=None: forward(self, ids))
    with pytest.raises(BadInput, match=r"not exact on a padded batch.*left padding of 7 tokens"):
        import_model(hf)
