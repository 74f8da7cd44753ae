"""``archfuzz generate`` on a stateful artifact and ``archfuzz quantize --lowbit`` writing one (issue 15)."""

import json

import pytest
import torch

from archfuzz.cli import main
from fuzz import build, materialize
from fuzz.families import family_spec, to_transformers
from quant.checkpoints import word_tokenizer

pytest.importorskip("openvino_genai")

DIMS = dict(vocab=64, hidden=64, n_heads=4, n_kv_heads=2, head_dim=16, intermediate=128, n_layers=2)


def tiny_llama():
    return to_transformers(materialize(build(family_spec("llama", **DIMS)), seed=3)).float().eval()


def test_generate_prints_the_greedy_text_and_the_decode_speed(tmp_path, capsys):
    from quant.stateful import build_artifact, torch_greedy
    model = tiny_llama()
    build_artifact(model, word_tokenizer(64), tmp_path / "genai")  # float32 weights: no codes needed here
    _, ref = torch_greedy(model, torch.tensor([[3, 1, 4, 1, 5]]), 5)
    assert main(["generate", str(tmp_path / "genai"), "--prompt", "t3 t1 t4 t1 t5", "--max-new-tokens", "6",
                 "--ignore-eos", "--f32", "--backend", "SDPA", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["tokens"] == ref and got["text"] == " ".join(f"t{t}" for t in ref) and got["prompt_tokens"] == 5
    assert main(["generate", str(tmp_path / "genai"), "--prompt", "t3 t1 t4 t1 t5", "--max-new-tokens", "3", "--f32",
                 "--ignore-eos"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == " ".join(f"t{t}" for t in ref[:3])  # the same prompt prefix: the same greedy start
    assert "3 new tokens after 5 prompt tokens on CPU" in out[1] and "tokens/s" in out[1]


def test_generate_refuses_a_folder_that_is_not_an_artifact(tmp_path, capsys):
    (tmp_path / "openvino_model.xml").write_text("<net/>")
    assert main(["generate", str(tmp_path), "--prompt", "hello"]) == 2
    err = capsys.readouterr().err
    assert "argument dir" in err and "openvino_tokenizer.xml, openvino_detokenizer.xml missing" in err
    assert main(["generate", str(tmp_path / "nope"), "--prompt", "hello"]) == 2
    assert main(["generate", str(tmp_path), "--prompt", "hi", "--max-new-tokens", "0"]) == 2
    for name in ("openvino_tokenizer.xml", "openvino_detokenizer.xml"):
        (tmp_path / name).write_text("<net/>")
    assert main(["generate", str(tmp_path), "--prompt", " "]) == 2
    assert "argument --prompt: expected text" in capsys.readouterr().err
    assert main(["generate", str(tmp_path), "--prompt", "hi", "--device", "NO_SUCH_DEVICE"]) == 2
    assert "'NO_SUCH_DEVICE' is not a device OpenVINO reports" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["none", "bbt-spectral", "bbt-spectral-block"])
def test_quantize_lowbit_writes_a_stateful_artifact_that_generates(tmp_path, capsys, recipe):
    """The whole command on a tiny Llama checkpoint: W2 RTN, the three prefill/step IRs and the stateful u2
    artifact, its parity and GenAI decode speed in the report, then ``archfuzz generate`` on it."""
    ckpt = tmp_path / "ckpt"
    tiny_llama().save_pretrained(ckpt)
    out = tmp_path / "q"
    code = main(["quantize", "--checkpoint", str(ckpt), "--recipe", recipe, "--bits", "2", "--group-size", "16",
                 "--iters", "0", "--nsamples", "2", "--seqlen", "16", "--batch-size", "2", "--no-eval", "--lowbit",
                 "--lowbit-seq", "12", "--lowbit-new-tokens", "16", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads((out / "openvino" / "lowbit.json").read_text())
    st = report["stateful"]
    assert st["ok"] and st["compressed"] == {"replaced": 7 * DIMS["n_layers"], "bits": 2}
    assert st["parity"]["max_rel_err"] <= 1e-5 and st["parity"]["tokens_agree"]
    assert st["tables"] == {"mode": "int8", "tables": {"model.embed_tokens.weight": 1, "lm_head.weight": 1}}
    assert st["genai"]["new_tokens"] == 16 and st["genai"]["decode_tok_s"] > 0
    if recipe != "none":  # W^ shipped as codes, the rotation online: 4 FWHTs per layer for 7 linears
        assert report["online_rotation"] == {"mode": "kron", "rotations": 4 * DIMS["n_layers"],
                                             "linears": 7 * DIMS["n_layers"]}
    assert "## Stateful artifact (KV cache, openvino_genai)" in printed
    genai = out / "openvino" / "genai"
    assert main(["generate", str(genai), "--prompt", "t1 t2 t3", "--max-new-tokens", "4", "--ignore-eos"]) == 0
    if recipe == "bbt-spectral-block":  # device parity against the plain checkpoint quantize saved (W_eff, unfolded)
        assert main(["parity", "--artifact", str(genai), "--seq", "8", "--steps", "2", "--hint", "f32",
                     "--out", str(tmp_path / "p")]) == 0
        rep = json.loads((tmp_path / "p" / "parity.json").read_text())
        assert rep["ok"] and rep["subject_info"]["checkpoint"] == str(out)
