"""Routers written across modules, imported from the dataflow: a correction bias passed in by the parent
(MiniMax-M2: a buffer; Afmoe: a parameter), held by a child module (Ernie 4.5 MoE), a projection in a child
``nn.Linear`` with a sigmoid and a routed scale in the router (Afmoe).  Each import is checked against the
model's logits (``import_model`` raises unless they agree)."""

import pytest
import torch

tf = pytest.importorskip("transformers")


def _tiny(name: str, seed: int = 0):
    from benchmarks.compat import tiny_config
    from benchmarks.import_check_families import instantiate
    cls = getattr(tf, name)
    return instantiate(cls, tiny_config(cls), seed)


def _router(gm, path: str) -> str:
    paths = gm.layout.meta["module_paths"]
    found = [n for n in gm.layout.of_op("router") if paths[n] == path]
    assert len(found) == 1, (path, gm.layout.of_op("router"))
    return found[0]


def test_minimax_m2_router_reads_the_correction_buffer_its_parent_passes_in():
    from fuzz.importer import import_model
    model = _tiny("MiniMaxM2ForCausalLM")
    gen = torch.Generator().manual_seed(3)
    for layer in model.model.layers:  # a buffer (zeros at init): large enough to change the choice
        layer.mlp.e_score_correction_bias.copy_(0.3 * torch.randn(4, generator=gen, dtype=torch.float64))
    gm = import_model(model)
    node = _router(gm, "model.layers.0.mlp.gate")
    p = gm.layout.params(node)
    assert (p["score"], p["correction_bias"], p["renormalize"], p["top_k"]) == ("sigmoid", True, True, 2)
    assert torch.equal(gm.nodes[node].e_score_correction_bias.detach(),
                       model.model.layers[0].mlp.e_score_correction_bias)


def test_minimax_m2_without_the_buffer_passed_is_not_silently_a_softmax_router():
    """The router module cannot be called without its parent's argument: probing it as ``router(x)`` found
    nothing and the recorded fallback imported a softmax router (the check refused at 0.3)."""
    from fuzz.importer import import_model
    gm = import_model(_tiny("MiniMaxM2ForCausalLM"))
    assert gm.layout.params(_router(gm, "model.layers.0.mlp.gate"))["score"] == "sigmoid"


def test_afmoe_router_across_a_child_linear_with_the_parent_bias_and_the_routed_scale():
    from fuzz.importer import import_model
    model = _tiny("AfmoeForCausalLM")
    model.config.route_scale = 1.0
    for layer in model.model.layers:
        if hasattr(layer.mlp, "router"):
            layer.mlp.router.route_scale = 2.5
    gm = import_model(model)
    assert not [n for n in gm.layout.of_op("act") if gm.layout.params(n)["fn"] == "sigmoid"]
    node = _router(gm, "model.layers.1.mlp.router")
    p = gm.layout.params(node)
    assert (p["score"], p["correction_bias"], p["renormalize"], p["scaling"]) == ("sigmoid", True, True, 2.5)
    assert gm.layout.meta["param_map"][node] == {"e_score_correction_bias": "model.layers.1.mlp.expert_bias"}
    assert gm.nodes[node].e_score_correction_bias is model.model.layers[1].mlp.expert_bias
    # layer 0 slides (window 8), its attention output is gated before o_proj: the window is measured there
    attn = [n for n in gm.layout.of_op("attention")]
    assert [gm.layout.params(n)["window"] for n in attn] == [8, None]


def test_ernie4_5_moe_router_reads_the_correction_bias_of_its_child_module():
    from fuzz.importer import import_model
    model = _tiny("Ernie4_5_MoeForCausalLM")
    gm = import_model(model)
    node = _router(gm, "model.layers.1.mlp.gate")
    p = gm.layout.params(node)
    assert (p["score"], p["correction_bias"], p["renormalize"]) == ("softmax", True, True)
    assert gm.layout.meta["param_map"][node] == \
        {"e_score_correction_bias": "model.layers.1.mlp.gate.moe_statics.e_score_correction_bias"}


def test_jetmoe_mixture_of_attention_heads_is_refused_by_name():
    from fuzz.errors import BadInput
    from fuzz.importer import import_model
    with pytest.raises(BadInput, match=r"model\.layers\.0\.self_attention\.experts\.router.*mixture of attention heads"):
        import_model(_tiny("JetMoeForCausalLM"))


def test_ernie4_5_moe_correction_bias_of_shape_1_by_e_survives_rebuilds_and_exports():
    """The layout's router reads Ernie's ``(1, E)`` bias as an ``(E,)`` view of the same storage: transforms
    that rebuild the graph find it, and ``export_weights`` gives it back in the source shape."""
    from fuzz.importer import export_weights, import_model
    from quant import transforms
    from verifier import verify
    model = _tiny("Ernie4_5_MoeForCausalLM")
    gm = import_model(model)
    node = _router(gm, "model.layers.1.mlp.gate")
    src = model.model.layers[1].mlp.gate.moe_statics.e_score_correction_bias
    assert gm.nodes[node].e_score_correction_bias.data_ptr() == src.data_ptr()
    fresh = _tiny("Ernie4_5_MoeForCausalLM", seed=1)
    fresh.load_state_dict(export_weights(gm), strict=True)
    assert torch.equal(fresh.model.layers[1].mlp.gate.moe_statics.e_score_correction_bias, src)
    for recipe in ("bbt-spectral", "residual-hadamard"):
        v = verify(transforms.get(recipe), gm)
        assert v.status in ("invariant", "refused"), (recipe, v)
