"""Gates, scales and tables the importer meets in issue 14's decoder families: a learned product on the residual
stream refused by name (a layer scale; Ergo's residual gate imports: tests/fuzz/test_residual_gate.py), an embedding table with rows past the logits'
vocabulary (Moshi)."""

import pytest
import torch

from benchmarks.compat import build
from fuzz.errors import BadInput
from fuzz.importer import import_model


def test_a_learned_per_channel_scale_on_a_branch_is_refused_as_one():
    class LayerScaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(64, 8, dtype=torch.float64)
            self.fc = torch.nn.Linear(8, 8, bias=False, dtype=torch.float64)
            self.gamma = torch.nn.Parameter(torch.randn(8, dtype=torch.float64))
            self.head = torch.nn.Linear(8, 64, bias=False, dtype=torch.float64)

        def forward(self, input_ids):
            h = self.emb(input_ids)
            return self.head(h + self.fc(h) * self.gamma)

    with pytest.raises(BadInput, match=r"a learned per-channel scale \(LayerScaled\): the activation times a "
                                       r"function of \['gamma'\]"):
        import_model(LayerScaled())


def test_moshi_imports_its_embedding_row_past_the_logits_vocabulary_and_reads_that_id():
    """Moshi's table has ``vocab_size + 1`` rows (its initial text token, read and never predicted): the tokens
    read ``vocab + 1`` ids, the lm_head predicts ``vocab``; the check compares the model on ids that include the
    extra one (drawn from the tokens' range), and that id's row reaches the logits."""
    model = build("MoshiForCausalLM")
    vocab = model.config.vocab_size
    gm = import_model(model)
    layout = gm.layout
    (embed,) = layout.of_op("embedding")
    assert layout.params(layout.source)["vocab"] == layout.params(embed)["vocab"] == vocab + 1
    assert layout.widths[layout.sink] == vocab and layout.params(layout.of_op("lm_head")[0])["vocab"] == vocab
    ids = torch.tensor([[vocab, 3, 5, vocab, 7, 1]])
    with torch.no_grad():
        want = model(ids).logits.double()
        assert torch.allclose(gm(ids), want, rtol=0, atol=1e-4 * float(want.abs().max()))  # its float32 RMSNorm
        other = ids.clone()
        other[0, 0] = 0
        assert not torch.allclose(gm(ids)[0, 0], gm(other)[0, 0])  # the extra row is read, not a copy of row 0
    with pytest.raises(BadInput, match=rf"token ids must lie in \[0, {vocab + 1}\)"):
        gm(torch.tensor([[vocab + 1]]))


def test_an_extra_input_id_layout_reads_one_more_id_than_it_predicts_and_never_ties():
    from fuzz import DecoderSpec, LayerSpec, build as build_layout, materialize
    from fuzz.errors import LayoutError
    from fuzz.layout import Layout

    spec = DecoderSpec(layers=(LayerSpec(),), extra_input_id=True)
    layout = build_layout(spec)
    assert layout.params(layout.source)["vocab"] == spec.vocab + 1 and layout.widths[layout.sink] == spec.vocab
    assert "embeddings:extra_input_id" in layout.features()
    model = materialize(layout, seed=0)
    assert model(torch.tensor([[spec.vocab, 0]])).shape == (1, 2, spec.vocab)
    with pytest.raises(LayoutError, match="not shared with the lm_head"):
        build_layout(spec.with_(tie_embeddings=True))
    nodes = [("ids", "tokens", {"vocab": 9}, []), ("e", "embedding", {"vocab": 9, "dim": 4}, ["ids"]),
             ("head", "lm_head", {"dim": 4, "vocab": 8, "tied_to": "e"}, ["e"])]
    with pytest.raises(LayoutError, match="not shared"):
        Layout.from_nodes(nodes, {})
    nodes[1] = ("e", "embedding", {"vocab": 8, "dim": 4}, ["ids"])  # the table must cover every id read
    with pytest.raises(LayoutError, match="vocab 8 != tokens vocab 9"):
        Layout.from_nodes(nodes, {})


def test_residual_rotation_rotates_the_rows_of_ids_never_predicted_and_the_oracle_reads_them():
    """The mutant rotating only the first out-vocab rows is caught: the oracle puts the unpredicted ids into its
    test rows (a uniform draw may miss one id in 65); the real transform is invariant."""
    from fuzz import DecoderSpec, LayerSpec, build as build_layout
    from quant import transforms as T
    from verifier import mutants, verify

    layout = build_layout(DecoderSpec(layers=(LayerSpec(), LayerSpec()), extra_input_id=True))
    for seed in range(3):
        assert verify(T.get("residual-rotation", seed=seed), layout, seed=seed).status == "invariant"
        assert verify(mutants.get("extra_rows_unrotated", seed=seed), layout, seed=seed).status == "diverged"


@pytest.mark.slow
def test_an_extra_input_id_exports_and_matches(cpu_f32_parity):
    from fuzz import DecoderSpec, LayerSpec, build as build_layout, materialize

    spec = DecoderSpec(layers=(LayerSpec(), LayerSpec()), extra_input_id=True)
    model = materialize(build_layout(spec), dtype=torch.float32, seed=3)
    ids = torch.randint(0, spec.vocab + 1, (2, 12), generator=torch.Generator().manual_seed(0))
    ids[0, :3] = spec.vocab  # the id never predicted, read
    report = cpu_f32_parity(model, ids)
    assert report["ok"]


def test_logits_that_drop_positions_are_refused_naming_it():
    """CSM's depth decoder predicts the codebooks after its backbone-state position with a head per position:
    7 logit rows for 8 ids; refused as dropped positions, not as a shape mismatch alone."""
    with pytest.raises(BadInput, match=r"logits have shape \(1, 7, 64\), expected \(\*\(1, 8\), vocab\) \(the logits "
                                       r"drop 1 position\(s\): not one logit row per token"):
        import_model(build("CsmDepthDecoderForCausalLM"))
