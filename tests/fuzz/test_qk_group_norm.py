"""Issue 14, per-head q/k norms with a weight per head (Cohere ``use_qk_norm``): the norm op's
``group_weights``, the ``qk_norm="per_head_own"`` axis option, the importer, spectral-PCA (exact for RMS,
refused for LayerNorm), the reference head permutation and the ``shared_head_gamma`` mutant."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import quant.transforms as T
from benchmarks.import_check_families import randomize
from fuzz import DecoderSpec, Layout, Refusal, build, materialize
from fuzz.errors import LayoutError
from fuzz.importer import import_model
from fuzz.ops import spec as op_spec
from verifier import mutants, reference, verify

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=None, bos_token_id=None,
            eos_token_id=None)


def test_per_head_own_builds_a_weight_per_head_and_is_tagged():
    spec = DecoderSpec(qk_norm="per_head_own", norm="layer", norm_bias=True, n_heads=4, n_kv_heads=2, head_dim=8)
    layout = build(spec)
    assert layout.params("l0_q_norm")["group_weights"] and layout.params("l0_q_norm")["groups"] == 4
    model = materialize(layout)
    assert model.nodes["l0_q_norm"].weight.shape == (4, 8) and model.nodes["l0_k_norm"].bias.shape == (2, 8)
    assert "qk_norm:per_head_own" in spec.features() and "op:norm:group_weights" in layout.op_features()
    assert Layout.from_json(layout.to_json()) == layout
    norm = op_spec("norm")
    params = norm.normalise("n", {"dim": 8, "groups": 1, "group_weights": True})
    with pytest.raises(LayoutError, match="group_weights needs groups > 1"):
        norm.infer("n", params, [8])
    assert norm.normalise("n", {"dim": 8})["group_weights"] is False  # old layouts: one shared weight, as before

def test_a_shared_weight_per_head_norm_is_a_group_weights_norm_with_equal_rows():
    shared, own = materialize(build(DecoderSpec(qk_norm="per_head"))), materialize(build(DecoderSpec(qk_norm="per_head_own")))
    with torch.no_grad():
        for name, mod in own.nodes.items():
            if name in shared.nodes and mod.p.get("group_weights"):
                mod.weight.copy_(shared.nodes[name].weight.expand_as(mod.weight))
            elif name in shared.nodes:
                for t, u in zip(mod.parameters(), shared.nodes[name].parameters()):
                    t.copy_(u)
    ids = torch.tensor([[1, 5, 2, 7, 3]])
    assert torch.equal(own(ids), shared(ids))


def test_cohere_use_qk_norm_imports_with_its_per_head_weights():
    torch.manual_seed(0)
    model = randomize(tf.CohereForCausalLM(tf.CohereConfig(use_qk_norm=True, **TINY)).to(torch.float64))
    gm = import_model(model)
    norms = [n for n in gm.layout.of_op("norm") if gm.layout.params(n).get("group_weights")]
    assert len(norms) == 4  # q and k, two layers
    q = next(n for n in norms if "q_norm" in n)
    assert gm.layout.params(q)["kind"] == "layer" and gm.layout.params(q)["groups"] == 4
    check = gm.layout.meta["import_check"]
    assert max(check["max_rel_err"].values()) <= check["bound"]


def test_spectral_pca_is_exact_on_rms_head_weights_and_refuses_layernorm_ones():
    verdict = verify(T.get("spectral-pca"), build(DecoderSpec(qk_norm="per_head_own", n_heads=4, n_kv_heads=2)))
    assert verdict.ok, verdict
    with pytest.raises(Refusal) as err:
        T.get("spectral-pca")(materialize(build(DecoderSpec(qk_norm="per_head_own", norm="layer"))), None)
    assert err.value.feature == "layernorm-qk-norm"


def test_reference_head_permutation_moves_each_heads_norm_weights():
    assert verify(reference.get("permute_heads"), build(DecoderSpec(qk_norm="per_head_own", n_heads=4,
                                                                   n_kv_heads=2))).ok


def test_shared_head_gamma_mutant_is_caught():
    verdict = verify(mutants.get("shared_head_gamma"), build(DecoderSpec(qk_norm="per_head_own", n_heads=4,
                                                                          n_kv_heads=2)))
    assert verdict.status == "diverged" and verdict.first_divergent is not None, verdict
