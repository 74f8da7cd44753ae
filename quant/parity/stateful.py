"""Device parity of a stateful artifact (``archfuzz quantize --lowbit``'s ``OUT/openvino/genai``): its IR with the
KV cache as OpenVINO states against the PyTorch fake-quantized reference, per device and precision hint
(:func:`compare_stateful`).

The reference runs the prompt ``ids`` (1, seq), then ``steps`` greedy tokens through its ``DynamicCache``; the
IR (one child process per device and hint, :func:`~quant.parity.runner.run_in_child`) is fed the same sequence,
teacher forced: the prompt as one prefill call, then each reference token as one cached decode call.  So every
row compares the same ``seq + steps`` logit vectors, and a low-precision row whose argmax parts from PyTorch's
does not change what the next rows see.  Per row: the relative error ``max|a - b| / max|b|`` of the prefill and
of each decode step, top-1 agreement, and the perplexity of the fed sequence (first token unscored) with its
``dPPL``.

The gate is the harness's (:data:`~quant.parity.GATE`, CPU ``f32`` only, the other hints are reported): relative
error <= 1e-5 and ``|dPPL| <= max(0.01, 1e-4 PPL)``, except that the relative bound is twice float32's own
error on the model when that is larger: ``floor = rel(PyTorch float32, PyTorch float64)`` on the same sequence
(two float32 implementations of one function differ by up to about twice that).  A degenerate RTN W2 model
reaches ~1e-4 there; SmolLM2 at W4 stays below 1e-5.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fuzz.errors import BadInput
from verifier.outcomes import Stage, Symptom

from .comparison import GATE, child_row, dppl_bound, judge_row, perplexity_of
from .device import HINTS, compile_config, compile_timed
from .report import row_notes
from .runner import TIMEOUT, enter_stage

KNOWN_DEVICES = ("CPU", "GPU", "NPU")  # listed in every report: present and run, or absent and said so


def forced_logits(model: nn.Module, ids: torch.Tensor, tokens: list[int], dtype=torch.float32) -> torch.Tensor:
    """PyTorch logits ``(seq + len(tokens), vocab)`` of ``model`` in ``dtype``: prefill ``ids`` (1, seq), then each
    of ``tokens`` as one step through its ``DynamicCache``."""
    from transformers import DynamicCache
    cache, out, n = DynamicCache(config=model.config), [], 0
    with torch.no_grad():
        for x in [ids] + [torch.tensor([[t]]) for t in tokens]:
            t = x.shape[1]
            res = model(input_ids=x, attention_mask=torch.ones(1, n + t, dtype=torch.int64),
                        position_ids=torch.arange(n, n + t)[None], cache=cache, use_cache=True)
            cache, n = res.cache, n + t
            out.append(res.logits[0].to(dtype))
    return torch.cat(out)


def stateful_job(xml: str, feed_path: str, prompt: int, device: str, config: dict, out_path: str) -> dict:
    """Child: compile the stateful IR on ``device`` with ``config``, reset its state, run the first ``prompt`` ids
    of the feed as one call and every later id as one cached call; save the logits."""
    import openvino as ov

    from quant.stateful import _infer
    feed = np.load(feed_path)
    compiled, compile_s, effective = compile_timed(ov.Core(), xml, device, config)
    enter_stage(Stage.EXECUTE, "prefill")
    req = compiled.create_infer_request()
    req.reset_state()
    t0 = time.perf_counter()
    logits = [_infer(compiled, req, feed[None, :prompt], 0).copy()]
    prefill_s = time.perf_counter() - t0
    enter_stage(Stage.EXECUTE, "cached decode")
    t0 = time.perf_counter()
    for i in range(prompt, feed.size):
        logits.append(_infer(compiled, req, feed[None, i:i + 1], i).copy())
    decode_s = time.perf_counter() - t0
    np.save(out_path, np.concatenate(logits).astype(np.float32, copy=False))
    return {"compile_s": round(compile_s, 3), "prefill_s": round(prefill_s, 4), "decode_s": round(decode_s, 4),
            "effective_precision": effective}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    from verifier.tolerance import relative_error
    return relative_error(a, b)[0]


def compare_stateful(model: nn.Module, folder: str | Path, ids: torch.Tensor, *, steps: int = 4,
                     devices: list[str] | None = None, hints=HINTS, timeout: float = TIMEOUT) -> dict:
    """The stateful IR ``folder/openvino_model.xml`` against ``model`` (its PyTorch reference, float32) on the prompt
    ``ids`` (1, seq) and ``steps`` greedy decode steps, per device (default: every one OpenVINO reports) and hint.

    Returns a report: ``rows`` (device, hint, config, effective precision, symptom, prefill / per-step / max
    relative error, top-1, PPL, dPPL, gate), ``reference`` (PPL, greedy tokens, float32's floor), ``gate``,
    ``devices`` (present / absent of :data:`KNOWN_DEVICES`) and ``ok`` (the CPU f32 row passed, no row failed)."""
    import openvino as ov

    from quant.parity.export import available_devices
    from quant.stateful import MODEL_XML, torch_greedy
    xml = Path(folder) / MODEL_XML
    if not xml.is_file():
        raise BadInput(f"{folder} is not a stateful artifact: {MODEL_XML} missing")
    if not torch.is_tensor(ids) or ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] < 2:
        raise BadInput(f"ids must be (1, seq >= 2), got {tuple(getattr(ids, 'shape', ()))}")
    for hint in hints:
        compile_config("CPU", hint)  # unknown hints are bad input before anything runs
    started = time.perf_counter()
    model = model.float().eval()
    ids = ids.long()
    _, tokens = torch_greedy(model, ids, steps)
    tokens = tokens[:steps]  # the tokens fed to the decode steps (the last greedy token is never fed)
    feed = torch.cat([ids[0], torch.tensor(tokens, dtype=torch.long)])
    ref = forced_logits(model, ids, tokens)
    import copy
    ref64 = forced_logits(copy.deepcopy(model).double(), ids, tokens, torch.float64)
    floor = _rel(ref, ref64)
    ref_ppl = perplexity_of(ref[None], feed[None])
    bound = max(GATE["rel_err"], 2 * floor)
    present = sorted(available_devices())
    run_on = devices or present
    unknown = [d for d in run_on if d not in present]
    if unknown:
        raise BadInput(f"devices {unknown} are not reported by OpenVINO here; devices: {present}")
    work = Path(tempfile.mkdtemp(prefix="archfuzz-stateful-parity-"))
    rows = []
    try:
        np.save(work / "feed.npy", feed.numpy())
        for device in run_on:
            for hint in hints:
                rows.append(_row(device, hint, xml, work, ids.shape[1], ref, feed, ref_ppl, bound, timeout))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gated = [r for r in rows if r["gated"]]
    report = {
        "subject": f"stateful artifact {folder}", "artifact": str(folder), "prompt_tokens": int(ids.shape[1]),
        "decode_steps": steps, "fed_tokens": tokens,
        "reference": {"ppl": ref_ppl, "greedy_tokens": tokens, "float32_floor": floor},
        "gate": {**GATE, "rel_err_bound": bound, "passed": bool(gated) and all(r["passed"] for r in gated)},
        "devices": {"present": present, "run": run_on,
                    "absent": [d for d in KNOWN_DEVICES if not any(p.split(".")[0] == d for p in present)]},
        "rows": rows, "versions": {"openvino": ov.__version__, "torch": torch.__version__,
                                   "python": sys.version.split()[0]},
        "seconds": round(time.perf_counter() - started, 2)}
    report["ok"] = report["gate"]["passed"] and all(r["symptom"] == Symptom.OK for r in rows)
    return report


def _row(device, hint, xml, work, prompt, ref, feed, ref_ppl, bound, timeout) -> dict:
    row, got = child_row(stateful_job, (str(xml), str(work / "feed.npy"), prompt), device, hint, work, timeout,
                         ref.shape, ("prefill_rel_err", "decode_rel_err", "rel_err", "top1", "ppl", "dppl"))
    if got is None:
        return row
    steps = [_rel(got[i:i + 1], ref[i:i + 1]) for i in range(prompt, ref.shape[0])]
    ppl = perplexity_of(got[None], feed[None])
    row.update(prefill_rel_err=_rel(got[:prompt], ref[:prompt]), decode_rel_err=steps, rel_err=_rel(got, ref),
               top1=(got.argmax(-1) == ref.argmax(-1)).double().mean().item(), ppl=ppl, dppl=ppl - ref_ppl,
               finite=bool(torch.isfinite(got).all()))
    return judge_row(row, [] if row["finite"] else ["OpenVINO logits are not finite"], bound, ref_ppl, "bound")


def stateful_parity_markdown(report: dict) -> str:
    def f(v, spec):
        return "-" if v is None else format(v, spec)
    g, ref, dev = report["gate"], report["reference"], report["devices"]
    lines = [f"# OpenVINO parity: {report['subject']}", "",
             f"{report['prompt_tokens']} prompt tokens, then {report['decode_steps']} decode steps through the KV "
             f"cache fed PyTorch's greedy tokens; PyTorch f32 PPL {ref['ppl']:.4f}; float32's own error on this "
             f"model (PyTorch f32 vs f64) {ref['float32_floor']:.2e}; openvino {report['versions']['openvino']}", "",
             f"Gate ({g['device']} {g['hint']}: rel err <= {g['rel_err_bound']:.3g} (1e-5, or twice float32's "
             f"floor), |dPPL| <= {dppl_bound(ref['ppl']):.4g}): {'PASS' if g['passed'] else 'FAIL'}", "",
             "| device | hint | effective | symptom | prefill rel err | max decode-step rel err | top-1 | PPL | dPPL | "
             "compile s | gate |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["rows"]:
        gate = "-" if not r["gated"] else ("pass" if r["passed"] else "FAIL")
        lines.append(f"| {r['device']} | {r['hint']} | {r.get('effective_precision') or '-'} | {r['symptom']} | "
                     f"{f(r['prefill_rel_err'], '.2e')} | {f(max(r['decode_rel_err'] or [0.0]) if r['decode_rel_err'] is not None else None, '.2e')} | "
                     f"{f(r['top1'], '.4f')} | {f(r['ppl'], '.4f')} | {f(r['dppl'], '+.2e')} | "
                     f"{f(r.get('compile_s'), '.2f')} | {gate} |")
    lines += row_notes(report["rows"])
    if dev["absent"]:
        lines += ["", f"Not run: {', '.join(dev['absent'])} (OpenVINO reports only {', '.join(dev['present'])} here)."]
    return "\n".join(lines) + "\n"


def reference_for(folder: str | Path, checkpoint: str | Path | None = None):
    """``(model, tokenizer, checkpoint path)``: the PyTorch reference of the artifact at ``folder`` from the plain
    checkpoint ``archfuzz quantize`` saved (default: ``folder/../..``, the ``OUT`` of ``OUT/openvino/genai``), with
    the embedding table / output head stored as the artifact stores them (``archfuzz_artifact.json``).  For
    BBT-spectral the checkpoint is the unfolded model, the same function as W^ with its rotation online."""
    from quant.checkpoints import load_checkpoint
    from quant.lowbit import table_codes
    folder = Path(folder)
    meta_path = folder / "archfuzz_artifact.json"
    if not meta_path.is_file():
        raise BadInput(f"{folder}: no archfuzz_artifact.json (not written by `archfuzz quantize --lowbit`)")
    meta = json.loads(meta_path.read_text())
    if checkpoint is None:
        checkpoint = folder.parent.parent
        if not (checkpoint / "archfuzz_quantize.json").is_file():
            raise BadInput(f"{folder}: no quantized checkpoint at {checkpoint} (OUT of `archfuzz quantize --lowbit`); "
                           "give the reference with --checkpoint")
    model, tok = load_checkpoint(checkpoint)
    art_cfg = json.loads((folder / "config.json").read_text())
    for key in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
        if art_cfg.get(key) != getattr(model.config, key, None):
            raise BadInput(f"{checkpoint} is not the reference of {folder}: config {key} "
                           f"{getattr(model.config, key, None)!r} vs the artifact's {art_cfg.get(key)!r}")
    tables = meta.get("tables") or {}
    params = dict(model.named_parameters())
    for name in tables.get("tables", {}):
        if name not in params:
            raise BadInput(f"{checkpoint}: the artifact stores table {name}, the checkpoint has no such weight")
        with torch.no_grad():
            params[name].copy_(torch.from_numpy(table_codes(params[name], tables["mode"]).dequantized()))
    return model.eval(), tok, Path(checkpoint)
