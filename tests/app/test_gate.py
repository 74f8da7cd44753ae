"""The release gate end to end on a small budget: stages, report files, the exit verdict, and the
quantization and parity stages it registers."""

import json
import shutil
from pathlib import Path

import pytest

from archfuzz import gate
from archfuzz.gate import device_parity, quantize_smoke
from quant.parity import dppl_bound
from verifier.corpus import DEFAULT_ROOT


@pytest.fixture
def corpus_copy(tmp_path):
    root = tmp_path / "corpus"
    # the replay harness stays behind; every entry keeps its repro.py (an entry without it is partial)
    shutil.copytree(DEFAULT_ROOT, root, ignore=shutil.ignore_patterns("test_replay.py", "conftest.py", "__pycache__"))
    return root


def test_gate_runs_every_stage_and_fails_on_a_failing_extra_check(corpus_copy, tmp_path, monkeypatch):
    monkeypatch.setattr(gate, "EXTRA_CHECKS", {"quantize-smoke": lambda checkpoint: quantize_smoke.quantize_smoke(("bbt-spectral",)),
                                               "always-fails": lambda checkpoint: {"ok": False, "why": "test"}})
    monkeypatch.setattr(gate, "register_default_checks", lambda: None)
    report = gate.run_gate(out=tmp_path / "out", corpus=corpus_copy, max_examples=1, checkpoint=False, progress=False)
    assert set(report["stages"]) == {"campaign", "corpus", "quantize-smoke", "always-fails"}
    assert report["stages"]["corpus"]["ok"] and report["stages"]["corpus"]["entries"] >= 20
    assert report["stages"]["quantize-smoke"]["ok"], report["stages"]["quantize-smoke"]
    assert not report["ok"]  # one failing stage fails the gate
    saved = json.loads((tmp_path / "out" / "gate.json").read_text())
    assert saved["ok"] is False and saved["stages"]["always-fails"]["why"] == "test"
    md = (tmp_path / "out" / "gate.md").read_text()
    assert md.startswith("# archfuzz release gate: FAIL") and "| always-fails | NO |" in md
    assert "| bbt-spectral | yes | invariant |" in md


def test_quantize_smoke_reports_a_crashing_recipe_as_a_failed_row():
    result = quantize_smoke.quantize_smoke(("no-such-recipe",))
    assert not result["ok"] and "unknown recipe" in result["rows"][0]["error"]


@pytest.mark.slow
def test_parity_stage_on_a_synthesized_subject(monkeypatch):
    layouts = device_parity.parity_layouts()
    name = "mqa-interleaved-rope-shared-expert-layernorm"
    monkeypatch.setattr(device_parity, "parity_layouts", lambda: {name: layouts[name]})
    result = device_parity.parity_checks(checkpoint=False)
    row = result["rows"][0]
    assert result["ok"] and row["subject"] == name and row["export"] == "ok", row
    assert row["f32_rel_err"] <= 1e-5 and abs(row["f32_dppl"]) <= dppl_bound(row["ref_ppl"])
    assert set(row["symptoms"]) == {"f32", "bf16", "f16"} and set(row["symptoms"].values()) == {"ok"}


def test_every_fixed_parity_subject_builds():
    from fuzz import build, materialize
    for name, spec in device_parity.parity_layouts().items():
        assert materialize(build(spec), seed=1) is not None, name


def test_the_dppl_bound_is_absolute_for_trained_models_and_relative_for_random_ones():
    assert dppl_bound(20.0) == 0.01 and dppl_bound(100.0) == pytest.approx(0.01)
    assert dppl_bound(475_000.0) == pytest.approx(47.5)
