"""Side by side on SmolLM2-135M: the stateful OpenVINO artifacts of vanilla RTN, BBT-spectral (rotation online)
and the f16 dequantized export, at W2 and W4 (not run in CI; minutes per row on 2 cores).

Per bit width: auto-round RTN (``iters=0``, group 64, asymmetric) through :func:`quant.quantize.quantize` for
recipe ``none`` and ``bbt-spectral`` (the latter taken before the unfold, its rotation made explicit by
:func:`quant.online.make_online`); the embedding table / output head as int8 codes (the ``--lowbit`` default,
applied to the PyTorch reference too); each built into a GenAI directory (:func:`quant.stateful.build_artifact`:
u2/u4 codes), plus the vanilla model's f16 dequantized stateful IR (the same trace saved with
``compress_to_fp16``).  Per artifact: IR size (xml + bin), ``openvino_genai`` greedy decoding of 128 new tokens
after a 128-token prompt (batch 1, GenAI's default CPU settings: decode tokens/s from its time per output token,
prefill tokens/s as prompt tokens / time to first token), the stateful IR's perplexity through OpenVINO (CPU, f32
accuracy) against the PyTorch fake-quantized model's on the same short windows of the evaluation text
(``--window``, ``--max-tokens``), and for BBT the stateful parity (prefill and 8 cached steps, greedy tokens).

    python -m benchmarks.lowbit_side_by_side [--bits 2 4] [--out docs/data/lowbit_side_by_side]

Writes ``OUT.json`` (rows appended as they finish: a rerun skips rows already there) and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch


def _ir_mib(folder: Path) -> float:
    from quant.stateful import MODEL_XML
    xml = folder / MODEL_XML
    return round((xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 2**20, 2)


def _measure(model, tok, folder: Path, prompt: torch.Tensor, eval_ids, window: int, max_tokens: int,
             new_tokens: int) -> dict:
    from quant.stateful import MODEL_XML, genai_generate, perplexity_parity
    gen = genai_generate(folder, prompt[0].tolist(), new_tokens, ignore_eos=True)
    ppl = perplexity_parity(model, folder / MODEL_XML, eval_ids, window, max_tokens)
    return {"ir_mib": _ir_mib(folder), "decode_tok_s": gen["decode_tok_s"], "tpot_ms": gen["tpot_ms"],
            "prefill_tok_s": gen["prompt_tokens"] / (gen["ttft_ms"] / 1e3), "ttft_ms": gen["ttft_ms"],
            "new_tokens": len(gen["tokens"]), "ppl_torch": ppl["torch"]["ppl"], "ppl_ov": ppl["ov"]["ppl"],
            "ppl_rel_diff": ppl["rel_diff"], "ppl_windows": ppl["ov"]["windows"], "ppl_window": window}


def run_bits(bits: int, work: Path, args) -> list[dict]:
    import openvino as ov

    from quant.checkpoints import load_default_checkpoint
    from quant.lowbit import grid_codes, quantize_tables
    from quant.online import make_online
    from quant.quantize import QuantConfig, quantize, text_ids
    from quant.stateful import MODEL_XML, build_artifact, stateful_parity
    from quant.text import calibration_windows

    rows = []
    for recipe in ("none", "bbt-spectral"):
        model, tok = load_default_checkpoint()
        calib, _ = text_ids(tok, None, "calibration")
        eval_ids, _ = text_ids(tok, None, "evaluation")
        cfg = QuantConfig(bits=bits, group_size=64, iters=0, nsamples=args.nsamples, seqlen=args.seqlen, batch_size=2)
        windows = calibration_windows(calib, cfg.nsamples, cfg.seqlen, 0)
        held = {}
        t0 = time.time()
        quantize(model, tok, recipe, cfg, windows, alpha=args.alpha,
                 before_unfold=(lambda p: held.update(o=make_online(p.model, windows[:1, :16])))
                 if recipe == "bbt-spectral" else None)
        q_s = time.time() - t0
        m = held["o"][0] if held else copy.deepcopy(model)
        codes = grid_codes(m, bits, 64)
        tables = quantize_tables(m, "int8", skip=codes)
        prompt = eval_ids[None, :args.prompt]
        folder = work / f"w{bits}-{recipe}"
        t0 = time.time()
        build_artifact(m, tok, folder, codes, tables)
        row = {"bits": bits, "artifact": "bbt-spectral (online)" if held else "vanilla", "recipe": recipe,
               "quantize_s": round(q_s, 1), "build_s": round(time.time() - t0, 1)}
        if held:
            row["online_rotation"] = {k: held["o"][1][k] for k in ("mode", "rotations", "linears")}
            par = stateful_parity(m, folder / MODEL_XML, prompt, steps=8)
            row["parity"] = {k: par[k] for k in ("prefill_rel_err", "max_rel_err", "tokens_agree")}
        row.update(_measure(m, tok, folder, prompt, eval_ids, args.window, args.max_tokens, args.new_tokens))
        rows.append(row)
        print(json.dumps(row), flush=True)
        if recipe == "none":  # the f16 dequantized export of the same (vanilla) model: the size reference
            f16 = work / f"w{bits}-f16"
            build_artifact(m, tok, f16)  # float32 weights (the dequantized codes and tables) ...
            ir = ov.Core().read_model(str(f16 / MODEL_XML))
            ov.save_model(ir, str(f16 / "f16.xml"), compress_to_fp16=True)  # ... stored as f16
            del ir
            for ext in (".xml", ".bin"):
                (f16 / f"f16{ext}").replace((f16 / MODEL_XML).with_suffix(ext))
            r16 = {"bits": bits, "artifact": "f16 dequantized (vanilla)", "recipe": "none"}
            r16.update(_measure(m, tok, f16, prompt, eval_ids, args.window, args.max_tokens, args.new_tokens))
            rows.append(r16)
            print(json.dumps(r16), flush=True)
    return rows


def interleaved_decode(work: Path, bits: int, rounds: int, new_tokens: int, prompt_len: int) -> dict:
    """Decode tokens/s of the artifacts already built for ``bits``, measured alternately (``rounds`` times each, in
    the order vanilla, bbt, f16) so that a shared machine's load falls on all alike; best and median per artifact."""
    import numpy as np

    from quant.checkpoints import load_default_checkpoint
    from quant.quantize import text_ids
    from quant.stateful import genai_generate
    _, tok = load_default_checkpoint()
    prompt = text_ids(tok, None, "evaluation")[0][:prompt_len].tolist()
    folders = {name: work / f"w{bits}-{name}" for name in ("none", "bbt-spectral", "f16")}
    tpot = {name: [] for name in folders}
    for _ in range(rounds):
        for name, folder in folders.items():
            if folder.is_dir():
                tpot[name].append(genai_generate(folder, prompt, new_tokens, ignore_eos=True)["tpot_ms"])
    out = {name: {"tpot_ms": t, "best_tpot_ms": min(t), "median_tpot_ms": float(np.median(t))}
           for name, t in tpot.items() if t}
    if "none" in out and "bbt-spectral" in out:
        out["bbt_over_vanilla_best"] = out["bbt-spectral"]["best_tpot_ms"] / out["none"]["best_tpot_ms"]
        out["bbt_over_vanilla_median"] = out["bbt-spectral"]["median_tpot_ms"] / out["none"]["median_tpot_ms"]
    print(json.dumps(out), flush=True)
    return out


def markdown(data: dict) -> str:
    lines = ["| bits | artifact | IR MiB | IR / f16 | decode tok/s | decode vs vanilla (time/token) | prefill tok/s | "
             "OV PPL | PyTorch PPL | rel diff |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for bits in sorted({r["bits"] for r in data["rows"]}):
        rows = [r for r in data["rows"] if r["bits"] == bits]
        f16 = next((r for r in rows if r["artifact"].startswith("f16")), None)
        van = next((r for r in rows if r["artifact"] == "vanilla"), None)
        for r in rows:
            ratio = f"{r['ir_mib'] / f16['ir_mib']:.1%}" if f16 else ""
            slow = f"{r['tpot_ms'] / van['tpot_ms']:.2f}x" if van else ""
            lines.append(f"| W{bits} | {r['artifact']} | {r['ir_mib']} | {ratio} | {r['decode_tok_s']:.1f} | {slow} | "
                         f"{r['prefill_tok_s']:.0f} | {r['ppl_ov']:.3f} | {r['ppl_torch']:.3f} | {r['ppl_rel_diff']:.1e} |")
    for key, d in sorted(data.get("decode_interleaved", {}).items()):
        lines += ["", f"{key.upper()} decode, artifacts run alternately ({len(next(iter(d.values()))['tpot_ms'])} rounds, "
                  "GenAI defaults, ms per token best / median): " + "; ".join(
                      f"{n} {v['best_tpot_ms']:.1f} / {v['median_tpot_ms']:.1f}" for n, v in d.items() if isinstance(v, dict))
                  + (f"; BBT / vanilla {d['bbt_over_vanilla_best']:.2f}x (best), {d['bbt_over_vanilla_median']:.2f}x (median)"
                     if "bbt_over_vanilla_best" in d else "")]
    s = data["settings"]
    lines += ["", f"SmolLM2-135M, auto-round RTN (iters 0) g64 asym, {s['nsamples']} x {s['seqlen']} calibration tokens, "
              f"alpha {s['alpha']}; embedding/output head int8; GenAI greedy {s['new_tokens']} new tokens after "
              f"{s['prompt']} prompt tokens (default CPU settings); PPL on {s['max_tokens']} evaluation tokens in windows "
              f"of {s['window']} (f32 accuracy). Command: `{data['command']}`."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
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
    ap.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                    help="only re-measure the decode speed of the built artifacts, alternately, ROUNDS times each")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.interleave:
        data = json.loads(out.with_suffix(".json").read_text())
        data.setdefault("decode_interleaved", {})
        for bits in args.bits:
            data["decode_interleaved"][f"w{bits}"] = interleaved_decode(Path(args.work), bits, args.interleave,
                                                                        args.new_tokens, args.prompt)
        data["decode_interleaved_command"] = "python -m benchmarks.lowbit_side_by_side " + " ".join(
            argv or __import__("sys").argv[1:])
        out.with_suffix(".json").write_text(json.dumps(data, indent=1))
        out.with_suffix(".md").write_text(markdown(data))
        return 0
    data = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {"rows": []}
    data["settings"] = {k: getattr(args, k) for k in ("alpha", "nsamples", "seqlen", "prompt", "new_tokens", "window",
                                                      "max_tokens")}
    data["command"] = "python -m benchmarks.lowbit_side_by_side " + " ".join(argv or __import__("sys").argv[1:])
    done = {r["bits"] for r in data["rows"]}
    for bits in args.bits:
        if bits in done:
            continue
        data["rows"] += run_bits(bits, Path(args.work), args)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(data, indent=1))
        out.with_suffix(".md").write_text(markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
