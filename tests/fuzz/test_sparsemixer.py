"""The sparsemixer router (Phimoe, eval): its semantics against transformers' own function, the synthesizer
drawing it, its import (measured against the router module, checked against the model), every recipe
preserving it, the OpenVINO export and the mutant that re-emits it as a plain top-2 router caught."""

import pytest
import torch

from fuzz import DecoderSpec, LayerSpec, build, materialize
from fuzz.errors import LayoutError
from fuzz.materialize import MODULES
from fuzz.ops import spec

_SPARSE = DecoderSpec(layers=(LayerSpec(sparse=True),), router="sparsemixer")


def _router(**params):
    p = spec("router").normalise("r", {"n_experts": 6, "top_k": 2, "score": "sparsemixer", **params})
    return MODULES["router"]("r", p, "exact")


@pytest.mark.parametrize("eps", [0.01, 0.3])
def test_sparsemixer_is_transformers_sparsemixer_in_eval(eps):
    phimoe = pytest.importorskip("transformers.models.phimoe.modeling_phimoe")
    logits = 2 * torch.randn(300, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w, idx = phimoe.sparsemixer(logits, jitter_eps=eps, training=False, top_k=2)
    want = torch.zeros_like(logits).scatter(-1, idx, w)
    router = _router(jitter_eps=eps)
    got = router(logits)
    assert torch.equal(got, want)
    assert router.last_margin.shape == (300,) and bool((router.last_margin >= 0).all())
    plain = MODULES["router"]("r", spec("router").normalise("r", {"n_experts": 6, "top_k": 2,
                                                                   "renormalize": False}), "exact")
    assert not torch.allclose(plain(logits), got)  # the threshold masks: not the plain softmax top-2


@pytest.mark.parametrize("bad", [{"top_k": 3}, {"correction_bias": True}, {"jitter_eps": -0.1}])
def test_invalid_sparsemixer_parameters_are_refused(bad):
    from fuzz.layout import Layout
    nodes = [("tokens", "tokens", {"vocab": 8}, []), ("e", "embedding", {"vocab": 8, "dim": 4}, ["tokens"]),
             ("p", "linear", {"in_features": 4, "out_features": 6, "bias": False}, ["e"]),
             ("r", "router", {"n_experts": 6, "top_k": 2, "score": "sparsemixer", **bad}, ["p"])]
    with pytest.raises(LayoutError):
        Layout.from_nodes(nodes, {})


def test_the_router_axis_draws_sparsemixer_with_its_tags():
    layout = build(_SPARSE)
    (r,) = layout.of_op("router")
    assert layout.params(r)["score"] == "sparsemixer" and layout.params(r)["top_k"] == 2
    assert "moe:router:sparsemixer" in layout.features() and "op:router:sparsemixer" in layout.op_features()


@pytest.mark.parametrize("recipe", ["bbt-absorb", "bbt-spectral", "bbt-pair-pca", "bbt-spectral-pca",
                                    "residual-hadamard", "wht-scale", "moe-absorb"])
def test_transforms_preserve_a_sparsemixer_router(recipe):
    from quant import transforms
    from verifier import verify
    v = verify(transforms.get(recipe), build(_SPARSE))
    assert v.status == "invariant", v


def test_the_mutant_that_re_emits_it_as_a_plain_router_is_caught():
    from verifier import mutants, verify
    v = verify(mutants.get("sparsemixer_dropped"), build(_SPARSE))
    assert v.status == "diverged" and v.first_divergent is not None, v


@pytest.mark.parametrize("jitter", [None, 0.3])
def test_phimoe_imports_its_sparsemixer_router_measured(jitter):
    tf = pytest.importorskip("transformers")
    from benchmarks.compat import tiny_config
    from benchmarks.import_check_families import instantiate
    from fuzz.importer import import_model
    cfg = tiny_config(tf.PhimoeForCausalLM)
    if jitter is not None:
        cfg.router_jitter_noise = jitter
    gm = import_model(instantiate(tf.PhimoeForCausalLM, cfg))  # checked against the model's logits
    routers = gm.layout.of_op("router")
    assert len(routers) == 2
    for r in routers:
        p = gm.layout.params(r)
        assert (p["score"], p["top_k"], p["jitter_eps"]) == ("sparsemixer", 2, cfg.router_jitter_noise)


@pytest.mark.slow
def test_a_sparsemixer_layout_exports_to_openvino(cpu_f32_parity):
    model = materialize(build(_SPARSE), dtype=torch.float32, seed=3)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    cpu_f32_parity(model, ids)
