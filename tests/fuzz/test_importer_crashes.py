"""No importer crash: whatever fails inside ``import_model`` is a refusal (:class:`BadInput`) naming the
source module and the feature, never a KeyError, an AttributeError or a LayoutError (issue 14).

The failures are injected where each stage can fail (a pattern meeting a node it was not written for, a
converted layout that breaks a layout constraint, the recorder) on a tiny Llama, whose import otherwise
passes; the families that crashed the importer are imported (refused by name) from tiny instances.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import fuzz.importer.api as api
from benchmarks.import_check_families import randomize
from fuzz.errors import BadInput, LayoutError
from fuzz.importer import import_model
from fuzz.importer import patterns as P
from fuzz.layout import Layout

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=None, bos_token_id=None,
            eos_token_id=None)


def _llama() -> torch.nn.Module:
    model = tf.LlamaForCausalLM._from_config(tf.LlamaConfig(**TINY), dtype=torch.float64)
    return randomize(model, 0)


def _assert_named_refusal(exc: BaseException, module: str) -> None:
    assert type(exc) is BadInput, f"{type(exc).__name__}: {exc}"
    assert module in str(exc), str(exc)


def test_the_unpatched_llama_imports():
    assert import_model(_llama()).layout.meta["import_check"]["floor"] in ("exact", "float32")


def test_a_pattern_that_fails_on_a_node_is_a_refusal_naming_the_module_and_the_op(monkeypatch):
    original = P.IMPORT_PATTERNS["linear"]

    def boom(conv, node, ins):
        if conv.g.nodes[node]["module_path"] == "model.layers.1.mlp.down_proj":
            raise KeyError("in_features")
        return original.convert(conv, node, ins)

    monkeypatch.setitem(P.IMPORT_PATTERNS, "linear", P.ImportPattern("linear", original.recorded, boom))
    with pytest.raises(Exception) as info:
        import_model(_llama())
    _assert_named_refusal(info.value, "model.layers.1.mlp.down_proj")
    assert "linear" in str(info.value) and "KeyError" in str(info.value)


def test_a_layout_error_of_a_converted_node_is_a_refusal_naming_its_source_module(monkeypatch):

    def invalid(entries, meta=None):
        node = next(e[0] for e in entries if e[1] == "attention")
        raise LayoutError("a constraint the importer did not foresee", node=node)

    monkeypatch.setattr(Layout, "from_nodes", staticmethod(invalid))
    with pytest.raises(Exception) as info:
        import_model(_llama())
    _assert_named_refusal(info.value, "model.layers.0.self_attn")
    assert "attention node" in str(info.value)


def test_a_recorder_failure_is_a_refusal_naming_the_model_and_the_stage(monkeypatch):
    def broken(model, ids):
        raise AttributeError("'NoneType' object has no attribute 'shape'")

    monkeypatch.setattr(api, "record", broken)
    with pytest.raises(Exception) as info:
        import_model(_llama())
    _assert_named_refusal(info.value, "LlamaForCausalLM")
    assert "recording its forward" in str(info.value)


# ------------------------------------------------------------------ the families that crashed the importer

def _tiny(name: str) -> torch.nn.Module:
    from benchmarks.compat import build  # the matrix's own tiny instance (config defaults, shrunk)
    return build(name)


def test_olmo_non_parametric_layer_norm_imports_weight_free_not_a_key_error():
    """OLMo's LayerNorm has neither weight nor bias: the norm pattern raised KeyError('bias'), then refused it
    by name; it now imports as a weight-free norm (``weight_form="none"``), checked against the logits."""
    gm = import_model(_tiny("OlmoForCausalLM"))
    assert {gm.layout.params(n)["weight_form"] for n in gm.layout.of_op("norm")} == {"none"}
