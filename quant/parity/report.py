"""The parity report as markdown (:func:`parity_markdown`) and JSON + markdown files (:func:`write_report`)."""

from __future__ import annotations

from pathlib import Path

from verifier.outcomes import Symptom

from .comparison import dppl_bound


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _export_line(ex: dict) -> str:
    if ex["symptom"] != Symptom.OK:
        first = ex["message"].splitlines()[0] if ex["message"] else ""
        return f"Export: {ex['symptom']} at {ex['stage']}/{ex['step']}: {first}"
    f = ex["figures"]
    return (f"Export: ok ({_fmt(f.get('torch_export_s'), '.2f')} s torch.export, {_fmt(f.get('convert_s'), '.2f')} s "
            f"convert, {f.get('ir_ops')} ops)")


def row_notes(rows: list[dict]) -> list[str]:
    """The lines under a parity table: why a row failed (symptom, stage, first line of the message), or that
    the plugin did not honour its precision hint."""
    lines = []
    for r in rows:
        if r["symptom"] != Symptom.OK:
            lines += ["", f"- {r['device']} {r['hint']}: {r['symptom']} at {r['stage']}: "
                          f"{r['message'].splitlines()[0] if r['message'] else ''}"]
        elif r.get("accepted") is False:
            lines += ["", f"- {r['device']} {r['hint']}: hint not honoured, the plugin ran "
                          f"{r['effective_precision']}"]
    return lines


def parity_markdown(report: dict) -> str:
    """The report as markdown: a header, the export line and one table row per device and hint."""
    gate = report["gate"]
    lines = [f"# OpenVINO parity: {report['subject']}", "",
             f"ids {tuple(report['ids_shape'])}; positions compared {report['positions_compared']}/"
             f"{report['positions']}; PyTorch f32 PPL {report['reference']['ppl']:.4f}; "
             f"openvino {report['versions']['openvino']}, torch {report['versions']['torch']}", "",
             _export_line(report["export"]), "",
             f"Gate ({gate['device']} {gate['hint']}: rel err <= {gate['rel_err']:g}, |dPPL| <= "
             f"{dppl_bound(report['reference']['ppl']):.4g}): "
             f"{'PASS' if gate['passed'] else 'FAIL'}", "",
             "| device | hint | effective | symptom | stage | rel err | top-1 | PPL | dPPL | compile s | infer s "
             "| gate |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["rows"]:
        gate_cell = "-" if not r["gated"] else ("pass" if r["passed"] else "FAIL")
        lines.append(f"| {r['device']} | {r['hint']} | {r.get('effective_precision') or '-'} | {r['symptom']} | "
                     f"{r['stage'] if r['symptom'] != Symptom.OK else '-'} | {_fmt(r['rel_err'], '.2e')} | "
                     f"{_fmt(r['top1'], '.4f')} | {_fmt(r['ppl'], '.4f')} | {_fmt(r['dppl'], '+.2e')} | "
                     f"{_fmt(r.get('compile_s'), '.2f')} | {_fmt(r.get('infer_s'), '.3g')} | {gate_cell} |")
    return "\n".join(lines + row_notes(report["rows"])) + "\n"


def write_report(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """``parity.json`` and ``parity.md`` in ``out_dir``, each written atomically."""
    from fuzz.layout import write_report as write_pair

    return write_pair(out_dir, "parity", report, parity_markdown(report))

