"""Ergo's residual gate (``residual_gate``) under the recipes and the OpenVINO export: the recipes that leave the
residual stream's basis alone (norm absorption, up-down, online WHT, pair-PCA / spectral-PCA) are proven by the
oracle; the residual rotation refuses naming the gate (``Q^T diag(c) Q`` is not diagonal); the gate exports and
matches PyTorch at CPU f32, and a plain add in its place is past the gate."""

import pytest
import torch

import quant.transforms as T
from fuzz import DecoderSpec, LayerSpec, build, materialize
from fuzz.layout import Layout
from quant.parity import GATE
from verifier import verify


@pytest.mark.parametrize("placement", ["pre", "sandwich"])
def test_recipes_preserve_the_gate_or_refuse_it_by_name(placement):
    layout = build(DecoderSpec(residual_gate=True, placement=placement, qk_norm="per_head",
                               layers=(LayerSpec(), LayerSpec(rope=True, sparse=True)), shared_expert=True))
    for recipe in T.RECIPES:
        v = verify(T.get(recipe), layout)
        if recipe == "residual-hadamard":
            assert v.status == "refused", (recipe, str(v))
            assert "residual gate (per-channel residual scale)" in str(v) and "[residual-gate]" in str(v)
        else:
            assert v.status == "invariant", (recipe, str(v))


def _as_adds(layout: Layout) -> Layout:
    """The same layout with each gate replaced by the plain residual add."""
    nodes = [(n, "add", {}, layout.inputs(n)[::-1]) if layout.op(n) == "residual_gate"
             else (n, layout.op(n), layout.params(n), layout.inputs(n)) for n in layout.order]
    return Layout.from_nodes(nodes, dict(layout.meta))


@pytest.mark.slow
def test_the_gate_exports_and_matches(cpu_f32_parity):
    layout = build(DecoderSpec(residual_gate=True, layers=(LayerSpec(), LayerSpec())))
    model = materialize(layout, dtype=torch.float32, seed=3)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    cpu_f32_parity(model, ids)
    plain = materialize(_as_adds(layout), dtype=torch.float32, seed=3)
    with torch.no_grad():
        a, b = model(ids), plain(ids)
    assert float((a - b).abs().max() / b.abs().max()) > GATE["rel_err"]


def test_a_permutation_of_the_stream_commutes_with_the_gate():
    """permute_hidden permutes the gate's weight with the stream (P^T diag(c) P = diag(c[p])): proven by the oracle;
    a rotation cannot do the same (residual-hadamard refuses, above)."""
    from verifier import reference
    layout = build(DecoderSpec(residual_gate=True, placement="sandwich"))
    assert verify(reference.permute_hidden, layout).status == "invariant"
