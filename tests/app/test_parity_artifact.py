"""``archfuzz parity --artifact``: the stateful artifact ``quantize --lowbit`` writes, against the plain checkpoint
it saved (the fake-quantized reference), per device and hint; bad input refused before any work."""

import copy
import json

import pytest
import torch

from archfuzz.cli import main
from fuzz import build, materialize
from fuzz.families import family_spec, to_transformers
from quant.checkpoints import word_tokenizer

pytest.importorskip("auto_round")
pytest.importorskip("openvino")

DIMS = dict(vocab=64, hidden=64, n_heads=4, n_kv_heads=2, head_dim=16, intermediate=128, n_layers=2)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """What ``archfuzz quantize --lowbit`` leaves: OUT (the plain checkpoint, float32 tables) and OUT/openvino/genai
    (u2 codes, int8 tables), here on a tiny random Llama at RTN W2 g16."""
    from quant.lowbit import grid_codes, quantize_tables
    from quant.quantize import QuantConfig, quantize, save
    from quant.stateful import build_artifact
    model = to_transformers(materialize(build(family_spec("llama", **DIMS)), seed=6)).float().eval()
    tok = word_tokenizer(64)
    windows = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(0))
    quantize(model, tok, "none", QuantConfig(bits=2, group_size=16, iters=0, nsamples=4, seqlen=32, batch_size=2),
             windows)
    codes = grid_codes(model, 2, 16)
    art = copy.deepcopy(model)
    tables = quantize_tables(art, "int8", skip=codes)
    out = tmp_path_factory.mktemp("q") / "out"
    save(model, tok, out, {"recipe": "none"})
    build_artifact(art, tok, out / "openvino" / "genai", codes, tables)
    return out


def test_parity_on_the_artifact_passes_and_writes_its_report(quantized, tmp_path, capsys):
    genai = quantized / "openvino" / "genai"
    code = main(["parity", "--artifact", str(genai), "--seq", "12", "--steps", "3", "--hint", "f32", "--hint", "f16",
                 "--out", str(tmp_path / "p")])
    printed = capsys.readouterr().out
    assert code == 0, printed
    rep = json.loads((tmp_path / "p" / "parity.json").read_text())
    assert rep["ok"] and rep["subject_info"]["checkpoint"] == str(quantized)
    assert [(r["device"], r["hint"]) for r in rep["rows"] if r["device"] == "CPU"] == [("CPU", "f32"), ("CPU", "f16")]
    assert rep["prompt_tokens"] == 12 and len(rep["rows"][0]["decode_rel_err"]) == 3
    assert "Gate (CPU f32" in printed and "PASS" in printed and (tmp_path / "p" / "parity.md").is_file()


def test_parity_fails_against_another_reference(quantized, tmp_path, capsys):
    other = tmp_path / "other"
    to_transformers(materialize(build(family_spec("llama", **DIMS)), seed=7)).float().save_pretrained(other)
    code = main(["parity", "--artifact", str(quantized / "openvino" / "genai"), "--checkpoint", str(other), "--seq",
                 "8", "--steps", "2", "--hint", "f32", "--out", str(tmp_path / "p")])
    assert code == 1
    assert "FAIL" in capsys.readouterr().out


def test_bad_artifact_arguments_are_refused_before_any_work(quantized, tmp_path, capsys):
    genai = str(quantized / "openvino" / "genai")
    cases = [
        (["--artifact", str(tmp_path)], "openvino_model.xml missing"),
        (["--artifact", genai, "--transform", "reference:permute_heads"], "--transform does not apply to --artifact"),
        (["--artifact", genai, "--batch", "2"], "batch 1"),
        (["--artifact", genai, "--keep-ir"], "--keep-ir does not apply"),
        (["--artifact", genai, "--option", "seed=1"], "--option does not apply"),
        (["--steps", "3"], "--steps applies to --artifact"),
    ]
    for extra, message in cases:
        assert main(["parity", *extra, "--out", str(tmp_path / "never")]) == 2, extra
        assert message in capsys.readouterr().err, extra
    moved = tmp_path / "moved"
    (quantized / "openvino" / "genai").rename(moved)
    try:
        assert main(["parity", "--artifact", str(moved)]) == 2
        assert "give its fake-quantized reference with --checkpoint" in capsys.readouterr().err
    finally:
        moved.rename(quantized / "openvino" / "genai")
    assert not (tmp_path / "never").exists()
