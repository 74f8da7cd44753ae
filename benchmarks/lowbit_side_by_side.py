"""Side by side on SmolLM2-135M: the stateful OpenVINO artifacts of vanilla RTN, BBT-spectral (rotation online)
and the f16 dequantized export, at W2 and W4 (not run in CI; minutes per row on 2 cores).

Per bit width: auto-round RTN (``iters=0``, group 64, asymmetric) through :func:`quant.quantize.quantize` for
recipe ``none`` and ``bbt-spectral`` (the latter taken before the unfold, its rotation made explicit by
:func:`quant.online.make_online`); the embedding table / output head as int8 codes (the ``--lowbit`` default,
applied to the PyTorch reference too); each built into a GenAI directory (:func:`quant.stateful.build_artifact`:
u2/u4 codes), plus the vanilla model's f16 dequantized stateful IR (the same trace saved with
``compress_to_fp16``).  Per artifact: IR size (xml + bin), ``openvino_genai`` greedy decoding of 128 new tokens
after a 128-token prompt in a fresh process (:func:`quant.stateful.fresh_genai_run`; batch 1, GenAI's default CPU
settings: decode tokens/s from its time per output token, prefill tokens/s as prompt tokens / time to first token,
the process's peak RSS), the stateful IR's perplexity through OpenVINO (CPU, f32
accuracy) against the PyTorch fake-quantized model's on the same short windows of the evaluation text
(``--window``, ``--max-tokens``), and for BBT the stateful parity (prefill and 8 cached steps, greedy tokens).

    python -m benchmarks.lowbit_side_by_side [--bits 2 4] [--redo] [--out docs/data/lowbit_side_by_side]
    python -m benchmarks.lowbit_side_by_side --bits 4 --interleave 3   # decode / prefill / peak RSS, alternately

Writes ``OUT.json`` (rows merged per bit width as each finishes: a rerun skips widths already there unless
``--redo``) and ``OUT.md``.  ``--interleave ROUNDS`` re-runs the artifacts already built (under ``--work``) in fresh
processes, alternately (vanilla, BBT, f16, then again), so that a shared machine's load falls on all alike: the
BBT / vanilla decode ratio is the figure, not the absolute tokens/s; the load average is recorded per run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch


def _ir_mib(folder: Path) -> float:
    from quant.stateful import MODEL_XML
    xml = folder / MODEL_XML
    return round((xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 2**20, 2)


def _runs(folder: Path, prompt: list[int], new_tokens: int) -> dict:
    """Two fresh-process GenAI runs of ``folder``: GenAI's defaults (wall times, peak RSS), then one inference thread
    (:data:`quant.genai_probe.PINNED`: the process's CPU ms per decoded token and of the prefill, and its wall time
    per token); the 1-minute load average before the first."""
    from quant.genai_probe import PINNED
    from quant.stateful import fresh_genai_run
    load = os.getloadavg()[0]
    g = fresh_genai_run(folder, prompt, new_tokens)
    c = fresh_genai_run(folder, prompt, new_tokens, properties=PINNED)
    return {"tpot_ms": g["tpot_ms"], "prefill_tok_s": g["prefill_tok_s"], "ttft_ms": g["ttft_ms"],
            "peak_rss_mib": g["peak_rss_mib"], "new_tokens": len(g["tokens"]), "cpu_ms_per_token": c["cpu_ms_per_token"],
            "cpu_prefill_ms": c["cpu_prefill_ms"], "pinned_tpot_ms": c["tpot_ms"], "loadavg_1min": load}


def _measure(model, tok, folder: Path, prompt: torch.Tensor, eval_ids, window: int, max_tokens: int,
             new_tokens: int) -> dict:
    from quant.stateful import MODEL_XML, perplexity_parity
    gen = _runs(folder, prompt[0].tolist(), new_tokens)
    ppl = perplexity_parity(model, folder / MODEL_XML, eval_ids, window, max_tokens)
    return {"ir_mib": _ir_mib(folder), "decode_tok_s": 1e3 / gen["tpot_ms"], "tpot_ms": gen["tpot_ms"],
            "prefill_tok_s": gen["prefill_tok_s"], "ttft_ms": gen["ttft_ms"], "peak_rss_mib": gen["peak_rss_mib"],
            "cpu_ms_per_token": gen["cpu_ms_per_token"], "cpu_prefill_ms": gen["cpu_prefill_ms"],
            "pinned_tpot_ms": gen["pinned_tpot_ms"], "loadavg_1min": gen["loadavg_1min"],
            "new_tokens": gen["new_tokens"], "ppl_torch": ppl["torch"]["ppl"], "ppl_ov": ppl["ov"]["ppl"],
            "ppl_rel_diff": ppl["rel_diff"], "ppl_windows": ppl["ov"]["windows"], "ppl_window": window}


def _log_rss(where: str) -> None:
    from quant.genai_probe import status_mib
    print(f"[memory] {where}: RSS {status_mib('VmRSS'):.0f} MiB, peak {status_mib('VmHWM'):.0f} MiB", flush=True)


RECIPES = ("none", "bbt-spectral", "bbt-spectral-block")  # vanilla, T1 padded, T1 group-aligned blocks (no padding)
ARTIFACTS = ("none", "bbt-spectral", "bbt-spectral-block", "f16")  # the work folders w{bits}-{name}, in run order
LABELS = {"none": "vanilla", "bbt-spectral": "bbt-spectral (online)", "bbt-spectral-block": "bbt-spectral-block (online)",
          "f16": "f16 dequantized (vanilla)"}


def run_bits(bits: int, work: Path, args, recipes=("none", "bbt-spectral")) -> tuple[list[dict], set[str]]:
    """Quantize, build, prove and measure the artifacts of ``recipes`` at ``bits``, each recipe in its own spawned
    process (:func:`recipe_rows`): the rows and the artifact names built anew (not reused).

    One process per recipe because memory does not come back within one: the float64 gate of ``bbt-spectral`` on
    SmolLM2 peaks at 6.3 GB and leaves 3.7 GB resident after everything it made is freed (measured: freed, not held,
    since the next stage reuses it), and the previous recipe's models and artifacts were still resident when the
    next one's gate ran: together they reached the 15 GB that got the W4 run OOM-killed."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from benchmarks.lowbit_side_by_side import recipe_rows  # by its module name: a spawned child imports it so

    rows, built = [], set()
    for recipe in recipes:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            r, b = pool.submit(recipe_rows, bits, recipe, work, args).result()
        rows += r
        built |= b
    return rows, built


def recipe_rows(bits: int, recipe: str, work: Path, args) -> tuple[list[dict], set[str]]:
    """The rows of one recipe at ``bits`` (with ``none``, the f16 dequantized export of the same model too) and the
    artifacts built anew; each row records this process's peak RSS (quantize, gate, build, proof, measurement)."""
    import openvino as ov

    from quant.checkpoints import load_default_checkpoint
    from quant.lowbit import grid_codes, quantize_tables
    from quant.online import make_online
    from quant.quantize import ONLINE, QuantConfig, quantize, text_ids
    from quant.stateful import MODEL_XML, build_artifact, stateful_parity
    from quant.text import calibration_windows

    rows, built = [], set()
    model, tok = load_default_checkpoint()
    calib, _ = text_ids(tok, None, "calibration")
    eval_ids, _ = text_ids(tok, None, "evaluation")
    cfg = QuantConfig(bits=bits, group_size=64, iters=0, nsamples=args.nsamples, seqlen=args.seqlen, batch_size=2)
    windows = calibration_windows(calib, cfg.nsamples, cfg.seqlen, 0)
    held = {}
    t0 = time.time()
    quantize(model, tok, recipe, cfg, windows, alpha=args.alpha,
             before_unfold=(lambda p: held.update(o=make_online(p.model, windows[:1, :16])))
             if recipe in ONLINE else None)
    q_s = time.time() - t0
    m = held["o"][0] if held else copy.deepcopy(model)
    codes = grid_codes(m, bits, 64)
    tables = quantize_tables(m, "int8", skip=codes)
    prompt = eval_ids[None, :args.prompt]
    folder = work / f"w{bits}-{recipe}"
    t0 = time.time()
    if not (args.reuse and (folder / "archfuzz_artifact.json").is_file()):
        build_artifact(m, tok, folder, codes, tables)  # with --reuse, a built one is proved against m below
        built.add(recipe)
    _log_rss(f"w{bits} {recipe}: built")
    row = {"bits": bits, "artifact": LABELS[recipe], "recipe": recipe,
           "quantize_s": round(q_s, 1), "build_s": round(time.time() - t0, 1)}
    if held:
        row["online_rotation"] = {k: held["o"][1][k] for k in ("mode", "rotations", "linears")}
        row["online_rotation"]["widths"] = sorted({(g["d_in"], g["d_pad"], g.get("block")) for g in
                                                   held["o"][1]["groups"]}, key=str)
        par = stateful_parity(m, folder / MODEL_XML, prompt, steps=8)
        row["parity"] = {k: par[k] for k in ("prefill_rel_err", "max_rel_err", "tokens_agree")}
        _log_rss(f"w{bits} {recipe}: parity")
    row.update(_measure(m, tok, folder, prompt, eval_ids, args.window, args.max_tokens, args.new_tokens))
    _log_rss(f"w{bits} {recipe}: measured")
    rows.append(row)
    print(json.dumps(row), flush=True)
    if recipe == "none":  # the f16 dequantized export of the same (vanilla) model: the size reference
        f16 = work / f"w{bits}-f16"
        if not (args.reuse and (f16 / "archfuzz_artifact.json").is_file()):
            build_artifact(m, tok, f16)  # float32 weights (the dequantized codes and tables) ...
            ir = ov.Core().read_model(str(f16 / MODEL_XML))
            ov.save_model(ir, str(f16 / "f16.xml"), compress_to_fp16=True)  # ... stored as f16
            del ir
            for ext in (".xml", ".bin"):
                (f16 / f"f16{ext}").replace((f16 / MODEL_XML).with_suffix(ext))
            built.add("f16")
        r16 = {"bits": bits, "artifact": LABELS["f16"], "recipe": "none"}
        r16.update(_measure(m, tok, f16, prompt, eval_ids, args.window, args.max_tokens, args.new_tokens))
        rows.append(r16)
        print(json.dumps(r16), flush=True)
    from quant.genai_probe import status_mib
    for r in rows:
        r["process_peak_rss_mib"] = round(status_mib("VmHWM"))
    return rows, built


MEDIANS = ("tpot_ms", "prefill_tok_s", "peak_rss_mib", "cpu_ms_per_token", "cpu_prefill_ms", "pinned_tpot_ms")


def interleaved_decode(work: Path, bits: int, rounds: int, new_tokens: int, prompt_len: int) -> dict:
    """The artifacts already built for ``bits``, each run ``rounds`` times in fresh processes (:func:`_runs`: GenAI's
    defaults, then one inference thread), alternately (vanilla, bbt, f16, then again) so that a shared machine's load
    falls on all alike: time per output token, prefill tokens/s, peak RSS and the single-threaded CPU ms per decoded
    token per run, the 1-minute load average before each; best and median."""
    import numpy as np

    from quant.checkpoints import load_default_checkpoint
    from quant.quantize import text_ids
    _, tok = load_default_checkpoint()
    prompt = text_ids(tok, None, "evaluation")[0][:prompt_len].tolist()
    folders = {name: work / f"w{bits}-{name}" for name in ARTIFACTS}
    runs = {name: [] for name in folders}
    for i in range(rounds):
        for name, folder in folders.items():
            if folder.is_dir():
                g = _runs(folder, prompt, new_tokens)
                runs[name].append({k: g[k] for k in ("tpot_ms", "prefill_tok_s", "peak_rss_mib", "cpu_ms_per_token",
                                                     "cpu_prefill_ms", "pinned_tpot_ms", "loadavg_1min")})
                print(f"round {i + 1}/{rounds} w{bits} {name}: {g['tpot_ms']:.1f} ms/token, {g['cpu_ms_per_token']:.2f} "
                      f"CPU ms/token (1 thread), peak RSS {g['peak_rss_mib']:.0f} MiB, load {g['loadavg_1min']:.1f}",
                      flush=True)
    out = {}
    for name, rs in runs.items():
        if not rs:
            continue
        per = {k: [r[k] for r in rs] for k in rs[0]}  # each figure over the rounds
        out[name] = {**per, "best_tpot_ms": min(per["tpot_ms"]),
                     **{f"median_{k}": float(np.median(per[k])) for k in MEDIANS}}
    out["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    if "none" in out:  # each artifact against vanilla: wall time per token (median, best), CPU ms per token (median)
        van = out["none"]
        out["over_vanilla"] = {n: {"median": v["median_tpot_ms"] / van["median_tpot_ms"],
                                   "best": v["best_tpot_ms"] / van["best_tpot_ms"],
                                   "cpu_median": v["median_cpu_ms_per_token"] / van["median_cpu_ms_per_token"]}
                               for n, v in out.items() if isinstance(v, dict) and n != "none"}
    if "none" in out and "bbt-spectral" in out:
        out["bbt_over_vanilla_best"] = out["bbt-spectral"]["best_tpot_ms"] / out["none"]["best_tpot_ms"]
        out["bbt_over_vanilla_median"] = out["bbt-spectral"]["median_tpot_ms"] / out["none"]["median_tpot_ms"]
        out["bbt_over_vanilla_cpu_median"] = (out["bbt-spectral"]["median_cpu_ms_per_token"]
                                              / out["none"]["median_cpu_ms_per_token"])
    print(json.dumps(out), flush=True)
    return out


def markdown(data: dict) -> str:
    def f(v, spec):
        return "-" if v is None else format(v, spec)
    inter = data.get("decode_interleaved", {})
    names = {label: name for name, label in LABELS.items()}
    lines = ["| bits | artifact | IR MiB | IR / f16 | peak RSS MiB | prefill tok/s | decode tok/s | decode vs vanilla "
             "(time/token) | CPU ms/token (1 thread) | OV PPL | PyTorch PPL | rel diff |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for bits in sorted({r["bits"] for r in data["rows"]}):
        rows = [r for r in data["rows"] if r["bits"] == bits]
        f16 = next((r for r in rows if r["artifact"].startswith("f16")), None)
        van = next((r for r in rows if r["artifact"] == "vanilla"), None)
        il = inter.get(f"w{bits}", {})
        for r in rows:  # the build's single run; peak RSS from the interleaved runs when the build did not measure it
            rss = r.get("peak_rss_mib") or (il.get(names.get(r["artifact"], "")) or {}).get("median_peak_rss_mib")
            tpot, vt = r.get("tpot_ms"), van.get("tpot_ms") if van else None
            lines.append(f"| W{bits} | {r['artifact']} | {r['ir_mib']} | "
                         f"{f(f16 and r['ir_mib'] / f16['ir_mib'], '.1%')} | {f(rss, '.0f')} | "
                         f"{f(r.get('prefill_tok_s'), '.0f')} | {f(tpot and 1e3 / tpot, '.1f')} | "
                         f"{f(tpot and vt and tpot / vt, '.2f')} | {f(r.get('cpu_ms_per_token'), '.2f')} | "
                         f"{f(r.get('ppl_ov'), '.3f')} | "
                         f"{f(r.get('ppl_torch'), '.3f')} | {f(r.get('ppl_rel_diff'), '.1e')} |")
    for key, d in sorted(inter.items()):
        arts = {n: v for n, v in d.items() if isinstance(v, dict) and "tpot_ms" in v}  # not over_vanilla
        loads = [x for v in arts.values() for x in v.get("loadavg_1min", [])]
        lines += ["", f"{key.upper()}, the built artifacts run alternately, each in a fresh process (GenAI defaults, "
                  f"OMP_NUM_THREADS={d.get('omp_num_threads')}, nice 10; 1-minute load average "
                  + (f"{min(loads):.1f}-{max(loads):.1f}" if loads else "not recorded") + " on 2 cores"
                  + (f"; {d['source']}" if d.get("source") else "") + "):", "",
                  "| artifact | ms/token per run | best | median | CPU ms/token, 1 thread, per run | CPU ms/token "
                  "(median) | prefill tok/s (median) | peak RSS MiB (median) |",
                  "|---|---|---:|---:|---|---:|---:|---:|"]
        for n, v in arts.items():
            cpu = v.get("cpu_ms_per_token")
            lines.append(f"| {n} | {', '.join(f'{t:.1f}' for t in v['tpot_ms'])} | {v['best_tpot_ms']:.1f} | "
                         f"{v['median_tpot_ms']:.1f} | {', '.join(f'{t:.2f}' for t in cpu) if cpu else '-'} | "
                         f"{f(v.get('median_cpu_ms_per_token'), '.2f')} | {f(v.get('median_prefill_tok_s'), '.0f')} | "
                         f"{v['median_peak_rss_mib']:.0f} |")
        for n, r in d.get("over_vanilla", {}).items():
            if n in ("bbt-spectral", "bbt-spectral-block"):
                lines += ["", f"**{n} / vanilla time per token: {r['median']:.2f}x (median), {r['best']:.2f}x (best); "
                          f"CPU per token on one thread: {r['cpu_median']:.2f}x (median)** (target <= 1.3x)."]
        if "bbt_over_vanilla_best" in d and "over_vanilla" not in d:  # entries measured before the per-artifact ratios
            lines += ["", f"**BBT / vanilla time per token: {d['bbt_over_vanilla_median']:.2f}x (median), "
                      f"{d['bbt_over_vanilla_best']:.2f}x (best)"
                      + (f"; CPU per token on one thread: {d['bbt_over_vanilla_cpu_median']:.2f}x (median)"
                         if "bbt_over_vanilla_cpu_median" in d else "") + "** (target <= 1.3x)."]
    s = data["settings"]
    lines += ["", f"SmolLM2-135M, auto-round RTN (iters 0) g64 asym, {s['nsamples']} x {s['seqlen']} calibration tokens, "
              f"alpha {s['alpha']}; embedding/output head int8; GenAI greedy {s['new_tokens']} new tokens after "
              f"{s['prompt']} prompt tokens (default CPU settings); PPL on {s['max_tokens']} evaluation tokens in windows "
              f"of {s['window']} (f32 accuracy). The machine is shared and loaded: the ratios measured alternately are "
              "the figures, not the absolute tokens/s. Commands: "
              + "; ".join(f"`{c}`" for c in data.get("commands", {}).values()) + "."]
    return "\n".join(lines) + "\n"


def _write(out: Path, data: dict) -> None:
    from fuzz.layout import atomic_write_text
    atomic_write_text(out.with_suffix(".json"), json.dumps(data, indent=1))
    atomic_write_text(out.with_suffix(".md"), markdown(data))


def main(argv=None) -> int:
    import sys
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--out", default="docs/data/lowbit_side_by_side")
    ap.add_argument("--work", default="runs/lowbit_side_by_side")
    ap.add_argument("--alpha", type=float, default=0.25)
    ap.add_argument("--nsamples", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES),
                    help="the low-bit artifacts to build (vanilla's f16 export comes with 'none'); rows of other "
                         "artifacts already in OUT.json are kept")
    ap.add_argument("--redo", action="store_true", help="rebuild and re-measure artifacts already in OUT.json")
    ap.add_argument("--reuse", action="store_true", help="keep artifacts already built under --work (quantize again "
                    "for the reference: the parity and perplexity then check that the artifact is that model's)")
    ap.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                    help="only re-measure the built artifacts in fresh processes, alternately, ROUNDS times each")
    args = ap.parse_args(argv)
    out = Path(args.out)
    command = "python -m benchmarks.lowbit_side_by_side " + " ".join(sys.argv[1:] if argv is None else argv)
    data = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {"rows": []}
    data.setdefault("commands", {"build": data.pop("command")} if "command" in data else {})
    if args.interleave:
        data.setdefault("decode_interleaved", {})
        for bits in args.bits:
            data["decode_interleaved"][f"w{bits}"] = interleaved_decode(Path(args.work), bits, args.interleave,
                                                                        args.new_tokens, args.prompt)
            data["commands"][f"interleave-w{bits}"] = command
            _write(out, data)
        print(markdown(data))
        return 0
    data["settings"] = {k: getattr(args, k) for k in ("alpha", "nsamples", "seqlen", "prompt", "new_tokens", "window",
                                                      "max_tokens")}
    done = {(r["bits"], r["recipe"]) for r in data["rows"] if "ppl_ov" in r}
    for bits in args.bits:
        todo = [rc for rc in args.recipes if args.redo or (bits, rc) not in done]
        if not todo:
            continue
        for recipe in todo:  # written as each recipe finishes; its old rows stay until then
            rows, built = run_bits(bits, Path(args.work), args, [recipe])
            keys = {(r["bits"], r["artifact"]) for r in rows}
            data["rows"] = [r for r in data["rows"] if (r["bits"], r["artifact"]) not in keys] + rows
            inter = data.get("decode_interleaved", {})
            if built & set(inter.get(f"w{bits}", {})):
                inter.pop(f"w{bits}")  # measured on artifacts just replaced
            data["commands"][f"build-w{bits}-{recipe}"] = command
            _write(out, data)
    print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
