"""Attention score modifiers (issue 14): scale, soft-caps, ALiBi, sinks.

The materializer against a per-position loop written from the papers' formulas, the default that computes
exactly as before, the importer reading scale and soft-caps from the recording (Gemma2, Granite), the
refusals that name ALiBi, and the transforms that must carry the per-head tensors.
"""

import math

import pytest
import torch
import transformers as tf
from hypothesis import given, settings

from fuzz import strategies as S

from fuzz import DecoderSpec, LayerSpec, build, materialize
from fuzz.errors import BadInput, LayoutError
from fuzz.importer import import_model
from fuzz.layout import Layout
from verifier import mutants, reference, verify

FULL = dict(attn_scale=0.2, attn_softcap=2.0, final_softcap=4.0, alibi=True, attn_sinks=True)


def _attention_by_loop(q, k, v, p, slopes=None, sinks=None):
    """One query position at a time, one head at a time: the formulas, written out."""
    b, t, _ = q.shape
    h, kv, d = p["n_heads"], p["n_kv_heads"], p["head_dim"]
    scale = d ** -0.5 if p["scale"] is None else p["scale"]
    out = torch.zeros(b, t, h, d, dtype=q.dtype)
    for hh in range(h):
        g = hh // (h // kv)
        for i in range(t):
            qi = q[:, i, hh * d:(hh + 1) * d]
            ks = k[:, :i + 1, g * d:(g + 1) * d]
            vs = v[:, :i + 1, g * d:(g + 1) * d]
            s = torch.einsum("bd,bjd->bj", qi, ks) * scale
            if p["softcap"] is not None:
                s = p["softcap"] * torch.tanh(s / p["softcap"])
            if slopes is not None:
                s = s + slopes[hh] * (torch.arange(i + 1, dtype=q.dtype) - i)
            e = torch.exp(s - s.max(-1, keepdim=True).values)
            denom = e.sum(-1, keepdim=True)
            if sinks is not None:
                denom = denom + torch.exp(sinks[hh] - s.max(-1, keepdim=True).values)
            out[:, i, hh] = torch.einsum("bj,bjd->bd", e / denom, vs)
    return out.reshape(b, t, h * d)


@pytest.mark.parametrize("kw", [{}, dict(attn_scale=0.2), dict(attn_softcap=2.0), dict(alibi=True),
                                dict(attn_sinks=True), FULL], ids=lambda kw: "+".join(kw) or "default")
def test_attention_matches_the_formulas_position_by_position(kw):
    layout = build(DecoderSpec(**kw))
    m = materialize(layout, seed=3)
    node = m.nodes["l0_attn"]
    gen = torch.Generator().manual_seed(1)
    p = layout.params("l0_attn")
    q = torch.randn(2, 7, p["n_heads"] * p["head_dim"], generator=gen, dtype=torch.float64)
    k = torch.randn(2, 7, p["n_kv_heads"] * p["head_dim"], generator=gen, dtype=torch.float64)
    v = torch.randn(2, 7, p["n_kv_heads"] * p["head_dim"], generator=gen, dtype=torch.float64)
    got = node(q, k, v)
    want = _attention_by_loop(q, k, v, p, getattr(node, "alibi_slopes", None), getattr(node, "sinks", None))
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-13)
    want_params = {n for n, on in (("alibi_slopes", kw.get("alibi")), ("sinks", kw.get("attn_sinks"))) if on}
    assert set(dict(node.named_parameters())) == want_params
    if kw.get("final_softcap"):
        x = torch.randn(2, 3, 64, generator=gen, dtype=torch.float64) * 10
        assert torch.allclose(m.nodes["logit_softcap"](x), 4.0 * torch.tanh(x / 4.0), rtol=1e-15)


def test_the_default_attention_computes_exactly_as_before():
    """No new parameter set: scores ``q k^T * head_dim ** -0.5``, plain softmax, bit for bit."""
    layout = build(DecoderSpec())
    p = layout.params("l0_attn")
    assert (p["scale"], p["softcap"], p["alibi"], p["sinks"]) == (None, None, False, False)
    node = materialize(layout).nodes["l0_attn"]
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 5, 32, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(1, 5, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    qh = q.reshape(1, 5, 4, 8).transpose(1, 2)
    kh, vh = (x.reshape(1, 5, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1) for x in (k, v))
    s = (qh @ kh.transpose(-1, -2)) * 8 ** -0.5
    s = s.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
    want = (torch.softmax(s, -1) @ vh).transpose(1, 2).reshape(1, 5, 32)
    assert torch.equal(node(q, k, v), want)
    # a layout JSON written before these parameters existed loads with the defaults
    data = layout.to_dict()
    for n in data["nodes"]:
        if n["op"] == "attention":
            for key in ("scale", "softcap", "alibi", "sinks"):
                n.pop(key)
    assert Layout.from_dict(data) == layout


@pytest.mark.parametrize("bad", [dict(scale=0.0), dict(scale=float("inf")), dict(softcap=-1.0),
                                 dict(softcap=float("nan"))])
def test_bad_score_parameters_are_refused_naming_the_node(bad):
    data = build(DecoderSpec()).to_dict()
    next(n for n in data["nodes"] if n["op"] == "attention").update(bad)
    with pytest.raises((LayoutError, BadInput), match="l0_attn"):
        Layout.from_dict(data)


def test_features_show_in_the_tags():
    layout = build(DecoderSpec(**FULL))
    assert {"attn:scale", "attn:softcap", "logits:softcap", "attn:alibi", "attn:sinks"} <= set(layout.features())
    assert {"op:attention:scale", "op:attention:softcap", "op:attention:alibi", "op:attention:sinks",
            "op:softcap"} <= set(layout.op_features())


# ------------------------------------------------------------------ transforms and mutants
@pytest.mark.parametrize("kw", [FULL, dict(FULL, qk_norm="per_head", norm_weight_form="1+w"),
                                dict(FULL, attn_gate="output_sigmoid", qkv_bias=True)],
                         ids=["plain", "qk-norm-1+w", "fused-gate"])
def test_head_permutation_and_scale_folding_preserve_every_modifier(kw):
    layout = build(DecoderSpec(**kw))
    for name in ("permute_heads", "fold_attn_scale"):
        verdict = verify(reference.get(name, seed=2), layout, seed=2)
        assert verdict.status == "invariant" and verdict.max_rel_err <= 1e-12, verdict
    folded = reference.fold_attn_scale(materialize(layout), None)
    assert all(folded.layout.params(a)["scale"] == 1.0 for a in folded.layout.of_op("attention"))


@settings(max_examples=12, deadline=None)
@given(layout=S.layouts(), seed=S.seeds())
def test_fold_attn_scale_preserves_every_layout(layout, seed):
    """``fold_attn_scale`` is not in ``reference.names()`` (kept out of the campaign rotation): its property here."""
    from verifier import assert_invariant
    verdict = assert_invariant(reference.get("fold_attn_scale", seed=seed % 1000), layout, seed=seed % 1000)
    if verdict.ok:
        assert verdict.max_rel_err <= 1e-12, verdict


@pytest.mark.parametrize("name,kw", [("alibi_unpermuted", dict(alibi=True)), ("sinks_unpermuted", dict(attn_sinks=True)),
                                     ("softcap_scale_outside", dict(attn_softcap=2.0))])
def test_each_score_mutant_is_caught_and_harmless_without_its_feature(name, kw):
    caught = verify(mutants.get(name, seed=1), build(DecoderSpec(**kw)), seed=1)
    assert caught.status == "diverged" and caught.max_rel_err > 1e-3, caught
    clean = verify(mutants.get(name, seed=1), build(DecoderSpec()), seed=1)
    assert clean.status == "invariant", clean  # the bug needs the feature: the applicability is honest


@pytest.mark.parametrize("transform", ["quant:pair-pca", "quant:spectral-pca", "quant:norm-absorb",
                                       "quant:residual-rotation"])
def test_library_transforms_preserve_scaled_capped_alibi_sink_attention(transform):
    from verifier.registry import resolve
    qk = {"quant:spectral-pca": dict(qk_norm="per_head")}.get(transform, {})
    verdict = verify(resolve(transform), build(DecoderSpec(**FULL, **qk)), seed=0)
    assert verdict.status in ("invariant", "refused"), verdict
    if verdict.status == "invariant":
        assert verdict.max_rel_err <= 1e-12, verdict


# ------------------------------------------------------------------ import: measured from the recording
def _randomized(model):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    return model.eval()


def _gemma2(**kw):
    # sliding_window >= every check length (the masks engineer's sliding windows are not merged here)
    cfg = tf.Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4096,
                          max_position_embeddings=72, attn_implementation="eager", **kw)
    return _randomized(tf.Gemma2ForCausalLM._from_config(cfg, dtype=torch.float64))


def test_gemma2_imports_with_its_measured_scale_and_soft_caps():
    model = _gemma2(query_pre_attn_scalar=20, attn_logit_softcapping=3.0, final_logit_softcapping=5.0)
    gm = import_model(model)
    layout = gm.layout
    for a in layout.of_op("attention"):
        p = layout.params(a)
        assert p["scale"] == pytest.approx(20 ** -0.5, rel=1e-15) and p["softcap"] == 3.0
    (cap,) = layout.of_op("softcap")
    assert layout.params(cap)["cap"] == 5.0 and layout.sink == cap
    check = layout.meta["import_check"]
    assert check["max_rel_err"][check["numerics"]] <= check["bound"]
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(gm(ids), model(ids).logits, rtol=0, atol=1e-5 * model(ids).logits.abs().max())



def test_gemma2_padded_check_sets_aside_the_sources_nan_padded_rows_and_still_refuses_ignored_padding(monkeypatch):
    """transformers' eager attention of a float64 model adds the float64 minimum as its mask and softmaxes in
    float32, where it is -inf: a left-padded row's padded queries (all keys masked) are NaN, and reach its real
    tokens through their zero weights on the padded keys.  The check zeroes those padded values and compares
    the real tokens within the same bound; a graph that ignores the padding is still refused."""
    from fuzz.importer import check
    from fuzz.materialize import GraphModel
    model = _gemma2(query_pre_attn_scalar=20, attn_logit_softcapping=3.0, final_logit_softcapping=5.0)
    gm = import_model(model)
    record = gm.layout.meta["import_check"]
    padded = record["padded"]
    assert padded["max_rel_err"] <= record["bound"], padded
    assert padded["source_nonfinite"]["modules"][0].startswith("model.layers.0."), padded
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :check.PAD] = 0
    with torch.no_grad():
        assert torch.isnan(model(input_ids=ids, attention_mask=mask).logits[1, check.PAD:]).all()  # the source's
        assert torch.isfinite(gm(ids, attention_mask=mask)).all()
    forward = GraphModel.forward
    monkeypatch.setattr(GraphModel, "forward", lambda self, ids, attention_mask=None: forward(self, ids))
    with pytest.raises(BadInput, match=r"not exact on a padded batch.*left padding of 7 tokens"):
        import_model(model)


def test_a_source_not_finite_at_the_real_tokens_of_a_padded_batch_is_refused_as_such(monkeypatch):
    from fuzz.importer import check
    masked = check.masked_source_logits

    def nan_at_a_real_token(model, ids, mask):
        out = masked(model, ids, mask).clone()
        if not bool(mask.all()):
            out[1, -1, 0] = float("nan")
        return out

    monkeypatch.setattr(check, "masked_source_logits", nan_at_a_real_token)
    with pytest.raises(BadInput, match=r"source itself is not finite on a padded batch.* at 1 of 41 non-padded"):
        import_model(_gemma2(attn_logit_softcapping=3.0, final_logit_softcapping=5.0))

def test_granite_scale_is_what_the_attention_computes_not_what_the_config_says():
    cfg = tf.GraniteConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, attention_multiplier=0.0625,
                           max_position_embeddings=256)
    model = _randomized(tf.GraniteForCausalLM._from_config(cfg, dtype=torch.float64))
    model.config.attention_multiplier = 0.5  # the config lies; the modules keep computing with 0.0625
    layout = import_model(model).layout
    assert {layout.params(a)["scale"] for a in layout.of_op("attention")} == {0.0625}
    check = layout.meta["import_check"]
    assert check["bound"] == 1e-10 and max(check["max_rel_err"].values()) <= 1e-10


def test_mpt_imports_with_the_alibi_slopes_measured_from_its_recording():
    cfg = tf.MptConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=256)
    model = _randomized(tf.MptForCausalLM._from_config(cfg, dtype=torch.float64))
    gm = import_model(model)
    want = [2.0 ** (-8 * (h + 1) / 4) for h in range(4)]  # MPT's slopes for 4 heads (alibi_bias_max 8)
    for a in gm.layout.of_op("attention"):
        assert gm.layout.params(a)["alibi"] is True
        assert gm.nodes[a].alibi_slopes.tolist() == want
    check = gm.layout.meta["import_check"]
    assert check["max_rel_err"][check["numerics"]] <= check["bound"] and check["padded"]["max_rel_err"] <= check["bound"]


def test_an_alibi_model_whose_recording_shows_no_alibi_is_refused_naming_alibi(monkeypatch):
    from fuzz.record import contract
    monkeypatch.setattr(contract, "score_bias", lambda added, n_heads: {"kind": "other"})
    cfg = tf.MptConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=256)
    model = _randomized(tf.MptForCausalLM._from_config(cfg, dtype=torch.float64))
    with pytest.raises(BadInput, match=r"transformer\.blocks\.0\.attn.*ALiBi"):
        import_model(model)


def test_a_graph_model_with_alibi_slopes_as_parameters_is_refused_not_mis_imported():
    with pytest.raises(BadInput, match=r"cannot import nodes\.l0_attn"):
        import_model(materialize(build(DecoderSpec(alibi=True)), seed=1))


def test_a_graph_model_with_sinks_imports_to_itself_exactly():
    """The sinks' recorded chain (cat of the sink column, max subtraction, softmax, [..., :-1]) is read back."""
    gm = materialize(build(DecoderSpec(attn_sinks=True, layers=(LayerSpec(), LayerSpec()))), seed=1)
    back = import_model(gm)
    assert max(back.layout.meta["import_check"]["max_rel_err"].values()) <= 1e-10
    attns = back.layout.of_op("attention")
    assert len(attns) == 2 and all(back.layout.params(a)["sinks"] is True for a in attns)
    assert {id(back.nodes[a].sinks) for a in attns} == {id(gm.nodes[a].sinks) for a in gm.layout.of_op("attention")}


def test_a_graph_model_with_scale_and_soft_caps_imports_to_itself_exactly():
    layout = build(DecoderSpec(attn_scale=0.2, attn_softcap=2.0, final_softcap=4.0))
    gm = materialize(layout, seed=1)
    back = import_model(gm)
    (a,) = back.layout.of_op("attention")
    assert (back.layout.params(a)["scale"], back.layout.params(a)["softcap"]) == (0.2, 2.0)
    assert [back.layout.params(n)["cap"] for n in back.layout.of_op("softcap")] == [4.0]
    ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(back(ids), gm(ids))


def test_an_imported_soft_capped_layout_round_trips_through_its_json():
    layout = import_model(_gemma2(attn_logit_softcapping=3.0, final_logit_softcapping=5.0)).layout
    again = Layout.from_json(layout.to_json())
    assert again == layout and math.isclose(again.params(again.sink)["cap"], 5.0)
