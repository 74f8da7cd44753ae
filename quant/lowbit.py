"""A deployable low-bit OpenVINO artifact: quantized weights kept as u2/u4 codes in the IR.

After auto-round, a quantized linear ``W`` (out x in, groups of ``g`` along ``in``) is exactly
``W = (q - z) * s`` with integer codes ``q, z`` in ``[0, 2^b)`` and a float16 scale ``s`` per (row, group)
(auto-round leaves ``scale`` and ``zp`` on the module).  :func:`grid_codes` recovers ``q`` and checks the
reconstruction bit for bit; a weight that is not on its grid (e.g. a T1 layer after the unfold, whose
``W_eff = fwht(W^ / s)`` is dense) is refused, naming it.  T1 (``bbt-spectral``) ships instead with ``W^``
kept (``in_features = d_pad``) and its rotation online as explicit ops (:func:`quant.online.make_online`).

:func:`compress_ir` rewrites an exported float32 IR: every Constant holding a quantized weight (found by
content, not by name) becomes the decompression subgraph OpenVINO's CPU plugin fuses into its
FullyConnected kernels (the form NNCF emits)::

    Constant(u{b}, [out, G, g]) -> Convert(f32) - Convert(Constant(u{b}, [out, G, 1]))
        -> * Convert(Constant(f16 scale, [out, G, 1])) -> Reshape([out, in])

:func:`artifact_report` measures, side by side with the dequantized f32 and f16 IRs: IR size on disk,
peak memory of a fresh process that compiles and runs it, prefill tokens per second (batch 1), the
latency of a one-token step (no KV cache: the exported graph is ids -> logits, so this is the
weight-streaming cost of one token, not a cached decode), and parity with the PyTorch fake-quantized
float32 model (logits relative error, top-1 agreement, dPPL).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fuzz.errors import BadInput


@dataclass
class Codes:
    """Integer codes of one quantized weight: ``W = (codes - zero) * scale`` per (row, group)."""

    codes: np.ndarray  # uint8 (out, G, g)
    zero: np.ndarray  # uint8 (out, G, 1)
    scale: np.ndarray  # float16 (out, G, 1)
    bits: int


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def grid_codes(model: nn.Module, bits: int, group_size: int) -> dict[str, Codes]:
    """``{weight name: Codes}`` for every linear auto-round left ``scale``/``zp`` on; exact or refused."""
    found: dict[str, Codes] = {}
    for name, mod in model.named_modules():
        scale, zp = mod.__dict__.get("scale"), mod.__dict__.get("zp")
        if not (isinstance(mod, nn.Linear) and torch.is_tensor(scale) and torch.is_tensor(zp)):
            continue
        w = mod.weight.detach().float()
        out, d_in = w.shape
        if d_in % group_size:
            raise BadInput(f"{name}: in_features {d_in} is not a multiple of the group size {group_size}")
        groups = d_in // group_size
        s = scale.detach().reshape(out, groups, 1)
        z = zp.detach().float().reshape(out, groups, 1)
        wg = w.reshape(out, groups, group_size)
        q = torch.round(wg / s.float() + z)
        back = (q - z) * s.float()
        if not torch.equal(back, wg) or q.min() < 0 or q.max() >= 2 ** bits or z.min() < 0 or z.max() >= 2 ** bits:
            raise BadInput(f"{name}: the weight is not on its {bits}-bit grid (codes in [{q.min():.0f}, {q.max():.0f}], "
                           f"max deviation {(back - wg).abs().max().item():.3g}); a folded rotation (e.g. the T1 "
                           f"unfold) densified it: ship T1's W^ with the rotation online (quant.online.make_online) "
                           f"instead")
        found[f"{name}.weight"] = Codes(q.to(torch.uint8).numpy(), z.to(torch.uint8).numpy(),
                                        s.to(torch.float16).numpy(), bits)
    if not found:
        raise BadInput("no quantized linear found (auto-round's scale/zp are missing): quantize the model first")
    return found


def check_lowbit_request(recipe: str, cfg) -> None:
    """Refuse, before any work, what the low-bit artifact cannot represent exactly."""
    if recipe == "autoround-hadamard":
        raise BadInput(f"--lowbit with recipe {recipe!r}: its rotation is kept as auto-round's own hooks / fused "
                       f"into dense weights, so the shipped weights are not on a {cfg.bits}-bit grid; the low-bit "
                       f"artifact supports 'none', the weight-only recipes (bbt-absorb, bbt-pair-pca, "
                       f"bbt-spectral-pca), bbt-spectral and bbt-spectral-block (their rotation online, quant/online.py)")
    if cfg.bits not in (2, 4):
        raise BadInput(f"--lowbit needs 2 or 4 bits (OpenVINO u2/u4), got {cfg.bits}")
    if cfg.sym:
        raise BadInput("--lowbit supports asymmetric quantization (codes and zero points); drop --sym")


def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``bits``-wide integers little-end first (element ``i`` at bit ``(i % (8/bits)) * bits``
    of its byte), OpenVINO's layout for u2/u4."""
    per = 8 // bits
    flat = np.ascontiguousarray(values, dtype=np.uint8).reshape(-1)
    flat = np.pad(flat, (0, (-flat.size) % per)).reshape(-1, per)
    out = np.zeros(flat.shape[0], np.uint8)
    for i in range(per):
        out |= (flat[:, i] & (2 ** bits - 1)) << (bits * i)
    return out


def _packed_constant(values: np.ndarray, bits: int):
    import openvino as ov
    t = ov.Tensor({2: ov.Type.u2, 4: ov.Type.u4, 8: ov.Type.u8}[bits], ov.Shape(list(values.shape)))
    t.data[:] = pack(values, bits).reshape(t.data.shape) if bits < 8 else values.reshape(t.data.shape)
    return ov.op.Constant(t)


def check_codes(weights: dict[str, torch.Tensor], codes: dict[str, Codes]) -> None:
    """Every ``codes`` entry dequantizes, bit for bit, to the weight of that name; else :class:`BadInput` naming it."""
    for n, c in codes.items():
        if n not in weights:
            raise BadInput(f"{n}: has codes but the model has no such weight")
        w = weights[n].detach().float().numpy()
        back = ((c.codes.astype(np.float32) - c.zero) * c.scale.astype(np.float32)).reshape(-1)
        if w.size != back.size or not np.array_equal(back, w.reshape(-1)):
            raise BadInput(f"{n}: the weight is not its {c.bits}-bit codes dequantized (shape {tuple(w.shape)}); "
                           f"the codes belong to another model or the weight left its grid")


def _replace_constants(model, by_digest: dict[str, str], decompress, expected, what: str) -> dict[str, int]:
    """In place: every 2-D float32 Constant of ``model`` whose content digest is in ``by_digest`` is replaced by
    ``decompress(name)`` (an OpenVINO node computing the same float32 values); returns the replacements per name.
    A name of ``expected`` never found raises :class:`BadInput` naming it (``what``: the kind, for the message)."""
    import openvino as ov

    found: dict[str, int] = {}
    for op in model.get_ops():
        if op.get_type_name() != "Constant" or op.get_element_type() != ov.Type.f32 or len(op.shape) != 2:
            continue
        name = by_digest.get(_digest(op.get_data()))
        if name is None:
            continue
        w = decompress(name)
        w.set_friendly_name(f"{name}/decompressed")
        op.output(0).replace(w.output(0))
        found[name] = found.get(name, 0) + 1
    missing = sorted(set(expected) - set(found))
    if missing:
        raise BadInput(f"{len(missing)} {what} not found in the IR as float32 constants: {missing[:4]}")
    model.validate_nodes_and_infer_types()
    return found


def compress_model(model, weights: dict[str, torch.Tensor], codes: dict[str, Codes]) -> dict:
    """In place: every float32 Constant of the ``ov.Model`` holding a quantized weight becomes its low-bit
    decompression subgraph.

    ``weights`` maps the names in ``codes`` to the float32 weights the IR was exported with; constants
    are matched by content.  Every quantized weight must be found in the IR (else :class:`BadInput` naming them)."""
    import openvino as ov
    import openvino.opset13 as ops

    check_codes(weights, codes)

    def decompress(name: str):
        c = codes[name]
        out, groups, g = c.codes.shape
        q = ops.convert(_packed_constant(c.codes, c.bits), ov.Type.f32)
        z = ops.convert(_packed_constant(c.zero, c.bits), ov.Type.f32)
        s = ops.convert(ops.constant(c.scale), ov.Type.f32)
        return ops.reshape(ops.multiply(ops.subtract(q, z), s), ops.constant(np.array([out, groups * g], np.int64)),
                           special_zero=False)

    by_digest = {_digest(weights[n].detach().float().numpy()): n for n in codes}
    replaced = _replace_constants(model, by_digest, decompress, codes, "quantized weights")
    return {"replaced": len(replaced), "bits": next(iter(codes.values())).bits}


# ============================================================================ the embedding table and the output head
EMBEDDING_MODES = ("int8", "f16", "f32")  # how the artifact stores the (tied) embedding table and output head


@dataclass
class TableCodes:
    """A float table as stored in the artifact: ``int8``: ``W = codes * scale`` with int8 codes in [-127, 127] and
    a float16 scale per row (symmetric, NNCF's INT8_SYM layout for embeddings); ``f16``: ``codes`` is the float16
    table, ``scale`` None."""

    mode: str
    codes: np.ndarray
    scale: np.ndarray | None

    def dequantized(self) -> np.ndarray:
        if self.mode == "f16":
            return self.codes.astype(np.float32)
        return self.codes.astype(np.float32) * self.scale.astype(np.float32)  # exact: 8-bit x 11-bit significands


def table_codes(weight: torch.Tensor, mode: str) -> TableCodes:
    """:class:`TableCodes` of the 2-D float ``weight`` (rows: vocabulary entries / output channels)."""
    w = weight.detach().float()
    if w.dim() != 2:
        raise BadInput(f"a table must be 2-D, got shape {tuple(w.shape)}")
    if mode == "f16":
        return TableCodes("f16", w.half().numpy(), None)
    if mode != "int8":
        raise BadInput(f"table mode must be int8 or f16, got {mode!r}")
    amax = w.abs().amax(dim=1, keepdim=True)
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax)).half()
    scale = torch.where(scale.float() > 0, scale, torch.full_like(scale, 2.0 ** -24))  # an underflowed row scale
    q = torch.round(w / scale.float()).clamp(-127, 127).to(torch.int8)
    return TableCodes("int8", q.numpy(), scale.numpy())


def quantize_tables(model: nn.Module, mode: str, skip=()) -> dict[str, TableCodes]:
    """In place: the input embedding table and the output head of the transformers ``model`` (one table when
    tied) become their ``mode`` storage dequantized (the PyTorch reference of the artifact); ``mode`` ``f32``
    changes nothing.  Weights named in ``skip`` (already low-bit codes) are left alone.  Returns
    ``{weight name: TableCodes}`` for :func:`compress_tables`."""
    if mode not in EMBEDDING_MODES:
        raise BadInput(f"embedding mode must be one of {', '.join(EMBEDDING_MODES)}, got {mode!r}")
    if mode == "f32":
        return {}
    names = {id(p): n for n, p in model.named_parameters()}
    tables: dict[str, TableCodes] = {}
    for get in ("get_input_embeddings", "get_output_embeddings"):
        mod = getattr(model, get)() if hasattr(model, get) else None
        weight = getattr(mod, "weight", None)
        if weight is None or id(weight) not in names:
            continue
        name = names[id(weight)]
        if name in tables or name in skip:
            continue
        tables[name] = table_codes(weight, mode)
        with torch.no_grad():
            weight.copy_(torch.from_numpy(tables[name].dequantized()))
    return tables


def compress_tables(model, weights: dict[str, torch.Tensor], tables: dict[str, TableCodes]) -> dict:
    """In place: every float32 Constant of the ``ov.Model`` holding one of ``tables`` (matched by content; a tied
    table may appear once for the Gather and once for the output MatMul) becomes ``Constant(i8) -> Convert(f32)
    -> Multiply(Convert(Constant(f16 scale)))`` (``int8``) or ``Constant(f16) -> Convert(f32)`` (``f16``)."""
    import openvino as ov
    import openvino.opset13 as ops

    by_digest = {}
    for n, t in tables.items():
        back = t.dequantized()
        w = weights[n].detach().float().numpy()
        if w.shape != back.shape or not np.array_equal(w, back):
            raise BadInput(f"{n}: the weight is not its {t.mode} table (apply quantize_tables to this model first)")
        by_digest[_digest(back)] = n

    def decompress(name: str):
        t = tables[name]
        if t.mode == "int8":
            return ops.multiply(ops.convert(ops.constant(t.codes), ov.Type.f32),
                                ops.convert(ops.constant(t.scale), ov.Type.f32))
        return ops.convert(ops.constant(t.codes), ov.Type.f32)

    found = _replace_constants(model, by_digest, decompress, tables, "tables")
    return {"mode": next(iter(tables.values())).mode if tables else "f32", "tables": found}


def compress_ir(src_xml: str | Path, dst_xml: str | Path, weights: dict[str, torch.Tensor],
                codes: dict[str, Codes], tables: dict[str, TableCodes] | None = None) -> dict:
    """Rewrite the float32 IR at ``src_xml`` with every quantized weight as low-bit codes
    (:func:`compress_model`) and the ``tables`` in their storage (:func:`compress_tables`); save ``dst_xml``."""
    import openvino as ov

    model = ov.Core().read_model(str(src_xml))
    info = compress_model(model, weights, codes)
    if tables:
        info["tables"] = compress_tables(model, weights, tables)
    dst = Path(dst_xml)
    dst.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(dst), compress_to_fp16=False)
    return info


# ============================================================================ measurement (child process)
def _status_mib(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` (peak RSS) of this process from ``/proc/self/status``.  Not ``ru_maxrss``: Linux
    keeps that across ``execve``, so a spawned child would report its forking parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure_job(xml: str, step_xml: str, prefill_path: str, step_path: str, out_path: str, repeats: int) -> dict:
    """Child: compile ``xml`` on CPU (f32 hint, accuracy mode) and time prefill, then ``step_xml`` (the same
    model exported for one token) and time a step; keep the prefill logits.  Memory: peak RSS of this
    process (``VmHWM``) after compiling and running the prefill model, and that minus its RSS before."""
    import openvino as ov

    from quant.parity import compile_config, enter_stage

    base = _status_mib("VmRSS")
    core = ov.Core()
    enter_stage("compile", "read_model")
    ids, step = np.load(prefill_path), np.load(step_path)
    t0 = time.perf_counter()
    prefill = core.compile_model(core.read_model(xml), "CPU", compile_config("CPU", "f32"))
    compile_s = time.perf_counter() - t0

    def timed(compiled, x):
        req = compiled.create_infer_request()
        req.infer({0: x})  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            res = req.infer({0: x})
            times.append(time.perf_counter() - t)
        return float(np.median(times)), res[compiled.output(0)].copy()

    enter_stage("execute", "prefill")
    t_prefill, logits = timed(prefill, ids)
    peak = _status_mib("VmHWM")  # the prefill model alone
    del prefill
    enter_stage("compile", "compile step model")
    single = core.compile_model(core.read_model(step_xml), "CPU", compile_config("CPU", "f32"))
    enter_stage("execute", "one-token step")
    t_step, _ = timed(single, step)
    np.save(out_path, logits.astype(np.float32, copy=False))
    return {"compile_s": round(compile_s, 2), "prefill_s": t_prefill, "step_s": t_step,
            "prefill_tok_s": ids.size / t_prefill, "step_tok_s": step.shape[0] / t_step,
            "rss_before_mib": round(base, 1), "peak_rss_mib": round(peak, 1), "peak_delta_mib": round(peak - base, 1)}


def _ir_bytes(xml: Path) -> int:
    return xml.stat().st_size + xml.with_suffix(".bin").stat().st_size


def artifact_report(model: nn.Module, codes: dict[str, Codes], ids: torch.Tensor, workdir: str | Path, *,
                    repeats: int = 5, timeout: float = 900.0, tables: dict[str, TableCodes] | None = None) -> dict:
    """Export ``model`` (fake-quantized, float32) to f32 / f16 / low-bit IRs under ``workdir`` and measure them
    (``workdir/{prefill,step}/{f32,f16,u<bits>}/model.xml``; sizes are those of the prefill IRs).

    Returns ``{"rows": [...], "reference": {...}}``: one row per artifact with ``ir_mib``, memory,
    throughput and parity against PyTorch on ``ids`` (batch 1)."""
    import openvino as ov

    from quant.parity import ExportWrapper, as_float32, export_job, perplexity_of, run_in_child

    if ids.dim() != 2 or ids.shape[0] != 1:
        raise BadInput(f"ids must be (1, seq), got {tuple(ids.shape)}")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = as_float32(model).eval()
    with torch.no_grad():
        ref = ExportWrapper(model)(ids).float()
    ref_ppl = perplexity_of(ref, ids)
    weights = dict(model.named_parameters())
    inputs = {"prefill": ids, "step": ids[:, :1]}  # two static-shape exports: the graph bakes its length in
    bits = next(iter(codes.values())).bits
    compressed = {}
    for phase, x in inputs.items():
        np.save(work / f"{phase}.npy", x.numpy())
        pt = work / "model.pt"  # transient hand-over to the export child (deleted right after)
        torch.save(ExportWrapper(model), pt)
        f32 = work / phase / "f32" / "model.xml"
        exported = run_in_child(export_job, str(pt), str(work / f"{phase}.npy"), str(f32), stage="export",
                                timeout=timeout, log=work / f"export-{phase}.log")
        pt.unlink()
        if not exported.ok:
            raise BadInput(f"export ({phase}) failed: {exported.symptom} at {exported.stage}: {exported.message}")
        f16 = work / phase / "f16" / "model.xml"
        f16.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(ov.Core().read_model(str(f32)), str(f16), compress_to_fp16=True)
        compressed = compress_ir(f32, work / phase / f"u{bits}" / "model.xml", weights, codes, tables)
    rows = measure_irs(work, bits, ids, ref, repeats=repeats, timeout=timeout)
    return {"reference": {"ppl": ref_ppl, "tokens": int(ids.numel())}, "compressed": compressed, "rows": rows,
            "versions": {"openvino": ov.__version__, "torch": torch.__version__}}


def measure_irs(work: Path, bits: int, ids: torch.Tensor, ref: torch.Tensor, *, repeats: int = 5,
                timeout: float = 900.0) -> list[dict]:
    """One row per IR under ``work/{prefill,step}/{f32,f16,u<bits>}`` (as :func:`artifact_report` writes
    them), each compiled and run in a fresh child process and compared with the PyTorch logits ``ref``."""
    from quant.parity import perplexity_of, run_in_child

    ref_ppl = perplexity_of(ref, ids)
    np.save(work / "prefill.npy", ids.numpy())
    np.save(work / "step.npy", ids[:, :1].numpy())
    kinds = {"f32": "dequantized f32 IR", "f16": "dequantized f16 IR", f"u{bits}": f"low-bit u{bits} IR"}
    rows = []
    for kind, label in kinds.items():
        xml, step_xml = work / "prefill" / kind / "model.xml", work / "step" / kind / "model.xml"
        out = xml.with_name("logits.npy")
        res = run_in_child(_measure_job, str(xml), str(step_xml), str(work / "prefill.npy"), str(work / "step.npy"),
                           str(out), repeats, stage="compile", timeout=timeout, log=xml.with_name("measure.log"))
        row = {"artifact": label, "ir_mib": round(_ir_bytes(xml) / 2**20, 2), "symptom": res.symptom,
               "stage": res.stage, "message": res.message}
        if res.ok:
            logits = torch.from_numpy(np.load(out))
            out.unlink()
            ppl = perplexity_of(logits, ids)
            row.update(res.figures, rel_err=((logits - ref).abs().max() / ref.abs().max()).item(),
                       top1=(logits.argmax(-1) == ref.argmax(-1)).double().mean().item(), ppl=ppl, dppl=ppl - ref_ppl)
        rows.append(row)
    return rows


def artifact_markdown(report: dict, title: str) -> str:
    lines = [f"# {title}", "", f"PyTorch fake-quantized float32 reference: PPL {report['reference']['ppl']:.4f} on "
             f"{report['reference']['tokens']} tokens; {report['compressed']['replaced']} weights as "
             f"u{report['compressed']['bits']} codes; openvino {report['versions']['openvino']}", "",
             "| artifact | IR MiB | peak RSS MiB (delta) | compile s | prefill tok/s | 1-token step ms | rel err | "
             "top-1 | dPPL |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        if r["symptom"] != "ok":
            lines.append(f"| {r['artifact']} | {r['ir_mib']} | {r['symptom']} at {r['stage']}: {r['message'][:80]} "
                         "| | | | | | |")
            continue
        lines.append(f"| {r['artifact']} | {r['ir_mib']} | {r['peak_rss_mib']:.0f} ({r['peak_delta_mib']:.0f}) | "
                     f"{r['compile_s']} | {r['prefill_tok_s']:.0f} | {1e3 * r['step_s']:.2f} | {r['rel_err']:.2e} | "
                     f"{r['top1']:.4f} | {r['dppl']:+.2e} |")
    lines += ["", "The 1-token step runs the exported ids -> logits graph on one token (no KV cache): the "
              "weight-streaming cost per generated token, not a cached decode."]
    if report.get("online_rotation"):
        o = report["online_rotation"]
        lines += ["", f"BBT-spectral's rotation runs online (quant/online.py): {o['rotations']} zero-padded Walsh-Hadamard "
                  f"transforms ({o['mode']} form), one per distinct input, feeding {o['linears']} linears whose weights "
                  "are the quantized W^ in the padded rotated basis (every IR here, f32 and f16 included)."]
    if report.get("stateful"):
        from quant.stateful import stateful_markdown
        lines += ["", stateful_markdown(report["stateful"])]
    return "\n".join(lines) + "\n"


def write_artifact_report(report: dict, out: str | Path, title: str) -> tuple[Path, Path]:
    from fuzz.layout import write_report
    return write_report(out, "lowbit", report, artifact_markdown(report, title))

