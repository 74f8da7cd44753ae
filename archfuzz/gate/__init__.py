"""The pre-release invariance gate: ``archfuzz gate`` / ``tox -e gate``.

1. campaign   -- a fixed-seed ``release``-profile campaign over every transform and recipe (reference
                 and library); any failure is reduced and written to the corpus;
2. corpus     -- the full corpus replay (regressions: a fixed finding failing again, a mutant no longer
                 caught, an expected refusal that now silently breaks);
3. checkpoint -- every recipe on the default real checkpoint (SmolLM2-135M): float64 proof on the
                 imported GraphModel and float32 on the transformers module itself
                 (:mod:`archfuzz.gate.checkpoint`);
4. extra checks registered in ``EXTRA_CHECKS``: ``quantize-smoke`` (a tiny synthesized model through the
   quantizer with RTN, unfold checked in float64; :mod:`archfuzz.gate.quantize_smoke`) and ``parity``
   (PyTorch vs OpenVINO on CPU for a fixed set of synthesized layouts and, with the checkpoint stage,
   SmolLM2-135M; :mod:`archfuzz.gate.device_parity`).

Exit status 1 on any regression.  The report (``gate.json`` and ``gate.md``, :mod:`archfuzz.gate.report`)
says what ran, coverage per feature, worst errors and new findings.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from fuzz.layout import write_report
from verifier.campaign import run_campaign
from verifier.corpus import DEFAULT_ROOT, load_entries, replay
from verifier.registry import available

from .checkpoint import check_checkpoint
from .report import gate_markdown

# name -> callable(checkpoint: bool) returning {"ok": bool, ...}; run after the checkpoint stage, in order
EXTRA_CHECKS: dict[str, Callable[..., dict]] = {}


def register_default_checks() -> None:
    """Register the quantization smoke and the device-parity stage (imported lazily: they need auto-round
    and OpenVINO, which the campaign and the replay do not)."""
    from .device_parity import parity_checks
    from .quantize_smoke import quantize_smoke
    EXTRA_CHECKS.setdefault("quantize-smoke", lambda checkpoint: quantize_smoke())
    EXTRA_CHECKS.setdefault("parity", lambda checkpoint: parity_checks(checkpoint=checkpoint))


def gate_transforms() -> list[str]:
    """Every reference and library transform, ``registry:name``."""
    return [f"{reg}:{n}" for reg, names in available().items() if reg in ("reference", "quant") for n in names]


def run_gate(*, out: str | Path, corpus: str | Path = DEFAULT_ROOT, max_examples: int | None = None,
             seed: int = 20261124, checkpoint: bool = True, progress: bool = True, extras: bool = True) -> dict:
    """Run every stage (``extras=False`` skips ``EXTRA_CHECKS``; ``checkpoint=False`` skips SmolLM2 in
    every stage) and write ``gate.json`` / ``gate.md`` under ``out``."""
    if extras:
        register_default_checks()
    started = time.perf_counter()
    report: dict = {"seed": seed, "stages": {}}
    t0 = time.perf_counter()
    campaign = run_campaign(gate_transforms(), profile="release", max_examples=max_examples, seed=seed,
                            progress=progress, corpus=corpus)
    report["stages"]["campaign"] = {"ok": campaign["ok"], "seconds": round(time.perf_counter() - t0, 1),
                                    "layouts_tried": campaign["layouts_tried"], "features": campaign["features"],
                                    "per_transform": campaign["per_transform"],
                                    "new_findings": [f.get("corpus_entry") for f in campaign["failures"]
                                                     if f.get("new_entry")],
                                    "failures": [{k: f[k] for k in ("transform", "status", "features")}
                                                 for f in campaign["failures"]]}
    t0 = time.perf_counter()
    entries, bad = load_entries(corpus)
    replays = [replay(e, update=True) for e in entries]
    report["stages"]["corpus"] = {
        "ok": not bad and not any(r.regression for r in replays), "seconds": round(time.perf_counter() - t0, 1),
        "entries": len(entries), "corrupt": [{"path": str(p), "reason": r} for p, r in bad],
        "outcomes": {o: sum(r.outcome == o for r in replays) for o in sorted({r.outcome for r in replays})},
        "regressions": [r.__dict__ for r in replays if r.regression]}
    if checkpoint:
        t0 = time.perf_counter()
        report["stages"]["checkpoint"] = {**check_checkpoint(), "seconds": round(time.perf_counter() - t0, 1)}
    for name, check in (EXTRA_CHECKS.items() if extras else ()):
        t0 = time.perf_counter()
        report["stages"][name] = {**check(checkpoint), "seconds": round(time.perf_counter() - t0, 1)}
    report["ok"] = all(stage["ok"] for stage in report["stages"].values())
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_report(out, "gate", report, gate_markdown(report))
    return report


__all__ = ["EXTRA_CHECKS", "check_checkpoint", "gate_markdown", "gate_transforms", "register_default_checks",
           "run_gate"]
