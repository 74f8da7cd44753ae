"""Family presets vs the real transformers classes: same function to float64 rounding.

``numerics="transformers"`` reproduces transformers' float32 upcasts (RMSNorm, RoPE tables, router
softmax), so a float64 GraphModel and the transformers model built from its weights agree to ~1e-16;
``numerics="exact"`` differs from transformers by those float32 roundings only (~1e-7).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

from fuzz import BadInput, LayerSpec, Layout, build, materialize
from fuzz.families import (FAMILIES, check_family, families_of, family, family_cases, family_of, family_spec,
                           to_transformers)

TIGHT = 1e-10  # transformers numerics: float64 rounding only
LOOSE = 1e-5  # exact numerics: transformers' float32 RMSNorm / RoPE / router upcasts

# One instance per family that switches on its distinctive features (so family_of names it first).
INSTANCES = {
    "llama": dict(attention_bias=True, mlp_bias=True, tie_embeddings=True, n_kv_heads=4),
    "qwen2": dict(hidden=24, head_dim=10, n_kv_heads=1, tie_embeddings=True, n_layers=2, sliding_window=3,
                  max_window_layers=1),
    "qwen3": dict(attention_bias=True, n_heads=6, n_kv_heads=2, head_dim=6),
    "qwen3_moe": dict(n_layers=3, decoder_sparse_step=1, mlp_only_layers=(1,), n_experts=4, top_k=2,
                      norm_topk_prob=True),
    "mixtral": dict(n_experts=3, top_k=2, intermediate=20, tie_embeddings=True, sliding_window=6),
    "granite": dict(embedding_multiplier=12.0, residual_multiplier=0.22, logit_multiplier=1 / 3,
                    attention_bias=True),
    "gemma": dict(head_dim=12, n_kv_heads=1),
    "qwen2_moe": dict(n_layers=2, decoder_sparse_step=2, top_k=1, shared_intermediate=12),
    "phi3": dict(rotary_dim=4, head_dim=8, sliding_window=5),
    "mistral": dict(sliding_window=3, n_layers=2),
    "stablelm": dict(rotary_dim=2, use_qkv_bias=True, use_parallel_residual=True, hidden=32, n_heads=4),
}


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core box the thread pool's
    spinning makes these tests several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b|."""
    return ((a - b).abs().max() / b.abs().max()).item()


def compare(layout: Layout, seed: int, seq: int, family: str | None = None) -> tuple[float, float]:
    """(relative error of transformers numerics, of exact numerics) against the transformers model."""
    vocab = layout.params(layout.source)["vocab"]
    ids = torch.randint(0, vocab, (2, seq), generator=torch.Generator().manual_seed(seed))
    ours = materialize(layout, dtype=torch.float64, seed=seed, numerics="transformers")
    exact = materialize(layout, dtype=torch.float64, seed=seed, numerics="exact")
    hf = to_transformers(ours, family=family, max_positions=max(seq, 16))
    assert hf.dtype == torch.float64
    with torch.no_grad():
        theirs = hf(ids).logits
        return rel_err(ours(ids), theirs), rel_err(exact(ids), theirs)


def test_instances_cover_every_family():
    assert set(INSTANCES) == set(FAMILIES)
    assert FAMILIES[:5] == ["llama", "qwen2", "qwen3", "qwen3_moe", "mixtral"]


@pytest.mark.parametrize("name", FAMILIES)
def test_family_instance_matches_transformers(name):
    layout = build(family_spec(name, **INSTANCES[name]), name=name)
    assert family_of(layout) == name
    tight, loose = compare(layout, seed=7, seq=8)
    assert tight <= TIGHT, f"{name}: transformers numerics differ by {tight:.3g}"
    assert loose <= LOOSE, f"{name}: exact numerics differ by {loose:.3g}"
    assert loose > tight  # the float32 upcasts are what separates the two modes


@pytest.mark.parametrize("name", FAMILIES)
@given(data=st.data())
def test_family_property_matches_transformers(name, data):
    case = data.draw(family_cases(names=(name,)), label="case")
    event(f"layers:{len(case.layout.of_op('attention'))} sparse:{len(case.layout.of_op('experts'))}")
    assert case.family == name and name in families_of(case.layout)
    tight, _ = compare(case.layout, case.seed, case.seq, family=case.family)
    assert tight <= TIGHT, f"{case.family}: transformers numerics differ by {tight:.3g}"


def test_presets_switch_on_the_family_features():
    q2 = build(family_spec("qwen2"))
    assert q2.params("l0_q_proj")["bias"] and q2.params("l0_v_proj")["bias"] and not q2.params("l0_o_proj")["bias"]

    q3 = build(family_spec("qwen3", n_heads=6, n_kv_heads=3, head_dim=4))
    assert (q3.params("l0_q_norm")["groups"], q3.params("l0_q_norm")["dim"]) == (6, 4)
    assert (q3.params("l0_k_norm")["groups"], q3.params("l0_k_norm")["dim"]) == (3, 4)

    moe = family_spec("qwen3_moe", n_layers=4, decoder_sparse_step=2, mlp_only_layers=(3,), norm_topk_prob=False)
    assert [l.sparse for l in moe.layers] == [False, True, False, False]
    assert moe.qk_norm == "per_head" and not moe.renormalize

    mix = build(family_spec("mixtral", n_layers=2))
    assert all(mix.params(n)["renormalize"] for n in mix.of_op("router")) and len(mix.of_op("router")) == 2

    llama = build(family_spec("llama", attention_bias=True, tie_embeddings=True))
    assert all(llama.params(f"l0_{p}_proj")["bias"] for p in "qkvo")
    assert llama.params("lm_head")["tied_to"] == "embed"

    gemma = family_spec("gemma", hidden=48)
    assert gemma.embedding_multiplier == 48 ** 0.5 and gemma.norm_weight_form == "1+w" and gemma.tie_embeddings


def test_non_family_layouts_are_refused():
    interleaved = build(family_spec("llama").with_(rope_style="interleaved"))
    assert family_of(interleaved) is None and families_of(interleaved) == []
    with pytest.raises(BadInput, match="rope_style='interleaved'"):
        to_transformers(materialize(interleaved))

    for change in (dict(rotary_dim=4), dict(norm="layer"), dict(placement="post"), dict(residual="parallel"),
                   dict(attn_gate="output_sigmoid"), dict(norm_weight_form="1+w"), dict(qk_norm="full"),
                   dict(layers=(LayerSpec(rope=False), LayerSpec()))):
        assert family_of(family_spec("qwen3").with_(**change)) is None, change

    # mixtral is all-sparse: one dense layer makes it no Mixtral (nor any other family)
    mixed = family_spec("mixtral", n_layers=2).with_(layers=(LayerSpec(sparse=True), LayerSpec()))
    assert family_of(mixed) is None
    with pytest.raises(BadInput, match="layers="):
        check_family(mixed, "mixtral")


def test_membership_reads_the_graph_not_just_the_spec():
    layout = build(family_spec("qwen2"))
    assert family_of(Layout.from_json(layout.to_json())) == "qwen2"  # corpus entries are JSON
    no_spec = Layout(layout.graph.copy(), {})
    assert family_of(no_spec) is None
    with pytest.raises(BadInput, match="no decoder spec"):
        check_family(no_spec)
    # a spec that does not describe the graph (a transformed layout keeps its old meta)
    stale = Layout(build(family_spec("llama")).graph.copy(), {"spec": family_spec("qwen2").to_dict()})
    assert family_of(stale) is None


def test_forced_family_and_bad_arguments():
    model = materialize(build(family_spec("qwen2")), dtype=torch.float64)
    with pytest.raises(BadInput, match="not an instance of family 'qwen3'"):
        to_transformers(model, family="qwen3")
    with pytest.raises(BadInput, match="unknown family"):
        family_spec("gpt2")
    with pytest.raises(BadInput, match="unknown family dim"):
        family_spec("llama", hiden=32)
    with pytest.raises(BadInput, match="GraphModel"):
        to_transformers(build(family_spec("qwen2")))


def test_weights_and_config_are_carried_over():
    spec = family_spec("llama", vocab=40, hidden=16, n_heads=2, n_kv_heads=1, head_dim=12, norm_eps=1e-5,
                       rope_theta=500.0, tie_embeddings=True)
    model = materialize(build(spec), dtype=torch.float64, seed=3)
    hf = to_transformers(model, max_positions=32)
    cfg = hf.config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.head_dim, cfg.num_key_value_heads) == (40, 16, 12, 1)
    assert cfg.rms_norm_eps == 1e-5 and cfg.rope_parameters["rope_theta"] == 500.0
    assert cfg.max_position_embeddings == 32 and cfg.tie_word_embeddings
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    assert torch.equal(hf.model.layers[0].self_attn.k_proj.weight, model.nodes["l0_k_proj"].weight)
    assert hf.model.layers[0].input_layernorm.weight.dtype == torch.float64


def test_eager_attention_would_round_the_softmax_to_float32():
    model = materialize(build(family_spec("qwen3")), dtype=torch.float64, seed=5, numerics="transformers")
    ids = torch.arange(8)[None] % 64
    with torch.no_grad():
        ours = model(ids)
        sdpa = to_transformers(model)(ids).logits
        eager = to_transformers(model, attn_implementation="eager")(ids).logits
    assert rel_err(ours, sdpa) <= TIGHT < rel_err(ours, eager) <= LOOSE


def test_config_limits_are_reasons_not_crashes():
    odd = family_spec("llama", hidden=30, n_heads=4, head_dim=8)  # LlamaConfig rejects 30 % 4
    with pytest.raises(BadInput, match="hidden % n_heads"):
        check_family(odd, "llama")
    assert family_of(odd) == "granite"  # Granite's config has no such check: same function, other class
    tight, _ = compare(build(odd), seed=2, seq=5)
    assert tight <= TIGHT
    with pytest.raises(BadInput, match="partial_rotary_factor"):
        check_family(family_spec("phi3", head_dim=44, rotary_dim=30), "phi3")


def test_each_family_is_one_registered_module():
    """A family is declared in its own module (``FAMILY``, named after the module) and listed once in the
    registry; a family module the registry does not list is an error, not a silently missing family."""
    import importlib
    import pkgutil

    import fuzz.families as package
    from fuzz.families.registry import _MODULES

    shared = {"base", "registry", "membership", "bridge", "draws"}
    modules = {m.name for m in pkgutil.iter_modules(package.__path__)} - shared
    assert sorted(modules) == sorted(_MODULES) and len(set(_MODULES)) == len(_MODULES)
    assert FAMILIES == list(_MODULES)
    for name in _MODULES:
        declared = importlib.import_module(f"fuzz.families.{name}").FAMILY
        assert declared.name == name and declared is family(name)
        assert getattr(package, name).FAMILY is declared  # fuzz.families.<name> is the family's module, not shadowed


@given(st.data())
def test_drawn_knobs_are_the_family_knobs(data):
    """What a family's ``draw_knobs`` draws is exactly what its preset accepts and its ``knobs`` reads back."""
    name = data.draw(st.sampled_from(FAMILIES))
    fam = family(name)
    dims = dict(n_layers=2, vocab=16, hidden=24, n_kv_heads=2, n_heads=4, head_dim=6, intermediate=8,
                rope_theta=1e6, norm_eps=1e-5, tie_embeddings=False)
    knobs = fam.draw_knobs(data.draw, dims)
    spec = fam.preset(**dims, **knobs)
    assert set(knobs) <= set(fam.knobs(spec))
    assert build(fam.preset(**fam.knobs(spec))) == build(spec)
