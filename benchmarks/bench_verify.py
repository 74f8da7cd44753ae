"""Verified layouts per second: synthesize + materialize + reference transform + float64 verdict.

    python benchmarks/bench_verify.py [--examples 300] [--max-hidden 128] [--max-layers 2] [--json out.json]

Small layouts (hidden <= 128, <= 2 layers) drawn by the synthesizer under a fixed seed; each is
verified with one reference transform (round-robin over the registry).  Stages are timed inside one
run, side by side:

* synthesize  -- hypothesis draw of the spec + lowering to the layout graph (validation included)
* materialize -- layout -> float64 GraphModel with seeded weights
* transform   -- the reference transform on the oracle's private copy
* verdict     -- everything else the oracle does (copy, forward passes, hooks, comparison)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from hypothesis import given, seed, settings  # noqa: E402

import fuzz.profiles  # noqa: E402,F401
from fuzz import build, materialize, strategies as S  # noqa: E402
from fuzz.layout import atomic_write_text  # noqa: E402
from verifier import reference, verify  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=300)
    ap.add_argument("--max-hidden", type=int, default=128)
    ap.add_argument("--max-layers", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)  # tiny matmuls: threading costs more than it saves

    names = [n for n in reference.names() if n != "identity"]
    stages = {"synthesize": 0.0, "materialize": 0.0, "transform": 0.0, "verdict": 0.0}
    body = [0.0]
    statuses: dict[str, int] = {}
    count = [0]

    def timed(transform):
        def run(model, calib):
            t0 = time.perf_counter()
            out = transform(model, calib)
            stages["transform"] += time.perf_counter() - t0
            return out
        return run

    @seed(20261124)
    @settings(settings.get_profile("dev"), max_examples=args.examples, database=None, phases=["generate"])
    @given(spec=S.specs(max_hidden=args.max_hidden, max_layers=args.max_layers), weight_seed=S.seeds())
    def one(spec, weight_seed):
        t0 = time.perf_counter()
        layout = build(spec)
        t1 = time.perf_counter()
        model = materialize(layout, seed=weight_seed % 1000)
        t2 = time.perf_counter()
        before = stages["transform"]
        verdict = verify(timed(reference.get(names[count[0] % len(names)], seed=1)), model, seed=1)
        t3 = time.perf_counter()
        stages["synthesize"] += t1 - t0
        stages["materialize"] += t2 - t1
        stages["verdict"] += (t3 - t2) - (stages["transform"] - before)
        body[0] += t3 - t0
        statuses[verdict.status] = statuses.get(verdict.status, 0) + 1
        count[0] += 1
        assert verdict.ok or verdict.refused, verdict

    start = time.perf_counter()
    one()
    wall = time.perf_counter() - start
    stages["synthesize"] += wall - body[0]  # hypothesis' own drawing time counts as synthesis
    rate = count[0] / wall
    result = {"examples": count[0], "wall_s": round(wall, 3), "layouts_per_s": round(rate, 1),
              "target_per_s": 100, "stages_s": {k: round(v, 3) for k, v in stages.items()},
              "stage_share": {k: round(v / wall, 3) for k, v in stages.items()}, "statuses": statuses,
              "max_hidden": args.max_hidden, "max_layers": args.max_layers, "torch_threads": 1}
    print(f"{count[0]} layouts verified in {wall:.2f} s: {rate:.1f} per second (target >= 100)")
    print("| stage | seconds | share |\n|---|---:|---:|")
    for k, v in stages.items():
        print(f"| {k} | {v:.2f} | {v / wall:.0%} |")
    print(f"statuses: {statuses}")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
