"""``archfuzz transforms``: every registry with its transform names."""

from __future__ import annotations


def register(subparsers) -> None:
    t = subparsers.add_parser("transforms", help="list the named transforms")
    t.set_defaults(func=run)


def run(args) -> int:
    from verifier.registry import available
    for registry, names in available().items():
        print(f"{registry}: {', '.join(names)}")
    return 0
