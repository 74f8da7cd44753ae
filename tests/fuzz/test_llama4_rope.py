"""Llama 4's complex RoPE (``view_as_real(view_as_complex(x) * freqs_cis)``: each adjacent pair a complex number
times a unit phasor) is an interleaved ``rope`` measured from the phasor table; the rest of Llama 4 that the
layout needs imports too: its weightless q/k RMS norm as a weight-free norm, the NoPE layers' attention
temperature tuning measured, and its chunked attention measured (tests/fuzz/test_chunked_attention.py)."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from torch import nn

from benchmarks.compat import build, tiny_config
from benchmarks.import_check_families import instantiate
from fuzz.importer import import_model
from fuzz.importer.rope import measured_table
from fuzz.record import record


def _llama4(**changes) -> tf.Llama4ForCausalLM:
    cfg = tiny_config(tf.Llama4ForCausalLM)
    for key, value in changes.items():
        setattr(cfg, key, value)
    return instantiate(tf.Llama4ForCausalLM, cfg)


# what the vocabulary lacks switched off: the q/k L2 norm, the NoPE layers' temperature, chunked attention, MoE
PLAIN = dict(use_qk_norm=False, attn_temperature_tuning=False, moe_layers=[], attention_chunk_size=8192)


def test_complex_rope_is_recorded_as_interleaved_rope_with_its_phasor_tables():
    hf = _llama4(**PLAIN)
    rec = record(hf)
    assert not [n for n in rec.order if rec.graph.nodes[n].get("call") in ("view_as_complex", "view_as_real")]
    ropes = rec.of_op("rope")
    assert ropes and {rec.graph.nodes[n]["module_path"] for n in ropes} == {"model.layers.0.self_attn"}  # NoPE layer 1
    for n in ropes:
        d = rec.graph.nodes[n]
        assert (d["style"], d["rotary_dim"], d["head_dim"]) == ("interleaved", 8, 8)
        inv_freq, amplitude = measured_table(d, d["rotary_dim"])
        assert torch.allclose(inv_freq, hf.model.rotary_emb.inv_freq.double(), rtol=1e-6) and amplitude == 1.0


def test_llama4_with_complex_rope_imports_within_its_float32_floor():
    hf = _llama4(**PLAIN)
    gm = import_model(hf)
    check = gm.layout.meta["import_check"]
    assert check["floor"] == "float32" and max(check["max_rel_err"].values()) <= check["bound"]  # x.float() in it
    for node in gm.layout.of_op("rope"):
        p = gm.layout.params(node)
        assert (p["style"], p["theta"], p["scaling"]) == ("interleaved", hf.config.rope_parameters["rope_theta"],
                                                          "none")


def test_llama4_weightless_qk_norm_and_its_chunked_attention_import():
    """The weightless q/k L2 norm is a weight-free norm (``weight_form="none"``); its MoE imports as input-scaled
    experts (tests/fuzz/test_expert_scale_input.py); its chunked local attention on the RoPE layers
    (``attention_chunk_size``) is measured at the attention: the whole tiny Llama 4 imports within the check."""
    rec = record(build("Llama4ForCausalLM"))
    norms = [rec.graph.nodes[n] for n in rec.of_op("norm") if "qk_norm" in rec.graph.nodes[n]["module_path"]]
    assert norms and all(d["weight_form"] == "none" and not d["params"] for d in norms)
    gm = import_model(build("Llama4ForCausalLM"))
    check = gm.layout.meta["import_check"]
    assert min(check["max_rel_err"].values()) <= check["bound"]
    assert gm.layout.params("model_layers_0_self_attn__attention")["chunk"] is not None


def test_llama4_without_moe_imports_with_its_weightless_qk_norm():
    hf = _llama4(**{**PLAIN, "use_qk_norm": True})
    gm = import_model(hf)
    check = gm.layout.meta["import_check"]
    assert max(check["max_rel_err"].values()) <= check["bound"]
    assert "none" in {gm.layout.params(n)["weight_form"] for n in gm.layout.of_op("norm")}


def test_llama4_temperature_tuning_imports_measured_on_its_nope_layer():
    """The NoPE layers' ``1 + attn_scale log1p(floor((p + 1) / floor_scale))`` on the queries: the attention's
    temperature (beta = attn_scale, L = floor_scale, o = 1) read off the recorded table, checked past its steps
    (:mod:`fuzz.importer.temperature`)."""
    hf = _llama4(**{**PLAIN, "attn_temperature_tuning": True, "floor_scale": 4})
    gm = import_model(hf)
    check = gm.layout.meta["import_check"]
    assert max(check["max_rel_err"].values()) <= check["bound"] and max(n for _, n in check["lengths"]) > 4
    tuned = {a: gm.layout.params(a) for a in gm.layout.of_op("attention")
             if gm.layout.params(a)["temperature_beta"] is not None}
    (p,) = tuned.values()  # the one NoPE layer of the tiny config
    assert (p["temperature_beta"], p["temperature_length"], p["temperature_offset"]) == (hf.config.attn_scale, 4, 1)


def test_view_as_and_type_as_of_another_activation_pass_the_values_through():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(16, 8)
            self.a = nn.Linear(8, 8)
            self.b = nn.Linear(8, 8)
            self.head = nn.Linear(8, 16)

        def forward(self, input_ids):
            h = self.emb(input_ids)
            x, y = self.a(h), self.b(h).reshape(*h.shape[:-1], 2, 4)
            return self.head(x.view_as(y).type_as(y).reshape(h.shape) + h)

    rec = record(M().double(), torch.arange(8)[None])
    assert not [n for n in rec.order if rec.graph.nodes[n]["op"] == "opaque"]
