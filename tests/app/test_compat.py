"""The compatibility matrix (``python -m benchmarks.compat``) on a handful of classes: every row has the
schema the docs and the README are generated from, and every row is either imported within the import
check's bound or refused with a reason that names a source module of the model (issue 14)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import compat
from fuzz.importer.check import FLOAT32_EPS, FLOAT32_FACTOR, TOLERANCE

# an import (with recipes), a sliding window the importer measures, learned positions, a state-space model
CLASSES = ("LlamaForCausalLM", "MistralForCausalLM", "GPTNeoForCausalLM", "MambaForCausalLM")
COMMON = {"class": str, "kind": str, "outcome": str}
IMPORTED = {"floor": str, "bound": float, "max_rel_err": float, "lengths": list}
REFUSED = {"reason": str, "message": str, "module": str, "error_type": str}


@pytest.fixture(scope="module")
def rows() -> dict[str, dict]:
    return {name: compat.run_class(name, recipes=name == "LlamaForCausalLM") for name in CLASSES}


def _has(row: dict, schema: dict) -> None:
    for key, typ in schema.items():
        assert isinstance(row.get(key), typ), f"{row['class']}: {key}={row.get(key)!r} is not {typ.__name__}"


def test_every_row_is_imported_within_the_bound_or_refused_naming_a_module(rows):
    for name, row in rows.items():
        _has(row, COMMON)
        assert row["class"] == name and row["kind"] in compat.KINDS and row["outcome"] in compat.OUTCOMES
        assert row["outcome"] in ("imported", "refused"), row  # no crash, no timeout, all buildable
        if row["outcome"] == "imported":
            _has(row, IMPORTED)
            n_attn = 2  # two attention layers
            bound = TOLERANCE[torch.float64] if row["floor"] == "exact" else \
                FLOAT32_FACTOR * FLOAT32_EPS * math.sqrt(n_attn)
            assert row["bound"] <= bound * 1.01 and row["max_rel_err"] <= row["bound"], row
            assert {24, 64} <= {length for _, length in row["lengths"]}
        else:
            _has(row, REFUSED)
            assert row["reason"].strip() and row["error_type"] in ("BadInput", "Refusal")
            built = compat.build(name)  # the module the refusal names is one of the model's own
            assert row["module"] in dict(built.named_modules()) or row["module"] == name, row


def test_the_kinds_and_outcomes_of_known_classes(rows):
    assert rows["LlamaForCausalLM"]["kind"] == "decoder" and rows["LlamaForCausalLM"]["outcome"] == "imported"
    assert rows["MambaForCausalLM"]["kind"] == "state-space"
    mistral = rows["MistralForCausalLM"]  # its sliding window measured and imported, never as full attention
    assert mistral["outcome"] == "imported" and mistral["max_rel_err"] <= mistral["bound"], mistral
    assert any(length > 2 * 8 + 8 for _, length in mistral["lengths"]), mistral  # checked past 2 W + 8 (W = 8)
    recipes = rows["LlamaForCausalLM"]["recipes"]
    assert list(recipes) == list(compat.T_RECIPES())
    for verdict in recipes.values():
        assert verdict["status"] in ("invariant", "refused"), verdict
        if verdict["status"] == "invariant":
            assert verdict["max_rel_err"] <= 1e-12


def test_outputs_are_sorted_atomic_and_regenerate_the_readme_block(rows, tmp_path):
    path, md, readme = tmp_path / "data" / "compat.json", tmp_path / "compat.md", tmp_path / "README.md"
    readme.write_text("# x\n\nbefore\n")
    by_name = dict(reversed(list(rows.items())))
    compat.write_json(path, by_name, {"transformers": "t", "torch": "p", "recipes": [], "total_seconds": 1})
    data = json.loads(path.read_text())
    assert [r["class"] for r in data["rows"]] == sorted(CLASSES)
    assert "seconds" not in json.dumps(data["rows"])  # diff-friendly: no timings in rows
    s = data["summary"]
    assert s["classes"] == len(CLASSES) and sum(sum(c.values()) for c in s["by_kind"].values()) == len(CLASSES)
    assert sum(r["classes"] for r in s["reasons"]) == sum(r["outcome"] != "imported" for r in rows.values())
    compat.write_outputs(path, md, readme)
    compat.write_outputs(path, md, readme)  # twice: the block is replaced, not appended
    text = readme.read_text()
    assert text.count(compat.MARK_START) == 1 and text.count(compat.MARK_END) == 1 and "before" in text
    assert "Supported architectures" in text
    table = md.read_text()
    for name in CLASSES:
        assert f"`{name}`" in table


@pytest.mark.parametrize("name, kind, why", [
    # the text decoder of a VisionEncoderDecoder: its layers' encoder_attn (forward over key_value_states) never runs
    ("TrOCRForCausalLM", "not-causal-lm", "cross-attention over an encoder's states (model.decoder.layers.0.encoder_attn)"),
    # GIT: an image-to-text class whose forward takes pixel_values, read by the image encoder it holds
    ("GitForCausalLM", "not-causal-lm", "image-to-text: its forward takes pixel_values, read by GitVisionModel "
                                        "(git.image_encoder)"),
    # Fuyu: its image patches go through a linear (vision_embed_tokens) a text-only forward never runs
    ("FuyuForCausalLM", "not-causal-lm", "image-to-text: its forward takes pixel_values, image_patches, read by "
                                         "Linear (model.vision_embed_tokens)"),
    # Phi-4-multimodal: image and audio towers (embed_tokens_extend) that a text-only forward never runs
    ("Phi4MultimodalForCausalLM", "not-causal-lm", "image-to-text: its forward takes image_pixel_values, "
     "audio_input_features, read by Phi4MultimodalImageEmbedding (model.embed_tokens_extend.image_embed)"),
    # Bart-style attention code (key_value_states) with add_cross_attention off: no encoder_attn, a decoder
    ("XGLMForCausalLM", "decoder", "XGLMAttention"),
    # CSM's depth decoder: a text-style attention decoder (its position-specific head is an import refusal)
    ("CsmDepthDecoderForCausalLM", "decoder", "CsmAttention"),
])
def test_classify_tells_a_decoder_of_another_model_from_a_causal_lm_by_evidence(name, kind, why):
    assert compat.classify(compat.build(name)) == (kind, why)


def test_tiny_config_shrinks_nested_configs():
    """A multimodal wrapper's text tower and Blt's sub-models are shrunk like a plain config (left at their defaults
    they built billion-parameter float64 models that gave no row within 120 s)."""
    import transformers as tf
    fuyu = compat.tiny_config(tf.FuyuForCausalLM)
    text = fuyu.text_config
    assert (text.hidden_size, text.vocab_size, text.num_hidden_layers) == (32, 64, 2)
    blt = compat.tiny_config(tf.BltForCausalLM)
    assert blt.encoder_hash_byte_group_vocab == 64
    assert blt.encoder_config.hidden_size_global == blt.decoder_config.hidden_size_global == blt.global_config.hidden_size
    assert sum(p.numel() for p in compat.build("FuyuForCausalLM").parameters()) < 10 ** 6



@pytest.mark.parametrize("message, key", [
    ("cannot import model.layers.0.self_attention.experts.router (opaque op 'topk': mixture of attention heads (a "
     "router choosing per-token attention experts whose output reaches the attention, JetMoE MoA); not in the "
     "layout's vocabulary; recorded node 'model_layers_0_self_attention_experts_router__topk')",
     "mixture of attention heads (opaque op 'topk')"),
    ("cannot import model.layers.3.mlp.router (opaque op 'max': a sparsemixer router (Phimoe: the top expert's "
     "softmax ...); not in the layout's router vocabulary; recorded node 'model_layers_3_mlp_router__max')",
     "a sparsemixer router (opaque op 'max')"),
    ("cannot import git (opaque op 'zeros_like': a tensor built from an activation's shape inside the forward "
     "(token-type ids ...); not in the layout's vocabulary; recorded node 'git__zeros_like')",
     "a tensor built from an activation's shape inside the forward (opaque op 'zeros_like')"),
    ("cannot import backbone.layers.0.mixer.conv1d (opaque op 'conv1d'; recorded node "
     "'backbone_layers_0_mixer_conv1d')", "opaque op 'conv1d'"),
])
def test_reason_key_carries_the_feature_a_refusal_names(message, key):
    """The reason column names the feature the refusal gives (JetMoE: mixture of attention heads, not 'topk'),
    without layer indices, so classes blocked by one feature group under one key; a bare opaque op keeps its op."""
    assert compat.reason_key(message) == key
    assert compat.reason_key(message.replace("layers.0", "layers.7").replace("layers_0", "layers_7")) == key
