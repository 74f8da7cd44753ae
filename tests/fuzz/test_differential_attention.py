"""Differential attention (issue 14, DiffLlama; ``attention(differential=True)``, axis ``attn_differential``): the
semantics against a loop over the head pairs, the synthesizer drawing it, the import of DiffLlamaForCausalLM (its two
recorded attention calls, the ``cat``/``chunk`` and ``first - lam * second`` folded into one differential attention,
``lambda_init`` measured from the recorded lam, exact against the model's logits, padded batch included), every
recipe and the head permutation preserving it, and the mutant that breaks the head pairs caught."""

import math

import pytest
import torch

from fuzz import DecoderSpec, LayerSpec, build, materialize
from fuzz.errors import LayoutError
from fuzz.materialize import MODULES
from fuzz.ops import DIFF_LAMBDAS, spec

_DIFF = DecoderSpec(attn_differential=True, n_heads=4, n_kv_heads=2, layers=(LayerSpec(), LayerSpec()))


def _loop(q, k, v, h, kv, d, lam):
    """out group i = softmax(q_i k_{i//g}^T / sqrt d) [v_j; v_{j+kv/2}] - lam softmax(q_{i+h/2} ...) [...] by loops."""
    b, t, _ = q.shape
    g = h // kv
    qh, kh, vh = q.reshape(b, t, h, d), k.reshape(b, t, kv, d), v.reshape(b, t, kv, d)
    out = torch.zeros(b, t, h // 2, 2 * d, dtype=q.dtype)
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    for bb in range(b):
        for i in range(h // 2):
            j = i // g
            value = torch.cat((vh[bb, :, j], vh[bb, :, j + kv // 2]), dim=-1)
            maps = []
            for head in (i, i + h // 2):
                s = (qh[bb, :, head] @ kh[bb, :, head // g].T) * d ** -0.5
                maps.append(torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1))
            out[bb, :, i] = maps[0] @ value - lam * (maps[1] @ value)
    return out.reshape(b, t, -1)


@pytest.mark.parametrize("h,kv", [(4, 2), (4, 4), (8, 2), (2, 2)])
def test_differential_attention_is_the_pairwise_difference_of_two_maps(h, kv):
    d = 3
    p = spec("attention").normalise("a", {"n_heads": h, "n_kv_heads": kv, "head_dim": d, "differential": True,
                                          "lambda_init": 0.2})
    mod = MODULES["attention"]("a", p, "exact")
    gen = torch.Generator().manual_seed(h * 10 + kv)
    for name in DIFF_LAMBDAS:
        mod.register_buffer(name, 0.3 * torch.randn(d, generator=gen, dtype=torch.float64))
    lam = (torch.exp(mod.lambda_q1 @ mod.lambda_k1) - torch.exp(mod.lambda_q2 @ mod.lambda_k2) + 0.2).item()
    q, k, v = (torch.randn(2, 5, n * d, generator=gen, dtype=torch.float64) for n in (h, kv, kv))
    want = _loop(q, k, v, h, kv, d, lam)
    assert torch.allclose(mod(q, k, v), want, rtol=1e-12, atol=1e-12)
    assert torch.allclose(mod.export_forward(q, k, v), want, rtol=1e-12, atol=1e-12)
    plain = MODULES["attention"]("a", {**p, "differential": False}, "exact")
    assert plain(q, k, v).shape == want.shape and not torch.allclose(plain(q, k, v), want, atol=1e-3)


def test_the_decoder_pairs_the_heads_and_adds_the_group_norm_and_scale():
    layout = build(_DIFF)
    attns = layout.of_op("attention")
    assert [layout.params(a)["lambda_init"] for a in attns] == [0.8 - 0.6 * math.exp(-0.3 * i) for i in range(2)]
    assert "attn:differential" in layout.features() and "op:attention:differential" in layout.op_features()
    for i, a in enumerate(attns):
        (norm, _), = layout.consumers(a)
        assert layout.op(norm) == "norm" and layout.params(norm)["groups"] == 2 and layout.params(norm)["dim"] == 16 \
            and layout.params(norm)["weight_form"] == "none"
        (scale, _), = layout.consumers(norm)
        assert layout.params(scale)["factor"] == pytest.approx(1 - layout.params(a)["lambda_init"], rel=1e-15)
    for bad in (dict(n_heads=3, n_kv_heads=1), dict(n_heads=6, n_kv_heads=3), dict(mla="q_lora", n_kv_heads=4),
                dict(attn_gate="head_softplus")):
        with pytest.raises(LayoutError, match="attn_differential"):
            build(_DIFF.with_(**bad))


def test_the_synthesizer_draws_it_where_the_heads_pair():
    from hypothesis import given, settings
    from fuzz import strategies as S

    @settings(max_examples=5, deadline=None)
    @given(layout=S.layouts(attn_differential=True))
    def drawn(layout):
        assert "attn:differential" in layout.features()
        assert all(layout.params(a)["differential"] for a in layout.of_op("attention"))
    drawn()


@pytest.fixture(scope="module")
def diffllama():
    tf = pytest.importorskip("transformers")
    from benchmarks.compat import tiny_config
    from benchmarks.import_check_families import instantiate
    from fuzz.importer import import_model
    model = instantiate(tf.DiffLlamaForCausalLM, tiny_config(tf.DiffLlamaForCausalLM))
    return model, import_model(model)


def test_diffllama_imports_as_differential_attention_within_the_checked_bound(diffllama):
    model, gm = diffllama
    layout = gm.layout
    attns = layout.of_op("attention")
    assert len(attns) == len(model.model.layers) and all(layout.params(a)["differential"] for a in attns)
    for i, a in enumerate(attns):  # measured from the recorded lam, equal to DiffLlama's lambda_init_fn
        assert layout.params(a)["lambda_init"] == pytest.approx(0.8 - 0.6 * math.exp(-0.3 * i), abs=1e-12)
        src = model.model.layers[i].self_attn
        assert all(getattr(gm.nodes[a], n) is getattr(src, n) for n in DIFF_LAMBDAS)  # the model's own vectors
    # exact: lam's float32 sums and exps as DiffLlama computes them, its groupnorm (torch's nn.RMSNorm) measured to
    # compute in float64 (keep_dtype) beside the float32-upcast RMSNorm modules
    check = layout.meta["import_check"]
    assert check["floor"] == "exact" and check["max_rel_err"][check["numerics"]] <= check["bound"] == 1e-10
    assert check["padded"]["max_rel_err"] <= 1e-10
    kept = [n for n in layout.of_op("norm") if layout.params(n)["keep_dtype"]]
    assert kept == [c for a in attns for c, _ in layout.consumers(a)]  # the groupnorms, and only they
    # lam matters: the same graph with lam's first vector flipped is past the bound
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids).logits
        src = model.model.layers[0].self_attn
        src.lambda_q1.mul_(-1.0)
        try:
            moved = model(ids).logits
        finally:
            src.lambda_q1.mul_(-1.0)
    assert float((moved - want).abs().max() / want.abs().max()) > 1e-3


def test_every_recipe_and_the_head_permutation_preserve_diffllama(diffllama):
    from quant.transforms import RECIPES
    from verifier import verify
    from verifier.registry import resolve
    _, gm = diffllama
    for name in (*[f"quant:{r}" for r in RECIPES], "reference:permute_heads"):
        verdict = verify(resolve(name), gm)
        assert verdict.status in ("invariant", "refused"), f"{name}: {verdict}"
        if verdict.status == "refused":
            assert "differential" in str(verdict), f"{name} refused without naming the feature: {verdict}"


def test_every_transform_preserves_a_drawn_differential_layout_and_the_broken_pairs_are_caught():
    from verifier import mutants, verify
    from verifier.registry import available, resolve
    layout = build(_DIFF.with_(n_heads=8, n_kv_heads=4, qk_norm="per_head", qkv_bias=True, o_bias=True))
    for prefix in ("reference", "quant"):
        for name in available()[prefix]:
            verdict = verify(resolve(f"{prefix}:{name}"), layout)
            assert verdict.status in ("invariant", "refused"), f"{prefix}:{name}: {verdict}"
    caught = verify(mutants.get("diff_pairs_broken"), layout)
    assert caught.status == "diverged" and caught.first_divergent is not None
