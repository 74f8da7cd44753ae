"""PyTorch float32 vs OpenVINO: the reference (with MoE near-ties set aside), the figures per device and
hint (relative error, top-1, perplexity, dPPL) and the gate (:data:`GATE`, :func:`dppl_bound`): :func:`compare`."""

from __future__ import annotations

import copy
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fuzz.errors import BadInput
from fuzz.materialize import GraphModel
from verifier.outcomes import Stage, Symptom

from .device import HINTS, _run_job, compile_config
from .export import ExportWrapper, export_job
from .runner import TIMEOUT, run_in_child

GATE = {"device": "CPU", "hint": "f32", "rel_err": 1e-5, "dppl": 0.01, "dppl_rel": 1e-4}


def dppl_bound(ref_ppl: float) -> float:
    """The |dPPL| gate at reference perplexity ``ref_ppl``: ``max(0.01, 1e-4 * PPL)``.

    0.01 is the bound for a trained model on text (PPL ~ 10-100).  A synthesized layout has random weights
    and a PPL of hundreds to 10^5+ on random ids, where a fixed 0.01 would ask for a relative agreement of
    1e-7, far below float32 (its logits are gated at 1e-5 relative); above PPL 100 the bound is relative.
    """
    return max(GATE["dppl"], GATE["dppl_rel"] * ref_ppl)

TIE_MARGIN = 1e-4  # router top-k margins below this (probability units) are near-ties


def _reference(model: nn.Module, ids: torch.Tensor, tie_margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch logits of ``model`` on ``ids`` and the mask of positions no MoE near-tie precedes."""
    from verifier.oracle import comparable_positions, topk_recorder

    with torch.no_grad(), topk_recorder(model) as rec:
        if isinstance(model, GraphModel):
            logits = model(ids)
        else:
            logits = ExportWrapper(model)(ids)
    mask = comparable_positions(model, ids, tie_margin, rec.margins)
    if isinstance(model, GraphModel):  # a sparse-attention indexer's exact tie at its top-k: another
        # implementation's TopK may read another tied key (from there on, as a near-tie)
        for node in model.layout.of_op("index_topk"):
            ties = model.nodes[node].exact_ties
            if ties is not None and ties.shape == mask.shape:
                mask &= ~(ties.cpu().cumsum(dim=1) > 0)
    return logits.detach().float(), mask


def perplexity_of(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """``exp(mean NLL)`` of ``ids`` under teacher forcing: position ``t`` predicts ``t + 1``, the first token
    is not scored; ``mask`` (batch, seq) drops predictions made at masked positions, and a next id past the
    logits' vocabulary (read, never predicted: ``extra_input_id``, Moshi's initial token) is not scored."""
    lp = F.log_softmax(logits[:, :-1].double(), dim=-1)
    target = ids[:, 1:]
    predicted = target < lp.shape[-1]
    nll = -lp.gather(-1, target.clamp(max=lp.shape[-1] - 1)[..., None]).squeeze(-1)
    keep = (mask[:, :-1].bool() if mask is not None else torch.ones_like(nll, dtype=torch.bool)) & predicted
    return math.exp(nll[keep].mean().item()) if keep.any() else float("nan")


def _figures(out: torch.Tensor, ref: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, ref_ppl: float) -> dict:
    from verifier.tolerance import relative_error

    a, b = out[mask], ref[mask]
    rel, abs_ = relative_error(a, b)
    ppl = perplexity_of(out, ids, mask)
    return {"finite": bool(torch.isfinite(out).all()), "rel_err": rel, "abs_err": abs_,
            "top1": (a.argmax(-1) == b.argmax(-1)).double().mean().item(), "ppl": ppl, "dppl": ppl - ref_ppl}


def as_float32(model: nn.Module) -> nn.Module:
    param = next(model.parameters(), None)
    return model if param is None or param.dtype == torch.float32 else copy.deepcopy(model).float()


def _subject_name(model: nn.Module) -> str:
    if isinstance(model, GraphModel):
        return f"GraphModel {model.layout.meta.get('name', 'layout')} ({len(model.layout.order)} nodes)"
    return type(model).__name__


def compare(model: nn.Module, ids: torch.Tensor, *, devices: list[str] | None = None,
            hints: tuple[str, ...] | list[str] = HINTS, timeout: float = TIMEOUT,
            workdir: str | Path | None = None, tie_margin: float = TIE_MARGIN) -> dict:
    """PyTorch float32 vs OpenVINO on ``ids`` for every device (default: all OpenVINO reports) and hint.

    Returns a report dict: ``export`` (a :class:`ChildResult` dict), ``rows`` (one per device and hint:
    stage, symptom, message, precision asked / effective, rel_err, abs_err, top1, ppl, dppl, timings,
    gate), ``reference``, ``gate`` and ``ok`` (the CPU f32 row passed the gate and no row has a symptom).
    ``workdir`` keeps the IR, the child logs and the logits (a temporary folder otherwise).
    """
    if not isinstance(model, nn.Module):
        raise BadInput(f"compare expects a torch.nn.Module, got {type(model).__name__}")
    if not torch.is_tensor(ids) or ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32) or ids.shape[1] < 2:
        raise BadInput(f"ids must be a (batch, seq >= 2) integer tensor, got {getattr(ids, 'shape', ids)}")
    for hint in hints:
        compile_config("CPU", hint)  # unknown hints are bad input before anything runs
    ids = ids.long()
    model = as_float32(model).eval()
    started = time.perf_counter()
    t0 = time.perf_counter()
    ref, mask = _reference(model, ids, tie_margin)
    ref_s = time.perf_counter() - t0
    if ref.dim() != 3 or tuple(ref.shape[:2]) != tuple(ids.shape):
        raise BadInput(f"{_subject_name(model)} is not a causal LM: logits of shape {tuple(ref.shape)} for ids "
                       f"{tuple(ids.shape)}, expected (batch, seq, vocab)")
    if not torch.isfinite(ref).all():
        raise BadInput("the PyTorch float32 reference logits are not finite: nothing to compare against")
    ref_ppl = perplexity_of(ref, ids, mask)

    tmp = None
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="archfuzz-parity-")
        work = Path(tmp)
    else:
        work = Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
    try:
        model_path, ids_path, xml = work / "model.pt", work / "ids.npy", work / "ir" / "model.xml"
        torch.save(ExportWrapper(model), model_path)
        np.save(ids_path, ids.numpy())
        exported = run_in_child(export_job, str(model_path), str(ids_path), str(xml), stage=Stage.EXPORT,
                                timeout=timeout, log=work / "export.log")
        model_path.unlink()  # the IR is what the other children read
        if tmp is not None:
            exported.figures.pop("ir", None)  # deleted below
        rows = []
        if exported.ok:
            found = list(exported.figures.get("devices", {})) or ["CPU"]
            for device in devices or found:
                for hint in hints:
                    rows.append(_row(device, hint, xml, ids_path, work, ids, ref, mask, ref_ppl, timeout))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    gated = [r for r in rows if r["gated"]]
    report = {
        "subject": _subject_name(model), "ids_shape": list(ids.shape), "tie_margin": tie_margin,
        "positions": int(mask.numel()), "positions_compared": int(mask.sum()),
        "reference": {"ppl": ref_ppl, "seconds": round(ref_s, 4)},
        "gate": {**GATE, "passed": bool(gated) and all(r["passed"] for r in gated)},
        "export": exported.to_dict(), "rows": rows,
        "versions": {"torch": torch.__version__, "openvino": exported.figures.get("openvino"),
                     "python": sys.version.split()[0]},
        "seconds": round(time.perf_counter() - started, 2),
    }
    report["ok"] = exported.ok and report["gate"]["passed"] and all(r["symptom"] == Symptom.OK for r in rows)
    return report


def child_row(job, head: tuple, device: str, hint: str, work: Path, timeout: float, ref_shape: tuple,
              figures: tuple[str, ...]) -> tuple[dict, torch.Tensor | None]:
    """Run ``job(*head, device, config, logits_path)`` in a child (:func:`~.runner.run_in_child`) for ``device``
    and ``hint``: the row's common part (device, hint, config, gated, the child's stage / symptom / timings, each of
    ``figures`` None, whether the plugin honoured the hint) and the logits it saved, None where the child failed or
    their shape is not ``ref_shape`` (the row says why)."""
    config = compile_config(device, hint)
    tag = f"{device}-{hint}".replace(".", "_")
    logits_path = work / f"logits-{tag}.npy"
    res = run_in_child(job, *head, device, config, str(logits_path), stage=Stage.COMPILE, timeout=timeout,
                       log=work / f"{tag}.log")
    gated = device == GATE["device"] and hint == GATE["hint"]
    row = {"device": device, "hint": hint, "config": config, "gated": gated, "passed": None if not gated else False,
           **{k: v for k, v in res.to_dict().items() if k != "figures"}, **res.figures, **dict.fromkeys(figures)}
    if not res.ok:
        return row, None
    out = torch.from_numpy(np.load(logits_path))
    logits_path.unlink()
    if tuple(out.shape) != tuple(ref_shape):
        row.update(symptom=Symptom.INCONSISTENCY, stage=Stage.EXECUTE,
                   message=f"OpenVINO logits have shape {tuple(out.shape)}, PyTorch {tuple(ref_shape)}")
        return row, None
    row["accepted"] = hint == "default" or row.get("effective_precision") in (None, hint)
    return row, out


def judge_row(row: dict, problems: list[str], rel_bound: float, ref_ppl: float, what: str = "gate",
              compared: bool = True) -> dict:
    """A gated row passes with its relative error within ``rel_bound`` and its dPPL within :func:`dppl_bound`
    (not when nothing was ``compared``: it stays unpassed); a row with ``problems`` (those found before, then
    the gate's) is an INCONSISTENCY naming them."""
    if row["gated"] and compared:
        if not row["rel_err"] <= rel_bound:
            problems.append(f"logits differ by {row['rel_err']:.3e} relative ({what} {rel_bound:.3g})")
        bound = dppl_bound(ref_ppl)
        if not abs(row["dppl"]) <= bound:
            problems.append(f"|dPPL| = {abs(row['dppl']):.4g} (gate {bound:.4g} at PPL {ref_ppl:.4g})")
        row["passed"] = not problems
    if problems:
        row.update(symptom=Symptom.INCONSISTENCY, stage=Stage.EXECUTE, message="; ".join(problems))
    return row


def _row(device, hint, xml, ids_path, work, ids, ref, mask, ref_ppl, timeout) -> dict:
    row, out = child_row(_run_job, (str(xml), str(ids_path)), device, hint, work, timeout, ref.shape,
                         ("rel_err", "abs_err", "top1", "ppl", "dppl"))
    if out is None:
        return row
    row.update(_figures(out, ref, ids, mask, ref_ppl))
    if not mask.any():
        row["message"] = "every position follows a MoE near-tie: nothing compared"
    return judge_row(row, [] if row["finite"] else ["OpenVINO logits are not finite"], GATE["rel_err"], ref_ppl,
                     compared=bool(mask.any()))

