"""A fuzz campaign sharded by seed: one Ray task per (transform, seed), merged into one summary.

    python -m benchmarks.fuzz_shards [--seeds 0 1 2 3] [--transform REG:NAME ...] [--profile ci]
        [--max-examples N] [--engine ray|serial] [--address ADDR] [--num-cpus N] [--out runs/fuzz-shards]
        [--corpus corpus] [--no-corpus] [--reduce-steps N] [--timeout S]

Each shard is :func:`verifier.campaign.run_campaign` on one transform with one seed (its covering examples and
hypothesis draws both follow the seed), run as a cell of :mod:`benchmarks.ray_cells` (cached under
``OUT/cache`` with the code's identity in the key, so a rerun of unchanged code resumes and a change reruns).
Shards never write the corpus (two tasks could race on one entry); they name known failures by signature.
The driver merges: per transform, the examples and verdicts summed over seeds, the worst error, the seeds each
failure appeared in; pair coverage over the union of every shard's layouts; and it records each new finding's
minimal layout in the corpus itself, once, after re-verifying it (``--no-corpus``: listed, not recorded).
``OUT/summary.json`` and ``OUT/summary.md`` are written atomically; the exit status is 1 when a shard found
something new or failed to run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from benchmarks.ray_cells import ENGINES, REPO, run_cells


def code_identity() -> str:
    """The checkout's commit and a digest of its uncommitted changes ("unknown" outside git): cached shards
    are reused only for the code that produced them."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        diff = subprocess.run(["git", "diff", "HEAD"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+{hashlib.sha256(diff).hexdigest()[:12]}" if diff else head


def run_shard(cell: dict) -> dict:
    """One transform, one seed: the campaign summary (known failures named, nothing recorded)."""
    from verifier.campaign import run_campaign
    return run_campaign([cell["transform"]], profile=cell["profile"], max_examples=cell["max_examples"],
                        seed=cell["seed"], constraints=cell["constraints"], progress=False,
                        corpus=cell["corpus"], record=False, per_example_timeout=cell["timeout"],
                        reduce_steps=cell["reduce_steps"])


def merge(cells: list[dict], results: list[dict], constraints: dict) -> dict:
    """One summary over every shard (module docstring)."""
    from fuzz import covering
    per: dict[str, dict] = {}
    failures: dict[str, dict] = {}
    tags: list[frozenset[str]] = []
    errors = []
    for cell, res in zip(cells, results):
        name, seed = cell["transform"], cell["seed"]
        if "error" in res:
            errors.append({"transform": name, "seed": seed, "error": res["error"]})
            continue
        tags += [frozenset(t) for t in res["layout_tags"]]
        for tname, st in res["per_transform"].items():
            agg = per.setdefault(tname, {"seeds": [], "examples": 0, "status": Counter(), "worst_rel_err": 0.0,
                                         "seconds": 0.0, "kind": st["kind"]})
            agg["seeds"].append(seed)
            agg["examples"] += st["examples"]
            agg["status"].update(st["status"])
            agg["worst_rel_err"] = max(agg["worst_rel_err"], st["worst_rel_err"])
            agg["seconds"] += st["seconds"]
        for f in res["failures"]:
            seen = failures.setdefault(f["signature"], {**f, "seeds": []})
            seen["seeds"].append(seed)
    for agg in per.values():
        agg["status"] = dict(agg["status"])
        agg["seconds"] = round(agg["seconds"], 2)
    reached = covering.space(**constraints).reached(tags)
    missing = reached.pop("pairs_missing")
    return {"shards": len(cells), "shards_failed": len(errors), "errors": errors, "per_transform": per,
            "layouts_tried": len(set(tags)), "interactions": {**reached, "pairs_missing": len(missing),
                                                               "pairs_missing_first": [list(p) for p in missing[:20]]},
            "failures": list(failures.values()),
            "new_findings": sum(f["outcome"] == "new" for f in failures.values())}


def record_new(summary: dict, corpus: str) -> None:
    """Re-verify each new finding's minimal layout and write it to the corpus (deduplicated by signature)."""
    from fuzz.layout import Layout
    from verifier import verify
    from verifier.campaign import campaign_transform, record_reduced
    for f in summary["failures"]:
        if f["outcome"] != "new":
            continue
        transform = campaign_transform(f["transform"])
        verdict = verify(transform, Layout.from_json(json.dumps(f["minimal_layout"])), seed=f["verdict"]["seed"])
        if verdict.ok:
            f["corpus_entry"] = "not recorded: the minimal layout no longer fails when re-verified"
            continue
        f["corpus_entry"], f["new_entry"] = record_reduced(transform, verdict, corpus)


def markdown(summary: dict, args) -> str:
    inter = summary["interactions"]
    share = inter["pairs_seen"] / inter["pairs_possible"] if inter["pairs_possible"] else 1.0
    lines = [f"# archfuzz campaign sharded by seed ({args.profile}, seeds {', '.join(map(str, args.seeds))})", "",
             f"{summary['shards']} shard(s) ({summary['shards_failed']} failed to run); {summary['layouts_tried']} "
             f"distinct layouts; pair coverage over all shards {inter['pairs_seen']} / {inter['pairs_possible']} "
             f"({share:.1%}); {summary['new_findings']} new finding(s)", "",
             "| transform | seeds | examples | invariant | refused | failed verdicts | worst rel err | CPU s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, st in sorted(summary["per_transform"].items()):
        s = st["status"]
        bad = sum(v for k, v in s.items() if k not in ("invariant", "refused"))
        lines.append(f"| {name} | {len(st['seeds'])} | {st['examples']} | {s.get('invariant', 0)} | "
                     f"{s.get('refused', 0)} | {bad} | {st['worst_rel_err']:.2e} | {st['seconds']} |")
    for f in summary["failures"]:
        lines += ["", f"## {f['transform']}: {f['status']} ({f['outcome']}; seeds {f['seeds']})", "",
                  f"- signature {f['signature']}; features: {', '.join(f['features'])}",
                  f"- corpus: {f.get('corpus_entry') or 'not recorded'}"]
    for e in summary["errors"]:
        lines += ["", f"- shard {e['transform']} seed {e['seed']} failed to run: {e['error'][:300]}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from archfuzz.cli.fuzz import default_transforms
    from fuzz.layout import write_report
    from verifier.campaign import REDUCE_STEPS
    from verifier.corpus import DEFAULT_ROOT

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--transform", action="append", help="registry:name (repeatable); default: every "
                    "registered transform but the mutants")
    ap.add_argument("--profile", default="ci")
    ap.add_argument("--max-examples", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per example")
    ap.add_argument("--reduce-steps", type=int, default=REDUCE_STEPS, help="candidates tried per reduced failure")
    ap.add_argument("--engine", default="ray", choices=ENGINES)
    ap.add_argument("--address", default=None)
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/fuzz-shards"))
    ap.add_argument("--corpus", default=str(DEFAULT_ROOT))
    ap.add_argument("--no-corpus", action="store_true", help="list new findings without recording them")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    transforms = args.transform or default_transforms()
    code = code_identity()
    corpus = str(Path(args.corpus).resolve())
    cells = [{"name": f"fuzz-{t.replace(':', '_')}-s{s}", "transform": t, "seed": s, "profile": args.profile,
              "max_examples": args.max_examples, "constraints": {}, "corpus": corpus, "timeout": args.timeout,
              "reduce_steps": args.reduce_steps, "code": code} for t in transforms for s in args.seeds]
    results = run_cells(run_shard, cells, args.out / "cache", engine=args.engine, address=args.address,
                        num_cpus=args.num_cpus, progress=not args.no_progress, desc="shards")
    summary = merge(cells, results, {})
    if not args.no_corpus:
        record_new(summary, corpus)
    summary.update({"profile": args.profile, "seeds": args.seeds, "code": code, "transforms": transforms})
    md = markdown(summary, args)
    js, mdp = write_report(args.out, "summary", summary, md)
    print(md)
    print(f"summary: {js}  {mdp}")
    return 1 if summary["new_findings"] or summary["shards_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
