"""``archfuzz parity``: PyTorch float32 vs OpenVINO per device and precision hint on a layout or a checkpoint
(:func:`quant.parity.compare`, ``docs/parity.md``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from fuzz.errors import BadInput

from . import arguments, checks


def register(subparsers) -> None:
    from quant.parity import HINT_CHOICES, HINTS
    d = subparsers.add_parser("parity", help="PyTorch float32 vs OpenVINO per device and precision hint")
    src = d.add_mutually_exclusive_group()
    src.add_argument("--layout", type=arguments.readable_file, default=None,
                     help="layout JSON (weights from --seed, random ids)")
    src.add_argument("--checkpoint", type=arguments.checkpoint, default=None,
                     help="'default' (SmolLM2-135M; the default), a transformers dir, .safetensors in one, .gguf")
    d.add_argument("--transform", default=None, help="registry:name, applied in float64 before the export")
    d.add_argument("--option", action="append", type=arguments.key_value, metavar="KEY=VALUE", help="transform option")
    d.add_argument("--seq", type=arguments.int_at_least(2, "tokens per row"), default=None,
                   help="tokens per row (default 16 for a layout, 128 otherwise)")
    d.add_argument("--batch", type=arguments.int_at_least(1, "rows"), default=1)
    d.add_argument("--seed", type=arguments.seed, default=0, help="seed in [0, 2**32)")
    d.add_argument("--device", action="append", help="OpenVINO device (repeatable); default: every one it reports")
    d.add_argument("--hint", action="append", choices=list(HINT_CHOICES),
                   help=f"precision hint (repeatable); default {', '.join(HINTS)}")
    d.add_argument("--text", type=arguments.readable_file, default=None,
                   help="text whose tokens are compared; default: the evaluation split")
    d.add_argument("--timeout", type=arguments.float_in(0.0, True, "seconds per child process"), default=600.0,
                   help="seconds per child process")
    d.add_argument("--keep-ir", action="store_true", help="keep the IR, logs and logits under OUT/work")
    d.add_argument("--out", type=arguments.out_dir, default=None, help="folder for parity.json / parity.md")
    d.add_argument("--max-param-bytes", type=arguments.byte_count, default=None, metavar="BYTES",
                   help=checks.SIZE_HELP)
    d.set_defaults(func=run, check=check)


def check(args) -> None:
    """Transform and options, the layout (or the checkpoint-only flags), and the devices OpenVINO reports."""
    if args.option and not args.transform:
        raise BadInput("--option needs --transform (the options are the transform's)")
    if args.transform:
        checks.resolve_transform(args.transform, checks.key_values(args.option))
    if args.layout is not None:
        if args.text is not None:
            raise BadInput("--text applies to a checkpoint; a --layout is compared on seeded random ids")
        checks.load_layout("--layout ", args.layout, torch.float64, checks.size_limit(args))
    elif args.max_param_bytes is not None:
        raise BadInput("--max-param-bytes applies to --layout (a checkpoint is imported, not materialized)")
    checks.unique("--device", args.device)
    if args.device:
        from quant.parity import available_devices
        known = sorted(available_devices())
        for dev in args.device:
            if dev not in known:
                raise BadInput(f"--device {dev!r} is not a device OpenVINO reports here; devices: {known}")


def run(args) -> int:
    from fuzz.errors import Refusal
    from quant.parity import HINTS, compare, load_subject, parity_markdown, write_report
    try:
        model, ids, info = load_subject(args.layout, args.checkpoint, args.transform, checks.key_values(args.option),
                                        seq=args.seq, batch=args.batch, seed=args.seed, text=args.text)
    except Refusal as exc:
        print(f"archfuzz: nothing to export: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or f"runs/parity-{time.strftime('%Y%m%d-%H%M%S')}")
    report = compare(model, ids, devices=args.device, hints=args.hint or HINTS, timeout=args.timeout,
                     workdir=out / "work" if args.keep_ir else None)
    report["subject_info"] = info
    js, md = write_report(report, out)
    print(parity_markdown(report))
    print(f"report: {js}  {md}")
    return 0 if report["ok"] else 1
