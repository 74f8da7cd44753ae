"""auto-round peers (``quant.peers``) through the oracle: the registry, refusals, and what auto-round 0.16.1
measurably does on tiny family layouts (each assertion is the measured behaviour on this install)."""

import logging

import pytest
import torch

import quant.peers as P
from fuzz import DecoderSpec, Refusal, build, materialize
from fuzz.errors import BadInput
from fuzz.families import family_spec, to_transformers
from verifier import Calibration, verify
from verifier.registry import available, resolve

logging.getLogger("autoround").setLevel(logging.ERROR)

POW2 = dict(hidden=32, intermediate=64, n_heads=4, n_kv_heads=2, head_dim=8)


def llama(**dims):
    return build(family_spec("llama", **dims), name="llama")


def exact(layout, default_dtype=torch.float64):
    """The float64-everywhere subject: the converted transformers model with its float32 policy off."""
    return P.ExactFloat64(to_transformers(materialize(layout, dtype=torch.float64, seed=0)), default_dtype)


def test_registry_lists_the_peers_and_resolves_them_by_prefix():
    for name in ("hf-bridge", "autoround-hadamard", "autoround-hadamard-b8", "autoround-random-hadamard",
                 "autoround-inplace", "autoround-quarot", "autoround-spinquant", "autoround-hadamard-mxfp"):
        assert name in P.names()
    assert available()["peers"] == P.names()
    t = resolve("peers:autoround-hadamard", block_size=16)
    assert t.spec() == {"name": "autoround-hadamard", "options": {"block_size": 16}, "registry": "quant.peers"}
    assert P.peer("autoround-hadamard-b64").call_config(torch.float32) == {"hadamard_type": "hadamard",
                                                                            "block_size": 64}
    assert P.peer("autoround-quarot").call_config(torch.float64)["dtype"] == torch.float64


def test_unknown_names_list_what_exists():
    with pytest.raises(BadInput, match="available") as err:
        P.get("autoround-quarot-hadamard")
    assert "autoround-hadamard" in str(err.value) and "b<k>" in str(err.value)


def test_a_layout_that_is_no_transformers_family_is_refused():
    layout = build(DecoderSpec(rope_style="interleaved"), name="interleaved")
    verdict = verify(P.get("autoround-hadamard"), layout, dtype=torch.float32)
    assert verdict.status == "refused" and f"[{P.FEATURE}]" in verdict.message
    with pytest.raises(Refusal) as err:
        P.get("autoround-quarot")(materialize(layout), Calibration(torch.zeros(1, 4, dtype=torch.long)))
    assert err.value.feature == "not-a-transformers-family"


def test_hadamard_on_a_power_of_two_llama_is_invariant_up_to_its_float32_scale():
    layout = llama(**POW2)
    # What ships: float32, bound 1e-4.
    v32 = verify(P.get("autoround-hadamard"), layout, dtype=torch.float32)
    assert v32.ok and v32.max_rel_err < 1e-5
    # float64 against the float64 GraphModel: "diverges" at ~1e-7, but so does the bare conversion
    # (hf-bridge): transformers runs RMSNorm and RoPE in float32, so this float64 verdict is blind below that.
    v64, bridge = verify(P.get("autoround-hadamard"), layout), verify(P.get("hf-bridge"), layout)
    assert v64.status == bridge.status == "diverged" and 1e-8 < bridge.max_rel_err < 1e-6
    assert v64.max_rel_err < 1e-6
    # float64 everywhere: auto-round's rotation itself is exact ...
    assert verify(P.get("autoround-hadamard"), exact(layout)).max_rel_err < 1e-13
    # ... but for its 1/sqrt(n) scale, taken from torch.tensor(n).sqrt() in torch's default dtype: with the
    # default float32 kept, that constant alone makes the function drift by ~1e-7.
    drift = verify(P.get("autoround-hadamard"), exact(layout, torch.float32))
    assert drift.status == "diverged" and 1e-8 < drift.max_rel_err < 1e-6


@pytest.mark.parametrize("dims, message", [
    (dict(hidden=48, intermediate=96, n_heads=4, n_kv_heads=2, head_dim=12), "Hadamard dimension must be a power of 2!"),
    (dict(hidden=24, intermediate=48, n_heads=3, n_kv_heads=1, head_dim=8), "in get_hadK"),  # SmolLM2's 9 heads
])
def test_full_hadamard_crashes_on_non_power_of_two_dims_while_blocks_work(dims, message):
    layout = llama(**dims)
    full = verify(P.get("autoround-hadamard"), layout, dtype=torch.float32)
    assert full.status == "error" and "AssertionError" in full.message and message in full.message
    block = verify(P.get("autoround-hadamard-b8"), layout, dtype=torch.float32)
    assert block.ok and block.max_rel_err < 1e-5
    too_big = verify(P.get("autoround-hadamard-b64"), layout, dtype=torch.float32)
    assert too_big.status == "error" and f"group_size=64 must divide hidden_size={dims['hidden']}" in too_big.message


def test_quarot_skips_non_power_of_two_dims_so_its_pass_is_vacuous():
    t = P.get("autoround-quarot")
    assert verify(t, llama(hidden=48, intermediate=96, n_heads=4, n_kv_heads=2, head_dim=12), dtype=torch.float32).ok
    assert t.fn.last["weights_changed"] == 0 and t.fn.last["hooks_added"] == 0  # R1/R2 disabled by a warning
    assert verify(t, exact(llama(**POW2))).max_rel_err < 1e-13
    assert t.fn.last["weights_changed"] > 0 and t.fn.last["hooks_added"] > 0


def test_mxfp_data_type_leaves_the_model_untouched_and_only_patches_classes():
    from auto_round.wrapper import WrapperLinear
    before = WrapperLinear.__dict__["_qdq_weight"]
    t = P.get("autoround-hadamard-mxfp")
    assert verify(t, llama(**POW2), dtype=torch.float32).ok
    assert t.fn.last["weights_changed"] == 0 and t.fn.last["hooks_added"] == 0 and t.fn.last["class_patches"] > 0
    assert WrapperLinear.__dict__["_qdq_weight"] is before  # the peer undid auto-round's class patch


def test_inplace_backend_with_a_plain_hadamard_type_crashes():
    from auto_round.algorithms.transforms import apply_rotation

    def inplace_hadamard(model, calib):
        return apply_rotation(to_transformers(model), {"backend": "inplace", "hadamard_type": "hadamard"},
                              data_type="int")

    v = verify(inplace_hadamard, llama(**POW2), dtype=torch.float32)
    assert v.status == "error" and "Unknown rotation_matrix preset ''" in v.message
    assert verify(P.get("autoround-inplace"), llama(**POW2), dtype=torch.float32).ok  # "inplace_quarot_hadamard"


def test_qkv_bias_breaks_the_full_residual_rotation_silently():
    layout = build(family_spec("qwen2", **POW2), name="qwen2")  # q/k/v biases
    # v_proj gets a per-head Hadamard on its output rows, but its bias is left unrotated.
    for name in ("autoround-hadamard", "autoround-quarot"):
        v = verify(P.get(name), exact(layout))
        assert v.status == "diverged" and v.max_rel_err > 1e-2
    assert verify(P.get("autoround-hadamard-b8"), exact(layout)).max_rel_err < 1e-13  # no v_proj rotation


def test_fused_expert_moe_crashes_the_hadamard_path():
    layout = build(family_spec("qwen3_moe", **POW2), name="qwen3_moe")
    v = verify(P.get("autoround-hadamard"), layout, dtype=torch.float32)
    assert v.status == "error" and "AttributeError" in v.message and "'up_proj'" in v.message


def test_spinquant_training_moves_the_function():
    # trainable_smooth scales RMSNorm outputs by trained smooth_values with no inverse anywhere: two Adam
    # steps on float32 rounding noise already move the logits by ~1e-3.
    v = verify(P.get("autoround-spinquant"), llama(**POW2), dtype=torch.float32)
    assert v.status == "diverged" and v.max_rel_err > 1e-4
