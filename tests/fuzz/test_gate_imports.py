"""Gates, scales and tables the importer meets in issue 14's decoder families: a learned product on the residual
stream refused by name (Ergo's residual gate; a layer scale), an embedding table with rows past the logits'
vocabulary (Moshi)."""

import pytest
import torch

from benchmarks.compat import build
from fuzz.errors import BadInput
from fuzz.importer import import_model


def test_ergo_residual_gate_is_refused_by_name_at_its_module():
    """``sigmoid(w) * branch + sqrt(1 + sigmoid(w)) exp(-softplus(w) / 2) * residual``: the residual stream
    scaled per channel (measured from the dataflow: two products of one parameter summed, one reading the
    input the branch also reads), which no linear can absorb past the next RMSNorm."""
    with pytest.raises(BadInput, match=r"cannot import model\.layers\.0\.attention_residual_gate \(residual gate "
                                       r"\(ErgoResidualGate\): the residual stream and the branch output"):
        import_model(build("ErgoForCausalLM"))


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
