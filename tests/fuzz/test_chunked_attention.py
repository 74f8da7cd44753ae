"""Chunked local attention (issue 14: Llama-4's ``attention_chunk_size``): query ``i`` reads keys ``j <= i`` with
``floor(i / C) == floor(j / C)``, chunks counted from a row's first token, the attention op's ``chunk`` parameter.

The mask against transformers' own mask functions (plain and left-padded), the axis that draws it (on the layers
``LayerSpec.sliding`` marks), the importer measuring ``C`` per layer from the model's behaviour (Llama-4: its RoPE
layers chunked, its NoPE layers not, at a ``C`` that is no config default), every recipe keeping it, the mutant
that drops it, and the export."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from transformers.masking_utils import causal_mask_function, chunked_causal_mask_function

from benchmarks.compat import tiny_config
from benchmarks.import_check_families import instantiate
from fuzz import DecoderSpec, LayerSpec, build, materialize
from fuzz.errors import LayoutError
from fuzz.importer import import_model
from fuzz.importer.window import with_chunks
from fuzz.layout import Layout
from fuzz.materialize import attention_mask, chunk_mask
from quant.parity import GATE
from quant.transforms import RECIPES
from verifier import mutants, verify
from verifier.registry import resolve

SPEC = DecoderSpec(attn_chunk=3, layers=(LayerSpec(), LayerSpec(sliding=False)))


def _transformers_mask(fn, t: int, b: int = 0) -> torch.Tensor:
    """``(t, t)`` bool from a transformers mask function (``fn(batch, head, q, kv)``), row ``b``."""
    i = torch.arange(t)
    return torch.tensor([[bool(fn(b, 0, q, k)) for k in i] for q in i])


@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_the_mask_is_transformers_chunked_causal_mask(chunk):
    t = 13
    want = _transformers_mask(chunked_causal_mask_function(chunk, torch.zeros(1, dtype=torch.long)), t)
    assert torch.equal(attention_mask.__wrapped__(t, None, "cpu", chunk), want)
    assert torch.equal(attention_mask(t, None, "cpu"), _transformers_mask(causal_mask_function, t))
    # left padding: transformers counts the chunks of a row from its first token
    padding = torch.ones(2, t, dtype=torch.bool)
    padding[1, :5] = False
    left = torch.tensor([0, 5])
    got = chunk_mask(padding, chunk) & attention_mask(t, None, "cpu")[None]
    for b in range(2):
        assert torch.equal(got[b], _transformers_mask(chunked_causal_mask_function(chunk, left), t, b))


def test_the_spec_chunks_the_layers_it_marks_local():
    layout = build(SPEC)
    local, full = (layout.params(n) for n in ("l0_attn", "l1_attn"))
    assert (local["chunk"], local["window"], full["chunk"]) == (3, None, None)
    assert "op:attention:chunk" in layout.op_features()
    assert {"attn:chunked", "attn:chunked+global"} <= set(SPEC.features())
    assert "attn:chunked" not in DecoderSpec().features()
    assert Layout.from_dict(layout.to_dict()).hash() == layout.hash()
    assert build(DecoderSpec()).params("l0_attn")["chunk"] is None  # old layouts: full causal
    with pytest.raises(LayoutError, match="one local span"):
        build(SPEC.with_(sliding_window=4))


@pytest.mark.parametrize("bad", [dict(chunk=0), dict(chunk=2.5), dict(chunk=3, window=4)])
def test_an_ill_formed_chunk_is_a_layout_error(bad):
    data = build(DecoderSpec()).to_dict()
    next(n for n in data["nodes"] if n["op"] == "attention").update(bad)
    with pytest.raises(LayoutError, match="chunk"):
        Layout.from_dict(data)


def test_a_chunked_attention_reads_only_its_chunk():
    m = materialize(build(SPEC), seed=3)
    plain = materialize(build(SPEC.with_(attn_chunk=None)), seed=3)
    p = build(SPEC).params("l0_attn")
    gen = torch.Generator().manual_seed(1)
    t = 10
    q, k, v = (torch.randn(2, t, w, generator=gen, dtype=torch.float64)
               for w in (p["n_heads"] * p["head_dim"], p["n_kv_heads"] * p["head_dim"], p["n_kv_heads"] * p["head_dim"]))
    with torch.no_grad():
        got, full = m.nodes["l0_attn"](q, k, v), plain.nodes["l0_attn"](q, k, v)
        assert torch.equal(got[:, :3], full[:, :3])  # the first chunk reads every key before it
        assert not torch.allclose(got[:, 3:], full[:, 3:])
        # position 7 (chunk 2: positions 6..8) is full attention over keys 6, 7 only
        shifted = plain.nodes["l0_attn"](q[:, 6:], k[:, 6:], v[:, 6:])
        assert torch.allclose(got[:, 7], shifted[:, 1], rtol=1e-13, atol=1e-13)


def _llama4(chunk: int | None = None) -> torch.nn.Module:
    cls = tf.Llama4ForCausalLM
    cfg = tiny_config(cls)
    if chunk is not None:
        cfg.attention_chunk_size = chunk
    return instantiate(cls, cfg, 0)


@pytest.mark.parametrize("chunk", [None, 5])  # None: the compat config's; 5: none the importer could assume
def test_llama4_imports_exactly_with_its_chunks_measured_per_layer(chunk):
    hf = _llama4(chunk)
    size = hf.config.attention_chunk_size
    rope = hf.config.no_rope_layers  # 1: a RoPE layer (chunked), 0: a NoPE layer (full attention)
    assert 0 in rope and 1 in rope
    gm = import_model(hf)
    check = gm.layout.meta["import_check"]
    assert max(n for _, n in check["lengths"]) > 2 * size  # compared over several chunks
    assert min(check["max_rel_err"].values()) <= check["bound"]
    assert check["padded"] is not None  # the left-padded batch too: chunks from each row's first token
    attention = gm.layout.of_op("attention")
    assert [gm.layout.params(n)["chunk"] for n in attention] == [size if r else None for r in rope]
    assert all(gm.layout.params(n)["window"] is None for n in attention)
    # the check sees the chunks: the same graph without them is far from the source
    dropped = materialize(with_chunks(gm.layout, {n: None for n in attention}), dtype=torch.float64)
    dropped.load_state_dict(gm.state_dict())
    ids = torch.randint(0, 64, (1, 3 * size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, wrong = hf(ids).logits, dropped(ids)
    assert ((wrong - want).abs().max() / want.abs().max()).item() > 1e-3


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_keeps_the_chunks(recipe):
    """Chunks are a mask on the scores: the recipes' maps of q/k/v channels and of the residual stream never
    see it, and re-emit each attention with its parameters."""
    for spec in (SPEC.with_(qkv_bias=True), SPEC.with_(mla="q_lora", n_kv_heads=4)):
        verdict = verify(resolve(f"quant:{recipe}"), build(spec))
        assert verdict.status == "invariant", str(verdict)


def test_dropping_the_chunks_in_a_rewrite_is_caught_at_the_attention():
    verdict = verify(mutants.get("chunk_dropped"), build(SPEC))
    assert verdict.status == "diverged", str(verdict)
    assert verdict.first_divergent["op"] == "attention", verdict
    assert verify(mutants.get("chunk_dropped"), build(DecoderSpec())).status == "invariant"


@pytest.mark.slow
def test_a_chunked_layout_exports_with_its_chunks(cpu_f32_parity):
    layout = build(SPEC)
    model = materialize(layout, dtype=torch.float32, seed=3)
    dropped = materialize(with_chunks(layout, {n: None for n in layout.of_op("attention")}), dtype=torch.float32,
                          seed=3)
    ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, wrong = model(ids), dropped(ids)
    assert ((wrong - ref).abs().max() / ref.abs().max()).item() > 1e3 * GATE["rel_err"]  # the gate would see it
    cpu_f32_parity(model, ids)
