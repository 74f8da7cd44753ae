"""GPT-OSS imported from its recording: RoPE in the halves form (``x1 cos - x2 sin``, ``x2 cos + x1 sin`` with
tables half the head wide) read as a rotation of the whole head, YaRN scaling, the sinks (``cat([scores,
sinks])``, the max subtraction, softmax, ``[..., :-1]``) read as the attention's sink logits."""

from __future__ import annotations

import pytest
import torch

from benchmarks.compat import build as build_hf
from fuzz.errors import BadInput
from fuzz.importer import import_model
from fuzz.record import record


@pytest.fixture(scope="module")
def gpt_oss():
    hf = build_hf("GptOssForCausalLM")
    return hf, import_model(hf)


def test_gpt_oss_imports_within_its_bound_with_sinks_yarn_and_its_experts(gpt_oss):
    hf, gm = gpt_oss
    check = gm.layout.meta["import_check"]
    assert check["max_rel_err"]  # the import check ran and passed (refusal would have raised)
    head_dim = hf.config.head_dim
    for node in gm.layout.of_op("rope"):
        p = gm.layout.params(node)
        assert (p["rotary_dim"], p["style"], p["scaling"]) == (head_dim, "half", "yarn")
    attns = gm.layout.of_op("attention")
    assert attns and all(gm.layout.params(n)["sinks"] for n in attns)
    for i, node in enumerate(sorted(attns)):
        assert gm.nodes[node].sinks is hf.model.layers[i].self_attn.sinks
    experts = [gm.layout.params(n) for n in gm.layout.of_op("experts")]
    assert experts and all((p["act"], p["bias"], p["transposed"], p["interleaved"]) ==
                           ("clamped_swiglu", True, True, True) for p in experts)  # the gpt_oss expert form
    assert check["floor"] == "float32"  # the model downcasts (its own float32 ops), so its float32 bound holds


def test_the_sinks_are_part_of_the_imported_function(gpt_oss):
    hf, gm = gpt_oss
    ids = torch.randint(0, hf.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = hf(ids).logits
        assert torch.allclose(gm(ids), want, rtol=0, atol=1e-5 * float(want.abs().max()))
        node = sorted(gm.layout.of_op("attention"))[0]
        saved = gm.nodes[node].sinks.clone()
        gm.nodes[node].sinks.add_(3.0)
        try:
            assert not torch.allclose(gm(ids), want, rtol=0, atol=1e-3 * float(want.abs().max()))
        finally:
            gm.nodes[node].sinks.copy_(saved)


def test_the_recording_contracts_the_sink_chain_into_the_attention():
    rec = record(build_hf("GptOssForCausalLM"))
    (node, *_) = rec.of_op("attention")
    d = rec.graph.nodes[node]
    assert d["params"] == ["model.layers.0.self_attn.sinks"]
    assert [s[0] for s in d["score_chain"]][-4:] == ["sink", "stabilize", "softmax", "drop_sink"]
    assert not [n for n in rec.order if rec.graph.nodes[n].get("call") in ("max", "softmax")]


def test_sinks_the_recording_does_not_show_are_refused_by_name():
    hf = build_hf("GptOssForCausalLM")
    attn = hf.model.layers[0].self_attn
    import transformers.models.gpt_oss.modeling_gpt_oss as mod

    real = mod.eager_attention_forward

    def no_sinks(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):  # sinks ignored
        from transformers.models.llama.modeling_llama import eager_attention_forward
        return eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout)

    mod.eager_attention_forward = no_sinks
    try:
        with pytest.raises(BadInput, match=r"model\.layers\.0\.self_attn \(attention sinks .* the recorded "
                                           r"attention does not read"):
            import_model(hf)
    finally:
        mod.eager_attention_forward = real
    assert attn.sinks is not None
