"""Issue 14, learned absolute position embeddings: the ``position_embedding`` op (``x + P[start:start+seq]``),
the ``position_embedding`` axis, the recorder/importer (GPT-2's ``wpe``, OPT's offset of 2), the stream
transforms rotating the table with the token embedding, and the mutants that forget it."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import quant.transforms as T
from fuzz import DecoderSpec, build, materialize
from fuzz.errors import BadInput
from fuzz.importer import import_model
from fuzz.record import record
from verifier import mutants, reference, verify


def test_positions_are_added_per_position_and_tagged():
    spec = DecoderSpec(position_embedding=True)
    layout = build(spec)
    model = materialize(layout)
    table = model.nodes["embed_positions"].weight
    out = {}
    model.nodes["embed_positions"].register_forward_hook(lambda m, a, o: out.update(x=a[0], y=o))
    model(torch.tensor([[1, 2, 3, 4, 5]]))
    assert torch.allclose(out["y"] - out["x"], table[:5].expand_as(out["x"]), rtol=0, atol=1e-14)
    assert "embeddings:positions" in spec.features() and "op:position_embedding" in layout.op_features()
    with pytest.raises(ValueError, match="exceed"):
        model(torch.zeros(1, table.shape[0] + 1, dtype=torch.long))


@pytest.mark.parametrize("name", ["residual-rotation", "residual-hadamard", "bbt-absorb", "wht-scale"])
def test_stream_transforms_rotate_the_position_table_too(name):
    assert verify(T.get(name), build(DecoderSpec(position_embedding=True))).ok
    assert verify(reference.get("permute_hidden"), build(DecoderSpec(position_embedding=True, norm="layer"))).ok


@pytest.mark.parametrize("name", ["position_unrotated", "position_unpermuted"])
def test_forgetting_the_position_table_is_caught(name):
    verdict = verify(mutants.get(name), build(DecoderSpec(position_embedding=True)))
    assert verdict.status == "diverged", verdict


def test_gpt2_positions_are_recorded_as_a_position_embedding_and_its_conv1d_is_refused_by_name():
    cfg = tf.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4, n_positions=64, bos_token_id=None,
                        eos_token_id=None)
    model = tf.GPT2LMHeadModel(cfg).double()
    g = record(model).graph
    pos = [d for _, d in g.nodes(data=True) if d["op"] == "position_embedding"]
    assert [(d["max_pos"], d["dim"], d["start"]) for d in pos] == [(64, 32, 0)]
    with pytest.raises(BadInput, match=r"c_attn \(linear via 'addmm' reads its weight as \(in, out\)"):
        import_model(model)


def test_opt_positions_start_at_its_offset_of_two():
    cfg = tf.OPTConfig(vocab_size=64, hidden_size=32, ffn_dim=48, num_hidden_layers=1, num_attention_heads=4,
                       max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=1, bos_token_id=None,
                       eos_token_id=None)
    g = record(tf.OPTForCausalLM(cfg).double()).graph
    pos = [d for _, d in g.nodes(data=True) if d["op"] == "position_embedding"]
    assert [(d["max_pos"], d["start"]) for d in pos] == [(66, 2)]
    # the add runs in the decoder: the table's own module outputs P alone and is no counterpart of x + P
    assert [d["module_path"] for d in pos] == ["model.decoder"]
