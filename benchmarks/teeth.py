"""How many layouts the search tries before the oracle first catches each known-buggy transform.

    python -m benchmarks.teeth [--budget 100] [--seeds 5] [--json docs/data/teeth.json]

For each mutant (the ``mutants`` registry: verifier/mutants.py, quant/mutants.py) and each hypothesis seed,
side by side: the campaign's search (covering examples seeded by the seed, then hypothesis' draws:
:func:`verifier.campaign.examples_to_catch`) and hypothesis' draws of the whole space alone; the examples until
the first ``diverged`` verdict.  Prints a markdown table; ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics

from fuzz.layout import atomic_write_text
from verifier import mutants
from verifier.campaign import examples_to_catch

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    def tqdm(it, **_):
        return it


def _median(found: list[int | None]) -> float | None:
    hits = [f for f in found if f is not None]
    return statistics.median(hits) if hits else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--json", default=None, help="write the numbers here (atomically)")
    args = ap.parse_args()
    rows = {}
    for name in tqdm(mutants.names(), desc="mutants"):
        rows[name] = {mode: [examples_to_catch(name, args.budget, s, cover=mode == "covering")
                             for s in range(args.seeds)] for mode in ("covering", "draws")}
    print("| mutant | covering + draws (per seed) | median | draws alone (per seed) | median |\n"
          "|---|---|---:|---|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['covering']} | {_median(r['covering'])} | {r['draws']} | {_median(r['draws'])} |")
    if args.json:
        atomic_write_text(args.json, json.dumps({"budget": args.budget, "seeds": args.seeds, "mutants": rows},
                                                indent=1) + "\n")


if __name__ == "__main__":
    main()
