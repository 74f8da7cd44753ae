"""DeepSeek Sparse Attention (DeepSeek-V3.2, GLM-MoE-DSA, AXK2, Dots3): the lightning indexer's ``index_topk`` node
read by an attention's ``select`` port.  Its semantics against transformers' own indexer, the synthesizer drawing
it (with top-k below the oracle's length, so the selection drops keys), its import from the recording (checked
against the model past top-k, also on the padded batch, and a dropped selection shows there), every recipe
preserving it, the OpenVINO export and the mutant that leaves the indexer key unrotated caught."""

import pytest
import torch

from fuzz import DecoderSpec, LayerSpec, build, materialize
from fuzz.errors import LayoutError
from fuzz.layout import Layout

_DSA = DecoderSpec(layers=(LayerSpec(rope=True),), sparse_index_topk=3)
_DSA_MLA = DecoderSpec(layers=(LayerSpec(rope=True, sparse=True),), sparse_index_topk=3, mla="q_lora")


def _with_topk(layout: Layout, topk: int) -> Layout:
    """``layout`` with every index_topk node's ``topk`` set (meta kept)."""
    nodes = [(n, layout.op(n), {**layout.params(n), **({"topk": topk} if layout.op(n) == "index_topk" else {})},
              list(layout.inputs(n))) for n in layout.order]
    return Layout.from_nodes(nodes, dict(layout.meta))


def _logits(model, ids, **kw):
    with torch.no_grad():
        return model(ids, **kw)


def test_the_index_topk_node_is_transformers_indexer_selection():
    """The node's selection on a recorded DeepSeek-V3.2 indexer's inputs equals the keys transformers' top-k picks."""
    mod = pytest.importorskip("transformers.models.deepseek_v32.modeling_deepseek_v32")
    from fuzz.materialize import MODULES
    from fuzz.ops import spec
    gen = torch.Generator().manual_seed(0)
    b, t, h, d, k = 2, 11, 3, 8, 4
    q = torch.randn(b, t, h * d, generator=gen, dtype=torch.float64)
    key = torch.randn(b, t, d, generator=gen, dtype=torch.float64)
    w = torch.randn(b, t, h, generator=gen, dtype=torch.float64)
    node = MODULES["index_topk"]("i", spec("index_topk").normalise("i", {"n_heads": h, "head_dim": d, "topk": k}),
                                 "exact")
    got = node(q, key, w)
    # transformers' scoring (DeepseekV32Indexer.forward after RoPE), in float64
    scores = torch.relu(torch.matmul(q.view(b, t, h, d), key.transpose(-1, -2).unsqueeze(1)) * d ** -0.5)
    index = torch.matmul((w * h ** -0.5).unsqueeze(-2), scores).squeeze(-2)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    index = index.masked_fill(~causal, float("-inf"))
    want = torch.ones(b, t, t, dtype=torch.bool).scatter(-1, index.topk(k, dim=-1).indices, False)
    assert torch.equal(got & causal, ~want & causal)
    assert bool((got & causal).sum(-1)[:, k:].eq(k).all())  # past the first k queries: exactly k keys read
    assert mod.DeepseekV32Indexer is not None


def test_the_synthesizer_draws_the_indexer_and_its_selection_drops_keys():
    for s in (_DSA, _DSA_MLA):
        layout = build(s)
        (node,) = layout.of_op("index_topk")
        (att,) = layout.of_op("attention")
        assert layout.inputs(att)[3] == node and "attn:sparse_index" in s.features()
        assert layout.params(node)["topk"] == 3
        ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
        model, every = materialize(layout, seed=2), materialize(_with_topk(layout, 12), seed=2)
        ref = _logits(model, ids)
        assert (ref[:, :3] - _logits(every, ids)[:, :3]).abs().max() == 0  # top-3 of <= 3 keys: all of them
        assert (ref - _logits(every, ids)).abs().max() > 1e-3  # past top-k the selection drops keys
        pad = torch.ones(2, 12, dtype=torch.long)
        pad[0, :4] = 0
        padded = _logits(model, ids, attention_mask=pad)
        assert torch.isfinite(padded).all()
        assert torch.equal(_logits(model, ids, attention_mask=torch.ones_like(pad)), ref)
        assert torch.equal(padded[1], ref[1])  # the unpadded row reads the same keys
        assert (padded[0, 4:] - ref[0, 4:]).abs().max() > 1e-6  # the padded keys are never chosen nor read


def test_an_attention_select_port_reads_an_index_topk_only():
    layout = build(_DSA)
    (att,) = layout.of_op("attention")
    (sel,) = layout.of_op("index_topk")
    indexer = {n for n in layout.order if "indexer" in n}  # its linears, key norm, RoPE and the index_topk node
    nodes = [(n, layout.op(n), layout.params(n), [layout.source if i == sel else i for i in layout.inputs(n)])
             for n in layout.order if n not in indexer]
    with pytest.raises(LayoutError, match="select port reads 'tokens', not an index_topk"):
        Layout.from_nodes(nodes)


def test_the_indexer_key_left_unrotated_is_caught():
    import quant.mutants  # noqa: F401  (registers the mutant)
    from verifier import mutants, verify
    for s in (_DSA, _DSA_MLA):
        v = verify(mutants.get("indexer_unrotated"), build(s))
        assert v.status == "diverged", v
    # with top-k past the oracle's length the indexer selects every key: the same bug cannot show
    assert verify(mutants.get("indexer_unrotated"), build(_DSA.with_(sparse_index_topk=40))).status == "invariant"


@pytest.mark.parametrize("recipe", ["bbt-absorb", "bbt-spectral", "bbt-pair-pca", "bbt-spectral-pca",
                                    "residual-hadamard"])
def test_every_recipe_preserves_the_sparse_attention(recipe):
    import quant.transforms as T
    from verifier import verify
    v = verify(T.get(recipe), build(_DSA_MLA))
    assert v.status in ("invariant", "refused"), v
    if v.status == "refused":
        assert "index" in v.message
    assert verify(T.get(recipe), build(_DSA)).status == "invariant"


def _import(name: str, **cfg_changes):
    tf = pytest.importorskip("transformers")
    from benchmarks.compat import tiny_config
    from benchmarks.import_check_families import instantiate
    from fuzz.importer import import_model
    cls = getattr(tf, name)
    cfg = tiny_config(cls)
    for k, v in cfg_changes.items():
        setattr(cfg, k, v)
    model = instantiate(cls, cfg)
    return model, import_model(model)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["DeepseekV32ForCausalLM", "GlmMoeDsaForCausalLM", "AXK2ForCausalLM",
                                  "Dots3NoteForCausalLM"])
def test_sparse_attention_families_import_checked_past_their_top_k(name):
    model, gm = _import(name)
    check = gm.layout.meta["import_check"]
    nodes = gm.layout.of_op("index_topk")
    assert nodes and all(gm.layout.params(n)["topk"] == model.config.index_topk == 4 for n in nodes)
    assert max(seq for _, seq in check["lengths"]) > 4 and check["padded"]["shape"][1] > 4
    assert check["max_rel_err"][check["numerics"]] <= check["bound"]


@pytest.mark.slow
def test_a_dropped_selection_shows_against_the_model():
    """The imported graph with its selection removed (top-k past the length) differs from the model at 24 tokens:
    the import check would refuse an importer that lost the indexer."""
    from fuzz.importer.api import _build
    model, gm = _import("DeepseekV32ForCausalLM")
    ids = torch.randint(0, 64, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        got = gm(ids)
        every = _build(_with_topk(gm.layout, 64), {n: dict(m.named_parameters(recurse=False))
                                                   for n, m in gm.nodes.items()}, gm.numerics)(ids)
    assert (got - want).abs().max() / want.abs().max() < 1e-5
    assert (every - want).abs().max() / want.abs().max() > 1e-3


@pytest.mark.slow
def test_glm_shared_indexer_layers_read_the_earlier_selection():
    model, gm = _import("GlmMoeDsaForCausalLM", indexer_types=["full", "shared"])
    layout = gm.layout
    (node,) = layout.of_op("index_topk")
    readers = [c for c, port in layout.consumers(node) if port == 3]
    assert len(readers) == 2 and all(layout.op(c) == "attention" for c in readers)


@pytest.mark.slow
def test_an_index_topk_past_the_recorded_length_is_read_from_the_module():
    model, gm = _import("DeepseekV32ForCausalLM", index_topk=40)  # the 8 recorded tokens all chosen
    assert {gm.layout.params(n)["topk"] for n in gm.layout.of_op("index_topk")} == {40}


@pytest.mark.slow
def test_a_sparse_attention_layout_exports_to_openvino(cpu_f32_parity):
    model = materialize(build(_DSA_MLA), dtype=torch.float32, seed=3)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    cpu_f32_parity(model, ids)
