"""``archfuzz gate``: the pre-release invariance gate (:func:`archfuzz.gate.run_gate`); prints ``gate.md``."""

from __future__ import annotations

import time
from pathlib import Path

from . import arguments, checks


def register(subparsers) -> None:
    g = subparsers.add_parser("gate", help="the pre-release invariance gate")
    g.add_argument("--out", type=arguments.out_dir, default=f"runs/gate-{time.strftime('%Y%m%d-%H%M%S')}")
    g.add_argument("--root", type=arguments.existing_dir, default=str(checks.corpus_root()),
                   help="corpus folder (must exist)")
    g.add_argument("--max-examples", type=arguments.int_at_least(1, "examples per transform"), default=None)
    g.add_argument("--no-checkpoint", action="store_true", help="skip the real-checkpoint stage")
    g.add_argument("--no-extras", action="store_true", help="skip the quantization smoke and the device parity")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=run)


def run(args) -> int:
    from archfuzz.gate import run_gate
    report = run_gate(out=args.out, corpus=args.root, max_examples=args.max_examples,
                      checkpoint=not args.no_checkpoint, progress=not args.quiet, extras=not args.no_extras)
    print(Path(args.out, "gate.md").read_text())
    return 0 if report["ok"] else 1
