"""How to split a budget between covering examples and hypothesis' draws: pair coverage per share.

    python -m benchmarks.covering_split [--budget 50] [--seeds 10] [--shares 0.6 0.8 0.9 1.0]

For each share and hypothesis seed, the test :func:`benchmarks.interaction_teeth.run` runs (the covering
examples of that seed for ``share`` of the budget, then hypothesis' own draws) records each example's feature
tags, no oracle: in ``benchmarks.interaction_teeth`` the always-nudging transform was caught on every example,
so an interaction mutant is first caught at the first example whose tags hold its interaction.  Prints per share
the pairs caught on every seed, the median examples to first catch (a seed that never caught counts as
budget + 1), the share of (pair, seed) runs caught within 25 and within the budget, and the risky triples
caught on every seed.
"""

from __future__ import annotations

import argparse
import statistics

from fuzz import covering
from benchmarks.interaction_teeth import SHARES, first_catches, run


def measure(budget: int, seeds: list[int], share: float) -> dict:
    universe = covering.space()
    SHARES["split"] = share
    firsts = {}
    for s in seeds:
        seen = []
        run("split", budget, s, lambda layout, weight_seed: seen.append((covering.tags(layout), True)))
        firsts[s] = first_catches(seen[:budget], universe.always)
    out = {"share": share, "covering_examples": covering.covering_share(budget, share)}
    for kind, group in (("pairs", sorted(universe.pairs)), ("triples", sorted(universe.triples))):
        per = [[firsts[s].get(i) for s in seeds] for i in group]
        flat = [budget + 1 if x is None else x for v in per for x in v]
        out[kind] = {"total": len(group), "every_seed": sum(all(x is not None for x in v) for v in per),
                     "median": statistics.median(flat),
                     "within_25": round(sum(x <= 25 for x in flat) / len(flat), 4),
                     "within_budget": round(sum(x <= budget for x in flat) / len(flat), 4)}
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--shares", type=float, nargs="+", default=[0.6, 0.8, 0.9, 1.0])
    args = ap.parse_args(argv)
    seeds = list(range(args.seeds))
    rows = [measure(args.budget, seeds, share) for share in args.shares]
    print("| share | covering / drawn | pairs on every seed | median | within 25 | within budget "
          "| triples on every seed |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        p, t = r["pairs"], r["triples"]
        print(f"| {r['share']} | {r['covering_examples']} / {args.budget - r['covering_examples']} | "
              f"{p['every_seed']} / {p['total']} | {p['median']} | {p['within_25']:.1%} | "
              f"{p['within_budget']:.1%} | {t['every_seed']} / {t['total']} |")
    return rows


if __name__ == "__main__":
    main()
