"""Attention-score and projection forms the importer measures from a recording (issue 14): unscaled scores
(GPT-Neo), ``x @ W.T`` projections (Falcon), ALiBi slopes (MPT, BLOOM), and the classes refused by name.
Every import here is checked against the model's logits (also on a padded batch) by ``import_model``."""

import pytest
import torch

from benchmarks.compat import build
from fuzz.errors import BadInput
from fuzz.importer import import_model
from fuzz.importer.logits import numerics_policy


def _exact(gm, model, length=24):
    ids = torch.randint(0, 64, (2, length), generator=torch.Generator().manual_seed(3))
    check = gm.layout.meta["import_check"]
    assert check["max_rel_err"][check["numerics"]] <= check["bound"]
    with torch.no_grad(), numerics_policy(gm, check["numerics"]):  # the policy the check found exact
        want = model(ids).logits.double()  # Beam returns float32 logits
        assert torch.allclose(gm(ids), want, rtol=0, atol=10 * check["bound"] * float(want.abs().max()))


def test_gpt_neo_scores_are_not_scaled_and_import_with_scale_one():
    model = build("GPTNeoForCausalLM")
    gm = import_model(model)
    layout = gm.layout
    assert [layout.params(a)["scale"] for a in layout.of_op("attention")] == [1.0, 1.0]
    _exact(gm, model)


def test_score_bias_tells_alibi_from_a_mask_and_from_any_other_bias():
    from fuzz.record.contract import score_bias
    t, slopes = 6, torch.tensor([0.5, 0.125, 0.03125], dtype=torch.float64)
    pos = torch.arange(t, dtype=torch.float64)
    causal = torch.full((t, t), torch.finfo(torch.float64).min, dtype=torch.float64).triu(1)
    alibi_abs = (slopes[:, None, None] * pos[None, None, :]).to(torch.float64)  # BLOOM/MPT: slope * key position
    shape = [1, 3, t, t]
    assert score_bias([(alibi_abs, shape), (causal, shape)], 3) == {"kind": "alibi", "slopes": slopes.tolist()}
    assert score_bias([(causal[None, None], shape)], 3) == {"kind": "none"}
    assert score_bias([(torch.randn(1, 3, t, t, dtype=torch.float64), shape)], 3) == {"kind": "other"}
    window = causal.clone()
    window[torch.arange(t)[:, None] - torch.arange(t)[None, :] >= 2] = float("-inf")  # a sliding window: a mask
    assert score_bias([(window, shape)], 3) == {"kind": "none"}


def test_mpt_imports_with_alibi_exact_against_the_model():
    model = build("MptForCausalLM")
    gm = import_model(model)
    assert all(gm.layout.params(a)["alibi"] for a in gm.layout.of_op("attention"))
    _exact(gm, model)


def test_falcon_imports_its_x_at_w_t_projections_and_its_head_axis_split_exactly():
    """FalconLinear computes ``x @ W.T`` (F.linear with the stored weight); the fused projection is split on the
    head axis of a ``(b, s, h + 2, d)`` view (``split([h, 1, 1], dim=-2)``): measured as flat slices."""
    model = build("FalconForCausalLM")
    gm = import_model(model, numerics="transformers")  # its RoPE tables are float32, as transformers' are
    layout = gm.layout
    slices = [layout.params(n) for n in layout.of_op("head_slice")]
    h, d = model.config.num_attention_heads, model.config.hidden_size // model.config.num_attention_heads
    assert slices[:3] == [{"n_heads": 1, "head_dim": (h + 2) * d, "start": s, "length": n}
                          for s, n in ((0, h * d), (h * d, d), ((h + 1) * d, d))]
    assert layout.meta["import_check"]["floor"] == "exact"
    _exact(gm, model)


def test_a_stored_weight_read_untransposed_by_matmul_is_still_refused():
    """``x @ W`` with ``W`` stored as it is multiplied reads an (in, out) weight: no F.linear."""

    class XW(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(64, 8, dtype=torch.float64)
            self.w = torch.nn.Parameter(torch.randn(8, 8, dtype=torch.float64))
            self.head = torch.nn.Linear(8, 64, bias=False, dtype=torch.float64)

        def forward(self, input_ids):
            return self.head(self.emb(input_ids) @ self.w)

    with pytest.raises(BadInput, match=r"linear via 'matmul' reads its weight as \(in, out\)"):
        import_model(XW(), check=False)


@pytest.fixture
def bloom(monkeypatch):
    """BLOOM with its truncated-constant GELU replaced by the exact tanh GELU: the attention's import on its own."""
    import torch.nn.functional as F
    import transformers.models.bloom.modeling_bloom as mb
    monkeypatch.setattr(mb.BloomGelu, "forward", lambda self, x: F.gelu(x, approximate="tanh"))
    return build("BloomForCausalLM")


def test_bloom_attention_imports_baddbmm_alibi_and_the_interleaved_fused_qkv(bloom):
    gm = import_model(bloom)
    layout = gm.layout
    h = bloom.config.n_head
    d = bloom.config.hidden_size // h
    assert [layout.params(n) for n in layout.of_op("head_slice")][:3] == \
        [{"n_heads": h, "head_dim": 3 * d, "start": k * d, "length": d} for k in range(3)]
    slopes = [2.0 ** (-8 * (i + 1) / h) for i in range(h)]  # BLOOM's slopes for a power-of-two head count
    for a in layout.of_op("attention"):
        p = layout.params(a)
        assert p["alibi"] is True and p["scale"] is None  # inv_norm_factor = head_dim ** -0.5
        assert gm.nodes[a].alibi_slopes.tolist() == slopes
    assert layout.meta["import_check"]["padded"]["max_rel_err"] <= layout.meta["import_check"]["bound"]
    _exact(gm, bloom)


@pytest.mark.parametrize("name,form", [("FlintForCausalLM", ["sink", "softmax", "drop_sink"]),
                                       ("MiMoV2FlashForCausalLM", ["sink", "stabilize", "softmax", "drop_sink"]),
                                       ("GraniteSWAForCausalLM", ["softmax", "sink_scale"]),
                                       ("GraniteMoeSWAForCausalLM", ["softmax", "sink_scale"])])
def test_attention_sinks_import_from_the_recording_in_either_form(name, form):
    """A sink column the softmax sees and drops (Flint; MiMo-V2-Flash after s - max(s)), or P V scaled by
    sigmoid(logsumexp(s) - sink) (GraniteSWA): the layout's sinks, reading the source's own parameter."""
    from fuzz.record import record
    model = build(name)
    rec = record(model)
    chains = [[s[0] for s in rec.graph.nodes[n]["score_chain"]] for n in rec.of_op("attention")]
    assert any(c[-len(form):] == form for c in chains), chains
    gm = import_model(model)
    layout = gm.layout
    with_sinks = [a for a in layout.of_op("attention") if layout.params(a)["sinks"]]
    assert with_sinks
    for a in with_sinks:
        (qualified,) = layout.meta["param_map"][a].values()
        assert gm.nodes[a].sinks is dict(model.named_parameters())[qualified]
    check = layout.meta["import_check"]
    assert check["max_rel_err"][check["numerics"]] <= check["bound"]
    assert check["padded"]["max_rel_err"] <= check["bound"]


def test_a_sink_column_read_after_the_softmax_is_refused_naming_sinks():
    from fuzz.importer import patterns

    class Conv:  # the converter surface _sinks uses
        g = __import__("networkx").DiGraph()
        refuse = staticmethod(lambda node, why: BadInput(why))

    Conv.g.add_node("a", score_chain=[["softmax"], ["sink"], ["drop_sink"]], params=["s"], n_heads=2)
    with pytest.raises(BadInput, match="attention sinks in a form other than"):
        patterns._sinks(Conv, "a")


def test_diffllama_imports_exactly_as_differential_attention():
    """Its two attention maps over the same queries are one differential attention (formerly refused by name;
    tests/fuzz/test_differential_attention.py)."""
    gm = import_model(build("DiffLlamaForCausalLM"))
    assert all(gm.layout.params(a)["differential"] for a in gm.layout.of_op("attention"))
    assert gm.layout.meta["import_check"]["floor"] == "exact"


def test_opt_imports_exactly_its_positions_measured_on_the_padded_batch():
    """OPT's position ids come from cumsum(attention_mask): the padded batch measures the position_embedding's
    from_mask mode (tests/fuzz/test_positions_from_mask.py), and the padded check is exact."""
    model = build("OPTForCausalLM")
    gm = import_model(model)
    assert all(gm.layout.params(n)["from_mask"] for n in gm.layout.of_op("position_embedding"))
    assert gm.layout.meta["import_check"]["padded"]["max_rel_err"] <= 1e-10
    _exact(gm, model)


def test_bloom_imports_exactly_with_its_own_gelu():
    model = build("BloomForCausalLM")
    gm = import_model(model)
    assert {gm.layout.params(n)["fn"] for n in gm.layout.of_op("act")} == {"bloom_gelu"}
    assert all(gm.layout.params(a)["alibi"] for a in gm.layout.of_op("attention"))
    _exact(gm, model)


def test_persimmon_imports_its_head_axis_split_of_the_fused_qkv():
    """Persimmon views its fused projection as ``(b, s, h, 3, d)`` and takes ``[..., k, :]``: measured as
    per-head slices (its q/k LayerNorms then see one head each, as the source's do)."""
    model = build("PersimmonForCausalLM")
    gm = import_model(model)
    h = model.config.num_attention_heads
    d = model.config.hidden_size // h
    assert [gm.layout.params(n) for n in gm.layout.of_op("head_slice")][:3] == \
        [{"n_heads": h, "head_dim": 3 * d, "start": k * d, "length": d} for k in range(3)]
    check = gm.layout.meta["import_check"]
    assert check["max_rel_err"][check["numerics"]] <= check["bound"]


def test_gpt_neox_japanese_imports_its_baddbmm_scores_and_its_layer_added_dense_bias():
    """Its last attention returns ``dense_bias`` for the layer to add as ``bias.expand_as(residual)``: recorded as
    the bias (``residual`` only lends its shape), folded into the bias-free ``dense`` linear; exact."""
    model = build("GPTNeoXJapaneseForCausalLM")
    gm = import_model(model)
    pm = gm.layout.meta["param_map"]
    (node,) = [n for n, roles in pm.items() if roles.get("bias") == "gpt_neox_japanese.layers.1.attention.dense_bias"]
    assert gm.layout.op(node) == "linear" and pm[node]["weight"] == "gpt_neox_japanese.layers.1.attention.dense.weight"
    assert gm.layout.meta["import_check"]["floor"] == "exact"
    _exact(gm, model)


def test_a_template_tensor_lends_only_its_shape():
    """``b.expand_as(x)`` is ``b``'s values: the recorder never reads it as ``x`` (which would drop ``b``)."""
    from fuzz.record import record

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(64, 8, dtype=torch.float64)
            self.b = torch.nn.Parameter(torch.randn(8, dtype=torch.float64))
            self.head = torch.nn.Linear(8, 64, bias=False, dtype=torch.float64)

        def forward(self, input_ids):
            h = self.emb(input_ids)
            return self.head(h + self.b.expand_as(h))

    rec = record(M())
    adds = [n for n in rec.order if rec.op(n) == "add"]
    assert [rec.graph.nodes[n]["params"] for n in adds] == [["b"]]


def test_beam_per_head_gate_bias_folds_into_the_gate_projection_and_exports_back():
    """Beam's attention output gate ``sigmoid(gate_proj(x).view(.., heads, head_dim) + gate_bias[:, None])``: the
    ``(heads,)`` bias is the bias-free ``gate_proj`` with that value repeated over each head's channels (exact);
    ``export_weights`` reads one value per head back, and refuses a bias a transform made vary within a head.
    (Its full-attention layers' query temperature tuning is another feature: the layers here all slide.)"""
    import transformers

    from benchmarks.compat import tiny_config
    from benchmarks.import_check_families import instantiate
    from fuzz.importer import export_weights

    cfg = tiny_config(transformers.BeamForCausalLM)
    cfg.layer_types = ["sliding_attention"] * cfg.num_hidden_layers
    model = instantiate(transformers.BeamForCausalLM, cfg)
    gm = import_model(model)
    heads, width = cfg.num_attention_heads, cfg.num_attention_heads * cfg.head_dim
    names = [f"model.layers.{i}.self_attn.gate_bias" for i in range(cfg.num_hidden_layers)]
    assert gm.layout.meta["head_biases"] == {n: heads for n in names}
    pm = gm.layout.meta["param_map"]
    for name in names:
        (node,) = [n for n, roles in pm.items() if roles.get("bias") == name]
        assert gm.layout.op(node) == "linear" and pm[node]["weight"] == name.replace("gate_bias", "gate_proj.weight")
        bias = gm.nodes[node].bias
        assert bias.shape == (width,) and torch.equal(bias.view(heads, -1), model.get_parameter(name)[:, None]
                                                      .expand(heads, width // heads))
        assert any(gm.layout.op(r) == "gate" for r, _ in gm.layout.consumers(node))
    _exact(gm, model)
    exported = export_weights(gm)
    assert all(torch.equal(exported[n], model.get_parameter(n)) for n in names)
    with torch.no_grad():
        gm.nodes[node].bias[1] += 1.0  # one channel of head 0 only
    with pytest.raises(BadInput, match="differs within a head"):
        export_weights(gm)
