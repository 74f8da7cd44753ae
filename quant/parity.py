"""Device parity: PyTorch float32 vs OpenVINO, per device and precision hint, with crashes as findings.

The walk (:func:`compare`):

1. **Reference.**  The model (a synthesized or imported :class:`~fuzz.materialize.GraphModel`, possibly
   transformed, or a transformers causal LM) runs in PyTorch float32 on the token ids.
2. **Export** (child process).  :func:`export_ir`: ``torch.export.export`` of :class:`ExportWrapper`
   (token ids in, logits out), ``openvino.convert_model`` of the ExportedProgram, ``openvino.save_model``
   with ``compress_to_fp16=False`` (the default would store float16 weights and lose parity).
3. **Compile + execute** (one child process per device and hint).  Every device OpenVINO reports (CPU
   always; GPU / NPU where present) with the precision hints ``f32`` (plus ``EXECUTION_MODE_HINT=ACCURACY``
   and, on CPU, an f32 KV cache and no dynamic quantization), ``bf16`` and ``f16``; ``default`` (no
   config: what a deployment gets) on request.  The precision the plugin actually chose is read back
   from the compiled model: on a CPU without native f16 the ``f16`` hint silently runs bf16.
4. **Compare** per row: logits relative error ``max|a-b| / max|b|``, top-1 agreement, perplexity of the
   token ids under both (teacher forcing, first token not scored) and ``dPPL``.  The gate: CPU ``f32``
   within :data:`GATE` (relative error <= 1e-5, ``|dPPL|`` <= 0.01, relative 1e-4 above PPL 100: see
   :func:`dppl_bound`); lower-precision hints are reported,
   not gated.  Positions after a MoE top-k near-tie of the reference (margin below ``tie_margin``) are
   set aside: rounding may legitimately flip the routing there.

Every child runs under :func:`run_in_child` (multiprocessing ``spawn``, a timeout, stdout/stderr to a
log): an exception, a segfault, another crash or a hang becomes a :class:`ChildResult` with its
``stage`` (``export`` / ``compile`` / ``execute``) and ``symptom`` instead of a dead campaign; wrong
numbers are the symptom ``inconsistency`` (stage ``execute``).

Export-friendly formulation.  :class:`ExportWrapper` calls a GraphModel's node modules along its own
execution plan instead of ``GraphModel.forward``, for two reasons found by exporting (both reported
upstream, neither changes GraphModel's behaviour):

* ``GraphModel.forward`` checks the token range with ``if ids.min() < 0 ...``: a data-dependent branch
  that ``torch.export`` refuses (``GuardOnDataDependentSymNode``).  The reference run still checks it.
* :class:`~fuzz.materialize.Experts` loops over ``nonzero(routing weights)`` rows (data-dependent
  shapes, ``if rows.numel() == 0``).  The wrapper computes the experts densely instead, every expert on
  every token weighted by the (scattered, mostly zero) routing weights: equal in exact arithmetic, and
  since the reference uses the loop, the parity figures also check that the two agree.

A transformers MoE model (Qwen3-MoE, Mixtral, Qwen2-MoE) fails ``torch.export`` the same way in its eager
experts loop; :func:`export_ir` switches it to transformers' own ``batched_mm`` experts implementation
for the export (weights gathered per token and top-k slot: static shapes) and back afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import faulthandler
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fuzz.errors import BadInput
from fuzz.materialize import ACT, Experts, GraphModel

STAGES = ("export", "compile", "execute")
SYMPTOMS = ("ok", "exception", "segfault", "crash", "timeout", "inconsistency")
HINTS = ("f32", "bf16", "f16")  # "default" (no config at all) may be asked for too
HINT_CHOICES = HINTS + ("default",)  # every hint that may be asked for (the CLI's --hint choices)
GATE = {"device": "CPU", "hint": "f32", "rel_err": 1e-5, "dppl": 0.01, "dppl_rel": 1e-4}


def dppl_bound(ref_ppl: float) -> float:
    """The |dPPL| gate at reference perplexity ``ref_ppl``: ``max(0.01, 1e-4 * PPL)``.

    0.01 is the bound for a trained model on text (PPL ~ 10-100).  A synthesized layout has random weights
    and a PPL of hundreds to 10^5+ on random ids, where a fixed 0.01 would ask for a relative agreement of
    1e-7, far below float32 (its logits are gated at 1e-5 relative); above PPL 100 the bound is relative.
    """
    return max(GATE["dppl"], GATE["dppl_rel"] * ref_ppl)

TIE_MARGIN = 1e-4  # router top-k margins below this (probability units) are near-ties
TIMEOUT = 600.0


# ====================================================================== the child-process runner
@dataclass
class ChildResult:
    """What one child reported: ``symptom`` ``ok`` with ``figures``, or where and how it failed."""

    stage: str
    symptom: str
    message: str = ""
    figures: dict = field(default_factory=dict)
    step: str | None = None  # finer than the stage, e.g. "ov.convert_model"
    seconds: float = 0.0
    exitcode: int | None = None

    @property
    def ok(self) -> bool:
        return self.symptom == "ok"

    def to_dict(self) -> dict:
        return asdict(self)


_CONN = None  # the child's end of the pipe to its parent (None in the parent: enter_stage is a no-op)


def enter_stage(stage: str, step: str | None = None) -> None:
    """Tell the parent which stage (and step) this child is in, so a crash or hang is attributed to it."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {STAGES}")
    if _CONN is not None:
        _CONN.send(("stage", stage, step))


def _child_main(conn, log: str, stage: str, fn, args: tuple, kwargs: dict) -> None:
    global _CONN
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    faulthandler.enable()  # a segfault prints the Python stack into the log
    _CONN = conn
    try:
        enter_stage(stage)
        out = fn(*args, **kwargs)
        conn.send(("done", out if isinstance(out, dict) else {} if out is None else {"value": out}))
    except BaseException as exc:  # everything is a finding here, KeyboardInterrupt included
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        conn.close()


def _tail(path: str, limit: int = 2000) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip()
    except OSError:
        return ""
    return text[-limit:]


def _stop(proc) -> None:
    proc.terminate()
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


def run_in_child(fn, *args, stage: str = "export", timeout: float = TIMEOUT, log: str | Path | None = None,
                 **kwargs) -> ChildResult:
    """Run ``fn(*args, **kwargs)`` in a fresh ``spawn`` process, at most ``timeout`` seconds.

    ``fn`` (picklable, e.g. a module-level function) may call :func:`enter_stage`; it starts in
    ``stage``.  Its return value (a dict) becomes ``figures``.  Symptoms: ``exception`` (message and
    traceback), ``segfault`` (killed by SIGSEGV), ``crash`` (another signal, or an exit without a result),
    ``timeout`` (killed); the message then ends with the tail of the child's stdout/stderr (``log``).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {STAGES}")
    own_log = log is None
    if own_log:
        fd, log = tempfile.mkstemp(prefix="archfuzz-child-", suffix=".log")
        os.close(fd)
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(send, str(log), stage, fn, args, kwargs), daemon=True)
    result = ChildResult(stage=stage, symptom="crash")
    started = time.perf_counter()
    proc.start()
    send.close()
    outcome = None
    try:
        while outcome is None:
            remaining = started + timeout - time.perf_counter()
            if remaining <= 0 or not recv.poll(remaining):
                outcome = "timeout"
                break
            try:
                msg = recv.recv()
            except EOFError:  # the child died without a word
                outcome = "died"
                break
            if msg[0] == "stage":
                result.stage, result.step = msg[1], msg[2]
            elif msg[0] == "done":
                outcome, result.symptom, result.figures = "done", "ok", msg[1]
            else:
                outcome, result.symptom = "error", "exception"
                result.message = f"{msg[1]}\n{msg[2]}"
    finally:
        result.seconds = round(time.perf_counter() - started, 3)
        if outcome in ("done", "error", "died"):
            proc.join(10)
        if proc.is_alive():
            _stop(proc)
        recv.close()
    result.exitcode = proc.exitcode
    if outcome == "timeout":
        result.symptom = "timeout"
        result.message = f"no result after {timeout:g} s (killed)"
    elif outcome == "died":
        code = proc.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            result.symptom = "segfault" if -code == signal.SIGSEGV else "crash"
            result.message = f"killed by {name}"
        else:
            result.message = f"exited with status {code} without a result"
    if not result.ok:
        tail = _tail(str(log))
        if tail and outcome != "error":
            result.message += f"\n--- child output (tail) ---\n{tail}"
    if own_log:
        os.unlink(log)
    return result


# ====================================================================== export
def _dense_experts(module: Experts, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The fused experts of ``module`` with no data-dependent shapes: every expert on every token,
    ``sum_e w_e * down_e(act(gate_e x) * up_e x)`` (``w_e = 0`` for the experts not routed to)."""
    act = ACT[module.p["act"]]
    gate, up = torch.einsum("...d,efd->...ef", x, module.gate_up_proj).chunk(2, dim=-1)
    y = torch.einsum("...ei,edi->...ed", act(gate) * up, module.down_proj)
    return (y * weights[..., None]).sum(dim=-2)


def _is_hf(model: nn.Module) -> bool:
    return hasattr(model, "config") and hasattr(model, "generation_config")


class ExportWrapper(nn.Module):
    """``input_ids (batch, seq) -> logits (batch, seq, vocab)`` for ``torch.export``.

    A GraphModel runs its own node modules along its execution plan (no data-dependent token check,
    dense experts: see the module docstring); a transformers model is called with ``use_cache=False``
    and only its logits are returned; any other module is called as ``model(ids)``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        m = self.model
        if isinstance(m, GraphModel):
            values: dict[str, torch.Tensor] = {}
            for node, inputs, done in m._plan:
                args = [values[i] for i in inputs] if inputs else [input_ids]
                module = m.nodes[node]
                values[node] = _dense_experts(module, *args) if isinstance(module, Experts) else module(*args)
                for i in done:
                    del values[i]
            return values[m.layout.sink]
        out = m(input_ids=input_ids, use_cache=False) if _is_hf(m) else m(input_ids)
        return out.logits if hasattr(out, "logits") else out


@contextlib.contextmanager
def _static_experts(model: nn.Module):
    """A transformers MoE runs transformers' ``batched_mm`` experts inside the block; yields its name or None."""
    config = getattr(model, "config", None)
    before = getattr(config, "_experts_implementation", None)
    switch = _is_hf(model) and before not in (None, "batched_mm") and hasattr(model, "set_experts_implementation")
    if switch:
        model.set_experts_implementation("batched_mm")
        switch = config._experts_implementation == "batched_mm"  # a dense model keeps its "eager"
    try:
        yield "batched_mm" if switch else None
    finally:
        if switch:
            model.set_experts_implementation(before)


def export_ir(model: nn.Module, ids: torch.Tensor, path: str | Path) -> dict:
    """Export ``model`` on ``ids`` through ``torch.export`` to OpenVINO IR at ``path`` (``.xml`` + ``.bin``,
    float32 weights).  Returns timings and the IR's size; reports its steps with :func:`enter_stage`."""
    import openvino as ov

    wrapper = model if isinstance(model, ExportWrapper) else ExportWrapper(model)
    wrapper.eval()
    figures = {}
    enter_stage("export", "torch.export")
    t0 = time.perf_counter()
    with torch.no_grad(), _static_experts(wrapper.model) as experts:
        program = torch.export.export(wrapper, (ids,))
    t1 = time.perf_counter()
    if experts:
        figures["experts_implementation"] = experts
    enter_stage("export", "ov.convert_model")
    ov_model = ov.convert_model(program)
    t2 = time.perf_counter()
    enter_stage("export", "ov.save_model")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(path), compress_to_fp16=False)
    t3 = time.perf_counter()
    figures.update(torch_export_s=round(t1 - t0, 3), convert_s=round(t2 - t1, 3), save_s=round(t3 - t2, 3),
                   ir_ops=len(ov_model.get_ops()), ir_bytes=path.with_suffix(".bin").stat().st_size,
                   ir=str(path))
    return figures


def _devices() -> dict:
    """``{device: {"name", "capabilities"}}`` for every device OpenVINO reports."""
    import openvino as ov

    core = ov.Core()
    out = {}
    for dev in core.available_devices:
        info = {}
        for key, prop in (("name", "FULL_DEVICE_NAME"), ("capabilities", "OPTIMIZATION_CAPABILITIES")):
            try:
                info[key] = core.get_property(dev, prop)
            except Exception as exc:  # a plugin that cannot answer is still listed
                info[key] = f"unavailable: {exc}"
        out[dev] = info
    return out


def _export_job(model_path: str, ids_path: str, xml_path: str) -> dict:
    """Child: load the pickled wrapper, export it, and list OpenVINO's devices."""
    import openvino as ov

    enter_stage("export", "load model")
    wrapper = torch.load(model_path, weights_only=False)
    ids = torch.from_numpy(np.load(ids_path))
    figures = export_ir(wrapper, ids, xml_path)
    figures["devices"] = _devices()
    figures["openvino"] = ov.__version__
    return figures


# ====================================================================== compile and execute
def compile_config(device: str, hint: str) -> dict:
    """The compile config of ``hint`` on ``device``: ``f32`` pins accuracy (and, on CPU, an f32 KV cache and
    no dynamic quantization); ``bf16`` / ``f16`` set only the hint; ``default`` sets nothing."""
    if hint == "default":
        return {}
    if hint not in HINTS:
        raise BadInput(f"unknown precision hint {hint!r}; hints: {HINT_CHOICES}")
    cfg = {"INFERENCE_PRECISION_HINT": hint}
    if hint == "f32":
        cfg["EXECUTION_MODE_HINT"] = "ACCURACY"
        if device.startswith("CPU"):
            cfg.update(KV_CACHE_PRECISION="f32", DYNAMIC_QUANTIZATION_GROUP_SIZE="0")
    return cfg


def _run_job(xml_path: str, ids_path: str, device: str, config: dict, out_path: str) -> dict:
    """Child: compile the IR on ``device`` with ``config``, run it twice on the ids, save the logits."""
    import openvino as ov

    ids = np.load(ids_path)
    enter_stage("compile", "read_model")
    core = ov.Core()
    ov_model = core.read_model(xml_path)
    ov_model.reshape({ov_model.input(0): ov.PartialShape(list(ids.shape))})  # static: NPUs want it
    enter_stage("compile", "compile_model")
    t0 = time.perf_counter()
    compiled = core.compile_model(ov_model, device, config)
    compile_s = time.perf_counter() - t0
    try:
        effective = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    except Exception:  # a plugin without the property
        effective = None
    enter_stage("execute", "infer")
    request = compiled.create_infer_request()
    t0 = time.perf_counter()
    logits = request.infer({0: ids})[compiled.output(0)]
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits = request.infer({0: ids})[compiled.output(0)].copy()
    again = time.perf_counter() - t0
    np.save(out_path, logits.astype(np.float32, copy=False))
    return {"compile_s": round(compile_s, 3), "first_infer_s": round(first, 4), "infer_s": round(again, 4),
            "effective_precision": effective}


# ====================================================================== compare
def _reference(model: nn.Module, ids: torch.Tensor, tie_margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch logits of ``model`` on ``ids`` and the mask of positions no MoE near-tie precedes."""
    from verifier.oracle import comparable_positions, topk_recorder

    with torch.no_grad(), topk_recorder(model) as rec:
        if isinstance(model, GraphModel):
            logits = model(ids)
        else:
            logits = ExportWrapper(model)(ids)
    return logits.detach().float(), comparable_positions(model, ids, tie_margin, rec.margins)


def perplexity_of(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """``exp(mean NLL)`` of ``ids`` under teacher forcing: position ``t`` predicts ``t + 1``, the first token
    is not scored; ``mask`` (batch, seq) drops predictions made at masked positions."""
    lp = F.log_softmax(logits[:, :-1].double(), dim=-1)
    nll = -lp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    keep = mask[:, :-1] if mask is not None else torch.ones_like(nll, dtype=torch.bool)
    return math.exp(nll[keep].mean().item()) if keep.any() else float("nan")


def _figures(out: torch.Tensor, ref: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, ref_ppl: float) -> dict:
    from verifier.tolerance import relative_error

    a, b = out[mask], ref[mask]
    rel, abs_ = relative_error(a, b)
    ppl = perplexity_of(out, ids, mask)
    return {"finite": bool(torch.isfinite(out).all()), "rel_err": rel, "abs_err": abs_,
            "top1": (a.argmax(-1) == b.argmax(-1)).double().mean().item(), "ppl": ppl, "dppl": ppl - ref_ppl}


def _as_float32(model: nn.Module) -> nn.Module:
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
    model = _as_float32(model).eval()
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
        exported = run_in_child(_export_job, str(model_path), str(ids_path), str(xml), stage="export",
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
    report["ok"] = exported.ok and report["gate"]["passed"] and all(r["symptom"] == "ok" for r in rows)
    return report


def _row(device, hint, xml, ids_path, work, ids, ref, mask, ref_ppl, timeout) -> dict:
    config = compile_config(device, hint)
    tag = f"{device}-{hint}".replace(".", "_")
    logits_path = work / f"logits-{tag}.npy"
    res = run_in_child(_run_job, str(xml), str(ids_path), device, config, str(logits_path), stage="compile",
                       timeout=timeout, log=work / f"{tag}.log")
    gated = device == GATE["device"] and hint == GATE["hint"]
    row = {"device": device, "hint": hint, "config": config, "gated": gated, "passed": None if not gated else False,
           **{k: v for k, v in res.to_dict().items() if k != "figures"}, **res.figures,
           "rel_err": None, "abs_err": None, "top1": None, "ppl": None, "dppl": None}
    if not res.ok:
        return row
    out = torch.from_numpy(np.load(logits_path))
    logits_path.unlink()
    if tuple(out.shape) != tuple(ref.shape):
        row.update(symptom="inconsistency", stage="execute",
                   message=f"OpenVINO logits have shape {tuple(out.shape)}, PyTorch {tuple(ref.shape)}")
        return row
    row.update(_figures(out, ref, ids, mask, ref_ppl))
    row["accepted"] = hint == "default" or row.get("effective_precision") in (None, hint)
    problems = []
    if not row["finite"]:
        problems.append("OpenVINO logits are not finite")
    if not mask.any():
        row["message"] = "every position follows a MoE near-tie: nothing compared"
    elif gated:
        if not row["rel_err"] <= GATE["rel_err"]:
            problems.append(f"logits differ by {row['rel_err']:.3e} relative (gate {GATE['rel_err']:g})")
        bound = dppl_bound(ref_ppl)
        if not abs(row["dppl"]) <= bound:
            problems.append(f"|dPPL| = {abs(row['dppl']):.4g} (gate {bound:.4g} at PPL {ref_ppl:.4g})")
        row["passed"] = not problems
    if problems:
        row.update(symptom="inconsistency", stage="execute", message="; ".join(problems))
    return row


# ====================================================================== report
def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _export_line(ex: dict) -> str:
    if ex["symptom"] != "ok":
        first = ex["message"].splitlines()[0] if ex["message"] else ""
        return f"Export: {ex['symptom']} at {ex['stage']}/{ex['step']}: {first}"
    f = ex["figures"]
    return (f"Export: ok ({_fmt(f.get('torch_export_s'), '.2f')} s torch.export, {_fmt(f.get('convert_s'), '.2f')} s "
            f"convert, {f.get('ir_ops')} ops)")


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
                     f"{r['stage'] if r['symptom'] != 'ok' else '-'} | {_fmt(r['rel_err'], '.2e')} | "
                     f"{_fmt(r['top1'], '.4f')} | {_fmt(r['ppl'], '.4f')} | {_fmt(r['dppl'], '+.2e')} | "
                     f"{_fmt(r.get('compile_s'), '.2f')} | {_fmt(r.get('infer_s'), '.3g')} | {gate_cell} |")
    for r in report["rows"]:
        if r["symptom"] != "ok":
            lines += ["", f"- {r['device']} {r['hint']}: {r['symptom']} at {r['stage']}: "
                          f"{r['message'].splitlines()[0] if r['message'] else ''}"]
        elif r.get("accepted") is False:
            lines += ["", f"- {r['device']} {r['hint']}: hint not honoured, the plugin ran "
                          f"{r['effective_precision']}"]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """``parity.json`` and ``parity.md`` in ``out_dir``, each written atomically."""
    from fuzz.layout import atomic_write_text

    out = Path(out_dir)
    js = atomic_write_text(out / "parity.json", json.dumps(report, indent=1, sort_keys=True, default=str))
    md = atomic_write_text(out / "parity.md", parity_markdown(report))
    return js, md


# ====================================================================== subjects (the command line's)
def load_subject(layout: str | Path | None = None, checkpoint: str | Path | None = None,
                 transform: str | None = None, options: dict | None = None, *, seq: int | None = None,
                 batch: int = 1, seed: int = 0, text: str | Path | None = None) -> tuple[nn.Module, torch.Tensor, dict]:
    """``(model, ids, description)`` for ``archfuzz parity``.

    A layout JSON is materialized (float64, weights from ``seed``) and compared on seeded random ids
    (``seq`` default 16); otherwise the checkpoint (``None``/``"default"``: SmolLM2-135M) runs on the first
    ``batch x seq`` tokens (default 128) of ``text`` (default: the offline evaluation split).  With
    ``transform`` (any ``registry:name``), the transform is applied first, in float64, to the layout's model
    or to the checkpoint imported as a GraphModel (:func:`fuzz.importer.import_model`); calibration ids
    are drawn apart from the compared ids.  A :class:`~fuzz.errors.Refusal` propagates.
    """
    from verifier import Calibration
    from verifier.registry import resolve

    gen = torch.Generator().manual_seed(seed)
    if layout is not None:
        from fuzz import Layout, materialize
        lay = Layout.load(layout)
        model = materialize(lay, seed=seed)
        vocab = lay.params(lay.source)["vocab"]
        seq = seq or 16
        ids = torch.randint(0, vocab, (batch, seq), generator=gen)
        calib = torch.randint(0, vocab, (4, seq), generator=gen)
        info = {"layout": str(layout), "layout_hash": lay.hash(), "seed": seed, "ids": "seeded random"}
    else:
        from quant.checkpoints import load_checkpoint
        from quant.quantize import text_ids
        from quant.text import calibration_windows
        model, tok = load_checkpoint(checkpoint, torch.float64 if transform else torch.float32)
        seq = seq or 128
        stream, text_info = text_ids(tok, text, "evaluation")
        if stream.numel() < batch * seq:
            raise BadInput(f"the text has {stream.numel()} tokens, fewer than {batch} x {seq}")
        ids = stream[:batch * seq].reshape(batch, seq)
        info = {"checkpoint": str(checkpoint or "default"), "text": text_info}
        if transform:
            from fuzz.importer import import_model
            calib = calibration_windows(text_ids(tok, None, "calibration")[0], 4, seq, seed)
            model = import_model(model)  # checked against the checkpoint first; its floor goes into the report
            info["import_check"] = {k: model.layout.meta["import_check"][k] for k in ("floor", "max_rel_err", "bound")}
    if transform:
        t = resolve(transform, **(options or {}))
        model = t(model, Calibration(calib, seed))
        info["transform"] = repr(t)
    return model.eval(), ids, info


# ====================================================================== corpus: exporter findings
PARITY_REPRO = '''"""Self-contained repro of corpus entry {sig}: OpenVINO {stage}/{symptom} (CPU f32 vs PyTorch)"""
import json
from pathlib import Path

from fuzz import Layout
from verifier.corpus import parity_subject

here = Path(__file__).resolve().parent
meta = json.loads((here / "meta.json").read_text())
model, ids = parity_subject(Layout.load(here / "layout.json"), meta)

if __name__ == "__main__":
    from quant.parity import compare
    report = compare(model, ids, devices=["CPU"], hints=["f32"])
    print(json.dumps({{"export": report["export"], "rows": report["rows"]}}, indent=1, default=str))
    assert report["ok"], "OpenVINO CPU f32 does not match PyTorch"
'''


def _register_replayer() -> None:
    """Parity entries of the corpus (registry ``parity``) are compared again with :func:`compare`."""
    from verifier.corpus import register_replayer
    register_replayer("parity", compare, repro=PARITY_REPRO)


_register_replayer()
