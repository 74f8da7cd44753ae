"""The ``archfuzz`` command line.

    archfuzz fuzz [--profile dev|ci|nightly|release] [--max-examples N] [--transform NAME ...]
                  [--seed S] [--dtype float64|float32] [--out DIR] [--require FIELD=VALUE ...]
    archfuzz verify LAYOUT.json --transform NAME [--option KEY=VALUE ...] [--seed S] [--dtype ...]
    archfuzz transforms

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


def _dtype(name: str) -> torch.dtype:
    return {"float64": torch.float64, "float32": torch.float32}[name]


def cmd_fuzz(args) -> int:
    from rich.console import Console

    from verifier.campaign import run_campaign, summary_markdown, write_summary
    summary = run_campaign(args.transform or default_transforms(), profile=args.profile,
                           max_examples=args.max_examples, seed=args.seed, constraints=_kv(args.require),
                           progress=not args.quiet, dtype=_dtype(args.dtype))
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
