"""A bias on the logits (GPT-J, CodeGen: ``lm_head = nn.Linear(..., bias=True)``): the ``lm_head`` op's
``bias`` parameter, drawn by the ``lm_head_bias`` axis, imported from the recording, kept by every transform,
exported, and a rewrite that drops it is caught."""

from __future__ import annotations

import copy

import pytest
import torch

from benchmarks.compat import build as build_hf
from fuzz import DecoderSpec, LayerSpec, build, materialize
from fuzz.importer import import_model
from fuzz.layout import Layout
from verifier import mutants, verify

SPEC = DecoderSpec(lm_head_bias=True, layers=(LayerSpec(), LayerSpec()))


def test_the_bias_is_a_parameter_of_the_lm_head_and_shifts_every_logit():
    layout = build(SPEC)
    assert layout.params("lm_head")["bias"] is True
    assert "logits:bias" in SPEC.features() and "logits:bias" not in DecoderSpec().features()
    assert Layout.from_dict(layout.to_dict()).hash() == layout.hash()
    model = materialize(layout, seed=1)
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        bias = model.nodes["lm_head"].bias
        kept = bias.clone()
        assert bias.shape == (64,) and kept.abs().max() > 0
        want = model(ids)
        bias.zero_()
        assert torch.allclose(want - model(ids), kept.expand_as(want), rtol=0, atol=1e-12)


def test_a_tied_lm_head_keeps_its_own_bias():
    layout = build(SPEC.with_(tie_embeddings=True))
    model = materialize(layout, seed=2)
    head = model.nodes["lm_head"]
    assert head.weight is model.nodes["embed"].weight and head.bias.abs().max() > 0
    clone = copy.deepcopy(model)
    assert torch.equal(clone.nodes["lm_head"].bias, head.bias)


@pytest.mark.parametrize("name", ["GPTJForCausalLM", "CodeGenForCausalLM"])
def test_gptj_and_codegen_import_exactly_with_their_logit_bias(name):
    hf = build_hf(name)
    assert hf.lm_head.bias is not None
    gm = import_model(hf)
    assert max(gm.layout.meta["import_check"]["max_rel_err"].values()) <= 1e-10
    assert gm.layout.params("lm_head")["bias"] is True
    assert gm.nodes["lm_head"].bias is hf.lm_head.bias


def test_dropping_the_bias_in_a_rewrite_is_caught_at_the_lm_head():
    verdict = verify(mutants.get("lm_head_bias_dropped"), build(SPEC))
    assert verdict.status == "diverged", str(verdict)
    assert verdict.first_divergent["node"] == "lm_head", verdict
    assert verify(mutants.get("lm_head_bias_dropped"), build(DecoderSpec())).status == "invariant"


def test_every_transform_keeps_the_bias_or_refuses():
    from quant import transforms

    layout = build(SPEC)
    for name in transforms.names():
        verdict = verify(transforms.get(name), layout)
        assert verdict.status in ("invariant", "refused"), (name, str(verdict))


def test_a_tied_lm_head_with_a_bias_imports_to_itself_exactly():
    gm = materialize(build(SPEC.with_(tie_embeddings=True)), seed=4)
    back = import_model(gm)
    assert max(back.layout.meta["import_check"]["max_rel_err"].values()) <= 1e-10
    (head,) = back.layout.of_op("lm_head")
    assert back.layout.params(head)["bias"] is True and back.layout.params(head)["tied_to"] is not None
    assert back.nodes[head].bias is gm.nodes["lm_head"].bias
    assert back.nodes[head].weight is gm.nodes["embed"].weight
