"""BBT-spectral's group-aligned block form shipped low-bit (issue 15 with issue 16's ``bbt-spectral-block``): ``W^``
kept at its own width (no padding) as u2 codes, the rotation online as one ``(d_in / b, b) @ H_b`` matmul per group
of linears sharing an input, proved against the PyTorch fake-quantized transformed model (prefill, cached decode
steps, greedy tokens, perplexity) and counted in the IR."""

import copy

import numpy as np
import openvino as ov
import pytest
import torch

from fuzz import build, materialize
from fuzz.families import family_spec, to_transformers
from quant.checkpoints import word_tokenizer
from quant.lowbit import grid_codes
from quant.parity import compile_config
from quant.quantize import QuantConfig, quantize
from quant.stateful import MODEL_XML, build_artifact, perplexity_parity, stateful_parity

pytest.importorskip("auto_round")
pytest.importorskip("openvino_genai")

DIMS = dict(vocab=64, hidden=64, n_heads=4, n_kv_heads=2, head_dim=16, intermediate=96, n_layers=2)  # 96: block 32
PROMPT = torch.randint(0, 64, (1, 9), generator=torch.Generator().manual_seed(1))
F32 = compile_config("CPU", "f32")


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    """A tiny Llama quantized with bbt-spectral-block (RTN W2 g32), taken before the unfold and made online; its
    stateful u2 artifact; and the unfolded plain model the same quantization ships otherwise."""
    from quant.online import make_online
    model = to_transformers(materialize(build(family_spec("llama", **DIMS)), seed=3)).float().eval()
    windows = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(0))
    held = {}
    quantize(model, word_tokenizer(64), "bbt-spectral-block", QuantConfig(bits=2, group_size=32, iters=0, nsamples=4,
                                                                           seqlen=32, batch_size=2), windows,
             before_unfold=lambda prepared: held.update(online=make_online(prepared.model, windows[:1, :8])))
    om, info = held["online"]
    codes = grid_codes(om, 2, 32)
    out = tmp_path_factory.mktemp("block") / "genai"
    built = build_artifact(om, word_tokenizer(64), out, codes)
    return om, info, codes, out, built, model


def test_block_artifact_matches_the_fake_quantized_transformed_model(block):
    om, info, codes, out, built, unfolded = block
    assert built["compressed"] == {"replaced": 7 * DIMS["n_layers"], "bits": 2}
    assert codes["model.layers.0.mlp.down_proj.linear.weight"].codes.shape == (64, 96 // 32, 32)  # not padded
    assert [(g["d_in"], g["d_pad"]) for g in info["groups"][:4]] == [(64, 64), (64, 64), (64, 64), (96, 96)]
    report = stateful_parity(om, out / MODEL_XML, PROMPT, steps=6)
    assert report["max_rel_err"] <= 1e-5 and report["tokens_agree"], report
    compiled = ov.Core().compile_model(str(out / MODEL_XML), "CPU", F32)
    req = compiled.create_infer_request()
    req.reset_state()
    n = PROMPT.shape[1]
    got = torch.from_numpy(req.infer({"input_ids": PROMPT.numpy(), "attention_mask": np.ones((1, n), np.int64),
                                      "position_ids": np.arange(n)[None], "beam_idx": np.zeros(1, np.int32)})
                           ["logits"].copy()).double()
    with torch.no_grad():
        ref64 = copy.deepcopy(om).double()(input_ids=PROMPT).logits  # W^ and the block rotation, float64
        plain = copy.deepcopy(unfolded).double()(input_ids=PROMPT).logits  # W_eff = block_fwht(W^ / s), unfolded
    assert (got - ref64).abs().max() / ref64.abs().max() <= 1e-5
    assert (plain - ref64).abs().max() / ref64.abs().max() <= 1e-5
    ids = torch.randint(0, 64, (64,), generator=torch.Generator().manual_seed(5))
    ppl = perplexity_parity(om, out / MODEL_XML, ids, window=16, max_tokens=64)
    assert ppl["rel_diff"] <= ppl["tolerance"], ppl


def test_one_block_matmul_per_distinct_input_and_no_padding(block):
    """q/k/v share one rotation, gate/up one, o and down each their own: 4 per layer; each is ONE MatMul with a
    ``b x b`` Hadamard constant (b = 64 on the 64-wide inputs, 32 on down_proj's 96), and nothing is padded."""
    _, info, _, out, _, _ = block
    assert info["rotations"] == 4 * DIMS["n_layers"]
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
    assert sizes == sorted([64, 64, 64, 32] * DIMS["n_layers"])
    assert not any(op.get_type_name() == "Pad" for op in ir.get_ops())
