"""Fuzzing the exporter: every synthesized layout exports to OpenVINO and matches PyTorch at CPU f32.

The property gates what holds for any layout: export, compile and execute succeed, and the CPU f32
logits are finite and within ``GATE["rel_err"]`` (1e-5) of PyTorch float32, and ``|dPPL|`` within
:func:`quant.parity.dppl_bound` (0.01, relative 1e-4 above PPL 100: random weights on random tokens give
perplexities in the hundreds to millions).  With ``ARCHFUZZ_CORPUS=DIR`` a failure is written to that
corpus as an exporter finding (stage ``export`` / ``compile`` / ``execute``; hypothesis' shrunk example,
once per stage, symptom and step per process) and replayed by ``pytest corpus/`` like any other entry.

Each example spawns two child processes (export; compile + execute) and costs ~3-4 s, so the property
runs at most :data:`MAX_EXAMPLES` examples whatever the loaded profile says (``ci`` asks for 25, ~1.5
minutes on 2 cores, more when a failure shrinks); set ``ARCHFUZZ_EXPORT_EXAMPLES`` to run more (nightly).
"""

import os

import pytest
import torch
from hypothesis import event, given, settings

from fuzz import materialize, strategies as st_layouts
from quant.parity import GATE, compare, dppl_bound
from verifier.oracle import window_length

_RECORDED: set = set()


def _record(report: dict, layout, seed: int, ids_seed: int, ids_shape: list[int]) -> str:
    root = os.environ.get("ARCHFUZZ_CORPUS")
    if not root:
        return ""
    from verifier.corpus import parity_failure, record_parity_failure
    failure = parity_failure(report)
    key = failure[:3] if failure else None
    if failure is None or key in _RECORDED:
        return ""
    _RECORDED.add(key)
    path, created = record_parity_failure(report, layout, seed=seed, ids_seed=ids_seed, ids_shape=ids_shape,
                                          root=root, note="found by fuzz/test_export_properties.py")
    return f"\n--- corpus: {'new entry' if created else 'known'} {path}"

MAX_EXAMPLES = int(os.environ.get("ARCHFUZZ_EXPORT_EXAMPLES", "8"))


def _where(result: dict) -> str:
    return f"stage {result['stage']} ({result['step']}): {result['symptom']}: {result['message']}"


@pytest.mark.slow
@settings(max_examples=min(settings.default.max_examples, MAX_EXAMPLES))
@given(layout=st_layouts.layouts(), seed=st_layouts.seeds())
def test_every_layout_exports_to_openvino_and_matches_at_cpu_f32(layout, seed):
    model = materialize(layout, dtype=torch.float32, seed=seed % 1000)
    vocab = layout.params(layout.source)["vocab"]
    seq = window_length(model, layout, 9)  # past 2 W + 8 tokens: a window the export drops shows
    ids = torch.randint(0, vocab, (2, seq), generator=torch.Generator().manual_seed(seed))
    report = compare(model, ids, devices=["CPU"], hints=["f32"], timeout=300)
    where = f"[{', '.join(layout.features())}]"
    if not report["ok"]:
        where += _record(report, layout, seed % 1000, seed, [2, seq])
    assert report["export"]["symptom"] == "ok", f"{where} {_where(report['export'])}"
    (row,) = report["rows"]
    assert row["rel_err"] is not None, f"{where} {_where(row)}"  # it compiled and ran
    if report["positions_compared"] == 0:
        event("parity: inconclusive (every position after a MoE near-tie)")
        return
    assert row["finite"] and row["rel_err"] <= GATE["rel_err"], f"{where} {_where(row)}"
    assert abs(row["dppl"]) <= dppl_bound(report["reference"]["ppl"]), f"{where} {_where(row)}"
    assert row["symptom"] == "ok", f"{where} {_where(row)}"
