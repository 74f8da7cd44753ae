"""Issue 14, one fused QKV linear: the ``fused_qkv`` axis builds the layout the importer makes of Phi3's
``qkv_proj`` (one linear, q / k / v read as whole-width row slices); transforms preserve it or refuse it by
name (``fused-qkv``), never rotate across its row blocks."""

from __future__ import annotations

import pytest
import torch

import quant.transforms as T
from fuzz import DecoderSpec, Refusal, build, materialize
from verifier import verify


def test_fused_qkv_computes_the_same_function_as_three_projections():
    spec = DecoderSpec(qkv_bias=True, n_heads=4, n_kv_heads=2, head_dim=8)
    fused, plain = materialize(build(spec.with_(fused_qkv=True))), materialize(build(spec))
    with torch.no_grad():
        for name, mod in fused.nodes.items():
            if name in plain.nodes:
                for t, u in zip(mod.parameters(), plain.nodes[name].parameters()):
                    t.copy_(u)
        qkv = fused.nodes["l0_qkv_proj"]
        qkv.weight.copy_(torch.cat([plain.nodes[f"l0_{x}_proj"].weight for x in "qkv"]))
        qkv.bias.copy_(torch.cat([plain.nodes[f"l0_{x}_proj"].bias for x in "qkv"]))
    ids = torch.tensor([[1, 5, 2, 7, 3, 9]])
    assert torch.equal(fused(ids), plain(ids))
    assert "attn:fused_qkv" in spec.with_(fused_qkv=True).features()


def test_fused_qkv_with_a_gate_fused_into_q_rows_is_preserved_or_refused_by_name():
    layout = build(DecoderSpec(fused_qkv=True, attn_gate="output_sigmoid", n_heads=1, n_kv_heads=1))
    assert layout.params("l0_qkv_proj")["out_features"] == 2 * 8 + 2 * 8
    with pytest.raises(Refusal) as err:
        T.get("pair-pca")(materialize(layout), None)
    assert err.value.feature in ("fused-qkv", "shared-qk-activation")  # q rows read by the gate and by q
    assert verify(T.get("bbt-pair-pca"), layout).ok


@pytest.mark.parametrize("name", ["pair-pca", "spectral-pca"])
def test_per_head_rotations_refuse_the_fused_row_blocks_by_name(name):
    spec = DecoderSpec(fused_qkv=True, qk_norm="per_head" if name == "spectral-pca" else "none")
    with pytest.raises(Refusal) as err:
        T.get(name)(materialize(build(spec)), None)
    assert err.value.feature == "fused-qkv"


@pytest.mark.parametrize("name", ["residual-rotation", "wht-scale", "norm-absorb", "bbt-spectral-pca", "bbt-pair-pca"])
def test_stream_and_linear_transforms_preserve_a_fused_qkv(name):
    verdict = verify(T.get(name), build(DecoderSpec(fused_qkv=True, qkv_bias=True)))
    assert verdict.ok, verdict


def test_single_head_fused_rows_are_rotated_exactly_at_their_offsets():
    """One q head and one kv head: pair-pca reads k at its offset inside the fused rows and stays exact."""
    verdict = verify(T.get("pair-pca"), build(DecoderSpec(fused_qkv=True, n_heads=1, n_kv_heads=1, qkv_bias=True)))
    assert verdict.status == "invariant", verdict
