"""Calibrate and apply every recipe to SmolLM2-135M; time, peak memory and invariance, side by side.

    python -m benchmarks.bench_recipes [--calib-text ../shared/data/wikitext-2-valid-unk.txt]
                                       [--nsamples 8] [--seqlen 256] [--out runs/bench_recipes]

Each recipe runs in its own child process (so the peak resident memory is its own), on the float32
checkpoint imported through its recorded dataflow (a GraphModel sharing the transformers parameters):

* calibration s  -- the activation-statistics passes (``quant.transforms.calibration.TELEMETRY``)
* transform s    -- everything else the recipe does (target: <= 10 s)
* peak RSS MiB   -- the child's maximum resident set (checkpoint + copies + statistics)
* float64 rel    -- the oracle on the imported GraphModel in float64 (the proof)
* float32 rel    -- the oracle on the transformers module itself in float32 (what ships)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

from quant.transforms import RECIPES as TRANSFORM_RECIPES


RECIPES = list(TRANSFORM_RECIPES)


def _child(recipe: str, args: dict, queue) -> None:
    import torch

    import quant.transforms as T
    from fuzz.importer import import_model
    from quant.checkpoints import load_default_checkpoint
    from quant.text import calibration_windows, read_text, tokenize
    from quant.transforms.calibration import TELEMETRY
    from verifier import Calibration, verify

    torch.manual_seed(0)
    model, tokenizer = load_default_checkpoint(torch.float32)
    ids = tokenize(tokenizer, read_text(args["calib_text"]))
    calib = Calibration(calibration_windows(ids, args["nsamples"], args["seqlen"], seed=0))
    graph = import_model(model)  # checked against the transformers model first
    TELEMETRY.update(seconds=0.0, passes=0)
    start = time.perf_counter()
    T.get(recipe)(graph, calib)
    total = time.perf_counter() - start
    calib_s = TELEMETRY["seconds"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model, _ = load_default_checkpoint(torch.float32)  # fresh weights for the two verdicts
    proof = verify(T.get(recipe), import_model(model), dtype=torch.float64, batch=2, seq=32,
                   calib_batch=2)
    ships = verify(T.get(recipe, host="transformers"), model, dtype=torch.float32, batch=2, seq=32, calib_batch=2)
    queue.put({"recipe": recipe, "calibration_s": round(calib_s, 2), "calibration_passes": TELEMETRY["passes"],
               "transform_s": round(total - calib_s, 2), "peak_rss_mib": round(peak),
               "float64": {"status": proof.status, "max_rel_err": proof.max_rel_err},
               "float32": {"status": ships.status, "max_rel_err": ships.max_rel_err}})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib-text", default=str(Path(__file__).resolve().parents[2] / "shared/data/wikitext-2-valid-unk.txt"))
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--recipes", nargs="*", default=RECIPES)
    ap.add_argument("--out", default="runs/bench_recipes")
    args = ap.parse_args()
    from rich.progress import track

    from fuzz.layout import atomic_write_text

    ctx = mp.get_context("spawn")
    rows = []
    for recipe in track(args.recipes, description="recipes on SmolLM2-135M"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(recipe, vars(args), queue))
        proc.start()
        rows.append(queue.get())
        proc.join()
    lines = ["| recipe | calibration s | transform s | peak RSS MiB | float64 rel err | float32 rel err |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['calibration_s']} | {r['transform_s']} | {r['peak_rss_mib']} | "
                     f"{r['float64']['max_rel_err']:.2e} ({r['float64']['status']}) | "
                     f"{r['float32']['max_rel_err']:.2e} ({r['float32']['status']}) |")
    table = "\n".join(lines)
    print(f"SmolLM2-135M, calibration {args.nsamples} x {args.seqlen} tokens of {Path(args.calib_text).name}")
    print(table)
    out = Path(args.out)
    atomic_write_text(out / "results.json", json.dumps({"settings": vars(args), "rows": rows}, indent=1))
    atomic_write_text(out / "results.md", table + "\n")


if __name__ == "__main__":
    main()
