"""How many unconstrained layouts the synthesizer draws before the oracle first catches each mutant.

    python -m benchmarks.teeth [--budget 100] [--seeds 5]

For each known-buggy transform (the ``mutants`` registry: verifier/mutants.py, quant/mutants.py) and each
hypothesis seed, draw layouts from the whole space (no constraints) and count the examples until the first
``diverged`` verdict.
"""

from __future__ import annotations

import argparse
import statistics

from hypothesis import given, seed, settings

from fuzz import strategies as S
from verifier import mutants, verify
from verifier.outcomes import Status


def examples_to_catch(name: str, budget: int, hseed: int) -> int | None:
    count, first = [0], []

    @seed(hseed)
    @settings(max_examples=budget, database=None, deadline=None, phases=["generate"])
    @given(layout=S.layouts(), weight_seed=S.seeds())
    def search(layout, weight_seed):
        count[0] += 1
        if not first and verify(mutants.get(name), layout, seed=weight_seed % 97).status == Status.DIVERGED:
            first.append(count[0])

    search()
    return first[0] if first else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    print(f"| mutant | examples to first catch (per seed) | median | caught in {args.budget} |\n|---|---|---:|---:|")
    for name in mutants.names():
        found = [examples_to_catch(name, args.budget, s) for s in range(args.seeds)]
        hits = [f for f in found if f is not None]
        median = statistics.median(hits) if hits else None
        print(f"| {name} | {found} | {median} | {len(hits)}/{args.seeds} |")


if __name__ == "__main__":
    main()
