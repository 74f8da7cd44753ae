"""Ergo's residual gate (``ErgoResidualGate``): ``sigmoid(w) * branch + sqrt(1 + sigmoid(w)) exp(-softplus(w) / 2)
* residual``, the op ``residual_gate`` (axis ``residual_gate``, tag ``residual:gate``): drawn, materialized,
imported from the dataflow (which input is the residual) with its factors measured on the module, Ergo's dense
layers imported exactly, the MoE refused by name at its per-expert output norm."""

import pytest
import torch

from benchmarks.compat import build as build_hf, tiny_config
from benchmarks.import_check_families import instantiate
from fuzz import DecoderSpec, build, materialize
from fuzz.errors import BadInput
from fuzz.importer import import_model


def _ergo(dense: bool):
    import transformers as tf
    cfg = tiny_config(tf.ErgoForCausalLM)
    if dense:
        cfg.mlp_layer_types = ["dense"] * len(cfg.mlp_layer_types)
    return instantiate(tf.ErgoForCausalLM, cfg, 0)


def test_the_op_computes_ergos_gate_on_each_side():
    layout = build(DecoderSpec(residual_gate=True))
    gates = layout.of_op("residual_gate")
    assert len(gates) == 2 and "residual:gate" in layout.meta["features"]
    gm = materialize(layout)
    mod = gm.nodes[gates[0]]
    w = mod.weight.detach()
    b, r = torch.randn(2, 3, w.shape[0], dtype=torch.float64), torch.randn(2, 3, w.shape[0], dtype=torch.float64)
    want = torch.sigmoid(w) * b + torch.sqrt(1 + torch.sigmoid(w)) * torch.exp(-0.5 * torch.nn.functional.softplus(w)) * r
    assert torch.allclose(mod(b, r), want, rtol=1e-15, atol=0)
    # the residual port is the stream (the add's first input before), the branch the attention's output
    branch, residual = layout.inputs(gates[0])
    assert layout.op(residual) == "embedding" and layout.op(branch) == "linear"
    assert float(w.std()) > 0.3  # far from uniform: a rotation of the stream cannot commute with it


def test_no_gate_off_a_sequential_residual():
    for spec in (DecoderSpec(residual_gate=True, residual="parallel"), DecoderSpec(residual_gate=True, placement="post")):
        layout = build(spec)
        assert not layout.of_op("residual_gate") and "residual:gate" not in layout.meta["features"]


@pytest.mark.parametrize("spec", [DecoderSpec(residual_gate=True, placement="sandwich", qk_norm="per_head"),
                                  DecoderSpec(residual_gate=True, residual_multiplier=0.25, mlp="gelu",
                                              tie_embeddings=True)])
def test_gated_layouts_import_to_themselves(spec):
    layout = build(spec)
    got = import_model(materialize(layout))
    assert len(got.layout.of_op("residual_gate")) == len(layout.of_op("residual_gate")) == 2
    assert got.layout.meta["import_check"]["max_rel_err"]["exact"] <= 1e-12


def test_a_gate_with_its_inputs_swapped_is_refused_by_the_check():
    """Which input is the residual comes from the dataflow (the input the branch is computed from): a GraphModel
    whose gate takes the stream as its branch (inputs swapped) is another function, which the import check
    refuses rather than importing it as Ergo's gate."""
    from fuzz.layout import Layout
    layout = build(DecoderSpec(residual_gate=True))
    nodes = [(n, layout.op(n), layout.params(n), layout.inputs(n)[::-1] if layout.op(n) == "residual_gate"
              else layout.inputs(n)) for n in layout.order]
    with pytest.raises(BadInput, match=r"the import is not exact"):
        import_model(materialize(Layout.from_nodes(nodes, dict(layout.meta))))


def test_ergo_dense_layers_import_exactly_with_their_residual_gates():
    model = _ergo(dense=True)
    gm = import_model(model)
    chk = gm.layout.meta["import_check"]
    assert min(chk["max_rel_err"].values()) <= chk["bound"]  # ErgoRMSNorm and the gate's factors in float32
    gates = gm.layout.of_op("residual_gate")
    assert len(gates) == 2 * model.config.num_hidden_layers
    assert {gm.layout.meta["param_map"][g]["weight"] for g in gates} == {
        f"model.layers.{i}.{k}_residual_gate.weight" for i in range(2) for k in ("attention", "feedforward")}
    ids = torch.arange(10)[None] % model.config.vocab_size
    with torch.no_grad():
        want = model(ids).logits.double()
        assert torch.allclose(gm(ids), want, rtol=0, atol=1e-5 * float(want.abs().max()))
        model.model.layers[0].attention_residual_gate.weight.add_(0.5)  # the gate's weight is read (shared)
        assert not torch.allclose(gm(ids), want, rtol=0, atol=1e-3 * float(want.abs().max()))


def test_ergo_moe_is_refused_by_name_at_its_per_expert_output_norm():
    with pytest.raises(BadInput, match=r"cannot import model\.layers\.1\.mlp\.experts\.post_expert_norm \(per-expert "
                                       r"output norm \(ErgoExpertNorm\): each routed expert's output is RMS-normalised"):
        import_model(build_hf("ErgoForCausalLM"))


def test_a_gate_of_another_form_is_refused_by_name():
    """Two products of one per-channel parameter summed, the residual one reading the stream, but the factors are
    not Ergo's (sigmoid on both sides): measured on the module and refused naming the residual gate."""
    class Gate(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(8, dtype=torch.float64))

        def forward(self, branch, residual):
            return torch.sigmoid(self.weight) * branch + torch.sigmoid(-self.weight) * residual

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(64, 8, dtype=torch.float64)
            self.fc = torch.nn.Linear(8, 8, bias=False, dtype=torch.float64)
            self.gate = Gate()
            self.head = torch.nn.Linear(8, 64, bias=False, dtype=torch.float64)

        def forward(self, input_ids):
            h = self.emb(input_ids)
            return self.head(self.gate(self.fc(h), h))

    with pytest.raises(BadInput, match=r"cannot import gate \(residual gate \(Gate\): the residual stream and the "
                                       r"branch output .* the measured factors are not Ergo's"):
        import_model(Model())
