"""The pre-release invariance gate: ``archfuzz gate`` / ``tox -e gate``.

1. campaign   -- a fixed-seed ``release``-profile campaign over every transform and recipe (reference
                 and library); any failure is reduced and written to the corpus;
2. corpus     -- the full corpus replay (regressions: a fixed finding failing again, a mutant no longer
                 caught, an expected refusal that now silently breaks);
3. checkpoint -- every recipe on the default real checkpoint (SmolLM2-135M): float64 proof on the
                 imported GraphModel and float32 on the transformers module itself;
4. extra checks registered in ``EXTRA_CHECKS`` by later stages: ``quantize-smoke`` (a tiny synthesized
   model through the quantizer with RTN, unfold checked in float64) and ``parity`` (PyTorch vs OpenVINO
   on CPU for a fixed set of synthesized layouts and, with the checkpoint stage, SmolLM2-135M); see
   :mod:`quant.gate_checks`.

Exit status 1 on any regression.  The report (``gate.json`` and ``gate.md``) says what ran, coverage per
feature, worst errors and new findings.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch

from fuzz.layout import atomic_write_text

from .campaign import run_campaign
from .corpus import DEFAULT_ROOT, load_entries, replay
from .registry import available

# name -> callable() returning {"ok": bool, ...}; later stages (quantization, parity) append theirs
EXTRA_CHECKS: dict[str, Callable[..., dict]] = {}


def register_default_checks() -> None:
    """Register the quantization smoke and the device-parity stage (imported lazily: they need auto-round
    and OpenVINO, which the campaign and the replay do not)."""
    from quant.gate_checks import parity_checks, quantize_smoke
    EXTRA_CHECKS.setdefault("quantize-smoke", lambda checkpoint: quantize_smoke())
    EXTRA_CHECKS.setdefault("parity", lambda checkpoint: parity_checks(checkpoint=checkpoint))


def gate_transforms() -> list[str]:
    return [f"{reg}:{n}" for reg, names in available().items() if reg in ("reference", "quant") for n in names]


def check_checkpoint(recipes: list[str] | None = None) -> dict:
    """Every recipe (default: ``quant.transforms.RECIPES``, in its order) on the default checkpoint."""
    import quant.transforms as T
    from fuzz.importer import import_model
    from quant.checkpoints import load_default_checkpoint

    from .oracle import verify
    model, _ = load_default_checkpoint(torch.float32)
    graph = import_model(model)  # checked against the transformers model first (fuzz.importer.check_import)
    checked = graph.layout.meta["import_check"]  # its floor ("exact" / "float32") goes into the report
    rows = []
    for recipe in (T.RECIPES if recipes is None else recipes):  # verify works on private copies: the checkpoint is loaded once
        proof = verify(T.get(recipe), graph, dtype=torch.float64, batch=1, seq=16, calib_batch=2)
        ships = verify(T.get(recipe, host="transformers"), model, dtype=torch.float32, batch=1, seq=16,
                       calib_batch=2)
        rows.append({"recipe": recipe, "float64": proof.status, "float64_rel": proof.max_rel_err,
                     "float32": ships.status, "float32_rel": ships.max_rel_err,
                     "ok": proof.ok and ships.ok})
    return {"ok": all(r["ok"] for r in rows), "rows": rows,
            "import_check": {k: checked[k] for k in ("floor", "max_rel_err", "bound", "lengths", "downcasts")}}


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
    out = Path(out)
    atomic_write_text(out / "gate.json", json.dumps(report, indent=1, sort_keys=True, default=str))
    atomic_write_text(out / "gate.md", gate_markdown(report))
    return report


def gate_markdown(report: dict) -> str:
    lines = [f"# archfuzz release gate: {'PASS' if report['ok'] else 'FAIL'} ({report['seconds']} s, seed "
             f"{report['seed']})", "", "| stage | ok | seconds |", "|---|---|---:|"]
    lines += [f"| {name} | {'yes' if s['ok'] else 'NO'} | {s['seconds']} |" for name, s in report["stages"].items()]
    c = report["stages"]["campaign"]
    lines += ["", f"## Campaign: {c['layouts_tried']} layouts", "",
              "| transform | examples | invariant | refused | failed | worst rel err |", "|---|---:|---:|---:|---:|---:|"]
    for name, st in c["per_transform"].items():
        s = st["status"]
        failed = sum(s.get(k, 0) for k in ("diverged", "error", "non-finite"))
        lines.append(f"| {name} | {st['examples']} | {s.get('invariant', 0)} | {s.get('refused', 0)} | {failed} | "
                     f"{st['worst_rel_err']:.2e} |")
    lines += ["", "Coverage: " + ", ".join(f"{k} {v}" for k, v in c["features"].items())]
    if c["new_findings"]:
        lines += ["", "New findings: " + ", ".join(c["new_findings"])]
    k = report["stages"]["corpus"]
    lines += ["", f"## Corpus: {k['entries']} entries", "", f"Outcomes: {k['outcomes']}"]
    lines += [f"- REGRESSION {r['entry']}: {r['outcome']}: {r['verdict']}" for r in k["regressions"]]
    lines += [f"- CORRUPT {b['path']}: {b['reason']}" for b in k["corrupt"]]
    if "checkpoint" in report["stages"]:
        lines += ["", "## SmolLM2-135M", ""]
        ic = report["stages"]["checkpoint"].get("import_check")
        if ic:
            lines += [f"Import checked against the transformers model: floor {ic['floor']}, max rel err "
                      f"{min(ic['max_rel_err'].values()):.2e} (bound {ic['bound']:.2e}) at {ic['lengths']} tokens.", ""]
        lines += ["| recipe | float64 (imported) | float32 (transformers) |", "|---|---|---|"]
        for r in report["stages"]["checkpoint"]["rows"]:
            lines.append(f"| {r['recipe']} | {r['float64']} {r['float64_rel']:.2e} | {r['float32']} {r['float32_rel']:.2e} |")
    if "quantize-smoke" in report["stages"]:
        lines += ["", "## Quantization smoke (tiny Llama, RTN W2 g16)", "",
                  "| recipe | ok | oracle gate | unfold rel (f64) | quantized | excluded |", "|---|---|---|---:|---:|---:|"]
        for r in report["stages"]["quantize-smoke"]["rows"]:
            if "error" in r:
                lines.append(f"| {r['recipe']} | NO | {r['error']} | | | |")
            else:
                lines.append(f"| {r['recipe']} | {'yes' if r['ok'] else 'NO'} | {r['gate']} | "
                             f"{r['unfold_rel_f64']:.2e} | {r['quantized']} | {r['excluded']} |")
    if "parity" in report["stages"]:
        lines += ["", "## Device parity (OpenVINO CPU vs PyTorch float32)", "",
                  "| subject | ok | export | f32 rel err | f32 dPPL | symptoms per hint (effective precision) |",
                  "|---|---|---|---:|---:|---|"]
        for r in report["stages"]["parity"]["rows"]:
            hints = ", ".join(f"{h}: {s} ({r['effective'][h]})" for h, s in r["symptoms"].items())
            rel = "-" if r["f32_rel_err"] is None else f"{r['f32_rel_err']:.2e}"
            dppl = "-" if r["f32_dppl"] is None else f"{r['f32_dppl']:+.1e}"
            lines.append(f"| {r['subject']} | {'yes' if r['ok'] else 'NO'} | {r['export']} | {rel} | {dppl} | {hints} |")
    return "\n".join(lines) + "\n"
