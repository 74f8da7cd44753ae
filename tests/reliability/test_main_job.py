"""The main job (`archfuzz fuzz`, what scripts/fuzz.sh runs): peers judged float64 everywhere, a new real break
named and failing the run, a known one named by its entry without touching the corpus, mutants caught but
never recorded, the per-example timeout flag."""

import json
import logging

import pytest

from archfuzz.cli import main
from archfuzz.cli.fuzz import default_transforms
from fuzz import build
from fuzz.errors import BadInput
from fuzz.families import family_spec
from verifier import verify
from verifier.registry import resolve
import verifier.campaign as campaign

logging.getLogger("autoround").setLevel(logging.ERROR)

# layouts that are transformers families (llama-like) often enough for the peers to run, not refuse
FAMILY = {"qk_norm": "none", "rope": True, "rope_style": "half", "attn_gate": "none", "mlp": "swiglu", "norm": "rms",
          "placement": "pre", "residual": "sequential", "moe": False, "qkv_bias": False, "o_bias": False,
          "mlp_bias": False}


def require(constraints):
    return [a for k, v in constraints.items() for a in ("--require", f"{k}={v!r}")]


def snapshot(root):
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")} if root.exists() else {}


def test_the_default_campaign_runs_every_peer_float64_everywhere_and_the_bridge_control_is_clean():
    peers = [n for n in default_transforms() if n.startswith("peers:")]
    assert "peers:hf-bridge" in peers
    assert all(campaign.campaign_transform(n).options == {"precision": "float64"} for n in peers)
    s = campaign.run_campaign(["peers:hf-bridge"], profile="ci", max_examples=6, constraints=FAMILY, progress=False)
    st = s["per_transform"]["hf-bridge"]
    assert st["status"].get("invariant", 0) >= 1 and set(st["status"]) <= {"invariant", "refused"}
    assert st["worst_rel_err"] < 1e-13 and st["precision"] == campaign.PEER_MODE["float64"]
    assert s["ok"] and not s["failures"]


def test_float64_everywhere_keeps_the_real_peer_findings_visible():
    # qwen2's q/k/v bias: the per-head Hadamard rotates v_proj's rows but not its bias (an open corpus finding)
    layout = build(family_spec("qwen2", hidden=32, intermediate=64, n_heads=4, n_kv_heads=2, head_dim=8))
    bridge = verify(campaign.campaign_transform("peers:hf-bridge"), layout)
    broken = verify(campaign.campaign_transform("peers:autoround-hadamard"), layout)
    assert bridge.ok and bridge.max_rel_err < 1e-13
    assert broken.status == "diverged" and broken.max_rel_err > 1e-2
    with pytest.raises(BadInput, match="precision must be one of"):
        resolve("peers:hf-bridge", precision="float32")


def test_a_new_peer_break_fails_the_job_by_name_and_is_known_on_the_next_run(tmp_path, capsys):
    corpus, out = tmp_path / "corpus", tmp_path / "run"
    # auto-round's 8-wide block Hadamard asserts on a hidden size it does not divide (a crash, not a refusal)
    args = ["fuzz", "--profile", "ci", "--max-examples", "4", "--quiet", "--transform", "peers:autoround-hadamard-b8",
            "--corpus", str(corpus), "--out", str(out)] + require({**FAMILY, "hidden": 12})
    assert main(args) == 1
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    [new] = summary["failures"]
    assert new["outcome"] == "new" and new["status"] == "error" and "must divide hidden_size" in new["verdict"]["message"]
    assert f"NEW autoround-hadamard-b8: error" in printed and new["corpus_entry"] in printed
    meta = json.loads((corpus / new["signature"] / "meta.json").read_text())
    assert meta["kind"] == "finding" and meta["transform"]["options"] == {"precision": "float64"}
    assert summary["per_transform"]["autoround-hadamard-b8"]["examples"] == 4

    before = snapshot(corpus)
    assert main(args) == 0  # the same break again: known, named by its entry, nothing written
    printed = capsys.readouterr().out
    again = json.loads((out / "summary.json").read_text())
    assert [f["outcome"] for f in again["failures"]] == ["known"]
    assert f"known autoround-hadamard-b8: error: {new['corpus_entry']}" in printed
    assert snapshot(corpus) == before


def test_a_campaign_over_mutants_reports_them_caught_and_records_nothing(tmp_path, capsys):
    corpus, out = tmp_path / "corpus", tmp_path / "run"
    code = main(["fuzz", "--profile", "ci", "--max-examples", "6", "--quiet", "--transform", "mutants:pair_reflection",
                 "--corpus", str(corpus), "--out", str(out), "--require", "qk_norm='none'", "--require", "rope=True"])
    assert code == 0
    assert "mutant caught pair_reflection: diverged" in capsys.readouterr().out
    [f] = json.loads((out / "summary.json").read_text())["failures"]
    assert f["kind"] == "mutant" and f["outcome"] == "caught" and f["corpus_entry"] is None
    assert not corpus.exists()


def test_the_per_example_timeout_flag(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fuzz", "--profile", "ci", "--max-examples", "2", "--quiet", "--transform", "reference:identity",
                 "--timeout", "7.5", "--no-corpus", "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["per_example_timeout"] == 7.5
    for bad in ("0", "-1", "inf", "soon"):
        assert main(["fuzz", "--timeout", bad, "--no-corpus", "--out", str(out)]) == 2
        assert "--timeout" in capsys.readouterr().err
