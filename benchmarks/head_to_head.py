"""Head-to-head: full precision, RTN, vanilla auto-round, auto-round + its own Hadamard rotation, and the BBT
recipes, on a real checkpoint (default SmolLM2-135M) at W2/W4, matched calibration, several seeds.

    python -m benchmarks.head_to_head [--bits 2 4] [--seeds 0 1 2] [--methods ...] [--preset cpu|paper]
        [--calib-text PATH] [--eval-text PATH] [--iters N] [--nsamples N] [--seqlen N] [--lr LR] [--out runs/head2head]
        [--report-only] [--engine ray|serial] [--address ADDR] [--num-cpus N] [--cpus-per-cell N]

Every (method, bits, seed, settings, texts, checkpoint) result is one cell run as a Ray task
(:mod:`benchmarks.ray_cells`: a local Ray by default, ``--address`` for a cluster, ``--engine serial`` in
this process) and cached as one JSON file under ``OUT/cache/`` keyed by a hash of that configuration, so an
interrupted sweep resumes where it stopped (gate verdicts are cached too).  Writes ``OUT/results.json``,
``OUT/results.md`` and ``OUT/results.png``.  RTN (``iters=0``, no imatrix) uses no calibration data: it runs once, at seed 0.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.ray_cells import ENGINES, run_cells

@dataclasses.dataclass(frozen=True)
class Method:
    """One row of the grid: a recipe (``None``: full precision), its alpha, RTN or not, extra auto-round options
    (:data:`quant.quantize.AUTOROUND_OPTIONS`) and settings overriding the sweep's (iters, nsamples, lr, ...,
    ``enable_alg_ext``).  Options and settings go into the cell, so into its cache key."""

    recipe: str | None
    alpha: float | None = None
    rtn: bool = False
    options: tuple = ()   # ((name, value), ...): hashable; dict(options) is what auto-round gets
    settings: tuple = ()  # ((name, value), ...) over the preset's


NEUQI = (("enable_neuqi", True),)
ALG_EXT = (("enable_alg_ext", True),)
#: the best W2 option set (docs/findings.md, "The W2 frontier"): NeUQI weighted by the alg_ext imatrix, 16/8 grid
W2_OPTIONS = ALG_EXT + (("neuqi_grid", (16, 8)),)


def bbt_w2(*extra: tuple) -> Method:
    """BBT-spectral alpha 0.25 with :data:`W2_OPTIONS` and the ``extra`` settings: a point of the W2 frontier."""
    return Method("bbt-spectral", 0.25, options=NEUQI, settings=W2_OPTIONS + extra)


METHODS = {
    "fp": Method(None),
    "rtn": Method("none", rtn=True),
    "autoround": Method("none"),
    "autoround-hadamard": Method("autoround-hadamard"),
    "bbt-spectral-a0.5": Method("bbt-spectral", 0.5),
    "bbt-spectral-a0": Method("bbt-spectral", 0.0),
    "bbt-spectral-a0.25": Method("bbt-spectral", 0.25),
    "bbt-spectral-a1": Method("bbt-spectral", 1.0),
    "bbt-pair-pca": Method("bbt-pair-pca", 0.5),
    "bbt-absorb": Method("bbt-absorb", 0.5),
    # the W2 ablation (issue 16, docs/findings.md "The W2 frontier"). For asymmetric int weights auto-round's
    # enable_alg_ext only collects an imatrix (its optimized wrapper and outlier-suppressed loss are for sym
    # types), which only NeUQI reads; asymmetric optimized RTN without NeUQI is plain min/max RTN. So the two
    # options are measured together with NeUQI, not alone.
    "autoround-neuqi": Method("none", options=NEUQI),
    "autoround-neuqi-algext": Method("none", options=NEUQI, settings=ALG_EXT),
    "autoround-neuqi-rtn": Method("none", rtn=True, options=NEUQI + (("disable_opt_rtn", False),)),
    "bbt-spectral-a0.25-neuqi-algext": Method("bbt-spectral", 0.25, options=NEUQI, settings=ALG_EXT),
    "bbt-spectral-a0-neuqi-algext": Method("bbt-spectral", 0.0, options=NEUQI, settings=ALG_EXT),
    "bbt-spectral-a0.25-neuqi16-algext": bbt_w2(),
    # T1's group-aligned block form (blocks of 64 = the group size, no padding) with the best W2 settings
    "bbt-spectral-block-a0.25-neuqi16-algext": Method("bbt-spectral-block", 0.25, options=NEUQI,
                                                      settings=W2_OPTIONS),
    "bbt-spectral-block-a0-neuqi16-algext": Method("bbt-spectral-block", 0.0, options=NEUQI,
                                                   settings=W2_OPTIONS),
    "bbt-spectral-block-a0.5-neuqi16-algext": Method("bbt-spectral-block", 0.5, options=NEUQI,
                                                     settings=W2_OPTIONS),
    # T1 padded with alpha chosen per linear from its grid (quant.transforms.wht_scale.ALPHA_GRID) for the cell's
    # bits and group size, with the best W2 settings
    "bbt-spectral-asearch-neuqi16-algext": Method("bbt-spectral-alpha-search", None, options=NEUQI,
                                                  settings=W2_OPTIONS),
    "autoround-neuqi16-algext": Method("none", options=NEUQI, settings=W2_OPTIONS),
    "bbt-spectral-pca-a0.25": Method("bbt-spectral-pca", 0.25),
    "bbt-spectral-pca-a0.25-neuqi-algext": Method("bbt-spectral-pca", 0.25, options=NEUQI, settings=ALG_EXT),
    "bbt-spectral-pca-a0.25-neuqi16-algext": Method("bbt-spectral-pca", 0.25, options=NEUQI,
                                                    settings=W2_OPTIONS),
    # the tuning frontier around the best option set: learning rate, iterations against samples
    "frontier-neuqi-algext-lr0.03": Method("none", options=NEUQI, settings=ALG_EXT + (("lr", 0.03),)),
    **{f"frontier-bbt-a0.25-neuqi16-{name}": bbt_w2(*extra) for name, extra in (
        ("lr0.005", (("lr", 0.005),)), ("lr0.02", (("lr", 0.02),)), ("lr0.05", (("lr", 0.05),)),
        ("i20", (("iters", 20),)), ("i30", (("iters", 30),)), ("n32", (("nsamples", 32),)))},
    # iters 0: auto-round's optimized RTN with the NeUQI search, seeded by its calibration windows; unweighted:
    # run_autoround passes enable_alg_ext (the imatrix) only when it tunes
    "frontier-bbt-a0.25-neuqi-i0": Method("bbt-spectral", 0.25, options=NEUQI + (("disable_opt_rtn", False),),
                                          settings=ALG_EXT + (("iters", 0),)),
    "frontier-neuqi-algext-i20-n4": Method("none", options=NEUQI,
                                           settings=ALG_EXT + (("iters", 20), ("nsamples", 4), ("batch_size", 4))),
}
DEFAULT_METHODS = ["fp", "rtn", "autoround", "autoround-hadamard", "bbt-spectral-a0.5", "bbt-spectral-a0",
                   "bbt-spectral-a0.25", "bbt-spectral-a1", "bbt-pair-pca"]


def _key(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _versions() -> dict:
    import auto_round
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__, "auto_round": auto_round.__version__}


def main(argv=None) -> int:
    from fuzz.layout import atomic_write_text
    from quant.quantize import PRESETS, preset_settings

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="default: SmolLM2-135M (offline)")
    p.add_argument("--bits", type=int, nargs="+", default=[2, 4])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    p.add_argument("--preset", default="cpu", choices=list(PRESETS))
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--sym", action="store_true", help="symmetric (default asymmetric, as the paper)")
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--nsamples", type=int, default=None)
    p.add_argument("--seqlen", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="auto-round's learning rate (default: the preset's)")
    p.add_argument("--calib-text", default=None, help="default: Python stdlib docstrings (NOT wikitext)")
    p.add_argument("--eval-text", default=None, help="default: Python stdlib docstrings (NOT wikitext)")
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--max-tokens", type=int, default=8192)
    p.add_argument("--out", default="runs/head2head")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: tabulate the cached results of these settings (missing ones are listed)")
    p.add_argument("--engine", default="ray", choices=ENGINES, help="ray (default: a local Ray, or --address) "
                   "or serial (in this process)")
    p.add_argument("--address", default=None, help="a Ray cluster to join ('auto', 'ray://host:10001'); "
                   "default: start a local Ray on this machine")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--cpus-per-cell", type=float, default=1, help="CPUs each cell reserves (and its torch threads)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    settings = preset_settings(args.preset, iters=args.iters, nsamples=args.nsamples, seqlen=args.seqlen,
                               batch_size=args.batch_size, lr=args.lr)
    out = Path(args.out)
    t0 = time.time()
    _, tok, _, _, calib_info, eval_info = _inputs(args.checkpoint, args.calib_text, args.eval_text)
    ckpt = args.checkpoint or "default:SmolLM2-135M-Instruct.Q4_1.gguf"
    common = {"checkpoint": ckpt, "calib": calib_info["sha256"], "eval": eval_info["sha256"], "window": args.window,
              "max_tokens": args.max_tokens, "group_size": args.group_size, "sym": args.sym, **settings,
              "versions": _versions(),
              "inputs": {"checkpoint": args.checkpoint, "calib_text": args.calib_text, "eval_text": args.eval_text,
                         "gate_cache": str((out / "cache").resolve())}}
    print(f"texts read in {time.time() - t0:.0f}s; settings {settings}; calib {calib_info['source']}; "
          f"eval {eval_info['source']}", flush=True)

    # full precision is one result whatever the widths; RTN has no calibration seed
    visits = [("fp", None, 0)] if "fp" in args.methods else []
    visits += [(m, b, s) for b in args.bits for m in args.methods if m != "fp"
               for s in ([0] if METHODS[m].rtn else args.seeds)]
    cells = [{**common, **_method_keys(METHODS[method]), "method": method, "bits": bits, "seed": seed,
              "name": "fp" if bits is None else f"{method}-w{bits}-s{seed}"} for method, bits, seed in visits]
    results = run_cells(run_cell, cells, out / "cache", engine=args.engine, address=args.address,
                        num_cpus=args.num_cpus, cpus_per_cell=args.cpus_per_cell, progress=not args.no_progress,
                        report_only=args.report_only, desc="head-to-head")
    rows = []
    for cell, res in zip(cells, results):
        label = cell["name"]
        if res is None:
            print(f"missing {label} (not run)", flush=True)
            continue
        how = "cached " if res["cached"] else "ran    "
        print(f"{how} {label}: ppl {res.get('ppl', float('nan')):.2f} {res.get('error', '')}", flush=True)
        if "ppl" not in res:  # the cell itself raised (not cached): recorded as a failure, not a row of numbers
            res = {**res, "ppl": float("nan"), "seconds": res.get("cell_seconds", 0.0)}
        rows.append({**res, "method": cell["method"], "bits": cell["bits"], "seed": cell["seed"]})
    summary = _summarise(rows, args, settings, calib_info, eval_info, ckpt)
    atomic_write_text(out / "results.json", json.dumps({"summary": summary, "rows": rows}, indent=1, default=str))
    md = _markdown(summary, settings, calib_info, eval_info, ckpt, args)
    atomic_write_text(out / "results.md", md)
    _plot(summary, out / "results.png")
    print(md)
    return 0


def _method_keys(m: Method) -> dict:
    """What a method adds to its cells (absent when empty, so the cells of the plain methods keep their keys)."""
    return {**dict(m.settings), **({"options": dict(m.options)} if m.options else {})}


@functools.lru_cache(maxsize=2)
def _inputs(checkpoint, calib_text, eval_text):
    """The checkpoint, its tokenizer and both token streams: read once per process (a Ray worker is reused)."""
    from quant.checkpoints import load_checkpoint
    from quant.quantize import text_ids
    base, tok = load_checkpoint(checkpoint)
    calib_all, calib_info = text_ids(tok, calib_text, "calibration")
    eval_ids, eval_info = text_ids(tok, eval_text, "evaluation")
    return base, tok, calib_all, eval_ids, calib_info, eval_info


def run_cell(cell: dict) -> dict:
    """One (method, bits, seed) result: gate (cached per recipe and alpha), quantize, perplexity."""
    from fuzz.layout import atomic_write_text
    from quant.perplexity import perplexity
    from quant.quantize import ALPHA_SEARCH, ONLINE, WEIGHT_ONLY, QuantConfig, gate, quantize, recipe_options
    from quant.text import calibration_windows
    src = cell["inputs"]
    base, tok, calib_all, eval_ids, calib_info, eval_info = _inputs(src["checkpoint"], src["calib_text"],
                                                                    src["eval_text"])
    if (calib_info["sha256"], eval_info["sha256"]) != (cell["calib"], cell["eval"]):
        raise RuntimeError("the texts changed since the sweep was planned (sha256 differs)")
    method, bits, seed = cell["method"], cell["bits"], cell["seed"]
    recipe, alpha, rtn = METHODS[method].recipe, METHODS[method].alpha, METHODS[method].rtn
    t0, load_start = time.time(), os.getloadavg()
    if method == "fp":
        return {**perplexity(base, eval_ids, cell["window"], cell["max_tokens"]), "seconds": time.time() - t0}
    tuned = {f.name for f in dataclasses.fields(QuantConfig)} - {"bits", "group_size", "sym", "seed"}
    settings = {k: cell[k] for k in tuned if k in cell}
    if settings.get("neuqi_grid") is not None:  # a JSON list in the cell
        settings["neuqi_grid"] = tuple(settings["neuqi_grid"])
    cfg = QuantConfig(bits=bits, group_size=cell["group_size"], sym=cell["sym"], seed=seed,
                      **{**settings, "iters": 0 if rtn else settings["iters"]})
    windows = calibration_windows(calib_all, cfg.nsamples, cfg.seqlen, seed)
    model = copy.deepcopy(base)
    verdict = None
    if recipe in WEIGHT_ONLY + ONLINE:  # the recipes the oracle gate proves before quantization
        cache = Path(src["gate_cache"])
        key = {'checkpoint': cell['checkpoint'], 'recipe': recipe, 'alpha': alpha}
        if recipe in ALPHA_SEARCH:  # its grid and quantizer: what the gate proves and could refuse
            key["options"] = recipe_options(recipe, alpha, bits, cfg.group_size)
        gpath = cache / f"gate-{recipe}-a{alpha}-{_key(key)}.json"
        if gpath.is_file():
            verdict = _CachedVerdict(**json.loads(gpath.read_text()))
        else:
            v = gate(model, recipe, alpha=alpha, bits=bits, group_size=cfg.group_size)
            atomic_write_text(gpath, json.dumps({"status": v.status, "max_rel_err": v.max_rel_err}))
            verdict = v
    try:
        report = quantize(model, tok, recipe, cfg, windows, alpha=alpha,
                          gate_verdict=verdict, check_ids=eval_ids[None, :16])
    except RuntimeError as exc:  # record a peer's crash as a finding instead of losing the sweep
        return {"error": f"{type(exc).__name__}: {exc}", "ppl": float("nan"), "seconds": time.time() - t0}
    report.pop("coverage_rows", None)
    load_end = os.getloadavg()  # the machine's load over the quantization (1, 5, 15 min): timings depend on it
    ppl = perplexity(model, eval_ids, cell["window"], cell["max_tokens"])
    return {**ppl, "report": report, "seconds": time.time() - t0, "quant_seconds": report["total_seconds"],
            "load_start": load_start, "load_end": load_end, "torch_threads": torch.get_num_threads()}


class _CachedVerdict:
    def __init__(self, status, max_rel_err):
        self.status, self.max_rel_err, self.ok = status, max_rel_err, status == "invariant"


def _summarise(rows, args, settings, calib_info, eval_info, ckpt) -> dict:
    groups: dict = {}
    for r in rows:
        if r.get("error"):
            continue
        bits = "fp" if r["method"] == "fp" else r["bits"]
        groups.setdefault((r["method"], bits), []).append(r)
    out = {}
    for (method, bits), rs in groups.items():
        ppls = [r["ppl"] for r in rs]
        out[f"{method}|{bits}"] = {"method": method, "bits": bits, "n": len(ppls), "mean": statistics.fmean(ppls),
                                   "std": statistics.stdev(ppls) if len(ppls) > 1 else 0.0, "ppls": ppls,
                                   "geomean": statistics.geometric_mean(ppls),
                                   "seconds_mean": statistics.fmean(r.get("quant_seconds", r["seconds"]) for r in rs)}
    errors = [{"method": r["method"], "bits": r["bits"], "seed": r["seed"], "error": r["error"]} for r in rows
              if r.get("error")]
    return {"groups": out, "errors": errors}


def _targets(g: dict, bits: int) -> list[str]:
    def get(m):
        return g.get(f"{m}|{bits}")
    lines = []
    bbt, van, had = get("bbt-spectral-a0.5"), get("autoround"), get("autoround-hadamard")
    if bits == 2 and bbt and van:
        red = 100 * (1 - bbt["mean"] / van["mean"])
        lines.append(f"- W2 BBT-spectral a0.5 vs vanilla auto-round: {red:.1f}% lower PPL (target >= 45%): "
                     f"{'MET' if red >= 45 else 'NOT MET'}")
        geo = 100 * (1 - bbt["geomean"] / van["geomean"])
        lines.append(f"  (geometric means over seeds, less swayed by one collapsed seed: {geo:.1f}% lower)")
    if bits == 2 and bbt and had:
        lines.append(f"- W2 BBT-spectral a0.5 {bbt['mean']:.2f} vs auto-round Hadamard {had['mean']:.2f} "
                     f"(target lower): {'MET' if bbt['mean'] < had['mean'] else 'NOT MET'}")
    if bits == 4 and bbt and van:
        lines.append(_w4_verdict(bbt, van))
    return lines


def _w4_verdict(bbt: dict, van: dict) -> str:
    """W4 target: BBT-spectral within the seed noise (2 std) of vanilla; lower beyond it is said as such."""
    noise = max(bbt["std"], van["std"])
    diff = bbt["mean"] - van["mean"]
    head = f"- W4 BBT-spectral a0.5 - vanilla = {diff:+.3f} PPL; seed std {noise:.3f} (target: within seed noise): "
    if min(bbt["n"], van["n"]) < 2:
        return head + "UNDECIDED (fewer than 2 seeds)"
    if abs(diff) <= 2 * noise:
        return head + "MET"
    return head + ("LOWER than vanilla beyond the noise (better than the target asks)" if diff < 0
                   else "NOT MET (higher than vanilla beyond the noise)")


def _markdown(summary, settings, calib_info, eval_info, ckpt, args) -> str:
    g = summary["groups"]
    lines = [f"# Head-to-head: {ckpt}", "",
             f"settings: {settings}, group size {args.group_size}, {'sym' if args.sym else 'asym'}; "
             f"calibration: {calib_info['source']}; evaluation: {eval_info['source']} "
             f"(first {args.max_tokens} tokens, windows of {args.window})", "",
             "| bits | method | PPL mean | std | geo. mean | n seeds | PPLs | quantize s (mean) |",
             "|---|---|---|---|---|---|---|---|"]
    for k, v in sorted(g.items(), key=lambda kv: (str(kv[1]["bits"]), kv[1]["mean"])):
        lines.append(f"| {v['bits']} | {v['method']} | {v['mean']:.2f} | {v['std']:.2f} | {v['geomean']:.2f} | {v['n']} | "
                     f"{', '.join(f'{x:.2f}' for x in v['ppls'])} | {v['seconds_mean']:.0f} |")
    lines += ["", "Targets:"]
    for bits in args.bits:
        lines += _targets(g, bits)
    if summary["errors"]:
        lines += ["", "Failures (recorded, not hidden):"]
        lines += [f"- {e['method']} W{e['bits']} seed {e['seed']}: {e['error'][:300]}" for e in summary["errors"]]
    return "\n".join(lines) + "\n"


def _plot(summary, path: Path) -> None:
    """One panel per width (W2 and W4 differ by orders of magnitude), methods sorted by mean PPL, seed std as
    error bars, full precision as a dashed line; log axis only where a panel spans more than 10x (RTN at W2)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = list(summary["groups"].values())
    fp = next((v["mean"] for v in groups if v["bits"] == "fp"), None)
    widths = sorted({v["bits"] for v in groups if v["bits"] != "fp"})
    if not widths:
        return
    fig, axes = plt.subplots(1, len(widths), figsize=(6 * len(widths), 4.5), squeeze=False)
    for ax, bits in zip(axes[0], widths):
        g = sorted((v for v in groups if v["bits"] == bits), key=lambda v: v["mean"])
        ax.bar(range(len(g)), [v["mean"] for v in g], yerr=[v["std"] for v in g], capsize=3)
        ax.set_xticks(range(len(g)), [f"{v['method']} (n={v['n']})" for v in g], rotation=45, ha="right", fontsize=8)
        if fp is not None:
            ax.axhline(fp, ls="--", c="k", lw=1, label=f"full precision {fp:.2f}")
            ax.legend(fontsize=8)
        if max(v["mean"] for v in g) > 10 * min(v["mean"] for v in g):
            ax.set_yscale("log")
        else:
            ax.set_ylim(0.95 * min([v["mean"] - v["std"] for v in g] + ([fp] if fp else [])), None)
        ax.set_title(f"W{bits}")
        ax.set_ylabel("perplexity (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
