"""Device parity of the stateful artifact (issue 15, item 4): its IR with the KV cache against the PyTorch
fake-quantized reference per device and precision hint, a corrupted weight code reported as failing; and the
artifact run in a fresh process with its own peak RSS (item 3)."""

import copy
import re
import shutil

import pytest
import torch

from fuzz import build, materialize
from fuzz.families import family_spec, to_transformers
from quant.checkpoints import word_tokenizer
from quant.lowbit import grid_codes, quantize_tables
from quant.parity import GATE
from quant.parity.stateful import compare_stateful, forced_logits, stateful_parity_markdown
from quant.quantize import QuantConfig, quantize
from quant.stateful import MODEL_XML, build_artifact, torch_greedy

pytest.importorskip("auto_round")
pytest.importorskip("openvino")

DIMS = dict(vocab=64, hidden=64, n_heads=4, n_kv_heads=2, head_dim=16, intermediate=128, n_layers=2)
PROMPT = torch.randint(0, 64, (1, 10), generator=torch.Generator().manual_seed(4))


@pytest.fixture(scope="module")
def rtn(tmp_path_factory):
    """A tiny random Llama, RTN W4 g16 through auto-round, its int8 tables on the reference copy, and its artifact."""
    model = to_transformers(materialize(build(family_spec("llama", **DIMS)), seed=5)).float().eval()
    windows = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(0))
    quantize(model, word_tokenizer(64), "none", QuantConfig(bits=4, group_size=16, iters=0, nsamples=4, seqlen=32,
                                                             batch_size=2), windows)
    codes = grid_codes(model, 4, 16)
    ref = copy.deepcopy(model)
    tables = quantize_tables(ref, "int8", skip=codes)
    out = tmp_path_factory.mktemp("sparity") / "genai"
    build_artifact(ref, word_tokenizer(64), out, codes, tables)
    return ref, out


@pytest.fixture(scope="module")
def report(rtn):
    ref, out = rtn
    return compare_stateful(ref, out, PROMPT, steps=4)


def test_forced_logits_are_the_greedy_loop_s(rtn):
    ref, _ = rtn
    logits, tokens = torch_greedy(ref, PROMPT, 3)
    forced = forced_logits(ref, PROMPT, tokens[:3])
    assert torch.equal(forced, torch.cat(logits))


def test_the_artifact_passes_at_cpu_f32_and_every_hint_is_reported(report):
    assert report["ok"], stateful_parity_markdown(report)
    rows = {(r["device"], r["hint"]): r for r in report["rows"]}
    assert {("CPU", h) for h in ("f32", "bf16", "f16")} <= set(rows)
    f32 = rows["CPU", "f32"]
    assert f32["gated"] and f32["passed"] and f32["symptom"] == "ok"
    assert report["gate"]["rel_err_bound"] == max(GATE["rel_err"], 2 * report["reference"]["float32_floor"])
    assert f32["prefill_rel_err"] <= report["gate"]["rel_err_bound"] and len(f32["decode_rel_err"]) == 4
    assert max(f32["decode_rel_err"]) <= report["gate"]["rel_err_bound"] and f32["top1"] == 1.0
    for hint in ("bf16", "f16"):  # reported, not gated; finite logits that rank as PyTorch's mostly do
        r = rows["CPU", hint]
        assert not r["gated"] and r["passed"] is None and r["symptom"] == "ok" and r["finite"]
        assert r["effective_precision"] is not None
    absent = set(report["devices"]["absent"])
    assert absent == {d for d in ("GPU", "NPU") if d not in {p.split(".")[0] for p in report["devices"]["present"]}}
    md = stateful_parity_markdown(report)
    assert "PASS" in md
    if absent:  # listed as not run, never faked
        assert f"Not run: {', '.join(report['devices']['absent'])}" in md
        assert not {r["device"] for r in report["rows"]} & absent


def _corrupt_one_code(folder):
    """Flip every bit of one byte (two u4 codes) of the largest u4 constant in the ``.bin``."""
    xml = (folder / MODEL_XML).read_text()
    consts = [(int(m["size"]), int(m["offset"])) for m in re.finditer(
        r'<data element_type="u4" shape="[^"]*" offset="(?P<offset>\d+)" size="(?P<size>\d+)"', xml)]
    assert consts, "no u4 constant in the IR"
    size, offset = max(consts)
    binary = folder / MODEL_XML.replace(".xml", ".bin")
    data = bytearray(binary.read_bytes())
    data[offset + size // 2] ^= 0xFF
    binary.write_bytes(bytes(data))


def test_a_corrupted_weight_code_fails_the_gate(rtn, tmp_path):
    ref, out = rtn
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    _corrupt_one_code(bad)
    rep = compare_stateful(ref, bad, PROMPT, steps=4, hints=("f32",))
    row = rep["rows"][0]
    assert not rep["ok"] and not rep["gate"]["passed"]
    assert row["symptom"] == "inconsistency" and row["passed"] is False
    assert "logits differ by" in row["message"] and row["rel_err"] > 10 * rep["gate"]["rel_err_bound"]
    assert "FAIL" in stateful_parity_markdown(rep)


def test_a_fresh_process_runs_the_artifact_and_reports_its_own_peak_rss(rtn):
    """Issue 15, item 3: GenAI in a fresh process reproduces PyTorch's greedy tokens (f32, SDPA), and its peak RSS is
    its own: a parent holding 768 MiB more than the child ever does does not show up in it."""
    from quant.parity import compile_config
    from quant.stateful import fresh_genai_run
    ref, out = rtn
    _, expected = torch_greedy(ref, PROMPT, 5)
    ballast = bytearray(768 * 2**20)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # touched: resident in this (the parent) process
    got = fresh_genai_run(out, PROMPT[0].tolist(), 6, properties={"ATTENTION_BACKEND": "SDPA",
                                                                   **compile_config("CPU", "f32")})
    del ballast
    assert got["tokens"] == expected and got["prompt_tokens"] == PROMPT.shape[1]
    assert 0 < got["rss_imports_mib"] <= got["peak_rss_mib"] < 768
    assert got["decode_tok_s"] > 0 and got["prefill_tok_s"] > 0 and got["load_s"] > 0


def test_cpu_time_is_split_at_the_first_token_like_the_wall_times():
    """Prefill CPU = to the first streamed token; decode CPU per token = the rest over the tokens after it (a
    streamer call may deliver several tokens)."""
    from quant.genai_probe import cpu_split
    got = cpu_split(10.0, [(10.5, 1), (10.7, 1), (10.9, 2), (11.1, 1)])
    assert got["cpu_prefill_ms"] == pytest.approx(500.0)
    assert got["cpu_ms_per_token"] == pytest.approx(600.0 / 4)
    none = cpu_split(1.0, [])
    assert none["cpu_prefill_ms"] != none["cpu_prefill_ms"] and none["cpu_ms_per_token"] != none["cpu_ms_per_token"]
    one = cpu_split(1.0, [(1.25, 1)])  # one token: a prefill, no decode
    assert one["cpu_prefill_ms"] == pytest.approx(250.0) and one["cpu_ms_per_token"] != one["cpu_ms_per_token"]


def test_a_fresh_process_on_one_thread_reports_its_cpu_time_per_token(rtn):
    """The load-robust decode figure: GenAI pinned to one inference thread, the process's CPU ms per decoded token and
    of the prefill; the same tokens as the default run (the thread count changes no result)."""
    from quant.genai_probe import PINNED
    from quant.stateful import fresh_genai_run
    ref, out = rtn
    _, expected = torch_greedy(ref, PROMPT, 7)
    sdpa = {"ATTENTION_BACKEND": "SDPA", **compile_config_f32()}
    got = fresh_genai_run(out, PROMPT[0].tolist(), 8, properties={**sdpa, **PINNED})
    assert got["properties"]["INFERENCE_NUM_THREADS"] == 1 and got["tokens"] == expected
    assert got["cpu_ms_per_token"] > 0 and got["cpu_prefill_ms"] > 0
    assert got["cpu_user_s"] >= 0 and got["cpu_sys_s"] >= 0 and got["cpu_user_s"] + got["cpu_sys_s"] > 0


def compile_config_f32():
    from quant.parity import compile_config
    return compile_config("CPU", "f32")
