"""``archfuzz corpus seed|clean``: record the mutants, expected refusals and known third-party findings
(:func:`verifier.corpus_seed.seed`), or remove temp leftovers of interrupted writes."""

from __future__ import annotations

import sys
from pathlib import Path

from fuzz.errors import BadInput

from . import arguments, checks


def corpus_dir(root: str, command: str, *, create: bool = False) -> Path:
    """``--root`` of ``command`` as a folder; ``BadInput`` when it is missing (unless ``create``) or a file."""
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise BadInput(f"{command} --root: {root!r} is not a folder (give the corpus folder)")
    if not path.exists() and not create:
        raise BadInput(f"{command} --root: no such folder {root!r} (give an existing corpus folder)")
    return path


def age_text(seconds: float) -> str:
    """An age for people: seconds below 2 min, minutes below 2 h, else hours."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 \
        else f"{seconds / 3600:.1f} h"


def register(subparsers) -> None:
    c = subparsers.add_parser("corpus", help="corpus maintenance: seed, clean",
                              description="seed: record the mutants, the expected refusals and the known third-party "
                              "findings (the folder is created if missing); exit 1 when a mutant is not caught or a "
                              "refusal is not made.  clean: remove temp leftovers of interrupted writes (.<sig>.* "
                              "folders, .<file>.*.tmp files) older than --older-than seconds, never an entry; prints "
                              "what it removed.  Exit 0, or 2 on bad arguments.")
    c.add_argument("action", choices=["seed", "clean"])
    c.add_argument("--root", type=arguments.any_path, default=str(checks.corpus_root()), help="corpus folder")
    c.add_argument("--older-than", type=arguments.float_in(0.0, False, "seconds"), default=None, metavar="SECONDS",
                   help="clean only: leftovers at least this old (default 3600; 0 removes all)")
    c.set_defaults(func=run)


def run(args) -> int:
    if args.action == "clean":
        from verifier.corpus import clean_leftovers
        root = corpus_dir(args.root, "corpus clean")
        older = 3600.0 if args.older_than is None else args.older_than
        removed = clean_leftovers(root, older_than=older)
        for left in removed:
            print(f"removed {left.path} ({left.what}, {age_text(left.age_s)} old)")
        print(f"{len(removed)} temp leftovers older than {older:g} s removed under {root}")
        return 0
    if args.older_than is not None:
        raise BadInput("corpus --older-than: applies to 'corpus clean' only")
    from verifier.corpus_seed import seed
    try:
        made = seed(corpus_dir(args.root, "corpus seed", create=True))
    except AssertionError as exc:  # a mutant not caught, or a refusal no longer made: the seed is wrong now
        print(f"archfuzz corpus seed: {exc}", file=sys.stderr)
        return 1
    for name, path, created in made:
        print(f"{'new ' if created else 'kept'} {path.name}  {name}")
    return 0
