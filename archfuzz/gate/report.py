"""The gate's report as Markdown (``gate.md``): stage table, campaign per transform and coverage, corpus
outcomes, and the checkpoint, quantization-smoke and parity tables when those stages ran."""

from __future__ import annotations


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
