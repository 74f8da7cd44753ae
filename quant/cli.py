"""The ``archfuzz`` command line.

    archfuzz fuzz [--profile dev|ci|nightly|release] [--max-examples N] [--transform NAME ...]
                  [--seed S] [--dtype float64|float32] [--out DIR] [--require FIELD=VALUE ...]
    archfuzz verify LAYOUT.json --transform NAME [--option KEY=VALUE ...] [--seed S] [--dtype ...]
    archfuzz transforms
    archfuzz replay [--root corpus/] [--no-update]
    archfuzz corpus seed [--root corpus/]
    archfuzz gate [--out DIR] [--max-examples N] [--no-checkpoint]

Exit status: 0 when everything verified (refusals included), 1 when a transform failed, 2 on bad input.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

import torch

from fuzz.errors import BadInput



def default_transforms() -> list[str]:
    """Every registered transform except the deliberately buggy mutants."""
    from verifier.registry import available
    return [f"{reg}:{name}" for reg, names in available().items() if reg != "mutants" for name in names]


def _kv(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise BadInput(f"expected KEY=VALUE, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _corpus_root() -> Path:
    from verifier.corpus import DEFAULT_ROOT
    return DEFAULT_ROOT


def _dtype(name: str) -> torch.dtype:
    return {"float64": torch.float64, "float32": torch.float32}[name]


def cmd_fuzz(args) -> int:
    from rich.console import Console

    from verifier.campaign import run_campaign, summary_markdown, write_summary
    summary = run_campaign(args.transform or default_transforms(), profile=args.profile,
                           max_examples=args.max_examples, seed=args.seed, constraints=_kv(args.require),
                           progress=not args.quiet, dtype=_dtype(args.dtype),
                           corpus=None if args.no_corpus else args.corpus)
    out = Path(args.out or f"runs/fuzz-{time.strftime('%Y%m%d-%H%M%S')}")
    js, md = write_summary(summary, out)
    console = Console()
    console.print(summary_markdown(summary).split("\n| feature")[0])
    console.print(f"summary: {js}  {md}")
    return 0 if summary["ok"] else 1


def cmd_verify(args) -> int:
    from fuzz import Layout
    from verifier import verify
    from verifier.registry import resolve
    layout = Layout.load(args.layout)
    verdict = verify(resolve(args.transform, **_kv(args.option)), layout, seed=args.seed, dtype=_dtype(args.dtype))
    print(verdict)
    if args.json:
        print(json.dumps(verdict.to_dict(), indent=1))
    return 0 if verdict.ok or verdict.refused else 1


def cmd_replay(args) -> int:
    from verifier.corpus import load_entries, replay
    entries, bad = load_entries(args.root)
    regressions = 0
    for entry in entries:
        result = replay(entry, update=not args.no_update)
        regressions += result.regression
        print(f"{'REGRESSION ' if result.regression else ''}{entry.name} [{entry.meta['kind']}, "
              f"{entry.meta['status']}]: {result.outcome}")
    for path, reason in bad:
        print(f"CORRUPT {path}: {reason}")
    print(f"{len(entries)} entries replayed, {regressions} regressions, {len(bad)} corrupt")
    return 1 if regressions or bad else 0


def cmd_corpus(args) -> int:
    from verifier.corpus_seed import seed
    for name, path, created in seed(args.root):
        print(f"{'new ' if created else 'kept'} {path.name}  {name}")
    return 0


def cmd_gate(args) -> int:
    from verifier.gate import run_gate
    report = run_gate(out=args.out, corpus=args.root, max_examples=args.max_examples,
                      checkpoint=not args.no_checkpoint, progress=not args.quiet)
    print(Path(args.out, "gate.md").read_text())
    return 0 if report["ok"] else 1


def cmd_transforms(args) -> int:
    from verifier.registry import available
    for registry, names in available().items():
        print(f"{registry}: {', '.join(names)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="archfuzz", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fuzz", help="layout-discovery campaign")
    f.add_argument("--profile", default="ci", choices=["dev", "ci", "nightly", "release"])
    f.add_argument("--max-examples", type=int, default=None)
    f.add_argument("--transform", action="append", help="registry:name (repeatable); default: every registered transform but the mutants")
    f.add_argument("--seed", type=int, default=None)
    f.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    f.add_argument("--require", action="append", metavar="FIELD=VALUE", help="pin a layout feature")
    f.add_argument("--out", default=None, help="folder for summary.json / summary.md")
    f.add_argument("--quiet", action="store_true")
    f.add_argument("--corpus", default=str(_corpus_root()), help="where reduced failures are recorded")
    f.add_argument("--no-corpus", action="store_true", help="do not record failures")
    f.set_defaults(func=cmd_fuzz)
    v = sub.add_parser("verify", help="verify one transform on one layout JSON")
    v.add_argument("layout")
    v.add_argument("--transform", required=True)
    v.add_argument("--option", action="append", metavar="KEY=VALUE")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)
    t = sub.add_parser("transforms", help="list the named transforms")
    t.set_defaults(func=cmd_transforms)
    r = sub.add_parser("replay", help="replay the regression corpus")
    r.add_argument("--root", default=str(_corpus_root()))
    r.add_argument("--no-update", action="store_true", help="do not write outcomes into meta.json")
    r.set_defaults(func=cmd_replay)
    c = sub.add_parser("corpus", help="corpus maintenance")
    c.add_argument("action", choices=["seed"])
    c.add_argument("--root", default=str(_corpus_root()))
    c.set_defaults(func=cmd_corpus)
    g = sub.add_parser("gate", help="the pre-release invariance gate")
    g.add_argument("--out", default=f"runs/gate-{time.strftime('%Y%m%d-%H%M%S')}")
    g.add_argument("--root", default=str(_corpus_root()))
    g.add_argument("--max-examples", type=int, default=None)
    g.add_argument("--no-checkpoint", action="store_true", help="skip the real-checkpoint stage")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=cmd_gate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BadInput as exc:
        print(f"archfuzz: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
