"""Multi-head latent attention (issue 14): DeepSeek-V2/V3's MLA as ``head_slice`` / ``head_concat`` around a
plain ``attention`` whose value head differs from its score head.

The materializer against the formulas written out per head, the synthesizer drawing it (``mla`` axis), the
importer on the transformers classes that share DeepSeek-V3's attention (exact against the model, padded batch
included), the head-space transforms refusing it by name, and the mutant the oracle must catch.
"""

import pytest
import torch
import transformers as tf
from hypothesis import given, settings

from benchmarks.compat import tiny_config
from benchmarks.import_check_families import instantiate
from fuzz import DecoderSpec, LayerSpec, build, materialize
from fuzz import strategies as S
from fuzz.decoder import mla_dims
from fuzz.errors import BadInput, LayoutError
from fuzz.importer import import_model
from fuzz.materialize import rope_tables, rotate_pairs
from verifier import mutants, reference, verify
from verifier.transform import Calibration
import quant.transforms as transforms

MLA = DecoderSpec(mla="q_lora", hidden=24, n_heads=3, n_kv_heads=1, head_dim=4, rotary_dim=2)


def _mla_by_formula(m, layout, x):
    """DeepSeek-V3's attention written out per head from the layer's weights (float64, half-split RoPE)."""
    s, (b, t, _) = layout.meta["spec"], x.shape
    spec = DecoderSpec.from_dict(s)
    d, h = mla_dims(spec), spec.n_heads
    w = {n: m.nodes[n] for n in m.nodes}
    lin = lambda n, v: torch.nn.functional.linear(v, w[n].weight, getattr(w[n], "bias", None))
    q = lin("l0_q_b_proj", w["l0_q_a_layernorm"](lin("l0_q_a_proj", x))).reshape(b, t, h, d["qk"])
    kv_a = lin("l0_kv_a_proj_with_mqa", x)
    c, k_pe = kv_a[..., :d["kv_rank"]], kv_a[..., d["kv_rank"]:]
    kv = lin("l0_kv_b_proj", w["l0_kv_a_layernorm"](c)).reshape(b, t, h, d["nope"] + d["v"])
    k_nope, v = kv[..., :d["nope"]], kv[..., d["nope"]:]
    cos, sin = rope_tables(layout.params("l0_q_rope"), t, x.dtype, "exact")
    rot = lambda z: z * cos[None, :, None] + rotate_pairs(z, "half") * sin[None, :, None]
    q_pe = rot(q[..., d["nope"]:])
    k_pe = rot(k_pe[:, :, None, :])[:, :, 0]
    out = torch.zeros(b, t, h, d["v"], dtype=x.dtype)
    for hh in range(h):
        for i in range(t):
            qi = torch.cat((q[:, i, hh, :d["nope"]], q_pe[:, i, hh]), -1)
            ks = torch.cat((k_nope[:, :i + 1, hh], k_pe[:, :i + 1]), -1)  # k_pe: one head, every head reads it
            p = torch.softmax(torch.einsum("bd,bjd->bj", qi, ks) * d["qk"] ** -0.5, -1)
            out[:, i, hh] = torch.einsum("bj,bjd->bd", p, v[:, :i + 1, hh])
    return out.reshape(b, t, -1)


def test_mla_matches_the_formulas_head_by_head():
    layout = build(MLA)
    m = materialize(layout, seed=3)
    x = torch.randn(2, 7, MLA.hidden, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    acts = {}
    m.nodes["l0_attn"].register_forward_hook(lambda mod, a, o: acts.setdefault("attn", o))
    m.nodes["l0_attn_norm"].register_forward_hook(lambda mod, a, o: x)  # feed x as the normed input
    m(torch.zeros(2, 7, dtype=torch.long))
    dims = mla_dims(MLA)
    assert layout.params("l0_attn")["head_dim"] == dims["qk"] and acts["attn"].shape[-1] == 3 * dims["v"]
    assert torch.allclose(acts["attn"], _mla_by_formula(m, layout, x), rtol=0, atol=1e-12)


def test_the_default_spec_has_no_mla_and_mla_excludes_qk_norms_and_fused_qkv():
    assert "head_concat" not in {build(DecoderSpec()).op(n) for n in build(DecoderSpec()).order}
    for bad in (dict(qk_norm="per_head"), dict(fused_qkv=True), dict(attn_gate="output_sigmoid")):
        with pytest.raises(LayoutError, match="mla"):
            build(MLA.with_(**bad))


@settings(max_examples=10, deadline=None, database=None)
@given(layout=S.layouts(mla=("q_lora", "q_direct"), max_layers=2))
def test_drawn_mla_layouts_have_a_shared_rope_key_per_attention(layout):
    k_cats = [n for n in layout.of_op("head_concat") if layout.params(n)["shared_b"]]
    assert len(k_cats) == len(layout.of_op("attention"))
    assert {f"attn:mla:{layout.meta['spec']['mla']}", "op:head_concat:shared"} <= set(
        layout.features() + layout.op_features())
    logits = materialize(layout, seed=1)(torch.zeros(1, 5, dtype=torch.long))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("spec", [MLA, MLA.with_(mla="q_direct", rope_style="interleaved", head_dim=6, rotary_dim=4),
                                  MLA.with_(layers=(LayerSpec(), LayerSpec(rope=False)), norm="layer")],
                         ids=["q_lora", "q_direct-interleaved", "nope-layer"])
def test_a_materialized_mla_layout_imports_back_exactly(spec):
    layout = build(spec)
    graph = import_model(materialize(layout, seed=1))
    assert max(graph.layout.meta["import_check"]["max_rel_err"].values()) <= 1e-10
    ops = lambda lay: sorted(lay.op(n) for n in lay.order)
    assert ops(graph.layout) == ops(layout)


# DeepSeek-V3's attention (and the classes sharing its code), DeepSeek-V2's complex RoPE (view_as_complex on the
# interleaved pairs), MiniCPM3's MLA (half-split RoPE)
MLA_CLASSES = ["DeepseekV3ForCausalLM", "Glm4MoeLiteForCausalLM", "YoutuForCausalLM", "AXK1ForCausalLM",
               "DeepseekV2ForCausalLM", "MiniCPM3ForCausalLM"]


@pytest.mark.parametrize("name", MLA_CLASSES)
def test_deepseek_v3_attention_imports_exactly(name):
    """The decoupled RoPE (interleaved pairs rotated on strided halves, ``rope_interleave``), the key built by
    slice copies into an empty tensor, v_head_dim != qk_head_dim: imported, and checked against the model."""
    cls = getattr(tf, name)
    model = instantiate(cls, tiny_config(cls))
    graph = import_model(model)
    layout, chk = graph.layout, graph.layout.meta["import_check"]
    assert min(chk["max_rel_err"].values()) <= chk["bound"] and chk["padded"]["max_rel_err"] <= chk["bound"]
    cfg = model.config
    attn = layout.of_op("attention")[0]
    assert layout.params(attn)["head_dim"] == cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
    assert layout.widths[attn] == cfg.num_attention_heads * cfg.v_head_dim
    ropes = [layout.params(n) for n in layout.of_op("rope")]
    assert {(p["head_dim"], p["rotary_dim"]) for p in ropes} == {(cfg.qk_rope_head_dim,) * 2}
    assert sorted(p["n_heads"] for p in ropes[:2]) == [1, cfg.num_attention_heads]  # k_pe: one shared head
    shared = [n for n in layout.of_op("head_concat") if layout.params(n)["shared_b"]]
    assert len(shared) == cfg.num_hidden_layers
    if name in ("DeepseekV3ForCausalLM", "DeepseekV2ForCausalLM"):  # the RoPE pairs as imported: pair-pca exact
        verdict = verify(transforms.get("pair-pca"), graph, seed=1)
        assert verdict.status == "invariant" and verdict.max_rel_err <= 1e-12, verdict


def test_mistral4_temperature_past_the_recording_is_refused_by_name():
    """Mistral4's MLA multiplies the queries by ``1 + beta log(1 + floor(pos / original_max))`` (Llama-4 attention
    temperature tuning).  With the compat config's short original length it imports measured
    (``tests/fuzz/test_attention_temperature.py``); with the released 8192 it is 1 at every recorded position,
    so beta and L cannot be measured (nor checked): refused, named."""
    cls = tf.Mistral4ForCausalLM
    cfg = tiny_config(cls)
    cfg.rope_parameters["original_max_position_embeddings"] = 8192
    with pytest.raises(BadInput, match=r"self_attn \(position-dependent scaling: .*Mistral4.*1 at every recorded "
                                       r"position"):
        import_model(instantiate(cls, cfg))


@pytest.mark.parametrize("transform", ["spectral-pca", "reference:permute_heads"])
def test_head_space_transforms_refuse_mla_by_name(transform):
    t = reference.get("permute_heads", seed=1) if transform.startswith("reference") else transforms.get(transform)
    verdict = verify(t, build(MLA), seed=1)
    assert verdict.status == "refused" and "multi-head latent attention (MLA" in str(verdict), verdict


@pytest.mark.parametrize("name", ["norm-absorb", "residual-rotation", "wht-scale", "bbt-absorb", "bbt-spectral-pca",
                                  "pair-pca", "bbt-pair-pca"])
def test_residual_stream_transforms_preserve_mla(name):
    for spec in (MLA, MLA.with_(mla="q_direct", rope_style="interleaved", layers=(LayerSpec(), LayerSpec(rope=False)))):
        verdict = verify(transforms.get(name), build(spec), seed=2)
        assert verdict.status == "invariant" and verdict.max_rel_err <= 1e-12, verdict


def test_mla_latent_unscaled_is_caught_at_the_latent_norm():
    verdict = verify(mutants.get("mla_latent_unscaled", seed=1), build(MLA), seed=1)
    assert verdict.status == "diverged", verdict
    assert verdict.first_divergent["node"] in ("l0_kv_a_layernorm", "l0_q_a_layernorm"), verdict
    assert verify(mutants.get("mla_latent_unscaled", seed=1), build(DecoderSpec()), seed=1).status == "invariant"


@pytest.mark.parametrize("rotation", ["pca", "random"])
def test_pair_pca_rotates_the_shared_k_pe_once_for_every_head(rotation):
    """One U per RoPE pair on k_pe's rows of kv_a_proj_with_mqa and on every head's q_pe rows; the nope rows stay."""
    layout = build(MLA)
    before = materialize(layout, seed=2)
    calib = Calibration(torch.randint(0, MLA.vocab, (2, 9), generator=torch.Generator().manual_seed(0)))
    after = transforms.get("pair-pca", rotation=rotation)(materialize(layout, seed=2), calib)
    dims = mla_dims(MLA)
    kv_a = lambda m: m.nodes["l0_kv_a_proj_with_mqa"].weight
    assert torch.equal(kv_a(before)[:dims["kv_rank"]], kv_a(after)[:dims["kv_rank"]])
    assert not torch.allclose(kv_a(before)[dims["kv_rank"]:], kv_a(after)[dims["kv_rank"]:])
    q_b = lambda m: m.nodes["l0_q_b_proj"].weight.reshape(MLA.n_heads, dims["qk"], -1)
    assert torch.equal(q_b(before)[:, :dims["nope"]], q_b(after)[:, :dims["nope"]])
    assert [e["mla"] for e in after.transform_log] == [True]


def test_kpe_per_head_is_caught_and_one_head_shows_nothing():
    caught = verify(mutants.get("kpe_per_head", seed=1), build(MLA), seed=1)
    assert caught.status == "diverged" and caught.first_divergent["node"] == "l0_attn", caught
    assert verify(mutants.get("kpe_per_head", seed=1), build(MLA.with_(n_heads=1)), seed=1).status == "invariant"


def test_a_source_failing_on_its_own_padded_batch_is_refused_by_name():
    """The tiny MLA configs with fewer kv heads than heads broke transformers' own masked path (repeat_kv on keys
    that already have every head): such a source is refused naming the padded batch, never a crash."""
    from fuzz.importer.check import check_padding

    class Source(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, use_cache=False):
            raise RuntimeError("The size of tensor a (4) must match the size of tensor b (8)")

    with pytest.raises(BadInput, match=r"Source: the source itself fails on a padded batch .*RuntimeError"):
        check_padding(Source(), materialize(build(DecoderSpec())), "exact", 1e-10, 24, 64)


@pytest.mark.parametrize("name", ["DeepseekV32ForCausalLM", "AXK2ForCausalLM"])
def test_sparse_attention_indexers_import_as_index_topk(name):
    """DeepSeek-V3.2's MLA reads only the keys its indexer's top-k picks: the indexer (Q K^T into a top-k, found by
    dataflow) imports as an index_topk node read by the attention (checked past top-k: tiny_config shrinks it;
    tests/fuzz/test_sparse_attention.py)."""
    cls = getattr(tf, name)
    gm = import_model(instantiate(cls, tiny_config(cls)))
    assert gm.layout.of_op("index_topk")
