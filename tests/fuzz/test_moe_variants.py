"""MoE variants: sigmoid routers with a correction bias, group-limited top-k and a routed scaling factor
(DeepSeek-V3 / GLM-4-MoE), their materializer semantics, their import (measured against the source router)
and the refusal of a router no candidate reproduces."""

import math

import pytest
import torch

from fuzz import DecoderSpec, LayerSpec, build, materialize
from fuzz.errors import BadInput, LayoutError
from fuzz.materialize import MODULES
from fuzz.ops import spec


def _router(**params):
    p = spec("router").normalise("r", {"n_experts": 8, "top_k": 3, **params})
    mod = MODULES["router"]("r", p, "exact")
    if p["correction_bias"]:
        bias = 0.3 * torch.randn(p["n_experts"], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        mod.register_parameter("e_score_correction_bias", torch.nn.Parameter(bias))
    return mod


def _logits(n=200, e=8, seed=0):
    return torch.randn(n, e, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_the_correction_bias_chooses_the_experts_and_never_weighs_them():
    r = _router(score="sigmoid", correction_bias=True, renormalize=False)
    x = _logits()
    out = r(x).detach()
    scores = torch.sigmoid(x)
    chosen = torch.topk(scores + r.e_score_correction_bias.detach(), 3, dim=-1).indices
    assert torch.equal(out != 0, torch.zeros_like(out, dtype=torch.bool).scatter(-1, chosen, True))
    assert torch.equal(out[out != 0], scores[out != 0])  # the weights are the uncorrected scores
    plain = torch.topk(scores, 3, dim=-1).indices.sort(-1).values
    assert not torch.equal(plain, chosen.sort(-1).values)  # the bias does move the choice


def test_group_limited_top_k_keeps_the_best_groups_and_scales_the_weights():
    r = _router(score="sigmoid", correction_bias=True, n_group=4, topk_group=2, scaling=2.5)
    x = _logits()
    out = r(x).detach()
    choice = (torch.sigmoid(x) + r.e_score_correction_bias.detach()).view(-1, 4, 2)
    best = torch.topk(choice.topk(2, dim=-1).values.sum(-1), 2, dim=-1).indices
    used = (out.view(-1, 4, 2) != 0).any(-1)
    assert torch.equal(used | torch.zeros_like(used).scatter(-1, best, True),
                       torch.zeros_like(used).scatter(-1, best, True))  # only experts of the kept groups
    assert torch.allclose(out.sum(-1), torch.full((x.shape[0],), 2.5, dtype=torch.float64))
    assert r.last_margin.shape == (x.shape[0],) and bool((r.last_margin >= 0).all())


def test_the_default_router_is_todays_softmax_router():
    x = _logits()
    r = _router()
    probs = torch.softmax(x, -1)
    top, idx = torch.topk(probs, 3, dim=-1)
    want = torch.zeros_like(probs).scatter(-1, idx, top / top.sum(-1, keepdim=True))
    assert torch.equal(r(x), want)


@pytest.mark.parametrize("bad, why", [({"n_group": 3}, "multiple of n_group"), ({"n_group": 8}, "top-2"),
                                      ({"n_group": 4, "topk_group": 5}, "topk_group"),
                                      ({"n_group": 4, "topk_group": 1, "top_k": 3}, "experts of topk_group"),
                                      ({"scaling": 0.0}, "scaling")])
def test_invalid_router_parameters_are_refused_by_name(bad, why):
    from fuzz import Layout
    with pytest.raises(LayoutError, match=why):
        Layout.from_nodes([("x", "tokens", {"vocab": 8}, []), ("e", "embedding", {"vocab": 8, "dim": 8}, ["x"]),
                           ("r", "router", {"n_experts": 8, "top_k": 2, **bad}, ["e"])])


def test_router_axis_draws_tags_and_exports():
    spec_ = DecoderSpec(layers=(LayerSpec(sparse=True), LayerSpec()), router="grouped", routed_scaling=2.5,
                        n_experts=6, top_k=2)
    layout = build(spec_)
    p = layout.params("l0_mlp_router")
    assert (p["score"], p["correction_bias"], p["n_group"], p["topk_group"], p["scaling"]) == \
        ("sigmoid", True, 2, 1, 2.5)
    assert {"moe:router:grouped", "moe:routed_scaling"} <= set(spec_.features())
    assert {"op:router:sigmoid", "op:router:group_limited", "op:router:correction_bias"} <= \
        set(layout.op_features())
    odd = spec_.with_(n_experts=5)  # no split into groups of two: tagged as what it is
    assert "moe:router:sigmoid_bias" in odd.features() and build(odd).params("l0_mlp_router")["n_group"] == 1
    model = materialize(layout)
    ids = torch.randint(0, spec_.vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    node = model.nodes["l0_mlp_router"]
    logits = torch.randn(2, 9, 6, dtype=torch.float64)
    assert torch.equal(node.export_forward(logits), node(logits))
    assert torch.isfinite(model(ids)).all()


def _glm4_moe(norm_topk_prob=True, **extra):
    tf = pytest.importorskip("transformers")
    from benchmarks.import_check_families import DIMS, randomize
    cfg = tf.Glm4MoeConfig(**DIMS, moe_intermediate_size=16, num_experts_per_tok=3, n_routed_experts=8,
                           n_shared_experts=1, n_group=2, topk_group=1, routed_scaling_factor=2.5,
                           norm_topk_prob=norm_topk_prob, first_k_dense_replace=1, **extra)
    model = tf.Glm4MoeForCausalLM._from_config(cfg, dtype=torch.float64, experts_implementation="eager")
    randomize(model.to(torch.float64))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in model.modules():
            if hasattr(mod, "e_score_correction_bias"):
                mod.e_score_correction_bias.copy_(0.3 * torch.randn(8, generator=gen, dtype=torch.float64))
    return model


def test_a_deepseek_v3_style_router_imports_with_every_parameter_measured():
    from fuzz.importer import import_model
    model = _glm4_moe()
    gm = import_model(model)  # checked against the model (raises unless the logits agree)
    routers = gm.layout.of_op("router")
    assert routers == ["model_layers_1_mlp_gate"]  # first_k_dense_replace=1: layer 0 is dense
    p = gm.layout.params(routers[0])
    assert (p["score"], p["correction_bias"], p["n_group"], p["topk_group"], p["top_k"], p["renormalize"]) == \
        ("sigmoid", True, 2, 1, 3, True)
    assert math.isclose(p["scaling"], 2.5, rel_tol=1e-12)
    src = model.model.layers[1].mlp.gate.e_score_correction_bias
    assert torch.equal(gm.nodes[routers[0]].e_score_correction_bias.detach(), src.double())


def test_a_router_no_candidate_reproduces_is_refused_naming_the_module():
    from fuzz.importer import import_model
    model = _glm4_moe()
    gate = model.model.layers[1].mlp.gate
    original = type(gate).forward

    def squared(hidden_states):  # weights = score ** 2: no router of the vocabulary computes this
        logits, w, idx = original(gate, hidden_states)
        return logits, w * w, idx

    gate.forward = squared
    with pytest.raises(BadInput, match=r"model\.layers\.1\.mlp\.gate.*router: no softmax / sigmoid router"):
        import_model(model)


def _gpt_oss_moe_in_qwen3_moe(limit=1.5):
    """A tiny Qwen3-MoE whose MoE blocks run GPT-OSS' router (bias, top-k then softmax) and experts
    (transposed, interleaved gate/up, biases, clamped SwiGLU): GPT-OSS' MoE without its attention."""
    tf = pytest.importorskip("transformers")
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts, GptOssTopKRouter
    from benchmarks.import_check_families import DIMS, randomize
    cfg = tf.Qwen3MoeConfig(**DIMS, moe_intermediate_size=16, num_experts_per_tok=2, num_experts=4)
    model = tf.Qwen3MoeForCausalLM._from_config(cfg, dtype=torch.float64, experts_implementation="eager")
    oss = tf.GptOssConfig(hidden_size=32, intermediate_size=16, num_local_experts=4, num_experts_per_tok=2,
                          swiglu_limit=limit)
    for layer in model.model.layers:
        layer.mlp.experts, layer.mlp.gate = GptOssExperts(oss), GptOssTopKRouter(oss)
    return randomize(model.to(torch.float64))


def test_gpt_oss_experts_and_router_import_and_stay_invariant():
    from fuzz.importer import import_model
    from quant import transforms
    from verifier import verify
    gm = import_model(_gpt_oss_moe_in_qwen3_moe())  # checked against the model
    p = gm.layout.params("model_layers_0_mlp_experts")
    assert (p["act"], p["bias"], p["transposed"], p["interleaved"], p["limit"]) == \
        ("clamped_swiglu", True, True, True, 1.5)
    r = gm.layout.params("model_layers_0_mlp_gate")
    assert (r["score"], r["renormalize"]) == ("softmax", True)  # top-k then softmax == softmax, top-k, renorm
    assert gm.layout.params("model_layers_0_mlp_gate_proj")["bias"]
    v = verify(transforms.get("bbt-absorb"), gm)
    assert v.status == "invariant", v
