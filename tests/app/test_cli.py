"""The command line: exit codes, outputs on disk, bad input."""

import json

from archfuzz.cli import main
from fuzz import DecoderSpec, build
from verifier import mutants, verify
from verifier.corpus import record_failure


def test_transforms_lists_every_registry(capsys):
    assert main(["transforms"]) == 0
    out = capsys.readouterr().out
    assert "reference:" in out and "quant:" in out and "mutants:" in out


def test_fuzz_writes_summary_and_reports_a_caught_mutant(tmp_path):
    out, corpus = tmp_path / "run", tmp_path / "corpus"
    code = main(["fuzz", "--profile", "ci", "--max-examples", "6", "--quiet", "--out", str(out),
                 "--transform", "reference:permute_heads", "--transform", "mutants:pair_reflection",
                 "--corpus", str(corpus), "--require", "qk_norm='none'", "--require", "rope=True",
                 "--require", "fused_qkv=False"])  # permute_heads refuses a fused qkv linear (its row slices)
    assert code == 0  # the mutant fails as expected: caught, not a finding
    summary = json.loads((out / "summary.json").read_text())
    status = summary["per_transform"]["permute_heads"]["status"]  # it refuses MLA layouts by name
    assert set(status) <= {"invariant", "refused"} and sum(status.values()) == 6 and status.get("invariant", 0) >= 1
    assert [(f["transform"], f["outcome"]) for f in summary["failures"]] == [("pair_reflection", "caught")]
    assert not corpus.exists()  # mutants are never recorded by a campaign
    assert "| permute_heads |" in (out / "summary.md").read_text()


def test_verify_command_and_bad_input(tmp_path, capsys):
    path = build(DecoderSpec()).save(tmp_path / "layout.json")
    assert main(["verify", str(path), "--transform", "quant:norm-absorb"]) == 0
    assert main(["verify", str(path), "--transform", "mutants:skip_norm_consumer"]) == 1
    (tmp_path / "bad.json").write_text("{")
    assert main(["verify", str(tmp_path / "bad.json"), "--transform", "reference:identity"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["verify", str(path), "--transform", "nope"]) == 2


def test_replay_reports_corrupt_entries_without_stopping(tmp_path, capsys):
    layout = build(DecoderSpec(qk_norm="none"))
    t = mutants.get("pair_reflection")
    record_failure(verify(t, layout), layout, t, root=tmp_path, kind="mutant")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "meta.json").write_text("{")
    assert main(["replay", "--root", str(tmp_path), "--no-update"]) == 1
    out = capsys.readouterr().out
    assert "still-failing" in out and "CORRUPT" in out and "1 entries replayed, 0 regressions, 1 corrupt" in out
