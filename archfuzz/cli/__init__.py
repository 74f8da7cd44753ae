"""The ``archfuzz`` command line.

    archfuzz fuzz [--profile dev|ci|nightly|release] [--max-examples N] [--transform NAME ...]
                  [--seed S] [--dtype float64|float32] [--out DIR] [--require FIELD=VALUE ...]
                  [--corpus DIR | --no-corpus] [--timeout S] [--quiet] [--max-param-bytes B]
    archfuzz verify LAYOUT.json --transform NAME [--option KEY=VALUE ...] [--seed S] [--dtype ...]
                    [--json] [--max-param-bytes B]
    archfuzz transforms
    archfuzz replay [--root corpus/] [--no-update]
    archfuzz corpus seed|clean [--root corpus/] [--older-than S]
    archfuzz gate [--out DIR] [--root corpus/] [--max-examples N] [--no-checkpoint] [--no-extras] [--quiet]
    archfuzz quantize [--checkpoint PATH] --recipe R [--bits 2|3|4] [--group-size G] [--sym] [--iters N]
                      [--nsamples N] [--seqlen N] [--batch-size N] [--lr LR] [--seed S] [--alpha A]
                      [--preset cpu|paper] [--calib-text PATH] [--eval-text PATH] [--no-eval]
                      [--lowbit] [--lowbit-seq N] [--lowbit-new-tokens N] --out DIR
    archfuzz generate DIR --prompt TEXT [--max-new-tokens N] [--device D] [--backend default|PA|SDPA] [--f32]
                      [--chat] [--ignore-eos] [--json]
    archfuzz parity [--layout LAYOUT.json | --checkpoint default|PATH] [--transform NAME] [--option KEY=VALUE ...]
                    [--seq N] [--batch B] [--seed S] [--device D ...] [--hint f32|bf16|f16|default ...]
                    [--text PATH] [--timeout S] [--keep-ir] [--out DIR] [--max-param-bytes B]

Exit status: 0 when everything verified (refusals included), 1 when a transform failed, 2 on bad input:
one line on stderr naming the argument and what it allows, checked before any work starts (counts,
seeds in [0, 2**32), paths, transform names and their options against the transform's signature,
``--require`` against :func:`fuzz.strategies.check_constraints`, layout JSON, and the size guard:
a layout, or the largest layout ``--require`` allows, whose parameters exceed ``--max-param-bytes``
(default 4 GiB, or ``$ARCHFUZZ_MAX_PARAM_BYTES``) is refused before anything is allocated).

Adding a command: one module here with ``register(subparsers)`` (its subparser, choices read from the
module that defines them), ``run(args) -> int`` and, when something can be checked before any work,
``check(args)`` raising :class:`fuzz.errors.BadInput`; then list it in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import os
import sys

from fuzz.errors import BadInput

from . import corpus, fuzz, gate, generate, parity, quantize, replay, transforms, verify
from .arguments import Parser

# one module per command, each with register(subparsers) (its arguments; choices read from their owners)
# and run(args) -> exit status, optionally check(args) (raises BadInput before any work); in --help order
COMMANDS = (fuzz, verify, transforms, replay, corpus, gate, quantize, generate, parity)


def build_parser() -> argparse.ArgumentParser:
    """The ``archfuzz`` parser: every command of :data:`COMMANDS` registers its own subparser."""
    p = Parser(prog="archfuzz", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse, check every argument before any work, run; a user error is one line on stderr and exit 2."""
    from fuzz.materialize import MAX_PARAM_BYTES_ENV
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's own exit (a malformed argument: 2, --help: 0) is returned too
        return exc.code if isinstance(exc.code, int) else 2
    saved = os.environ.get(MAX_PARAM_BYTES_ENV)
    try:
        if getattr(args, "max_param_bytes", None) is not None:  # the limit materialize() applies, children too
            os.environ[MAX_PARAM_BYTES_ENV] = str(args.max_param_bytes)
        if getattr(args, "check", None) is not None:
            args.check(args)
        return args.func(args)
    except BadInput as exc:
        message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"archfuzz {args.command}: error: {message}", file=sys.stderr)
        return 2
    finally:
        if saved is None:
            os.environ.pop(MAX_PARAM_BYTES_ENV, None)
        else:
            os.environ[MAX_PARAM_BYTES_ENV] = saved


__all__ = ["COMMANDS", "build_parser", "main"]
