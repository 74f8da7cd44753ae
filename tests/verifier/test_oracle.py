"""The oracle on layouts and on arbitrary modules: verdicts, errors, near-ties, repro scripts."""

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from fuzz import BadInput, DecoderSpec, LayerSpec, Refusal, build
import quant.transforms as transforms
from verifier import assert_invariant, default_tolerance, reference, verify


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).to(torch.float64).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.3 * torch.randn_like(p))  # non-trivial norm weights
    return model


def scale_values(model, calib):
    """Exact on any Llama: v_proj rows times s, o_proj columns divided by s (per kv channel, repeated)."""
    for layer in model.model.layers:
        attn = layer.self_attn
        kv_width = attn.v_proj.out_features
        s = torch.linspace(0.5, 2.0, kv_width, dtype=torch.float64)
        group = attn.o_proj.in_features // kv_width
        with torch.no_grad():
            attn.v_proj.weight.mul_(s[:, None])
            hd = attn.head_dim
            s_heads = s.reshape(-1, hd).repeat_interleave(group, dim=0).reshape(-1)
            attn.o_proj.weight.div_(s_heads[None, :])
    return model


def break_one_query(model, calib):
    with torch.no_grad():
        model.model.layers[1].self_attn.q_proj.weight[0].mul_(1.5)
    return model


def test_module_subject_invariant_and_diverged():
    model = tiny_llama()
    good = verify(scale_values, model)
    assert good.ok and good.max_rel_err < 1e-12, good
    bad = verify(break_one_query, model)
    assert bad.status == "diverged"
    assert bad.first_divergent["node"] == "model.layers.1.self_attn.q_proj"
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), tiny_llama().parameters()))  # untouched


def test_transform_failures_are_verdicts_not_crashes():
    layout = build(DecoderSpec())

    def raises(model, calib):
        raise ValueError("boom")

    def refuses(model, calib):
        raise Refusal("mine", "cannot", op="norm", path="l0_attn_norm", feature="x")

    def returns_none(model, calib):
        return None

    def makes_nan(model, calib):
        with torch.no_grad():
            model.nodes["l0_q_proj"].weight.fill_(float("nan"))
        return model

    assert verify(raises, layout).status == "error"
    assert "ValueError: boom" in verify(raises, layout).message
    refused = verify(refuses, layout)
    assert refused.refused and "l0_attn_norm" in refused.message and not refused.ok
    assert "returned NoneType" in verify(returns_none, layout).message
    assert verify(makes_nan, layout).status == "non-finite"


def test_not_a_causal_lm_is_bad_input():
    class Bidirectional(nn.Module):
        config = type("C", (), {"vocab_size": 10})()

        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4, dtype=torch.float64)
            self.out = nn.Linear(4, 10, dtype=torch.float64)

        def forward(self, ids):
            h = self.emb(ids)
            return self.out(h + h.mean(dim=1, keepdim=True))

    with pytest.raises(BadInput, match="not causal"):
        verify(reference.get("identity"), Bidirectional())

    class Classifier(Bidirectional):
        def forward(self, ids):
            return self.out(self.emb(ids)).mean(dim=1)

    with pytest.raises(BadInput, match="not a causal LM"):
        verify(reference.get("identity"), Classifier())
    with pytest.raises(BadInput, match="vocabulary size"):
        verify(reference.get("identity"), nn.Linear(3, 3))
    with pytest.raises(BadInput, match="Layout or a torch.nn.Module"):
        verify(reference.get("identity"), "model.safetensors")


def test_moe_near_ties_are_set_aside_not_reported_as_bugs():
    layout = build(DecoderSpec(layers=(LayerSpec(sparse=True),), n_experts=2, top_k=1))

    def tie_router(model, calib):
        return model

    from fuzz import materialize
    model = materialize(layout)
    with torch.no_grad():  # both experts get the same logits: every token is an exact tie
        w = model.nodes["l0_mlp_router_proj"].weight
        w[1] = w[0]
    verdict = verify(tie_router, model, batch=3, seq=5)
    assert verdict.status == "inconclusive" and verdict.near_ties_set_aside == 15
    assert not verdict.ok


def test_float32_mode_has_its_own_bound():
    layout = build(DecoderSpec(layers=(LayerSpec(), LayerSpec())))
    verdict = verify(reference.get("permute_hidden", seed=1), layout, dtype=torch.float32)
    assert verdict.ok and verdict.tolerance["rel"] == default_tolerance(torch.float32).rel
    with pytest.raises(BadInput, match="float64 or float32"):
        default_tolerance(torch.float16)


def test_repro_script_rebuilds_and_reruns():
    layout = build(DecoderSpec(o_bias=True))
    from verifier import mutants
    bad = verify(mutants.get("forget_writer_bias", seed=2), layout, seed=3)
    assert bad.status == "diverged"
    with pytest.raises(AssertionError):
        exec(compile(bad.repro(), "repro.py", "exec"), {})
    good = verify(reference.get("permute_hidden", seed=2), layout, seed=3)
    exec(compile(good.repro(), "repro.py", "exec"), {})


def test_assert_invariant_fails_with_the_repro():
    from verifier import mutants
    layout = build(DecoderSpec(qk_norm="none"))
    with pytest.raises(AssertionError, match="--- repro ---"):
        assert_invariant(mutants.get("pair_reflection"), layout)
    assert assert_invariant(transforms.get("pair-pca"), layout).ok
    refused = assert_invariant(transforms.get("pair-pca"), build(DecoderSpec(qk_norm="per_head")))
    assert refused.refused
    with pytest.raises(AssertionError):
        assert_invariant(transforms.get("pair-pca"), build(DecoderSpec(qk_norm="per_head")),
                         allow_refusal=False)


def test_calibration_and_test_inputs_are_disjoint_draws():
    from fuzz import materialize
    seen, forwarded = {}, []

    def spy(model, calib):
        seen["calib"] = calib.input_ids.clone()
        return model

    model = materialize(build(DecoderSpec()))
    model.nodes["tokens"].register_forward_pre_hook(lambda mod, args: forwarded.append(args[0].clone()))
    verify(spy, model, seed=7)
    assert seen["calib"].shape == (4, 12) and forwarded
    assert all(not torch.equal(ids, seen["calib"]) for ids in forwarded)


def test_near_ties_are_detected_in_foreign_moe_modules():
    """A module without a layout: its torch.topk routing calls are recorded and exact ties set aside."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(vocab_size=40, hidden_size=16, intermediate_size=24, moe_intermediate_size=8,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         num_experts=2, num_experts_per_tok=1, max_position_embeddings=32)
    model = Qwen3MoeForCausalLM._from_config(cfg, experts_implementation="eager").to(torch.float64).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for p in layer.mlp.parameters():
                p.normal_(0, 0.3)
            router = layer.mlp.gate.weight
            router[1] = router[0]  # identical router rows: every token ties between the two experts
    verdict = verify(reference.get("identity"), model, batch=2, seq=6)
    assert verdict.status == "inconclusive" and verdict.near_ties_set_aside == 12


def test_float64_verdict_on_a_module_that_downcasts_says_so():
    verdict = verify(scale_values, tiny_llama())  # transformers' LlamaRMSNorm computes in float32
    assert verdict.ok and "lower precision" in verdict.precision_note
    from fuzz import materialize
    assert verify(reference.get("identity"), materialize(build(DecoderSpec()))).precision_note == ""
