"""The dense clamped SwiGLU (``clamped_glu``: MiniMax-M3's dense and shared-expert MLPs): its semantics, the
synthesizer drawing it, its import from the written-out ops (checked against the model), every recipe
preserving it and the up-down mutant that takes it for a linear-in-up GLU caught."""

import pytest
import torch

from fuzz import DecoderSpec, build, materialize
from fuzz.materialize import MODULES
from fuzz.ops import spec


def test_clamped_glu_clamps_the_gate_above_and_up_both_ways():
    p = spec("clamped_glu").normalise("c", {"limit": 1.5, "alpha": 1.702})
    mod = MODULES["clamped_glu"]("c", p, "exact")
    gen = torch.Generator().manual_seed(0)
    gate, up = 3 * torch.randn(64, 8, generator=gen, dtype=torch.float64), \
        3 * torch.randn(64, 8, generator=gen, dtype=torch.float64)
    g = gate.clamp(max=1.5)
    want = (up.clamp(-1.5, 1.5) + 1) * g * torch.sigmoid(1.702 * g)
    assert torch.allclose(mod(gate, up), want, rtol=1e-15, atol=1e-15)
    assert (gate > 1.5).any() and (up.abs() > 1.5).any()  # the clamps bind on this probe


def test_the_mlp_axis_draws_a_clamped_swiglu_with_its_tag():
    layout = build(DecoderSpec(mlp="clamped_swiglu"))
    (node,) = layout.of_op("clamped_glu")
    assert layout.params(node)["limit"] == 1.5
    assert "mlp:clamped_swiglu" in layout.features() and "op:clamped_glu" in layout.op_features()


@pytest.mark.parametrize("recipe", ["bbt-absorb", "bbt-spectral", "residual-hadamard"])
def test_recipes_preserve_a_clamped_swiglu_mlp(recipe):
    from quant import transforms
    from verifier import verify
    layout = build(DecoderSpec(mlp="clamped_swiglu"))
    v = verify(transforms.get(recipe), layout)
    assert v.status in ("invariant", "refused"), v
    if v.status == "refused":
        assert "clamp" in v.message.lower()


def test_up_down_leaves_the_clamped_swiglu_alone_and_the_mutant_that_scales_it_is_caught():
    from quant import transforms
    from verifier import mutants, verify
    layout = build(DecoderSpec(mlp="clamped_swiglu"))
    assert verify(transforms.get("up-down"), layout).status == "invariant"
    v = verify(mutants.get("clamped_glu_as_linear"), layout)
    assert v.status == "diverged", v


def _minimax_m3(limit=None):
    tf = pytest.importorskip("transformers")
    from benchmarks.compat import tiny_config
    from benchmarks.import_check_families import instantiate
    cls = tf.MiniMaxM3VLForCausalLM
    cfg = tiny_config(cls)
    cfg.shared_intermediate_size = 16
    if limit is not None:
        cfg.swiglu_limit = limit
    return instantiate(cls, cfg)


@pytest.mark.parametrize("limit", [None, 0.5])
def test_minimax_m3_dense_and_expert_clamped_swiglus_import_exactly(limit):
    from fuzz.importer import import_model
    gm = import_model(_minimax_m3(limit))  # checked against the model's logits
    nodes = gm.layout.of_op("clamped_glu")
    assert len(nodes) == 2  # each layer's shared expert
    want = 7.0 if limit is None else 0.5
    for n in nodes:
        assert gm.layout.params(n) == {"limit": want, "alpha": 1.702}
    for n in gm.layout.of_op("experts"):
        p = gm.layout.params(n)
        assert (p["act"], p["limit"], p["alpha"]) == ("clamped_swiglu", want, 1.702)


@pytest.mark.slow
def test_a_clamped_swiglu_layout_exports_to_openvino(cpu_f32_parity):
    """The clamps survive the OpenVINO export: CPU f32 within the parity gate."""
    model = materialize(build(DecoderSpec(mlp="clamped_swiglu")), dtype=torch.float32, seed=3)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    cpu_f32_parity(model, ids)
