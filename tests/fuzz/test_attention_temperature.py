"""Attention temperature tuning (issue 14: Ministral3, Mistral4; Llama-4's NoPE layers): the query at position
``p`` times ``1 + beta log(1 + floor((p + o) / L))``, the attention op's ``temperature_*`` parameters.

The materializer against the formula, the axis that draws it, the importer measuring beta / L / o from the
recorded per-position table (Ministral3 and Mistral4 exact, at lengths where the factor is not 1), the refusal
that names a table it cannot measure, every recipe keeping it, the mutant that drops it, and the export."""

from __future__ import annotations

import math

import pytest
import torch
import transformers as tf

from benchmarks.compat import TEMPERATURE_LENGTH, tiny_config
from benchmarks.compat import build as build_hf
from benchmarks.import_check_families import instantiate
from fuzz import DecoderSpec, LayerSpec, build, materialize
from fuzz.errors import BadInput, LayoutError
from fuzz.importer import check_lengths, import_model
from fuzz.importer.temperature import measure
from fuzz.layout import Layout
from fuzz.materialize import temperature_table
from quant.parity import GATE
from quant.transforms import RECIPES
from verifier import mutants, verify
from verifier.registry import resolve

SPEC = DecoderSpec(attn_temperature=0.5, attn_temperature_length=3, layers=(LayerSpec(), LayerSpec()))


def _ministral(pos: torch.Tensor, beta: float, length: int) -> torch.Tensor:
    """transformers' ``get_llama_4_attn_scale`` (Ministral3 / Mistral4), as written there."""
    return 1 + beta * torch.log(1 + torch.floor(pos / length))


def _llama4(pos: torch.Tensor, attn_scale: float, floor_scale: int) -> torch.Tensor:
    """Llama-4's NoPE-layer temperature, as ``Llama4TextAttention.forward`` writes it."""
    return torch.log1p(torch.floor((pos.float() + 1.0) / floor_scale)) * attn_scale + 1.0


def test_the_table_is_the_transformers_formula_in_both_precisions():
    pos = torch.arange(40)
    p = {"temperature_beta": 0.1, "temperature_length": 4, "temperature_offset": 0}
    assert torch.equal(temperature_table(p, 40, torch.float32, "transformers"), _ministral(pos, 0.1, 4))
    exact = temperature_table(p, 40, torch.float64, "exact")
    assert torch.allclose(exact, _ministral(pos.double(), 0.1, 4), rtol=1e-15, atol=0)
    assert (exact[:4] == 1).all() and (exact[4:] > 1).all()
    llama = {"temperature_beta": 0.25, "temperature_length": 5, "temperature_offset": 1}
    assert torch.allclose(temperature_table(llama, 40, torch.float32, "transformers"), _llama4(pos, 0.25, 5),
                          rtol=2e-7, atol=0)


def test_the_attention_scales_each_query_by_its_position_factor():
    layout = build(SPEC)
    p = layout.params("l0_attn")
    assert (p["temperature_beta"], p["temperature_length"], p["temperature_offset"]) == (0.5, 3, 0)
    assert "op:attention:temperature" in layout.op_features() and "attn:temperature" in SPEC.features()
    assert "attn:temperature" not in DecoderSpec().features()
    assert Layout.from_dict(layout.to_dict()).hash() == layout.hash()
    m = materialize(layout, seed=3)
    plain = materialize(build(SPEC.with_(attn_temperature=None)), seed=3)
    gen = torch.Generator().manual_seed(1)
    t = 9
    q = torch.randn(2, t, p["n_heads"] * p["head_dim"], generator=gen, dtype=torch.float64)
    k = torch.randn(2, t, p["n_kv_heads"] * p["head_dim"], generator=gen, dtype=torch.float64)
    v = torch.randn(2, t, p["n_kv_heads"] * p["head_dim"], generator=gen, dtype=torch.float64)
    factor = _ministral(torch.arange(t, dtype=torch.float64), 0.5, 3)
    with torch.no_grad():
        got = m.nodes["l0_attn"](q, k, v)
        want = plain.nodes["l0_attn"](q * factor[None, :, None], k, v)
        assert torch.allclose(got, want, rtol=1e-13, atol=1e-13)
        assert torch.equal(got[:, :3], plain.nodes["l0_attn"](q, k, v)[:, :3])  # factor 1 before the first step
        assert not torch.allclose(got[:, 3:], plain.nodes["l0_attn"](q, k, v)[:, 3:])


@pytest.mark.parametrize("bad", [dict(temperature_beta=0.1), dict(temperature_length=4),
                                 dict(temperature_beta=float("inf"), temperature_length=4),
                                 dict(temperature_beta=0.1, temperature_length=4, temperature_offset=-1)])
def test_a_half_or_ill_formed_temperature_is_a_layout_error(bad):
    data = build(DecoderSpec()).to_dict()
    next(n for n in data["nodes"] if n["op"] == "attention").update(bad)
    with pytest.raises(LayoutError, match="temperature"):
        Layout.from_dict(data)


def test_measure_reads_beta_length_and_offset_from_the_table():
    pos = torch.arange(8)
    assert measure(_ministral(pos, 0.1, 4).double().tolist())[0] == \
        {"temperature_beta": 0.1, "temperature_length": 4, "temperature_offset": 0}
    # Llama-4's form (o = 1): two steps seen, the offset read off them
    assert measure(_llama4(pos, 0.25, 3).double().tolist())[0] == \
        {"temperature_beta": 0.25, "temperature_length": 3, "temperature_offset": 1}
    ones, why = measure([1.0] * 8)
    assert ones is None and "1 at every recorded position 0..7" in why
    bent, why = measure([1.0, 1.0, 1.5, 1.5, 1.9, 1.9, 2.5, 2.5])
    assert bent is None and "no 1 + beta log" in why


@pytest.mark.parametrize("name", ["Ministral3ForCausalLM", "Mistral4ForCausalLM"])
def test_ministral3_and_mistral4_import_exactly_where_the_factor_is_not_1(name):
    hf = build_hf(name)
    assert hf.config.rope_parameters["original_max_position_embeddings"] == TEMPERATURE_LENGTH
    gm = import_model(hf)
    check = gm.layout.meta["import_check"]
    assert max(n for _, n in check["lengths"]) > TEMPERATURE_LENGTH  # compared where the factor is > 1
    assert min(check["max_rel_err"].values()) <= check["bound"]
    beta = hf.config.rope_parameters["llama_4_scaling_beta"]
    for attn in gm.layout.of_op("attention"):
        p = gm.layout.params(attn)
        assert (p["temperature_beta"], p["temperature_length"], p["temperature_offset"]) == \
            (beta, TEMPERATURE_LENGTH, 0)
    # the check sees the factor: the same graph without it is far from the source
    data = gm.layout.to_dict()
    for node in data["nodes"]:
        if node["op"] == "attention":
            node.update(temperature_beta=None, temperature_length=None)
    ids = torch.randint(0, 64, (1, 24), generator=torch.Generator().manual_seed(0))
    dropped = materialize(Layout.from_dict(data), dtype=torch.float64)
    dropped.load_state_dict(gm.state_dict())
    with torch.no_grad():
        want, wrong = hf(ids).logits, dropped(ids)
    assert ((wrong - want).abs().max() / want.abs().max()).item() > 1e-3


def test_a_factor_that_is_1_over_the_whole_recording_is_refused_by_name():
    cls = tf.Ministral3ForCausalLM
    cfg = tiny_config(cls)
    cfg.rope_parameters["original_max_position_embeddings"] = 16384  # the released default: 1 up to 16k tokens
    with pytest.raises(BadInput, match="attention temperature tuning.*1 at every recorded position"):
        import_model(instantiate(cls, cfg, 0))


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_keeps_the_temperature(recipe):
    """A per-position factor on every query channel commutes with the recipes' per-head linear maps (pair-PCA's
    RoPE-pair rotations, spectral-PCA's Gamma, norm absorption, the online WHT): each keeps it."""
    for spec in (SPEC.with_(qkv_bias=True), SPEC.with_(mla="q_lora", n_kv_heads=4)):
        verdict = verify(resolve(f"quant:{recipe}"), build(spec))
        assert verdict.status == "invariant", str(verdict)


def test_dropping_the_temperature_in_a_rewrite_is_caught_at_the_attention():
    verdict = verify(mutants.get("temperature_dropped"), build(SPEC))
    assert verdict.status == "diverged", str(verdict)
    assert verdict.first_divergent["op"] == "attention", verdict
    assert verify(mutants.get("temperature_dropped"), build(DecoderSpec())).status == "invariant"


@pytest.mark.slow
def test_a_temperature_layout_exports_to_openvino(cpu_f32_parity):
    model = materialize(build(SPEC), dtype=torch.float32, seed=3)
    dropped = materialize(build(SPEC.with_(attn_temperature=None)), dtype=torch.float32, seed=3)
    ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, wrong = model(ids), dropped(ids)
    assert ((wrong - ref).abs().max() / ref.abs().max()).item() > 1e3 * GATE["rel_err"]  # the gate would see it
    cpu_f32_parity(model, ids)

