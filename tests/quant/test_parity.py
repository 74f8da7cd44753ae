"""Device parity (quant.parity): the child-process runner's symptoms, the gate on a tiny layout, SmolLM2."""

import ctypes
import json
import os
import time

import openvino as ov
import pytest
import torch

from fuzz import BadInput, DecoderSpec, LayerSpec, build, materialize
from quant.parity import GATE, compare, enter_stage, parity_markdown, perplexity_of, run_in_child, write_report

TINY = DecoderSpec(vocab=64, hidden=16, n_heads=4, n_kv_heads=2, head_dim=4, intermediate=24,
                   layers=(LayerSpec(), LayerSpec(sparse=True)), n_experts=4, top_k=2)


def _crash_while_compiling(code: int) -> None:
    enter_stage("compile", "compile_model")
    os._exit(code)


def _hang_while_executing() -> None:
    enter_stage("execute", "infer")
    time.sleep(60)


def _fail_while_exporting() -> None:
    enter_stage("export", "ov.convert_model")
    raise RuntimeError("conversion exploded")


def test_runner_returns_figures():
    res = run_in_child(divmod, 7, 2, timeout=60)
    assert res.ok and res.figures == {"value": (3, 1)} and res.exitcode == 0


def test_runner_reports_a_timeout_with_its_stage():
    # the spawned child imports torch and openvino before it enters "execute": several seconds on a busy
    # 2-core machine (at timeout=4 a loaded CI run killed it still in "compile"), so the limit leaves room
    res = run_in_child(_hang_while_executing, stage="compile", timeout=20)
    assert (res.symptom, res.stage, res.step) == ("timeout", "execute", "infer")
    assert res.seconds < 45 and "killed" in res.message


def test_runner_reports_an_exception_with_its_stage():
    res = run_in_child(_fail_while_exporting, timeout=60)
    assert (res.symptom, res.stage, res.step) == ("exception", "export", "ov.convert_model")
    assert "RuntimeError: conversion exploded" in res.message and "Traceback" in res.message


def test_runner_reports_an_exit_without_result_as_a_crash_with_its_stage():
    res = run_in_child(_crash_while_compiling, 3, stage="export", timeout=60)
    assert (res.symptom, res.stage, res.exitcode) == ("crash", "compile", 3)
    assert "status 3" in res.message


def test_runner_reports_a_segfault():
    res = run_in_child(ctypes.string_at, 0, stage="execute", timeout=60)
    assert (res.symptom, res.stage) == ("segfault", "execute")
    assert "SIGSEGV" in res.message and "Fatal Python error" in res.message  # faulthandler's stack in the log


def test_perplexity_skips_the_first_token_and_honours_the_mask():
    ids = torch.tensor([[1, 2, 3]])
    logits = torch.zeros(1, 3, 4)
    assert perplexity_of(logits, ids) == pytest.approx(4.0)
    logits[0, 0, 2] = 100.0  # position 0 predicts token 2 with certainty
    mask = torch.tensor([[True, False, True]])
    assert perplexity_of(logits, ids, mask) == pytest.approx(1.0)


@pytest.mark.slow
def test_tiny_moe_layout_passes_the_gate_and_reports_every_hint(tmp_path):
    model = materialize(build(TINY), seed=2)  # float64: compare() runs a float32 copy
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    report = compare(model, ids, devices=["CPU"], workdir=tmp_path / "work")
    assert report["export"]["symptom"] == "ok", report["export"]["message"]
    rows = {r["hint"]: r for r in report["rows"]}
    assert set(rows) == {"f32", "bf16", "f16"}
    f32 = rows["f32"]
    assert f32["gated"] and f32["passed"] and report["gate"]["passed"] and report["ok"]
    assert f32["rel_err"] <= GATE["rel_err"] and abs(f32["dppl"]) <= GATE["dppl"] and f32["top1"] == 1.0
    assert f32["effective_precision"] == "f32"
    # A lower-precision hint is reported, never gated.  With the ISA (AVX512-BF16 / AMX) the CPU runs bf16;
    # without it OpenVINO 2026.4 either falls back to f32 or (measured on an AVX512 Xeon without BF16)
    # still runs bf16 in emulation: the row's effective precision must agree with the measured error.
    bf16 = rows["bf16"]
    assert not bf16["gated"] and bf16["accepted"] == (bf16["effective_precision"] == "bf16")
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert bf16["effective_precision"] == "bf16"
    if bf16["effective_precision"] == "bf16":
        assert 0 < bf16["rel_err"] < 0.1
    else:
        assert bf16["effective_precision"] == "f32" and bf16["rel_err"] <= GATE["rel_err"]
    assert (tmp_path / "work" / "ir" / "model.bin").is_file()
    js, md = write_report(report, tmp_path / "out")
    assert "| CPU | f32 | f32 | ok |" in md.read_text() and js.is_file()


class Unexportable(torch.nn.Module):
    """A causal LM (embedding as logits) with a data-dependent branch, which torch.export refuses."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(8, 8)

    def forward(self, ids):
        logits = self.emb(ids)
        return -logits if ids.max() > 5 else logits


def test_an_export_failure_is_a_recorded_symptom_not_an_error():
    report = compare(Unexportable(), torch.tensor([[1, 2, 3]]), devices=["CPU"], hints=["f32"])
    assert report["export"]["symptom"] == "exception" and report["export"]["stage"] == "export"
    assert report["export"]["step"] == "torch.export" and not report["rows"] and not report["ok"]
    assert "Export: exception at export/torch.export" in parity_markdown(report)
    with pytest.raises(BadInput, match="not a causal LM"):
        compare(torch.nn.Flatten(), torch.tensor([[1, 2, 3]]))


@pytest.mark.slow
def test_smollm2_parity_at_cpu_f32_passes_the_gate(tmp_path):
    from quant.checkpoints import load_default_checkpoint
    from quant.quantize import text_ids
    model, tok = load_default_checkpoint()
    ids = text_ids(tok, None, "evaluation")[0][None, :128]
    report = compare(model, ids, devices=["CPU"], hints=["f32"])
    (row,) = report["rows"]
    assert row["passed"] and report["ok"], parity_markdown(report)
    assert row["top1"] == 1.0


def test_transformers_moe_exports_through_batched_mm_and_matches(tmp_path):
    from fuzz.families import family_spec, to_transformers
    spec = family_spec("qwen3_moe", vocab=64, hidden=32, n_heads=4, n_kv_heads=2, head_dim=8, intermediate=48,
                       n_layers=2)
    hf = to_transformers(materialize(build(spec), seed=3)).float().eval()
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    report = compare(hf, ids, devices=["CPU"], hints=["f32"])
    assert report["ok"], parity_markdown(report)
    assert report["export"]["figures"]["experts_implementation"] == "batched_mm"
    assert hf.config._experts_implementation == "eager"  # the reference ran (and stays) eager


def test_parity_command_writes_json_and_markdown(tmp_path, capsys):
    import json

    from archfuzz.cli import main
    path = build(TINY).save(tmp_path / "layout.json")
    out = tmp_path / "run"
    assert main(["parity", "--layout", str(path), "--transform", "quant:norm-absorb", "--hint", "f32",
                 "--seq", "8", "--out", str(out)]) == 0
    report = json.loads((out / "parity.json").read_text())
    assert report["ok"] and report["subject_info"]["transform"].startswith("norm-absorb")
    assert [r["hint"] for r in report["rows"]] == ["f32"] and report["ids_shape"] == [1, 8]
    assert "| CPU | f32 | f32 | ok |" in capsys.readouterr().out
    assert main(["parity", "--layout", str(tmp_path / "missing.json")]) == 2


@pytest.mark.slow
def test_an_exporter_finding_is_recorded_and_replayed_like_any_corpus_entry(tmp_path):
    from verifier.corpus import load_entries, record_parity_failure, replay
    layout = build(TINY)
    # a report as compare() writes it when compilation crashed (this layout really passes: replay says so)
    report = {"export": {"symptom": "ok", "stage": "export"}, "gate": dict(GATE), "ok": False,
              "rows": [{"symptom": "segfault", "stage": "compile", "step": "compile_model", "rel_err": None,
                        "message": "killed by SIGSEGV"}]}
    path, created = record_parity_failure(report, layout, seed=2, ids_seed=0, ids_shape=[2, 9], root=tmp_path)
    again, created_again = record_parity_failure(report, layout, seed=5, ids_seed=1, ids_shape=[2, 9], root=tmp_path)
    assert created and not created_again and again == path  # deduplicated by signature, not by seed
    assert {p.name for p in path.iterdir()} == {"layout.json", "meta.json", "repro.py"}
    (entry,), bad = load_entries(tmp_path)
    assert not bad and entry.meta["stage"] == "compile" and entry.meta["symptom"] == "segfault"
    result = replay(entry)
    assert result.outcome == "fixed-now" and not result.regression
    assert json.loads((path / "meta.json").read_text())["status"] == "fixed"
    assert replay(entry).outcome == "ok"
