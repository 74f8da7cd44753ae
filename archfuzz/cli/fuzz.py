"""``archfuzz fuzz``: a layout-discovery campaign (:func:`verifier.campaign.run_campaign`); new failures are
reduced and recorded in the corpus, known ones named by their entry, mutants counted as caught."""

from __future__ import annotations

import time
from pathlib import Path

from fuzz.errors import BadInput

from . import arguments, checks


def default_transforms() -> list[str]:
    """Every registered transform except the deliberately buggy mutants."""
    from verifier.registry import available
    return [f"{reg}:{name}" for reg, names in available().items() if reg != "mutants" for name in names]


def register(subparsers) -> None:
    from fuzz.profiles import PROFILES
    from verifier.tolerance import DTYPES
    f = subparsers.add_parser("fuzz", help="layout-discovery campaign")
    f.add_argument("--profile", default="ci", choices=list(PROFILES))
    f.add_argument("--max-examples", type=arguments.int_at_least(1, "examples per transform"), default=None,
                   help="examples per transform (>= 1; default: the profile's)")
    f.add_argument("--transform", action="append", help="registry:name (repeatable); default: every registered transform but the mutants")
    f.add_argument("--seed", type=arguments.seed, default=None, help="campaign seed in [0, 2**32)")
    f.add_argument("--dtype", default="float64", choices=list(DTYPES))
    f.add_argument("--require", action="append", type=arguments.key_value, metavar="FIELD=VALUE",
                   help="pin a layout feature (fuzz.strategies.check_constraints says what is accepted)")
    f.add_argument("--out", type=arguments.out_dir, default=None, help="folder for summary.json / summary.md")
    f.add_argument("--quiet", action="store_true")
    f.add_argument("--corpus", type=arguments.out_dir, default=str(checks.corpus_root()),
                   help="where reduced failures are recorded")
    f.add_argument("--no-corpus", action="store_true", help="do not record new failures (known ones are still named)")
    f.add_argument("--timeout", type=arguments.float_in(0.0, True, "seconds per example"), default=60.0,
                   metavar="SECONDS",
                   help="per example: a transform that runs longer gets a 'timeout' verdict (default 60)")
    f.add_argument("--max-param-bytes", type=arguments.byte_count, default=None, metavar="BYTES",
                   help=checks.SIZE_HELP + "; the largest layout --require allows must fit")
    f.set_defaults(func=run, check=check)


def check(args) -> None:
    """Transforms known and distinct, ``--require`` accepted, and its largest layout under the size guard."""
    from fuzz import build
    from fuzz.materialize import check_size
    from fuzz.strategies import largest_spec
    checks.unique("--transform", args.transform)
    for name in args.transform or []:
        checks.resolve_transform(name)
    try:
        largest = build(largest_spec(**checks.key_values(args.require)))
    except BadInput as exc:
        raise BadInput(f"--require: {exc}") from None
    try:
        check_size(largest, checks.dtype(args.dtype), checks.size_limit(args))
    except BadInput as exc:
        raise BadInput(f"--require allows layouts too large: {exc}; lower max_hidden / max_layers or raise "
                       f"--max-param-bytes") from None


def run(args) -> int:
    from verifier.campaign import run_campaign, summary_markdown, write_summary
    summary = run_campaign(args.transform or default_transforms(), profile=args.profile,
                           max_examples=args.max_examples, seed=args.seed, constraints=checks.key_values(args.require),
                           progress=not args.quiet, dtype=checks.dtype(args.dtype), corpus=args.corpus,
                           record=not args.no_corpus, per_example_timeout=args.timeout)
    out = Path(args.out or f"runs/fuzz-{time.strftime('%Y%m%d-%H%M%S')}")
    js, md = write_summary(summary, out)
    print(summary_markdown(summary).split("\n| feature")[0])  # plain text: table rows and paths unwrapped
    for f in summary["failures"]:
        if f["outcome"] == "new":
            where = f["corpus_entry"] or "not recorded (--no-corpus)"
            print(f"NEW {f['transform']}: {f['status']} ({', '.join(f['features'])}): {where}")
        elif f["outcome"] == "known":
            print(f"known {f['transform']}: {f['status']}: {f['corpus_entry']}")
        else:
            print(f"mutant caught {f['transform']}: {f['status']}"
                  + (f": {f['corpus_entry']}" if f["corpus_entry"] else ""))
    print(f"{summary['new_findings']} new finding(s), {summary['known_failures']} known, "
          f"{summary['mutants_caught']} mutant failure(s) caught; summary: {js}  {md}", flush=True)
    return 0 if summary["ok"] else 1
