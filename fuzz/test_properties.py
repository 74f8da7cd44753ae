"""Layout discovery: the properties `pytest fuzz/` runs over the whole synthesizer space.

Each property draws layouts constructively (see fuzz.strategies) and asks the float64 oracle whether a
transform preserves the function.  Transforms come from registries, so adding a transform to a registry
adds it to the campaign.
"""

import pytest
import torch
from hypothesis import given

import quant.transforms as transforms
from fuzz import materialize, strategies as st_layouts
from verifier import assert_invariant, reference


@given(layout=st_layouts.layouts(), seed=st_layouts.seeds())
def test_every_layout_materializes_to_a_finite_causal_lm(layout, seed):
    model = materialize(layout, seed=seed)
    vocab = layout.params(layout.source)["vocab"]
    ids = torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(seed))
    logits = model(ids)  # the logits' vocabulary: the ids read, or fewer (extra_input_id: ids never predicted)
    assert logits.shape == (2, 9, layout.widths[layout.sink]) and logits.dtype == torch.float64
    assert layout.widths[layout.sink] == vocab - int(layout.meta["spec"].get("extra_input_id", False))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", reference.names())
@given(layout=st_layouts.layouts(), seed=st_layouts.seeds())
def test_reference_transforms_preserve_every_layout(name, layout, seed):
    options = {} if name == "identity" else {"seed": seed % 1000}
    verdict = assert_invariant(reference.get(name, **options), layout, seed=seed % 1000)
    if verdict.ok:
        assert verdict.max_rel_err <= 1e-12, verdict


@pytest.mark.parametrize("name", transforms.names())
@given(layout=st_layouts.layouts(), seed=st_layouts.seeds())
def test_library_transforms_and_recipes_preserve_or_refuse(name, layout, seed):
    """Every transform and recipe of quant.transforms: invariant in float64 (<= 1e-12) or an honest refusal."""
    verdict = assert_invariant(transforms.get(name), layout, seed=seed % 1000)
    if verdict.ok:
        assert verdict.max_rel_err <= 1e-12, verdict
