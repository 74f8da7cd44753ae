"""Verified layouts per second: synthesize + materialize + reference transform + float64 verdict.

    python -m benchmarks.bench_verify [--examples 300] [--max-hidden 128] [--max-layers 2] [--json out.json]
                                      [--baseline 3fbf478 | --baseline none] [--against COMMIT --rounds 3]

Small layouts (hidden <= 128, <= 2 layers) drawn by the synthesizer under a fixed seed; each is
verified with one reference transform (round-robin over the registry).  Stages are timed inside one
run, side by side:

* synthesize  -- hypothesis draw of the spec + lowering to the layout graph (validation included)
* materialize -- layout -> float64 GraphModel with seeded weights
* transform   -- the reference transform on the oracle's private copy
* verdict     -- everything else the oracle does (copy, forward passes, hooks, comparison, and since the
                 positive control and per-position causality: the probe rows, one backward, the control's
                 stepped forwards)

Side by side: ``--baseline COMMIT`` (default 3fbf478, the oracle before positive controls and causality
probes) loads that commit's ``verifier/oracle.py`` from git into this process, and every example is also
verified by it on the same model with the same transform, the two calls alternating which goes first.
The table then shows the baseline's verdict time next to today's and their ratio, measured in one run on
the same machine state (a shared machine moves absolute figures, not the ratio much).

Whole pipeline against an older tree: ``--against COMMIT [--rounds 3]`` checks COMMIT out into a temporary
detached worktree and runs this benchmark (``--baseline none``) there and here as child processes, alternating
which goes first each round, and reports both rates per round (layouts per wall second and per CPU second of
the child: on a shared machine the CPU figure is the steadier one) and the median ratios today / COMMIT.  Each tree
draws from its own synthesizer under the same seed, so where the layout space grew the two sets of layouts
differ: the figure is what a user of each version gets per second, not a same-layout comparison (the
``--baseline`` mode is that, for the oracle).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from hypothesis import given, seed, settings

import fuzz.profiles  # noqa: F401
from fuzz import build, materialize, strategies as S
from fuzz.layout import atomic_write_text
from verifier import reference, verify


ROOT = Path(__file__).resolve().parents[1]


def baseline_verify(commit: str):
    """``verify`` of ``verifier/oracle.py`` at ``commit``, loaded from git into this process (its relative
    imports resolve to today's ``verifier`` package); None with a message when git cannot provide it."""
    try:
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:verifier/oracle.py"], check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"no baseline: git show {commit}:verifier/oracle.py failed ({exc})", file=sys.stderr)
        return None
    module = types.ModuleType("verifier._baseline_oracle")
    module.__package__ = "verifier"
    module.__file__ = f"{commit}:verifier/oracle.py"
    sys.modules[module.__name__] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module.verify


def _child_rate(tree: Path, args) -> dict:
    """This benchmark run as a child process in ``tree`` (``--baseline none``): its layouts per wall second
    and per CPU second of the child (user + system; steadier than wall time on a shared machine)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
        subprocess.run([sys.executable, "-m", "benchmarks.bench_verify", "--examples", str(args.examples),
                        "--max-hidden", str(args.max_hidden), "--max-layers", str(args.max_layers),
                        "--baseline", "none", "--json", str(out)], cwd=tree, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        result = json.loads(out.read_text())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": result["layouts_per_s"], "cpu": round(result["examples"] / cpu, 1)}


def against(args) -> dict:
    """Both trees' whole-pipeline rates, alternating order per round (see the module docstring)."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.against], check=True,
                            capture_output=True, text=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old_tree), commit],
                       check=True)
        try:
            rounds = []
            for i in range(args.rounds):
                order = [("old", old_tree), ("new", ROOT)] if i % 2 == 0 else [("new", ROOT), ("old", old_tree)]
                rates = {name: _child_rate(tree, args) for name, tree in order}
                rounds.append(rates)
                print(f"round {i + 1}: {commit} {rates['old']}, today ({head}) {rates['new']} (layouts/s)")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_tree)], check=False)
    ratios = {clock: round(statistics.median(r["new"][clock] / r["old"][clock] for r in rounds), 3)
              for clock in ("wall", "cpu")}
    print(f"| round | {commit} per wall s | today per wall s | {commit} per CPU s | today per CPU s |\n"
          "|---|---:|---:|---:|---:|")
    for i, r in enumerate(rounds, 1):
        print(f"| {i} | {r['old']['wall']} | {r['new']['wall']} | {r['old']['cpu']} | {r['new']['cpu']} |")
    print(f"median ratio today / {commit}: wall {ratios['wall']:.2f}, CPU {ratios['cpu']:.2f} (>= 1: no slower)")
    return {"against": commit, "head": head, "examples": args.examples, "max_hidden": args.max_hidden,
            "max_layers": args.max_layers, "rounds": rounds, "median_ratio": ratios}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=300)
    ap.add_argument("--max-hidden", type=int, default=128)
    ap.add_argument("--max-layers", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--baseline", default="3fbf478", help="commit whose oracle runs side by side; 'none' to skip")
    ap.add_argument("--against", default=None, help="commit whose whole pipeline runs beside today's (child processes)")
    ap.add_argument("--rounds", type=int, default=3, help="with --against: alternating rounds (default 3)")
    args = ap.parse_args()
    if args.against:
        result = against(args)
        if args.json:
            atomic_write_text(args.json, json.dumps(result, indent=1))
        return
    old_verify = None if args.baseline == "none" else baseline_verify(args.baseline)
    torch.set_num_threads(1)  # tiny matmuls: threading costs more than it saves

    names = [n for n in reference.names() if n != "identity"]
    stages = {"synthesize": 0.0, "materialize": 0.0, "transform": 0.0, "verdict": 0.0}
    base = {"transform": 0.0, "verdict": 0.0}
    statuses: dict[str, int] = {}
    base_statuses: dict[str, int] = {}
    count = [0]

    def timed(transform, into):
        def run(model, calib):
            t0 = time.perf_counter()
            out = transform(model, calib)
            into["transform"] += time.perf_counter() - t0
            return out
        return run

    def one_verdict(fn, into, model):
        """Seconds the verdict took outside the transform, and the verdict."""
        before = into["transform"]
        t0 = time.perf_counter()
        verdict = fn(timed(reference.get(names[count[0] % len(names)], seed=1), into), model, seed=1)
        return (time.perf_counter() - t0) - (into["transform"] - before), verdict

    @seed(20261124)
    @settings(settings.get_profile("dev"), max_examples=args.examples, database=None, phases=["generate"])
    @given(spec=S.specs(max_hidden=args.max_hidden, max_layers=args.max_layers), weight_seed=S.seeds())
    def one(spec, weight_seed):
        t0 = time.perf_counter()
        layout = build(spec)
        t1 = time.perf_counter()
        model = materialize(layout, seed=weight_seed % 1000)
        t2 = time.perf_counter()
        if old_verify is not None and count[0] % 2:  # the baseline first on odd examples
            old_s, old_v = one_verdict(old_verify, base, model)
        new_s, verdict = one_verdict(verify, stages, model)
        if old_verify is not None and not count[0] % 2:
            old_s, old_v = one_verdict(old_verify, base, model)
        if old_verify is not None:
            base["verdict"] += old_s
            base_statuses[str(old_v.status)] = base_statuses.get(str(old_v.status), 0) + 1
        stages["synthesize"] += t1 - t0
        stages["materialize"] += t2 - t1
        stages["verdict"] += new_s
        statuses[str(verdict.status)] = statuses.get(str(verdict.status), 0) + 1
        count[0] += 1
        assert verdict.ok or verdict.refused, verdict

    start = time.perf_counter()
    one()
    wall = time.perf_counter() - start
    spent = sum(stages.values()) + sum(base.values())
    stages["synthesize"] += wall - spent  # hypothesis' own drawing time counts as synthesis
    wall -= sum(base.values())  # the baseline's calls are not part of today's pipeline
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
    if old_verify is not None:
        old_wall = wall - stages["verdict"] - stages["transform"] + base["verdict"] + base["transform"]
        result["baseline"] = {"commit": args.baseline, "verdict_s": round(base["verdict"], 3),
                              "transform_s": round(base["transform"], 3), "layouts_per_s": round(count[0] / old_wall, 1),
                              "verdict_ratio": round(stages["verdict"] / base["verdict"], 3),
                              "per_layout_time_ratio": round(wall / old_wall, 3), "statuses": base_statuses}
        print(f"side by side with the oracle of {args.baseline} on the same {count[0]} models and transforms:")
        print("| | verdict s (outside the transform) | layouts/s |\n|---|---:|---:|")
        print(f"| {args.baseline} | {base['verdict']:.2f} | {count[0] / old_wall:.1f} |")
        print(f"| today | {stages['verdict']:.2f} | {rate:.1f} |")
        print(f"time ratio today / {args.baseline}: verdict {stages['verdict'] / base['verdict']:.2f}, whole pipeline "
              f"per layout {wall / old_wall:.2f}; baseline statuses: {base_statuses}")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
