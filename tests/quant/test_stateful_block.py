"""BBT-spectral's group-aligned block form shipped low-bit (issue 15 with issue 16's ``bbt-spectral-block``): ``W^``
kept at its own width (no padding) as u2 codes, the rotation online as one ``(d_in / b, b) @ H_b`` matmul per group
of linears sharing an input, proved against the PyTorch fake-quantized transformed model (prefill, cached decode
steps, greedy tokens, perplexity) and counted in the IR."""

import numpy as np
import openvino as ov
import pytest

from quant.stateful import MODEL_XML
from tests.quant.test_stateful import ODIMS, assert_matches_the_fake_quantized_model, online_artifact

pytest.importorskip("auto_round")
pytest.importorskip("openvino_genai")


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    """bbt-spectral-block (RTN W2 g32; ``ODIMS``' 96-wide down_proj input gets block 32) shipped with its rotation
    online (``test_stateful.online_artifact``)."""
    return online_artifact(tmp_path_factory, "bbt-spectral-block", 32)


def test_block_artifact_matches_the_fake_quantized_transformed_model(block):
    om, info, codes, out, built, unfolded, _ = block
    assert built["compressed"] == {"replaced": 7 * ODIMS["n_layers"], "bits": 2}
    assert codes["model.layers.0.mlp.down_proj.linear.weight"].codes.shape == (64, 96 // 32, 32)  # not padded
    assert [(g["d_in"], g["d_pad"]) for g in info["groups"][:4]] == [(64, 64), (64, 64), (64, 64), (96, 96)]
    assert_matches_the_fake_quantized_model(om, out, unfolded)  # the unfolded W_eff = block_fwht(W^ / s)


def test_one_block_matmul_per_distinct_input_and_no_padding(block):
    """q/k/v share one rotation, gate/up one, o and down each their own: 4 per layer; each is ONE MatMul with a
    ``b x b`` Hadamard constant (b = 64 on the 64-wide inputs, 32 on down_proj's 96), and nothing is padded."""
    _, info, _, out, _, _, _ = block
    assert info["rotations"] == 4 * ODIMS["n_layers"]
    assert [g["block"] for g in info["groups"][:4]] == [64, 64, 64, 32]
    ir = ov.Core().read_model(str(out / MODEL_XML))

    def hadamard_size(node):
        if node.get_type_name() != "Constant":
            return 0
        v = node.get_data()
        ok = v.ndim == 2 and v.shape[0] == v.shape[1] > 1 and np.allclose(np.abs(v), 1 / np.sqrt(v.shape[0]))
        return v.shape[0] if ok else 0

    sizes = sorted(max(hadamard_size(i.get_source_output().get_node()) for i in op.inputs())
                   for op in ir.get_ops() if op.get_type_name() == "MatMul")
    sizes = [s for s in sizes if s]
    assert sizes == sorted([64, 64, 64, 32] * ODIMS["n_layers"])
    assert not any(op.get_type_name() == "Pad" for op in ir.get_ops())
