"""Issue 14, norms and heads: weight-free (non-parametric) norms (``norm`` with ``weight_form="none"``, OLMo's
LayerNorm, NanoChat's RMSNorm) and the lm_head bias (Phi): the op parameters, the axes, the materializer,
the importer on the real transformers classes (exact against their logits), every transform preserving them
(or refusing by name) and the mutants that forget them."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import quant.transforms as T
from benchmarks.compat import tiny_config
from benchmarks.import_check_families import instantiate
from fuzz import DecoderSpec, build, materialize
from fuzz.importer import import_model
from verifier import mutants, reference, verify

WEIGHTLESS = [DecoderSpec(norm_weightless=True), DecoderSpec(norm_weightless=True, qk_norm="per_head"),
              DecoderSpec(norm_weightless=True, qk_norm="full", tie_embeddings=True),
              DecoderSpec(norm_weightless=True, norm="layer", placement="sandwich")]


def test_a_weight_free_norm_owns_nothing_and_normalises_with_unit_gain():
    layout = build(DecoderSpec(norm_weightless=True, norm="layer"))
    model = materialize(layout)
    norm = model.nodes["final_norm"]
    assert layout.params("final_norm")["weight_form"] == "none" and not list(norm.parameters())
    x = torch.randn(2, 5, layout.params("final_norm")["dim"], dtype=torch.float64) * 3 + 1
    want = torch.nn.functional.layer_norm(x, x.shape[-1:], eps=layout.params("final_norm")["eps"])
    assert torch.allclose(norm(x), want, rtol=0, atol=1e-12)
    assert "norm:weightless" in DecoderSpec(norm_weightless=True).features()
    assert "op:norm:layer:none" in layout.op_features()


@pytest.mark.parametrize("spec", WEIGHTLESS, ids=["pre", "qk-per-head", "qk-full-tied", "layer-sandwich"])
def test_every_transform_preserves_weight_free_norms_or_refuses_by_name(spec):
    layout = build(spec)
    for name in T.names():
        verdict = verify(T.get(name), layout)
        assert verdict.status in ("invariant", "refused"), (name, verdict)
    for name in reference.names():
        assert verify(reference.get(name), layout).status in ("invariant", "refused"), name


def test_norm_absorb_gives_a_weight_free_norm_a_weight_and_absorbs_into_it():
    layout = build(DecoderSpec(norm_weightless=True))
    verdict = verify(T.get("norm-absorb", scales="random"), layout)
    assert verdict.status == "invariant", verdict


@pytest.mark.parametrize("tied", [False, True])
def test_every_transform_keeps_the_lm_head_bias(tied):
    layout = build(DecoderSpec(lm_head_bias=True, tie_embeddings=tied))
    for name in T.names():
        assert verify(T.get(name), layout).status in ("invariant", "refused"), name
    for name in ("residual-rotation", "norm-absorb"):
        assert verify(T.get(name, untie=True), layout).status == "invariant", name


def test_the_mutant_that_leaves_a_weight_free_norm_unabsorbed_is_caught():
    assert verify(mutants.get("weightless_unabsorbed"), build(DecoderSpec(norm_weightless=True))).status == "diverged"


@pytest.mark.parametrize("cls,weight_free,head_bias", [(tf.OlmoForCausalLM, True, False),
                                                      (tf.PhiForCausalLM, False, True)])
def test_olmo_and_phi_import_exactly(cls, weight_free, head_bias):
    model = instantiate(cls, tiny_config(cls))
    gm = import_model(model)  # checked against the model's logits (raises otherwise)
    norms = [gm.layout.params(n)["weight_form"] for n in gm.layout.of_op("norm")]
    assert norms and all((w == "none") == weight_free for w in norms)
    (head,) = gm.layout.of_op("lm_head")
    assert gm.layout.params(head)["bias"] == head_bias
    ids = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    assert torch.allclose(gm(ids), ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.slow
def test_weight_free_norms_an_lm_head_bias_and_xielu_export_to_openvino():
    """The exporter traces the weight-free norm (no weight), the lm_head bias and xIELU: CPU f32 within the gate."""
    from quant.parity import GATE, compare
    layout = build(DecoderSpec(norm_weightless=True, norm="layer", lm_head_bias=True, tie_embeddings=True,
                               mlp_xielu=True))
    model = materialize(layout, dtype=torch.float32, seed=3)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    report = compare(model, ids, devices=["CPU"], hints=["f32"], timeout=300)
    assert report["export"]["symptom"] == "ok", report["export"]
    (row,) = report["rows"]
    assert row["rel_err"] is not None and row["rel_err"] <= GATE["rel_err"], row


# ---------------------------------------------------------------------------------------------- xIELU (Apertus)
def test_xielu_computes_apertus_activation():
    layout = build(DecoderSpec(mlp_xielu=True))
    model = materialize(layout)
    (node,) = [n for n in layout.of_op("xielu") if n.startswith("l0_")]
    act = tf.activations.XIELUActivation(dtype=torch.float64)
    with torch.no_grad():
        act.alpha_p.copy_(model.nodes[node].alpha_p)
        act.alpha_n.copy_(model.nodes[node].alpha_n)
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    assert torch.allclose(model.nodes[node](x), act._xielu_python(x), rtol=1e-14, atol=1e-14)
    assert "mlp:xielu" in DecoderSpec(mlp_xielu=True).features() and "op:xielu" in layout.op_features()


def test_every_transform_preserves_xielu_and_the_relu2_mistake_is_caught():
    layout = build(DecoderSpec(mlp_xielu=True, mlp="relu2"))
    for name in T.names():
        assert verify(T.get(name), layout).status in ("invariant", "refused"), name
    assert verify(mutants.get("xielu_as_relu2"), layout).status == "diverged"


@pytest.mark.parametrize("cls", [tf.ApertusForCausalLM, getattr(tf, "Apertus1p5TextForCausalLM", None)])
def test_apertus_imports_exactly_with_its_learned_xielu(cls):
    if cls is None:
        pytest.skip("this transformers has no Apertus1p5TextForCausalLM")
    model = instantiate(cls, tiny_config(cls))
    gm = import_model(model)
    nodes = gm.layout.of_op("xielu")
    assert nodes and not gm.layout.of_op("act")
    mlp = model.model.layers[0].mlp.act_fn
    p = gm.layout.params(nodes[0])
    assert p["beta"] == pytest.approx(float(mlp.beta), abs=1e-12)
    assert gm.nodes[nodes[0]].alpha_p is mlp.alpha_p  # the source Parameter, measured into its role


# ---------------------------------------------------------------------------------------------- BioGPT
def test_biogpt_scaled_token_embedding_plus_offset_positions_imports_exactly():
    """BioGPT adds its learned positions (rows from 2) to the token embedding scaled by sqrt(hidden)."""
    cls = tf.BioGptForCausalLM
    gm = import_model(instantiate(cls, tiny_config(cls)))
    layout = gm.layout
    (pos,) = layout.of_op("position_embedding")
    (scale,) = layout.inputs(pos)
    assert layout.op(scale) == "scale" and layout.params(scale)["factor"] == pytest.approx(32 ** 0.5)
    assert layout.op(layout.inputs(scale)[0]) == "embedding" and layout.params(pos)["start"] == 2
    assert layout.meta["import_check"]["padded"]["max_rel_err"] <= 1e-10


# ---------------------------------------------------------------------------------------------- Gemma4
def test_gemma4_pow_rms_norms_import():
    """Gemma4 writes 1 / rms as pow(mean(x^2) + eps, -0.5) (and its v_norm without a scale): imported with the
    per-layer input embeddings off and the default RoPE (with them on: tests/fuzz/test_per_layer_inputs.py, and
    its proportional RoPE: tests/fuzz/test_proportional_rope.py)."""
    cls = tf.Gemma4ForCausalLM
    cfg = tiny_config(cls)
    cfg.hidden_size_per_layer_input = 0
    cfg.rope_parameters = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                           "full_attention": {"rope_type": "default", "rope_theta": 1e6}}
    gm = import_model(instantiate(cls, cfg))  # checked within the float32 floor (Gemma4 normalises in float32)
    forms = {gm.layout.params(n)["weight_form"] for n in gm.layout.of_op("norm")}
    assert forms == {"w", "none"}  # the scaled norms and the weight-free v_norm


@pytest.mark.parametrize("name", ["DeepseekV4ForCausalLM", "HYV4ForCausalLM"])
def test_hyper_connections_are_refused_by_name(name):
    from fuzz.errors import BadInput
    cls = getattr(tf, name, None)
    if cls is None:
        pytest.skip(f"this transformers has no {name}")
    with pytest.raises(BadInput, match=r"cannot import model\.layers\.0 \(hyper-connections: the token embedding is "
                                       r"widened to 4 residual streams"):
        import_model(instantiate(cls, tiny_config(cls)))


# ---------------------------------------------------------------------------------------------- HY-V3
def test_hyv3_router_with_its_parents_correction_bias_is_measured_and_imports():
    """HY-V3's router takes the correction bias from its MoE block (a buffer of the parent, passed as an argument):
    the router is probed with it, so a non-zero bias is measured into the layout's router and the import is
    exact (before: the probe failed, the router was imported without it, and the check refused at a q/k norm)."""
    cls = getattr(tf, "HYV3ForCausalLM", None)
    if cls is None:
        pytest.skip("this transformers has no HYV3ForCausalLM")
    model = instantiate(cls, tiny_config(cls))
    moe = model.model.layers[1].mlp
    with torch.no_grad():
        moe.e_score_correction_bias.copy_(torch.tensor([0.3, -0.2, 0.25, -0.1]))
    gm = import_model(model)
    (router,) = gm.layout.of_op("router")
    assert gm.layout.params(router)["correction_bias"] and gm.layout.params(router)["score"] == "sigmoid"
    assert torch.allclose(gm.nodes[router].e_score_correction_bias.double(),
                          moe.e_score_correction_bias.double())


def test_a_divergence_is_located_past_per_head_q_k_norms_compared_in_their_own_layout():
    """The locator compares a q/k norm's (batch, seq, heads d) output with the module's (batch, heads, seq, d) one
    transposed, so a routing difference is named at the experts, not at the first q/k norm (HY-V3's 0.271)."""
    from fuzz.importer.divergence import first_divergent
    cls = getattr(tf, "HYV3ForCausalLM", None)
    if cls is None:
        pytest.skip("this transformers has no HYV3ForCausalLM")
    model = instantiate(cls, tiny_config(cls))
    with torch.no_grad():
        model.model.layers[1].mlp.e_score_correction_bias.copy_(torch.tensor([0.3, -0.2, 0.25, -0.1]))
    gm = import_model(model, check=False)
    (router,) = gm.layout.of_op("router")
    with torch.no_grad():
        gm.nodes[router].e_score_correction_bias.zero_()  # a router imported without its bias
    where = first_divergent(model, gm, torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(0)),
                            "exact", 1e-5)
    assert "(experts) in module model.layers.1.mlp.experts" in where and "k_norm" not in where, where


# ---------------------------------------------------------------------------------------------- named refusals
@pytest.mark.parametrize("name,match", [
    ("DogeForCausalLM", r"model\.layers\.0\.self_attn \(dynamic-mask attention"),
    ("HrmTextForCausalLM", r"model\.L_module\.layers\.0\.self_attn\.q_proj \(recurrent depth"),
    ("CpmAntForCausalLM", r"cpmant \(token-id segments \(CpmAntModel\): ne\(ids\) computes values from the token ids "
                          r".* read by embedding tables indexed by them \(cpmant\.position_bias\.relative_attention_bias, "
                          r"cpmant\.segment_embedding\.weight: segment embeddings, a bucketed relative-position bias\) "
                          r"and an attention mask"),
    ("GitForCausalLM", r"git \(opaque op 'zeros_like': a tensor built from an activation's shape"),
    ("CsmDepthDecoderForCausalLM", r"not one logit row per token"),
])
def test_exotic_mechanisms_are_refused_naming_the_module_and_the_feature(name, match):
    from fuzz.errors import BadInput
    cls = getattr(tf, name, None)
    if cls is None:
        pytest.skip(f"this transformers has no {name}")
    with pytest.raises(BadInput, match=match):
        import_model(instantiate(cls, tiny_config(cls)))


def test_nanochat_weight_free_rms_norm_modules_are_recorded_as_norms():
    """NanoChat's parameter-free RMSNorm module (x * rsqrt(mean(x^2) + eps) in float32) is contracted into a
    weight-free norm node (no longer an unknown activation); NanoChat imports (tests/fuzz/test_rope_direction.py)."""
    from fuzz.record import record
    cls = tf.NanoChatForCausalLM
    g = record(instantiate(cls, tiny_config(cls))).graph
    norms = [d for _, d in g.nodes(data=True) if d["op"] == "norm"]
    assert norms and all(d["weight_form"] == "none" and d["kind"] == "rms" and not d["params"] for d in norms)
    assert {d["module_path"] for d in norms} >= {"model.norm", "model.layers.0.self_attn.q_norm"}
    assert not [d for _, d in g.nodes(data=True) if d["op"] == "act" and str(d.get("fn")).startswith("unknown")]
