"""RoPE by ``-theta`` (NanoChat: ``rotate_half = cat(x2, -x1)``): the rope op's ``reversed`` parameter (sin
negated), drawn by the ``rope_reversed`` axis, materialized, measured by the importer from the recording (the
rotate form times the sign of the recorded sin table), kept by every transform (pair-PCA's SO(2) commutes with
the rotation either way), exported, and a rewrite that forgets it is caught."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import quant.transforms as T
from benchmarks.compat import tiny_config
from benchmarks.import_check_families import instantiate
from fuzz import DecoderSpec, LayerSpec, build, materialize
from fuzz.errors import BadInput
from fuzz.importer import import_model
from verifier import mutants, verify

SPEC = DecoderSpec(rope_reversed=True, layers=(LayerSpec(), LayerSpec()))


def test_a_reversed_rope_is_nanochats_rotation():
    """``x cos + cat(x2, -x1) sin``, exactly, on every head; the feature tags name it."""
    layout = build(SPEC)
    (node, *_) = layout.of_op("rope")
    assert layout.params(node)["reversed"] is True
    assert "rope:reversed" in SPEC.features() and "op:rope:reversed" in layout.op_features()
    assert "rope:reversed" not in DecoderSpec().features()
    rope = materialize(layout).nodes[node]
    p = layout.params(node)
    x = torch.randn(2, 5, p["n_heads"] * p["head_dim"], dtype=torch.float64)
    xh = x.reshape(2, 5, p["n_heads"], p["head_dim"])
    h = p["head_dim"] // 2
    inv = 1.0 / p["theta"] ** (torch.arange(0, p["head_dim"], 2, dtype=torch.float64) / p["head_dim"])
    ang = torch.arange(5, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = torch.cat((ang, ang), -1).cos()[None, :, None], torch.cat((ang, ang), -1).sin()[None, :, None]
    want = xh * cos + torch.cat((xh[..., h:], -xh[..., :h]), -1) * sin
    assert torch.equal(rope(x), want.reshape(2, 5, -1))


@pytest.mark.parametrize("spec", [SPEC, SPEC.with_(rope_style="interleaved"),
                                  SPEC.with_(rotary_dim=4, rope_scaling="yarn"), DecoderSpec()],
                         ids=["half", "interleaved", "partial-yarn", "forward"])
def test_the_direction_is_measured_when_a_graph_model_imports_to_itself(spec):
    gm = materialize(build(spec), seed=1)
    back = import_model(gm)
    assert {back.layout.params(n)["reversed"] for n in back.layout.of_op("rope")} == {spec.rope_reversed}
    assert max(back.layout.meta["import_check"]["max_rel_err"].values()) == 0.0


@pytest.mark.parametrize("spec", [SPEC, SPEC.with_(rope_style="interleaved", n_heads=4, n_kv_heads=2),
                                  SPEC.with_(qk_norm="per_head")], ids=["half", "interleaved-gqa", "qk-norm"])
def test_every_transform_preserves_a_reversed_rope_or_refuses(spec):
    layout = build(spec)
    for name in T.names():
        verdict = verify(T.get(name), layout)
        assert verdict.status in ("invariant", "refused"), (name, str(verdict))
    if spec.qk_norm == "none":  # pair-PCA's SO(2) per pair commutes with R(-theta) as with R(theta)
        for rotation in ("pca", "random"):
            assert verify(T.get("pair-pca", rotation=rotation), layout).status == "invariant"


def test_forgetting_the_direction_in_a_rewrite_is_caught_at_the_rope():
    verdict = verify(mutants.get("rope_direction_lost"), build(SPEC))
    assert verdict.status == "diverged", str(verdict)
    assert "rope" in verdict.first_divergent["node"], verdict
    assert verify(mutants.get("rope_direction_lost"), build(DecoderSpec())).status == "invariant"


def _nanochat():
    cls = tf.NanoChatForCausalLM
    return instantiate(cls, tiny_config(cls))


def test_nanochat_imports_exactly_with_its_reversed_rope_and_weight_free_norms():
    model = _nanochat()
    gm = import_model(model)  # checked against the model's logits, padded batch too (raises otherwise)
    check = gm.layout.meta["import_check"]
    assert check["floor"] == "exact" and max(check["max_rel_err"].values()) <= check["bound"]
    assert check["padded"]["max_rel_err"] <= check["bound"]
    ropes = gm.layout.of_op("rope")
    assert ropes and all(gm.layout.params(n)["reversed"] for n in ropes)
    assert {gm.layout.params(n)["weight_form"] for n in gm.layout.of_op("norm")} == {"none"}
    assert check["numerics"] == "transformers"  # bit-exact with NanoChat's float32 norms; the float64 graph:
    ids = torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        assert torch.allclose(gm(ids), want, rtol=0, atol=check["float32_bound"] * float(want.abs().max()))


def test_nanochat_with_its_rope_taken_forward_is_refused_by_the_check():
    """The direction matters: NanoChat's imported layout with RoPE by +theta is refused by the import check."""
    from fuzz.importer.check import check_import
    from quant.transforms.graph_edit import LayoutEdit, rebuild
    model = _nanochat()
    gm = import_model(model)
    forward = rebuild(gm, LayoutEdit(params={n: {"reversed": False} for n in gm.layout.of_op("rope")}))
    ids = torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(0))
    with pytest.raises(BadInput, match="rope"):
        check_import(model, forward, ids)
