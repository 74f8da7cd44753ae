"""Issue 14, learned positions that follow the ``attention_mask`` (OPT: ``cumsum(mask) * mask - 1 + 2``): the
``position_embedding`` op's ``from_mask`` mode, the ``positions_from_mask`` axis, the importer's measurement on
the check's padded batch (OPT from_mask; GPT-Neo, GPTBigCode, BioGPT plain), the oracle's own padded batch on
such a subject, and the mutant that re-emits plain positions."""

from __future__ import annotations

import pytest
import torch

import quant.transforms as T
from benchmarks.compat import build as build_class
from fuzz import DecoderSpec, LayerSpec, build, materialize
from fuzz.importer import import_model
from fuzz.importer.check import masked_source_logits, padded_batch
from fuzz.importer.logits import relative_error
from verifier import mutants, verify

SPEC = DecoderSpec(position_embedding=True, positions_from_mask=True, layers=(LayerSpec(), LayerSpec()))


def test_a_left_padded_row_reads_its_positions_from_its_first_token():
    model = materialize(build(SPEC), seed=1)
    plain = materialize(build(SPEC.with_(positions_from_mask=False)), seed=1)
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        assert torch.equal(model(ids), plain(ids))  # unpadded: the two modes are one function
        padded = model(ids, attention_mask=mask)
        alone = model(ids[1:, 3:])
        wrong = plain(ids, attention_mask=mask)
    assert (padded[1, 3:] - alone[0]).abs().max() <= 1e-12 * alone.abs().max()  # the row as if unpadded
    assert (wrong[1, 3:] - alone[0]).abs().max() > 1e-2 * alone.abs().max()
    assert "embeddings:positions:from_mask" in SPEC.features()
    assert "op:position_embedding:from_mask" in build(SPEC).op_features()
    assert build(DecoderSpec(positions_from_mask=True)) == build(DecoderSpec())  # a mode of learned positions
    assert "embeddings:positions:from_mask" not in DecoderSpec(positions_from_mask=True).features()


def test_opt_imports_exactly_with_positions_that_follow_the_mask():
    model = build_class("OPTForCausalLM")
    gm = import_model(model)
    (node,) = gm.layout.of_op("position_embedding")
    assert gm.layout.params(node)["from_mask"] and gm.layout.params(node)["start"] == 2
    modes = gm.layout.meta["position_mode"]
    assert modes["from_mask"] <= 1e-10 < 1e-2 < modes["arange"]  # measured on the padded batch, not named
    check = gm.layout.meta["import_check"]
    assert check["floor"] == "exact" and check["padded"]["max_rel_err"] <= 1e-10
    ids, mask = padded_batch(gm, 24, gm.layout.params(gm.layout.source)["vocab"])
    want = masked_source_logits(model, ids, mask)
    with torch.no_grad():
        got = gm(ids, attention_mask=mask)
    assert relative_error(got[mask.bool()], want[mask.bool()]) <= 1e-10
    caught = verify(mutants.get("positions_unmasked"), gm)  # the imported OPT: the oracle pads by itself
    assert caught.status == "diverged" and caught.first_divergent["op"] == "position_embedding", caught


@pytest.mark.parametrize("name", ["GPTNeoForCausalLM", "GPTBigCodeForCausalLM", "BioGptForCausalLM"])
def test_plain_learned_positions_stay_plain(name):
    """Their padded rows count positions from the first column: measured so, and the import stays exact."""
    gm = import_model(build_class(name))
    (node,) = gm.layout.of_op("position_embedding")
    assert not gm.layout.params(node)["from_mask"]
    modes = gm.layout.meta["position_mode"]
    assert modes["arange"] < modes["from_mask"] and modes["from_mask"] > 1e-2
    assert gm.layout.meta["import_check"]["padded"]["max_rel_err"] <= gm.layout.meta["import_check"]["bound"]


def test_the_oracle_pads_by_itself_and_catches_the_positions_re_emitted_plain():
    layout = build(SPEC)
    verdict = verify(mutants.get("positions_unmasked"), layout)
    assert verdict.status == "diverged" and "left-padded batch" in verdict.message, verdict
    assert verdict.first_divergent["node"] == "embed_positions", verdict
    assert verdict.control["padded"]["rows_padded"] == 2
    # the same mutant on plain positions changes nothing, and the transform itself keeps the mode
    assert verify(mutants.get("positions_unmasked"), build(SPEC.with_(positions_from_mask=False))).ok
    good = verify(T.get("wht-scale"), layout)
    assert good.ok and good.control["padded"]["max_rel_err"] <= 1e-12, good
