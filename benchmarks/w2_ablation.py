"""The W2 ablation (issue 16): PPL against quantization time for auto-round's W2 options, the tuning frontier and
the BBT recipes on SmolLM2-135M, tabulated from the head-to-head cache.

    python -m benchmarks.w2_ablation [--out runs/w2] [--calib-text PATH] [--eval-text PATH]
    python -m benchmarks.w2_ablation --from-json docs/data/w2_ablation.json     # re-render the table and plot
    python -m benchmarks.w2_ablation --out runs/w2 --merge docs/data/w2_ablation.json   # add this cache's cells

Runs nothing: it calls ``benchmarks.head_to_head --report-only`` on ``OUT`` for every method of
:data:`ABLATION` (W2 and W4, seeds 0-2, the ``cpu`` preset) and writes ``docs/data/w2_ablation.json`` (every
cached row: PPL, quantization seconds, the machine's load average around the quantization, the method's recipe,
alpha, auto-round options and settings; with ``--merge``, the rows of that JSON too, a cached row replacing the
one of the same method, width and seed: cells run in another checkout), ``w2_ablation.md`` (mean +- sample std
over the seeds that ran; single seeds marked) and ``w2_ablation.png`` (PPL against quantization seconds).  The cells themselves are run with
``python -m benchmarks.head_to_head --methods M --bits B --seeds S ... --out OUT`` (docs/findings.md, "The W2
frontier").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmarks import head_to_head as h2h

ABLATION = ["fp", "rtn", "autoround", "bbt-spectral-a0.25"]
ABLATION += [m for m in h2h.METHODS if ("neuqi" in m or "frontier" in m or m.startswith("bbt-spectral-pca"))
             and m not in ABLATION]
DATA = Path(__file__).resolve().parent.parent / "docs" / "data"
TARGET, MOONSHOT, BUDGET_S, W4_CEILING = 98.0, 79.0, 600.0, 31.1


def describe(method: str) -> dict:
    m = h2h.METHODS[method]
    return {"recipe": m.recipe, "alpha": m.alpha, "rtn": m.rtn, "options": dict(m.options),
            "settings": dict(m.settings)}


def collect(rows: list[dict]) -> dict:
    """Rows (head-to-head's results.json) -> groups per (method, bits): PPLs, seeds, seconds, load."""
    groups: dict = {}
    for r in rows:
        if r.get("error"):
            continue
        bits = "fp" if r["method"] == "fp" else r["bits"]
        groups.setdefault(f"{r['method']}|{bits}", []).append(r)
    out = []
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        ppls = [r["ppl"] for r in rs]
        secs = [r.get("quant_seconds", r["seconds"]) for r in rs]
        loads = [r["load_start"][0] for r in rs if r.get("load_start")]
        out.append({"method": rs[0]["method"], "bits": rs[0]["bits"] if rs[0]["method"] != "fp" else "fp",
                    "seeds": [r["seed"] for r in rs], "ppls": ppls, "n": len(ppls), "mean": statistics.fmean(ppls),
                    "std": statistics.stdev(ppls) if len(ppls) > 1 else None, "quant_seconds": secs,
                    "quant_seconds_mean": statistics.fmean(secs),
                    "load1_at_start": loads, "torch_threads": sorted({r.get("torch_threads") for r in rs} - {None}),
                    **describe(rs[0]["method"])})
    return {"groups": sorted(out, key=lambda g: (str(g["bits"]), g["mean"]))}


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` rows without those ``new`` has (same method, bits and seed), then ``new``."""
    fresh = {(r["method"], r["bits"], r["seed"]) for r in new}
    return [r for r in old if (r["method"], r["bits"], r["seed"]) not in fresh] + list(new)


def markdown(data: dict) -> str:
    lines = ["| bits | method | PPL mean | std | seeds | PPLs | quantize s: mean (per seed) | load (1 min) | what |",
             "|---|---|---:|---:|---|---|---:|---|---|"]
    for g in data["groups"]:
        what = [f"{g['recipe']}" + (f" a{g['alpha']}" if g["alpha"] is not None else "")]
        what += [f"{k}={v}" for k, v in {**g["settings"], **g["options"]}.items()]
        std = f"{g['std']:.2f}" if g["std"] is not None else "(1 seed)"
        lines.append(f"| {g['bits']} | {g['method']} | {g['mean']:.2f} | {std} | {','.join(map(str, g['seeds']))} | "
                     f"{', '.join(f'{p:.2f}' for p in g['ppls'])} | {g['quant_seconds_mean']:.0f}"
                     f"{' (' + ', '.join(f'{s:.0f}' for s in g['quant_seconds']) + ')' if g['n'] > 1 else ''} | "
                     f"{', '.join(f'{x:.1f}' for x in g['load1_at_start']) or 'n/a'} | {'; '.join(what)} |")
    w2 = [g for g in data["groups"] if g["bits"] == 2 and g["n"] >= 3 and g["quant_seconds_mean"] <= BUDGET_S]
    lines += ["", f"Targets (W2 mean PPL <= {TARGET:g}, moonshot <= {MOONSHOT:g}, 3 seeds, <= {BUDGET_S:.0f} s per "
              f"quantization; W4 <= {W4_CEILING:g}):"]
    if w2:
        best = min(w2, key=lambda g: g["mean"])
        verdict = "MET" if best["mean"] <= TARGET else "NOT MET"
        lines.append(f"- best W2 with 3 seeds within the budget (on the mean time): {best['method']} {best['mean']:.2f} "
                     f"+- {best['std']:.2f} (mean {best['quant_seconds_mean']:.0f} s, slowest seed "
                     f"{max(best['quant_seconds']):.0f} s): {verdict}"
                     + (" (moonshot met)" if best["mean"] <= MOONSHOT else ""))
        w4 = next((g for g in data["groups"] if g["bits"] == 4 and g["method"] == best["method"]), None)
        if w4:
            lines.append(f"- W4 control of {best['method']}: {w4['mean']:.2f} over {w4['n']} seed(s) "
                         f"(ceiling {W4_CEILING:g}): {'MET' if w4['mean'] <= W4_CEILING else 'NOT MET'}")
        else:
            lines.append(f"- W4 control of {best['method']}: not run")
    else:
        lines.append("- no W2 method with 3 seeds within the budget yet")
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> None:
    """PPL (log) against quantization seconds, one panel per width; error bars = seed std; budget and targets."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    widths = sorted({g["bits"] for g in data["groups"] if g["bits"] != "fp"})
    fp = next((g["mean"] for g in data["groups"] if g["bits"] == "fp"), None)
    fig, axes = plt.subplots(1, len(widths), figsize=(7 * len(widths), 5), squeeze=False)
    for ax, bits in zip(axes[0], widths):
        for g in (g for g in data["groups"] if g["bits"] == bits and g["method"] != "rtn"):
            ax.errorbar(g["quant_seconds_mean"], g["mean"], yerr=g["std"] or 0, fmt="o" if g["n"] >= 3 else "x",
                        capsize=3)
            ax.annotate(f"{g['method']} (n={g['n']})", (g["quant_seconds_mean"], g["mean"]), fontsize=7,
                        xytext=(4, 2), textcoords="offset points")
        ax.axvline(BUDGET_S, ls=":", c="r", lw=1, label="10-minute budget")
        if bits == 2:
            ax.axhline(TARGET, ls="--", c="g", lw=1, label=f"target {TARGET:g}")
        if bits == 4:
            ax.axhline(W4_CEILING, ls="--", c="g", lw=1, label=f"W4 ceiling {W4_CEILING:g}")
        if fp is not None:
            ax.axhline(fp, ls="--", c="k", lw=1, label=f"full precision {fp:.2f}")
        ax.set_yscale("log")
        ax.margins(x=0.3)  # room for the labels right of the points
        ax.set_xlabel("quantization seconds (mean over seeds; 2 cores, see the load column)")
        ax.set_ylabel("wikitext-2 perplexity (mean over seeds; o = 3 seeds, x = fewer)")
        ax.set_title(f"SmolLM2-135M W{bits} g64 asym")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    from fuzz.layout import atomic_write_text
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/w2", help="the head-to-head output folder whose cache is tabulated")
    p.add_argument("--calib-text", default="/work/shared/data/wikitext-2-valid-unk.txt")
    p.add_argument("--eval-text", default="/work/shared/data/wikitext-2-raw-test.raw")
    p.add_argument("--data", default=str(DATA), help="where w2_ablation.json/.md/.png are written")
    p.add_argument("--from-json", default=None, help="re-render the table and plot from this w2_ablation.json")
    p.add_argument("--merge", default=None, help="keep this w2_ablation.json's rows, adding (or replacing, per "
                                                 "method, bits and seed) the cells cached under --out")
    args = p.parse_args(argv)
    data_dir = Path(args.data)
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
    else:
        h2h.main(["--report-only", "--no-progress", "--engine", "serial", "--methods", *ABLATION, "--bits", "2", "4",
                  "--seeds", "0", "1", "2", "--calib-text", args.calib_text, "--eval-text", args.eval_text,
                  "--out", args.out])
        rows = json.loads((Path(args.out) / "results.json").read_text())["rows"]
        keep = ("method", "bits", "seed", "ppl", "seconds", "quant_seconds", "load_start", "load_end",
                "torch_threads", "error")
        if args.merge:
            rows = merge_rows(json.loads(Path(args.merge).read_text())["rows"], rows)
        source = f"python -m benchmarks.w2_ablation --out {args.out}" + (f" --merge {args.merge}" if args.merge else "")
        data = {"source": source, "checkpoint": "SmolLM2-135M",
                "calib_text": args.calib_text, "eval_text": args.eval_text,
                "settings": "cpu preset (iters 10, nsamples 8, seqlen 256, batch 8, lr 0.01) unless a method's "
                            "settings say otherwise; group size 64, asymmetric",
                "rows": [{k: r[k] for k in keep if k in r} for r in rows], **collect(rows)}
        atomic_write_text(data_dir / "w2_ablation.json", json.dumps(data, indent=1, default=str))
    md = "# W2 ablation: SmolLM2-135M, wikitext-2\n\n" + f"`{data['source']}`; {data['settings']}.\n\n" + markdown(data)
    atomic_write_text(data_dir / "w2_ablation.md", md)
    plot(data, data_dir / "w2_ablation.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
