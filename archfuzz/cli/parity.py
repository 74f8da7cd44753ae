"""``archfuzz parity``: PyTorch float32 vs OpenVINO per device and precision hint on a layout or a checkpoint
(:func:`quant.parity.compare`), or on a stateful artifact with its KV cache against its fake-quantized reference
(``--artifact``: :func:`quant.parity.stateful.compare_stateful`); ``docs/parity.md``."""

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
    d.add_argument("--artifact", type=arguments.existing_dir, default=None,
                   help="a stateful artifact (`archfuzz quantize --lowbit` writes OUT/openvino/genai): prefill and "
                        "cached decode steps against the PyTorch fake-quantized reference, the plain checkpoint "
                        "quantize saved (--checkpoint; default OUT, two folders up)")
    d.add_argument("--steps", type=arguments.int_at_least(1, "decode steps"), default=None,
                   help="with --artifact: greedy decode steps through the KV cache (default 4)")
    d.add_argument("--transform", default=None, help="registry:name, applied in float64 before the export")
    d.add_argument("--option", action="append", type=arguments.key_value, metavar="KEY=VALUE", help="transform option")
    d.add_argument("--seq", type=arguments.int_at_least(2, "tokens per row"), default=None,
                   help="tokens per row (default 16 for a layout, 128 otherwise; with --artifact the prompt)")
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
    if args.artifact is not None:
        check_artifact(args)
        return
    if args.steps is not None:
        raise BadInput("--steps applies to --artifact (a stateful artifact's cached decode steps)")
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
    check_devices(args.device)


def check_devices(devices) -> None:
    """Each ``--device`` once, and each one that OpenVINO reports on this machine."""
    checks.unique("--device", devices)
    if devices:
        from quant.parity import available_devices
        known = sorted(available_devices())
        for dev in devices:
            if dev not in known:
                raise BadInput(f"--device {dev!r} is not a device OpenVINO reports here; devices: {known}")


def check_artifact(args) -> None:
    from quant.stateful import MODEL_XML
    for flag, value in (("--layout", args.layout), ("--transform", args.transform), ("--option", args.option),
                        ("--keep-ir", args.keep_ir or None),
                        ("--max-param-bytes", args.max_param_bytes)):
        if value is not None:
            raise BadInput(f"{flag} does not apply to --artifact (the artifact is already exported and quantized)")
    if args.batch != 1:
        raise BadInput("--artifact runs batch 1 (one prompt, then its cached decode steps)")
    for f in (MODEL_XML, "archfuzz_artifact.json", "config.json"):
        if not (Path(args.artifact) / f).is_file():
            raise BadInput(f"--artifact {args.artifact!r}: {f} missing; `archfuzz quantize --lowbit` writes a stateful "
                           "artifact to OUT/openvino/genai")
    if args.checkpoint is None and not (Path(args.artifact).parent.parent / "archfuzz_quantize.json").is_file():
        raise BadInput(f"--artifact {args.artifact!r} is not inside the OUT of `archfuzz quantize`: give its "
                       "fake-quantized reference with --checkpoint")
    check_devices(args.device)


def run_artifact(args) -> int:
    from fuzz.layout import write_report as write_pair
    from quant.parity import HINTS
    from quant.parity.stateful import compare_stateful, reference_for, stateful_parity_markdown
    from quant.quantize import text_ids
    model, tok, ckpt = reference_for(args.artifact, args.checkpoint)
    seq = args.seq or 128
    stream, text_info = text_ids(tok, args.text, "evaluation")
    if stream.numel() < seq:
        raise BadInput(f"the text has {stream.numel()} tokens, fewer than --seq {seq}")
    report = compare_stateful(model, args.artifact, stream[None, :seq], steps=args.steps or 4, devices=args.device,
                              hints=args.hint or HINTS, timeout=args.timeout)
    report["subject_info"] = {"checkpoint": str(ckpt), "text": text_info}
    out = Path(args.out or f"runs/parity-{time.strftime('%Y%m%d-%H%M%S')}")
    md = stateful_parity_markdown(report)
    js, mdp = write_pair(out, "parity", report, md)
    print(md)
    print(f"report: {js}  {mdp}")
    return 0 if report["ok"] else 1


def run(args) -> int:
    if args.artifact is not None:
        return run_artifact(args)
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
