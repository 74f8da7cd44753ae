"""``archfuzz verify``: one transform on one layout JSON, the verdict printed (and as JSON with ``--json``)."""

from __future__ import annotations

import json

from . import arguments, checks


def register(subparsers) -> None:
    from verifier.tolerance import DTYPES
    v = subparsers.add_parser("verify", help="verify one transform on one layout JSON")
    v.add_argument("layout")
    v.add_argument("--transform", required=True)
    v.add_argument("--option", action="append", type=arguments.key_value, metavar="KEY=VALUE",
                   help="transform option, checked against the transform's signature")
    v.add_argument("--seed", type=arguments.seed, default=0, help="weight seed in [0, 2**32)")
    v.add_argument("--dtype", default="float64", choices=list(DTYPES))
    v.add_argument("--json", action="store_true")
    v.add_argument("--max-param-bytes", type=arguments.byte_count, default=None, metavar="BYTES",
                   help=checks.SIZE_HELP)
    v.set_defaults(func=run, check=check)


def check(args) -> None:
    """The transform with its options, and the layout (whole JSON, size guard); both kept on ``args``."""
    args.resolved = checks.resolve_transform(args.transform, checks.key_values(args.option))
    args.loaded = checks.load_layout("", args.layout, checks.dtype(args.dtype), checks.size_limit(args))


def run(args) -> int:
    from verifier import verify
    if not hasattr(args, "loaded"):
        check(args)
    verdict = verify(args.resolved, args.loaded, seed=args.seed, dtype=checks.dtype(args.dtype))
    print(verdict)
    if args.json:
        print(json.dumps(verdict.to_dict(), indent=1))
    return 0 if verdict.ok or verdict.refused else 1
