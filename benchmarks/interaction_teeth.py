"""Interaction teeth: how many examples the search needs before the oracle first catches a bug that only a
combination of feature values shows, for every combination the synthesizer can make.

    python -m benchmarks.interaction_teeth [--budget 50] [--seeds 5] [--strategy before after]
                                           [--ci] [--check 3] [--out docs/data/interaction_teeth.json]
                                           [--md docs/interactions.md] [--bench BENCH_VERIFY_JSON]
    python -m benchmarks.interaction_teeth --render [--bench BENCH_VERIFY_JSON]   # the markdown from the JSON

An interaction is a pair of feature tags (the tags ``strategies.layouts`` reports with ``event``), or a triple
over the riskiest axes (:data:`fuzz.covering.TRIPLES`); the interactions measured are those of
:func:`fuzz.covering.space` (a pool of uniform draws) plus any a run reached beyond it.  Its mutant
(:func:`verifier.mutants.interaction_mutant`) is the identity except on a layout that carries all its
tags, where it nudges the output head by 1e-6 relative.

Strategies, each run as a hypothesis test of ``budget`` examples per hypothesis seed (``@seed``, no
database, no shrinking):

* ``before``: hypothesis draws every example (``strategies.layouts()``, what a campaign did before issue 18);
* ``after``: the budget starts with the covering examples of that seed
  (:func:`fuzz.covering.with_covering_examples`, as :func:`verifier.campaign.run_campaign` runs them:
  up to :data:`fuzz.covering.SHARE` of the budget) and hypothesis draws the rest;
* ``covering-only``: covering examples for the whole budget (what the share gives up).

One trace per strategy and seed, not one run per mutant: each example's tags are recorded and the nudge
is verified once on it.  An interaction mutant is first caught at the first example whose tags hold the
interaction and whose nudge the oracle reports ``diverged``: exact, because no test raises, so hypothesis
draws the same examples whatever the transform (``--check N`` re-runs N interactions as real mutants and
compares).  ``--ci``: the ``ci`` profile's campaign (25 examples, derandomized) with and without covering
examples, against the always-nudging transform: the share of pair mutants its layouts catch.

The markdown ends with issue 18's targets, each met or not with its figure (``--bench``: the median ratios of a
``benchmarks.bench_verify --against`` JSON for verified layouts per second), and the bound that rules the first
out: :func:`fuzz.covering.one_a_row` (pairs no layout holds two of, by the decoder's rules) and
:func:`fuzz.covering.lower_bound`.  ``--render`` rewrites the JSON's bound and the markdown from the JSON alone.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

from hypothesis import Phase, given, seed, settings

import fuzz.profiles  # noqa: F401
from fuzz import covering, strategies as S
from fuzz.layout import atomic_write_text
from verifier import mutants, verify
from verifier.outcomes import Status
from verifier.transform import NamedTransform

STRATEGIES = ("before", "after", "covering-only")
SHARES = {"after": covering.SHARE, "covering-only": 1.0}
ROOT = Path(__file__).resolve().parents[1]


def _always(model, calib):
    mutants.nudge_head(model)
    return model


NUDGE_ALWAYS = NamedTransform("nudge_always", _always, {}, registry=__name__)


def run(strategy: str, budget: int, hseed: int, visit) -> None:
    """Call ``visit(layout, weight_seed)`` on each example of ``strategy`` (see the module docstring)."""

    def test(layout, weight_seed):
        visit(layout, weight_seed)

    phases = [Phase.explicit, Phase.generate]
    drawn = budget
    if strategy in SHARES:
        test, drawn = covering.with_covering_examples(test, budget, hseed, share=SHARES[strategy])
        if not drawn:
            phases = [Phase.explicit]
    elif strategy != "before":
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    test = given(layout=S.layouts(), weight_seed=S.seeds())(test)
    seed(hseed)(settings(max_examples=max(drawn, 1), database=None, deadline=None, phases=phases)(test))()


def trace(strategy: str, budget: int, hseed: int) -> list[tuple[frozenset[str], bool]]:
    """Per example in order: its tags and whether the oracle caught the nudge on it."""
    out = []

    def visit(layout, weight_seed):
        caught = verify(NUDGE_ALWAYS, layout, seed=weight_seed % 97).status == Status.DIVERGED
        out.append((covering.tags(layout), caught))
    run(strategy, budget, hseed, visit)
    return out[:budget]


def first_catch(transform, strategy: str, budget: int, hseed: int) -> int | None:
    """Examples until ``transform`` is first reported ``diverged`` (None: not within ``budget``)."""
    count, first = [0], []

    def visit(layout, weight_seed):
        count[0] += 1
        if not first and verify(transform, layout, seed=weight_seed % 97).status == Status.DIVERGED:
            first.append(count[0])
    run(strategy, budget, hseed, visit)
    return first[0] if first and first[0] <= budget else None


def first_catches(examples: list[tuple[frozenset[str], bool]], always: frozenset[str]) -> dict[tuple, int]:
    """``{interaction: first example (1-based) that holds it and caught the nudge}`` of one trace."""
    found: dict[tuple, int] = {}
    for i, (tags, caught) in enumerate(examples, 1):
        if caught:
            for inter in covering.interactions(tags, always):
                found.setdefault(inter, i)
    return found


def _name(inter: tuple) -> str:
    return "&".join(inter)


def measure(strategy: str, budget: int, seeds: list[int], progress: bool = True) -> dict:
    from tqdm import tqdm
    universe = covering.space()
    traces, seconds = {}, {}
    for s in tqdm(seeds, desc=f"{strategy:>6}", unit="seed", disable=not progress):
        t0 = time.perf_counter()
        traces[s] = trace(strategy, budget, s)
        seconds[s] = round(time.perf_counter() - t0, 2)
    return {"traces": traces, "seconds": seconds, "firsts": {s: first_catches(t, universe.always)
                                                            for s, t in traces.items()}}


def summarize(results: dict[str, dict], budget: int, seeds: list[int], ci_budget: int = 25) -> dict:
    """Per strategy: per interaction (``interactions``, the same order) the examples to first catch on each
    seed, and the figures the targets name."""
    universe = covering.space()
    inters = set(universe.pairs | universe.triples)
    for r in results.values():
        for f in r["firsts"].values():
            inters |= set(f)
    inters = sorted(inters, key=lambda i: (len(i), i))
    out = {"budget": budget, "seeds": seeds, "ci_budget": ci_budget, "pool": covering.POOL,
           "always_present_tags": sorted(universe.always),
           "pairs": sum(len(i) == 2 for i in inters), "triples": sum(len(i) == 3 for i in inters),
           "beyond_pool": sorted(_name(i) for i in inters if i not in universe.pairs | universe.triples),
           "interactions": [_name(i) for i in inters], "strategies": {}}
    for strategy, r in results.items():
        per = {i: [r["firsts"][s].get(i) for s in seeds] for i in inters}
        stats = {}
        for kind, size in (("pairs", 2), ("triples", 3)):
            rows = {i: v for i, v in per.items() if len(i) == size}
            # a seed that never caught counts as budget + 1 in the medians (a lower bound on its cost)
            flat = [budget + 1 if x is None else x for v in rows.values() for x in v]
            per_inter_median = [statistics.median(budget + 1 if x is None else x for x in v) for v in rows.values()]
            n_runs = len(flat)
            stats[kind] = {
                "total": len(rows),
                "caught_on_every_seed": sum(all(x is not None for x in v) for v in rows.values()),
                "never_reached": sorted(_name(i) for i, v in rows.items() if all(x is None for x in v)),
                "median_examples": statistics.median(flat) if flat else None,
                "median_of_interaction_medians": statistics.median(per_inter_median) if flat else None,
                "worst_examples": max(flat) if flat else None,
                "caught_within_ci_budget": round(sum(x is not None and x <= ci_budget for v in rows.values() for x in v)
                                                 / n_runs, 4) if n_runs else None,
                "slowest": [[_name(i), v] for i, v in sorted(rows.items(), key=lambda kv: (
                    -sum(budget + 1 if x is None else x for x in kv[1]), kv[0]))[:15]],
            }
        # aligned with report["interactions"]: the examples to first catch per seed ("-": not within budget)
        stats["first_catch"] = [" ".join("-" if x is None else str(x) for x in per[i]) for i in inters]
        stats["nudge_caught"] = [sum(c for _, c in r["traces"][s]) for s in seeds]
        stats["examples"] = [len(r["traces"][s]) for s in seeds]
        stats["seconds_per_seed"] = [r["seconds"][s] for s in seeds]
        out["strategies"][strategy] = stats
    return out


def ci_campaigns() -> dict:
    """The ``ci`` profile's campaign (25 examples) against the always-nudging transform, with and without
    covering examples: pairs its caught layouts reach / pairs possible."""
    from verifier.campaign import run_campaign
    out = {}
    for label, cover in (("before", False), ("after", True)):
        s = run_campaign([NUDGE_ALWAYS], profile="ci", progress=False, cover=cover)
        st = s["per_transform"][NUDGE_ALWAYS.name]
        inter = s["interactions"]
        out[label] = {"examples": st["examples"], "diverged": st["status"].get("diverged", 0),
                      "layouts_tried": s["layouts_tried"], "pairs_seen": inter["pairs_seen"],
                      "pairs_possible": inter["pairs_possible"],
                      "pair_share": round(inter["pairs_seen"] / inter["pairs_possible"], 4),
                      "triples_seen": inter["triples_seen"], "triples_possible": inter["triples_possible"]}
    return out


def check(results: dict, budget: int, seeds: list[int], n: int) -> list[dict]:
    """``n`` interactions (seeded choice) re-run as real mutants: their first catch must equal the trace's."""
    rng = random.Random(0)
    universe = covering.space()
    picks = rng.sample(sorted(universe.pairs), n - 1) + [sorted(universe.triples)[0]]
    out = []
    for strategy, r in results.items():
        for inter in picks:
            s = seeds[0]
            real = first_catch(mutants.interaction_mutant(*inter), strategy, budget, s)
            out.append({"strategy": strategy, "seed": s, "interaction": _name(inter), "real": real,
                        "trace": r["firsts"][s].get(inter), "equal": real == r["firsts"][s].get(inter)})
    return out


def markdown(report: dict, command: str) -> str:
    b, seeds = report["budget"], report["seeds"]
    lines = ["# Interaction teeth", "",
             "Examples until the oracle first catches a bug that only a combination of feature values shows "
             "(`benchmarks/interaction_teeth.py`; the mutant is the identity except on a layout carrying every "
             "tag of the interaction, where it nudges the output head by 1e-6 relative).", "",
             f"Measured with `{command}` on 2 shared CPU cores: budget {b} examples, hypothesis seeds {seeds}; "
             f"{report['pairs']} pairs of feature tags and {report['triples']} risky triples "
             f"(every pair of the tags a pool of {report['pool']} uniform draws combines, tags on every layout "
             f"left out: {', '.join(report['always_present_tags'])}; {len(report['beyond_pool'])} reached "
             f"beyond the pool).  A seed that never caught an interaction counts as {b + 1} in the medians.", "",
             "| strategy | kind | interactions | caught on every seed | never reached | median examples "
             "| median of per-interaction medians | worst | caught within 25 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, st in report["strategies"].items():
        for kind in ("pairs", "triples"):
            k = st[kind]
            worst = k["worst_examples"]
            lines.append(f"| {name} | {kind} | {k['total']} | {k['caught_on_every_seed']} | "
                         f"{len(k['never_reached'])} | {k['median_examples']} | "
                         f"{k['median_of_interaction_medians']} | {'never' if worst == b + 1 else worst} | "
                         f"{k['caught_within_ci_budget']:.1%} |")
    if "ci" in report:
        lines += ["", "The `ci` profile's campaign (`run_campaign(profile='ci')`, 25 examples, derandomized) against "
                  "the always-nudging transform: pairs its layouts reach (each layout's nudge caught).", "",
                  "| campaign | examples | nudge caught | distinct layouts | pairs caught / possible | share "
                  "| triples |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, c in report["ci"].items():
            lines.append(f"| {name} | {c['examples']} | {c['diverged']} | {c['layouts_tried']} | "
                         f"{c['pairs_seen']} / {c['pairs_possible']} | {c['pair_share']:.1%} | "
                         f"{c['triples_seen']} / {c['triples_possible']} |")
    for name, st in report["strategies"].items():
        lines += ["", f"## {name}: the slowest pairs", "", "| pair | examples to first catch per seed (- never) |",
                  "|---|---|"]
        lines += [f"| {p} | {' '.join('-' if x is None else str(x) for x in v)} |" for p, v in st["pairs"]["slowest"]]
    lines += ["", "## Risky triples", "", "| triple | " + " | ".join(report["strategies"]) + " |",
              "|---|" + "---|" * len(report["strategies"])]
    for k, name in enumerate(report["interactions"]):
        if name.count("&") == 2:
            lines.append(f"| {name} | " + " | ".join(st["first_catch"][k] for st in report["strategies"].values()) + " |")
    if report.get("check"):
        lines += ["", "Cross-check (real mutants re-run through hypothesis vs the trace): "
                  f"{sum(c['equal'] for c in report['check'])} / {len(report['check'])} equal."]
    lines += targets(report)
    return "\n".join(lines) + "\n"


def bound() -> dict:
    """What no covering can beat (unconstrained): :func:`fuzz.covering.one_a_row` per kind and
    :func:`fuzz.covering.lower_bound`."""
    kinds = covering.one_a_row()
    n, axes = covering.lower_bound()
    return {"one_a_row": {k: sorted(_name(p) for p in v) for k, v in kinds.items()},
            "one_a_row_total": len(set().union(*kinds.values())), "lower_bound": n, "lower_bound_axes": list(axes),
            "covering_rows_of_50": covering.covering_share(50)}


def targets(report: dict) -> list[str]:
    """Issue 18's targets, each met or not with its figure, and the bound behind the first."""
    after = report["strategies"].get("after")
    if after is None:
        return []
    b, seeds, p = report["budget"], report["seeds"], after["pairs"]
    rows = [("every pair caught on every seed within 50 examples",
             f"{p['caught_on_every_seed']} / {p['total']} pairs ({p['caught_on_every_seed'] / p['total']:.1%}) on "
             f"{len(seeds)} seeds, budget {b}", b <= 50 and p["caught_on_every_seed"] == p["total"]),
            ("median examples to first catch at most 15, over all pairs", f"{p['median_examples']}",
             p["median_examples"] <= 15)]
    if "ci" in report:
        c = report["ci"]["after"]
        rows.append(("the `ci` profile's 25 examples catch at least 80% of pair mutants",
                     f"{c['pairs_seen']} / {c['pairs_possible']} ({c['pair_share']:.1%})", c["pair_share"] >= 0.8))
    bench = report.get("bench_verify")
    if bench:  # lower only where every round is: one ratio a round, per CPU second (the steadier on a shared machine)
        r = bench["median_ratio"]
        cpu = [x["new"]["cpu"] / x["old"]["cpu"] for x in bench["rounds"]]
        rows.append(("verified layouts per second no lower than before",
                     f"today / {bench['against']}: {r['cpu']} per CPU second (rounds {min(cpu):.2f} to "
                     f"{max(cpu):.2f}), "
                     f"{r['wall']} per wall second (medians of {len(bench['rounds'])} alternating rounds, "
                     f"`{bench['file']}`; lower only if every round is)", max(cpu) >= 1.0))
    lines = ["", "## Targets (issue 18)", "",
             "From the figures above (the bound below and the `bench_verify` ratio are written by this benchmark too, "
             "or by `python -m benchmarks.interaction_teeth --render --bench FILE` from the JSON).", "",
             "| target | measured | |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {'met' if ok else 'not met'} |" for t, m, ok in rows]
    bd = report.get("bound")
    if bd:
        kinds = bd["one_a_row"]
        lines += ["", f"Why not every pair: {bd['one_a_row_total']} pairs are such that no layout holds two of them "
                  "(`fuzz.covering.one_a_row`, by the decoder's rules at two layers), so a covering of every pair has "
                  f"at least {bd['one_a_row_total']} rows, more than the {bd['covering_rows_of_50']} covering rows "
                  f"of a budget of {b} (or all {b}); on the pool of uniform draws {bd['lower_bound']} pairs are so "
                  "(`fuzz.covering.lower_bound`, `apart`).  The four kinds, no layout being two of them, each "
                  "holding one pair of its kind:", "",
                  "| kind | pairs | why one a layout |", "|---|---:|---|"]
        why = {"act x experts": "an activation only a dense MLP writes with an expert form: one dense layer and "
                                "one sparse, so one activation and one form",
               "layers:1 x act": "one layer, one activation",
               "xielu x mlp": "xIELU leaves no layer an MLP of its own: the spec's `mlp` tag alone",
               "mlp x mlp": "two dense layers, the second with its own MLP (never with xIELU)"}
        lines += [f"| {k} | {len(v)} | {why.get(k, '')} |" for k, v in kinds.items()]
    return lines


def _command(report: dict) -> str:
    """The command line that measured ``report`` (for a report written before it was stored)."""
    parts = [f"python -m benchmarks.interaction_teeth --budget {report['budget']} --seeds {len(report['seeds'])}"]
    if set(report["strategies"]) != set(STRATEGIES):
        parts.append("--strategy " + " ".join(report["strategies"]))
    if "ci" in report:
        parts.append("--ci")
    if report.get("check"):
        parts.append(f"--check {len(report['check']) // max(len(report['strategies']), 1)}")
    return " ".join(parts)


def _bench(path: str | None) -> dict | None:
    if not path:
        return None
    data = json.loads(Path(path).read_text())
    return {"against": data["against"], "head": data.get("head"), "median_ratio": data["median_ratio"],
            "rounds": data["rounds"], "file": str(Path(path).resolve().relative_to(ROOT))}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--strategy", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    ap.add_argument("--ci", action="store_true", help="also the ci profile's campaign with and without covering")
    ap.add_argument("--check", type=int, default=0, help="re-run N interactions as real mutants")
    ap.add_argument("--out", default=str(ROOT / "docs/data/interaction_teeth.json"))
    ap.add_argument("--md", default=str(ROOT / "docs/interactions.md"))
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--bench", help="a benchmarks.bench_verify --against JSON: its ratios in the targets")
    ap.add_argument("--render", action="store_true", help="rewrite the bound and the markdown from --out alone")
    args = ap.parse_args(argv)
    if args.render:
        report = json.loads(Path(args.out).read_text())
        st = report["strategies"]  # (the JSON sorts its keys: back to STRATEGIES' order)
        report["strategies"] = {k: st[k] for k in sorted(st, key=lambda k: (STRATEGIES + (k,)).index(k))}
        report["bound"] = bound()
        if args.bench:
            report["bench_verify"] = _bench(args.bench)
        report.setdefault("command", _command(report))
        atomic_write_text(Path(args.out), json.dumps(report, sort_keys=True, default=str, separators=(",", ":")))
        atomic_write_text(Path(args.md), markdown(report, report["command"]))
        return report
    seeds = list(range(args.seeds))
    started = time.perf_counter()
    results = {s: measure(s, args.budget, seeds, progress=not args.quiet) for s in args.strategy}
    report = summarize(results, args.budget, seeds)
    if args.ci:
        report["ci"] = ci_campaigns()
    if args.check:
        report["check"] = check(results, args.budget, seeds, args.check)
    report["bound"] = bound()
    if args.bench:
        report["bench_verify"] = _bench(args.bench)
    report["seconds"] = round(time.perf_counter() - started, 1)
    command = "python -m benchmarks.interaction_teeth " + " ".join(sys.argv[1:] if argv is None else argv)
    report["command"] = command.strip()
    atomic_write_text(Path(args.out), json.dumps(report, sort_keys=True, default=str, separators=(",", ":")))
    atomic_write_text(Path(args.md), markdown(report, report["command"]))
    for name, st in report["strategies"].items():
        for kind in ("pairs", "triples"):
            k = st[kind]
            print(f"{name:>6} {kind:<7} every seed {k['caught_on_every_seed']}/{k['total']}  never "
                  f"{len(k['never_reached'])}  median {k['median_examples']}  worst {k['worst_examples']}  "
                  f"within 25: {k['caught_within_ci_budget']:.1%}")
    if "ci" in report:
        print("ci:", report["ci"])
    if "check" in report:
        print("check:", sum(c["equal"] for c in report["check"]), "/", len(report["check"]), "equal")
    return report


if __name__ == "__main__":
    main()
