"""The power form of attention temperature (issue 14: Beam's scalable-softmax query scale on its NoPE layers): the
query at position ``p`` times ``(1 + (p + o) / L) ** beta``, the attention op's ``temperature_form="power"``.

The materializer against Beam's own function, the measurement (beta, L, o read off the factors at far positions,
where the form bends), Beam imported exactly with the factor measured on its NoPE layer only, the refusal of a
smooth factor that is no power, every recipe keeping it, the mutant that reads it as Llama-4's steps, and the
export."""

from __future__ import annotations

import math

import pytest
import torch
import transformers as tf
from transformers.models.beam.modeling_beam import compute_attention_scaling

from benchmarks.compat import tiny_config
from benchmarks.import_check_families import instantiate
from fuzz import DecoderSpec, LayerSpec, build, materialize
from fuzz.importer import import_model
from fuzz.importer.temperature import factor, measure_power, probe_positions
from fuzz.layout import Layout
from fuzz.materialize import temperature_table
from quant.parity import GATE
from quant.transforms import RECIPES
from verifier import mutants, verify
from verifier.registry import resolve

SPEC = DecoderSpec(attn_temperature=0.5, attn_temperature_length=2, attn_temperature_form="power",
                   layers=(LayerSpec(), LayerSpec(rope=False)))
BEAM = {"temperature_beta": 0.1, "temperature_length": 2048, "temperature_offset": 1, "temperature_form": "power"}


def test_the_power_table_is_beams_function():
    pos = torch.arange(300)
    want = compute_attention_scaling(pos[None]).flatten()
    assert torch.equal(temperature_table(BEAM, 300, torch.float32, "transformers"), want)
    exact = temperature_table(BEAM, 300, torch.float64, "exact")
    assert torch.allclose(exact, (1 + (pos.double() + 1) / 2048) ** 0.1, rtol=1e-14, atol=0)
    layout = build(SPEC)
    p = layout.params("l0_attn")
    assert (p["temperature_form"], p["temperature_beta"], p["temperature_length"]) == ("power", 0.5, 2)
    assert "op:attention:temperature:power" in layout.op_features()
    assert "attn:temperature:power" in SPEC.features()
    assert "attn:temperature:power" not in SPEC.with_(attn_temperature_form="log_floor").features()
    assert Layout.from_dict(layout.to_dict()).hash() == layout.hash()


def test_measure_power_reads_beta_length_and_offset_at_far_positions():
    n = 8
    positions = probe_positions(n)
    for beta, length, offset in ((0.1, 2048, 1), (0.5, 4, 0), (0.25, 100, 3)):
        table = [float(torch.tensor(factor(beta, length, offset, p, "power"), dtype=torch.float32)) for p in range(n)]
        far = [float(torch.tensor(factor(beta, length, offset, p, "power"), dtype=torch.float32)) for p in positions]
        assert measure_power(table, positions, far)[0] == {"temperature_beta": beta, "temperature_length": length,
                                                          "temperature_offset": offset, "temperature_form": "power"}
    # a smooth factor that is no power (1 + log(1 + p) ** 2 / 100): refused, saying what it is not
    table = [1 + math.log1p(p + 1) ** 2 / 100 for p in range(n)]
    got, why = measure_power(table, positions, [1 + math.log1p(p + 1) ** 2 / 100 for p in positions])
    assert got is None and "no (1 + (p + o) / L) ** beta" in why


def test_beam_imports_exactly_with_its_nope_layer_temperature_measured():
    cls = tf.BeamForCausalLM
    hf = instantiate(cls, tiny_config(cls), 0)
    gm = import_model(hf)
    check = gm.layout.meta["import_check"]
    assert min(check["max_rel_err"].values()) <= check["bound"] and check["padded"] is not None
    attention = gm.layout.of_op("attention")
    nope = [t == "full_attention" for t in hf.config.layer_types]  # Beam: full-attention layers run NoPE
    assert True in nope and False in nope
    for node, is_nope in zip(attention, nope):
        p = gm.layout.params(node)
        got = {k: p[k] for k in BEAM}
        assert got == (BEAM if is_nope else {"temperature_beta": None, "temperature_length": None,
                                              "temperature_offset": 0, "temperature_form": "log_floor"})
    # the check sees the factor: the same graph without it is far from the source
    data = gm.layout.to_dict()
    for node in data["nodes"]:
        if node["op"] == "attention":
            node.update(temperature_beta=None, temperature_length=None, temperature_offset=0)
    ids = torch.randint(0, 64, (1, 64), generator=torch.Generator().manual_seed(0))
    dropped = materialize(Layout.from_dict(data), dtype=torch.float64)
    dropped.load_state_dict(gm.state_dict())
    with torch.no_grad():
        want, wrong = hf(ids).logits, dropped(ids)
    assert ((wrong - want).abs().max() / want.abs().max()).item() > 10 * check["bound"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_keeps_the_power_temperature(recipe):
    """One number per position on every query channel commutes with the recipes' maps of head channels."""
    for spec in (SPEC.with_(qkv_bias=True), SPEC.with_(mla="q_lora", n_kv_heads=4)):
        verdict = verify(resolve(f"quant:{recipe}"), build(spec))
        assert verdict.status == "invariant", str(verdict)


def test_reading_the_power_form_as_steps_is_caught_at_the_attention():
    verdict = verify(mutants.get("temperature_form_confused"), build(SPEC))
    assert verdict.status == "diverged", str(verdict)
    assert verdict.first_divergent["op"] == "attention", verdict
    steps = SPEC.with_(attn_temperature_form="log_floor")
    assert verify(mutants.get("temperature_form_confused"), build(steps)).status == "invariant"


@pytest.mark.slow
def test_a_power_temperature_layout_exports_to_openvino(cpu_f32_parity):
    model = materialize(build(SPEC), dtype=torch.float32, seed=3)
    dropped = materialize(build(SPEC.with_(attn_temperature=None)), dtype=torch.float32, seed=3)
    ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, wrong = model(ids), dropped(ids)
    assert ((wrong - ref).abs().max() / ref.abs().max()).item() > 1e3 * GATE["rel_err"]  # the gate would see it
    cpu_f32_parity(model, ids)


def test_a_source_that_takes_no_position_ids_is_refused_naming_the_form():
    """A GraphModel takes no ``position_ids``: its power-form table cannot be read at far positions, so the
    import refuses it by name (never a guess of beta and L from the near-linear recorded table)."""
    from fuzz.errors import BadInput
    gm = materialize(build(SPEC), seed=3)
    with pytest.raises(BadInput, match=r"\(1 \+ \(pos \+ o\) / L\) \*\* beta.*explicit position_ids"):
        import_model(gm)
