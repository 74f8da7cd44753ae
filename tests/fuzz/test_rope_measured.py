"""RoPE measured from the recording: the cos/sin tables a rotation reads (rows of positions 0, 1, 2 kept on
the recorded ``rope`` node) decide the per-layer table (Olmo3 and kin, whose layers name no layer type), give
the theta of a precomputed sin/cos table (GPT-J, CodeGen: no ``inv_freq`` buffer, no ``rope_theta``), and the
rotated width of GPT-OSS' halves form (tables half as wide as the rotation)."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.compat import build
from fuzz.errors import BadInput
from fuzz.importer import import_model
from fuzz.importer.rope import measured_table
from fuzz.record import record


def _err(gm) -> float:
    return max(gm.layout.meta["import_check"]["max_rel_err"].values())


def _tables(inv_freq: list[float], style: str, amplitude: float = 1.0, halves: bool = False) -> dict:
    f = torch.tensor(inv_freq, dtype=torch.float64)
    if halves:
        per = f
    elif style == "half":
        per = torch.cat((f, f))
    else:
        per = f.repeat_interleave(2)
    pos = torch.arange(3, dtype=torch.float64)[:, None] * per[None, :]
    cos, sin = amplitude * pos.cos(), amplitude * pos.sin()
    return {"tables": [cos.tolist(), sin.tolist()] * (2 if halves else 1)}


@pytest.mark.parametrize("style,halves", [("half", False), ("interleaved", False), ("half", True)])
def test_the_table_measures_its_frequencies_and_amplitude(style, halves):
    freqs = [1.0, 0.1, 0.01, 0.001]
    got = measured_table(_tables(freqs, style, 1.25, halves), rotary_dim=8)
    assert got is not None
    assert torch.allclose(got[0], torch.tensor(freqs, dtype=torch.float64), rtol=1e-12)
    assert got[1] == pytest.approx(1.25)


def test_a_table_that_is_no_rotation_by_position_measures_nothing():
    d = _tables([1.0, 0.1, 0.01, 0.001], "half")
    d["tables"][0][2] = [v * 0.5 for v in d["tables"][0][2]]  # position 2 is not twice position 1's angle
    assert measured_table(d, rotary_dim=8) is None
    assert measured_table({}, rotary_dim=8) is None
    assert measured_table(_tables([1.0, 0.1, 0.01, 0.001], "half"), rotary_dim=4) is None  # width mismatch


def test_the_recording_keeps_the_tables_each_rotation_reads():
    rec = record(build("Olmo3ForCausalLM"))
    ropes = rec.of_op("rope")
    assert ropes and all(len(rec.graph.nodes[n]["tables"]) == 2 for n in ropes)
    assert all(len(rows) == 3 for n in ropes for rows in rec.graph.nodes[n]["tables"])


@pytest.mark.parametrize("name", ["Olmo3ForCausalLM", "MellumForCausalLM"])
def test_per_layer_rope_without_a_layer_type_attribute_imports_exactly(name):
    hf = build(name)
    assert not any(isinstance(getattr(m, "layer_type", None), str) for m in hf.modules())
    gm = import_model(hf)
    assert _err(gm) <= 1e-10
    params = hf.config.rope_parameters
    for node in gm.layout.of_op("rope"):
        layer = int(node.split("_layers_")[1].split("_")[0])
        assert gm.layout.params(node)["theta"] == params[hf.config.layer_types[layer]]["rope_theta"]


def test_olmo3_local_and_global_tables_differ_and_each_layer_reads_its_own():
    hf = build("Olmo3ForCausalLM")
    types = hf.config.layer_types
    assert set(types) == {"sliding_attention", "full_attention"}
    with torch.no_grad():  # give the layer types distinct tables (both default to the same theta)
        rotary = hf.model.rotary_emb
        theta = 500.0
        table = 1.0 / theta ** (torch.arange(0, rotary.sliding_attention_inv_freq.numel() * 2, 2,
                                             dtype=torch.int64).float() / (rotary.sliding_attention_inv_freq.numel() * 2))
        rotary.sliding_attention_inv_freq.copy_(table)
        hf.config.rope_parameters["sliding_attention"]["rope_theta"] = theta
    gm = import_model(hf)
    assert _err(gm) <= 1e-10
    thetas = {int(n.split("_layers_")[1].split("_")[0]): gm.layout.params(n)["theta"] for n in gm.layout.of_op("rope")}
    assert thetas == {i: hf.config.rope_parameters[t]["rope_theta"] for i, t in enumerate(types)}
    assert len(set(thetas.values())) == 2


def test_a_table_read_that_no_layer_type_holds_is_refused_by_name():
    hf = build("Olmo3ForCausalLM")
    rotary = hf.model.rotary_emb
    real = type(rotary).forward

    def skewed(self, x, position_ids, layer_type):  # every layer reads a table none of the layer types holds
        cos, sin = real(self, x, position_ids * 2, layer_type)
        return cos, sin

    rotary.forward = skewed.__get__(rotary)
    with pytest.raises(BadInput, match=r"per-layer RoPE of model\.rotary_emb: the table the rotation at "
                                       r"model\.layers\.0\.self_attn reads .* is none of its layer types' tables"):
        import_model(hf)


@pytest.mark.parametrize("name", ["GPTJForCausalLM", "CodeGenForCausalLM"])
def test_the_theta_of_a_precomputed_sincos_table_is_measured(name):
    hf = build(name)
    hf.lm_head.bias = None  # the RoPE part alone (the lm_head bias is its own feature)
    assert not any(isinstance(m._buffers.get("inv_freq"), torch.Tensor) for m in hf.modules())
    gm = import_model(hf)
    assert _err(gm) <= 1e-10
    for node in gm.layout.of_op("rope"):
        p = gm.layout.params(node)
        assert (p["theta"], p["style"], p["rotary_dim"]) == (10000.0, "interleaved", hf.config.rotary_dim)
        assert p["rotary_dim"] < p["head_dim"]


def test_a_precomputed_table_of_no_theta_is_refused_by_name():
    hf = build("GPTJForCausalLM")
    hf.lm_head.bias = None
    rotary = next(m for m in hf.modules() if isinstance(m._buffers.get("embed_positions"), torch.Tensor))
    with torch.no_grad():
        n = rotary.embed_positions.shape[-1] // 2
        pos = torch.arange(rotary.embed_positions.shape[0], dtype=torch.float64)[:, None]
        freqs = torch.linspace(0.9, 0.01, n, dtype=torch.float64)  # the default table starts at 1 for any theta
        rotary.embed_positions.copy_(torch.cat(((pos * freqs).sin(), (pos * freqs).cos()), dim=-1))
    with pytest.raises(BadInput, match=r"transformer\.h\.0\.attn .*RoPE at transformer\.h\.0\.attn: its table "
                                       r"\(frequencies .*\) is not the default RoPE table of any theta"):
        import_model(hf)


def test_gpt_oss_halves_form_rotates_the_whole_head():
    hf = build("GptOssForCausalLM")
    rec = record(hf)
    ropes = rec.of_op("rope")
    head_dim = hf.config.head_dim
    assert ropes
    for n in ropes:
        d = rec.graph.nodes[n]
        assert (d["rotary_dim"], d["style"]) == (head_dim, "half")
        inv_freq, amplitude = measured_table(d, d["rotary_dim"])
        assert torch.allclose(inv_freq, hf.model.rotary_emb.inv_freq.double(), rtol=1e-5)
        assert math.isclose(amplitude, hf.model.rotary_emb.attention_scaling, rel_tol=1e-5)


def test_a_per_position_query_scale_after_rope_leaves_the_rope_whole():
    """Ministral3 multiplies the rotated queries by 1 + beta log(1 + floor(pos / L)) (a constant per position):
    that product is no RoPE seed (the q rotation is still contracted); it imports as the attention's temperature
    (``tests/fuzz/test_attention_temperature.py``)."""
    hf = build("Ministral3ForCausalLM")
    rec = record(hf)
    ropes = [n for n in rec.of_op("rope") if rec.graph.nodes[n]["module_path"] == "model.layers.0.self_attn"]
    assert sorted(rec.graph.nodes[n]["n_heads"] for n in ropes) == [2, 4]  # k and q both rotated
    gm = import_model(hf)
    assert sorted(gm.layout.params(n)["n_heads"] for n in gm.layout.of_op("rope")) == [2, 2, 4, 4]
    assert all(gm.layout.params(a)["temperature_beta"] is not None for a in gm.layout.of_op("attention"))
