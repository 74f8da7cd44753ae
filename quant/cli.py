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
                      [--lowbit] [--lowbit-seq N] --out DIR
    archfuzz parity [--layout LAYOUT.json | --checkpoint default|PATH] [--transform NAME] [--option KEY=VALUE ...]
                    [--seq N] [--batch B] [--seed S] [--device D ...] [--hint f32|bf16|f16|default ...]
                    [--text PATH] [--timeout S] [--keep-ir] [--out DIR] [--max-param-bytes B]

Exit status: 0 when everything verified (refusals included), 1 when a transform failed, 2 on bad input:
one line on stderr naming the argument and what it allows, checked before any work starts (counts,
seeds in [0, 2**32), paths, transform names and their options against the transform's signature,
``--require`` against :func:`fuzz.strategies.check_constraints`, layout JSON, and the size guard:
a layout, or the largest layout ``--require`` allows, whose parameters exceed ``--max-param-bytes``
(default 4 GiB, or ``$ARCHFUZZ_MAX_PARAM_BYTES``) is refused before anything is allocated).
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import torch

from fuzz.errors import BadInput
from fuzz.layout import atomic_write_text



def default_transforms() -> list[str]:
    """Every registered transform except the deliberately buggy mutants."""
    from verifier.registry import available
    return [f"{reg}:{name}" for reg, names in available().items() if reg != "mutants" for name in names]


def _kv(items: list[str]) -> dict:
    """``KEY=VALUE`` strings as a dict, values parsed as Python literals (else kept as strings)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"expected KEY=VALUE, got {item!r}")
        if key in out:
            raise BadInput(f"{key!r} given twice ({key}={out[key]!r} and {item!r})")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _corpus_root() -> Path:
    from verifier.corpus import DEFAULT_ROOT
    return DEFAULT_ROOT


def _dtype(name: str) -> torch.dtype:
    from verifier.tolerance import DTYPE_BY_NAME
    return DTYPE_BY_NAME[name]


# ------------------------------------------------------------------ argument types (argparse type=)
SEED_LIMIT = 2**32  # numpy's seeding limit; auto-round and torch accept it too


class _Parser(argparse.ArgumentParser):
    """argparse with its error as ONE line on stderr (``archfuzz verify: error: argument ...``), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(low: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected {what} (an integer >= {low}), got {text!r}")
        return value
    return parse


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected a seed, an integer in [0, 2**32), got {text!r}")
    return value


def _float_in(low: float, strict: bool, what: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low or strict and value == low:
            raise argparse.ArgumentTypeError(f"expected {what} (a finite number {'>' if strict else '>='} {low:g}), "
                                             f"got {text!r}")
        return value
    return parse


_UNITS = {"": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def _byte_count(text: str) -> int:
    """A positive number of bytes: ``4294967296`` or ``4GiB`` (KiB, MiB, GiB, TiB)."""
    m = re.fullmatch(r"\s*(\d+)\s*(KiB|MiB|GiB|TiB)?\s*", text)
    value = int(m.group(1)) * _UNITS[m.group(2) or ""] if m else 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of bytes (e.g. 4294967296 or 4GiB), "
                                         f"got {text!r}")
    return value


def _key_value(text: str) -> str:
    key, sep, _ = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return text


def _out_dir(text: str) -> str:
    """A folder to write into: an existing folder, or a new one whose nearest existing parent is a
    writable folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder, got an empty path")
    path = Path(text)
    if path.exists():
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"folder {text!r} is not writable")
        return text
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot create folder {text!r}: {str(parent)!r} is not a writable folder")
    return text


def _path(text: str) -> str:
    """Any path but the empty one (``Path("")`` would silently mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty one")
    return text


def _existing_dir(text: str) -> str:
    if not text.strip() or not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not an existing folder")
    return text


def _readable_file(text: str) -> str:
    path = Path(text)
    if not text.strip() or not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not an existing file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"file {text!r} is not readable")
    return text


def _checkpoint(text: str) -> str:
    """``default`` or an existing path (what it holds is checked by the loader, also before any work)."""
    if text != "default" and (not text.strip() or not Path(text).exists()):
        raise argparse.ArgumentTypeError(f"expected 'default' or an existing checkpoint path, got {text!r}")
    return text


# ------------------------------------------------------------------ checks before any work (BadInput -> 2)
def _unique(flag: str, values: list[str] | None) -> None:
    seen = set()
    for v in values or []:
        if v in seen:
            raise BadInput(f"{flag} {v!r} given twice")
        seen.add(v)


def _resolve(name: str, options: dict | None = None):
    """The transform ``name`` with ``options`` (names and types checked against its signature)."""
    from verifier.registry import resolve
    return resolve(name, **(options or {}))


def _size_limit(args) -> int:
    from fuzz.materialize import max_param_bytes_default
    return args.max_param_bytes if args.max_param_bytes is not None else max_param_bytes_default()


def _load_layout(flag: str, path: str, dtype: torch.dtype, limit: int):
    """The layout at ``path``, malformed JSON and the size guard checked before anything is allocated."""
    from fuzz import Layout
    from fuzz.materialize import check_size
    layout = Layout.load(path)
    try:
        check_size(layout, dtype, limit)
    except BadInput as exc:
        raise BadInput(f"{flag}{path}: {exc}") from None
    return layout


def check_fuzz(args) -> None:
    from fuzz import build
    from fuzz.materialize import check_size
    from fuzz.strategies import largest_spec
    _unique("--transform", args.transform)
    for name in args.transform or []:
        _resolve(name)
    try:
        largest = build(largest_spec(**_kv(args.require)))
    except BadInput as exc:
        raise BadInput(f"--require: {exc}") from None
    try:
        check_size(largest, _dtype(args.dtype), _size_limit(args))
    except BadInput as exc:
        raise BadInput(f"--require allows layouts too large: {exc}; lower max_hidden / max_layers or raise "
                       f"--max-param-bytes") from None


def check_verify(args) -> None:
    args.resolved = _resolve(args.transform, _kv(args.option))
    args.loaded = _load_layout("", args.layout, _dtype(args.dtype), _size_limit(args))


def check_quantize(args) -> None:
    if args.no_eval and args.eval_text is not None:
        raise BadInput("--eval-text has no use with --no-eval (nothing is evaluated)")


def check_parity(args) -> None:
    if args.option and not args.transform:
        raise BadInput("--option needs --transform (the options are the transform's)")
    if args.transform:
        _resolve(args.transform, _kv(args.option))
    if args.layout is not None:
        if args.text is not None:
            raise BadInput("--text applies to a checkpoint; a --layout is compared on seeded random ids")
        _load_layout("--layout ", args.layout, torch.float64, _size_limit(args))
    elif args.max_param_bytes is not None:
        raise BadInput("--max-param-bytes applies to --layout (a checkpoint is imported, not materialized)")
    _unique("--device", args.device)
    if args.device:
        from quant.parity import _devices
        known = sorted(_devices())
        for dev in args.device:
            if dev not in known:
                raise BadInput(f"--device {dev!r} is not a device OpenVINO reports here; devices: {known}")


def cmd_fuzz(args) -> int:
    from verifier.campaign import run_campaign, summary_markdown, write_summary
    summary = run_campaign(args.transform or default_transforms(), profile=args.profile,
                           max_examples=args.max_examples, seed=args.seed, constraints=_kv(args.require),
                           progress=not args.quiet, dtype=_dtype(args.dtype), corpus=args.corpus,
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


def cmd_verify(args) -> int:
    from verifier import verify
    if not hasattr(args, "loaded"):
        check_verify(args)
    verdict = verify(args.resolved, args.loaded, seed=args.seed, dtype=_dtype(args.dtype))
    print(verdict)
    if args.json:
        print(json.dumps(verdict.to_dict(), indent=1))
    return 0 if verdict.ok or verdict.refused else 1


def _corpus_dir(root: str, command: str, *, create: bool = False) -> Path:
    """``--root`` of ``command`` as a folder; ``BadInput`` when it is missing (unless ``create``) or a file."""
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise BadInput(f"{command} --root: {root!r} is not a folder (give the corpus folder)")
    if not path.exists() and not create:
        raise BadInput(f"{command} --root: no such folder {root!r} (give an existing corpus folder)")
    return path


def _age(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 \
        else f"{seconds / 3600:.1f} h"


def cmd_replay(args) -> int:
    from verifier.corpus import find_leftovers, load_entries, replay
    root = _corpus_dir(args.root, "replay")
    entries, bad = load_entries(root)
    regressions = 0
    for entry in entries:
        result = replay(entry, update=not args.no_update)
        regressions += result.regression
        why = f": {result.reason}: {result.verdict}" if result.regression else ""
        print(f"{'REGRESSION ' if result.regression else ''}{entry.name} [{entry.meta['kind']}, "
              f"{entry.meta['status']}]: {result.outcome}{why}", flush=True)
    for path, reason in bad:
        print(f"CORRUPT {path}: {reason}")
    leftovers = find_leftovers(root)
    for left in leftovers:
        print(f"LEFTOVER {left.path}: {left.what}, {_age(left.age_s)} old (archfuzz corpus clean removes it)")
    print(f"{len(entries)} entries replayed, {regressions} regressions, {len(bad)} corrupt"
          + (" (corrupt entries fail the replay: fix or move them)" if bad else "")
          + (f", {len(leftovers)} temp leftovers" if leftovers else ""))
    return 1 if regressions or bad else 0


def cmd_corpus(args) -> int:
    if args.action == "clean":
        from verifier.corpus import clean_leftovers
        root = _corpus_dir(args.root, "corpus clean")
        older = 3600.0 if args.older_than is None else args.older_than
        removed = clean_leftovers(root, older_than=older)
        for left in removed:
            print(f"removed {left.path} ({left.what}, {_age(left.age_s)} old)")
        print(f"{len(removed)} temp leftovers older than {older:g} s removed under {root}")
        return 0
    if args.older_than is not None:
        raise BadInput("corpus --older-than: applies to 'corpus clean' only")
    from verifier.corpus_seed import seed
    try:
        made = seed(_corpus_dir(args.root, "corpus seed", create=True))
    except AssertionError as exc:  # a mutant not caught, or a refusal no longer made: the seed is wrong now
        print(f"archfuzz corpus seed: {exc}", file=sys.stderr)
        return 1
    for name, path, created in made:
        print(f"{'new ' if created else 'kept'} {path.name}  {name}")
    return 0


def cmd_gate(args) -> int:
    from verifier.gate import run_gate
    report = run_gate(out=args.out, corpus=args.root, max_examples=args.max_examples,
                      checkpoint=not args.no_checkpoint, progress=not args.quiet, extras=not args.no_extras)
    print(Path(args.out, "gate.md").read_text())
    return 0 if report["ok"] else 1


def cmd_transforms(args) -> int:
    from verifier.registry import available
    for registry, names in available().items():
        print(f"{registry}: {', '.join(names)}")
    return 0


def cmd_quantize(args) -> int:
    from quant.checkpoints import load_checkpoint
    from quant.perplexity import perplexity
    from quant.quantize import QuantConfig, coverage_markdown, preset_settings, quantize, save, text_ids
    from quant.text import calibration_windows
    settings = preset_settings(args.preset, iters=args.iters, nsamples=args.nsamples, seqlen=args.seqlen,
                               batch_size=args.batch_size, lr=args.lr)
    cfg = QuantConfig(bits=args.bits, group_size=args.group_size, sym=args.sym, seed=args.seed, **settings)
    cfg.check()
    if args.lowbit:
        from quant.lowbit import check_lowbit_request
        check_lowbit_request(args.recipe, cfg)  # before any work
    model, tok = load_checkpoint(args.checkpoint)
    calib_ids, calib_info = text_ids(tok, args.calib_text, "calibration")
    windows = calibration_windows(calib_ids, cfg.nsamples, cfg.seqlen, cfg.seed)
    eval_ids = eval_info = fp = None
    if not args.no_eval:
        eval_ids, eval_info = text_ids(tok, args.eval_text, "evaluation")
        fp = perplexity(model, eval_ids)
        print(f"full precision PPL {fp['ppl']:.3f}", flush=True)
    report = quantize(model, tok, args.recipe, cfg, windows, alpha=args.alpha,
                      check_ids=eval_ids[None, :16] if eval_ids is not None else None)
    report["calibration_text"] = calib_info
    if eval_ids is not None:
        report["evaluation_text"] = eval_info
        report["ppl_full_precision"] = fp
        report["ppl_quantized"] = perplexity(model, eval_ids)
    rows = report.pop("coverage_rows")
    lowbit = None
    if args.lowbit:
        from quant.lowbit import grid_codes
        lowbit = (grid_codes(model, cfg.bits, cfg.group_size), copy.deepcopy(model))  # save() drops scale/zp
    out = save(model, tok, args.out, report)
    atomic_write_text(out / "coverage.md", coverage_markdown({**report["coverage"], "rows": rows}))
    print(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=1, default=str))
    print(f"plain checkpoint written to {out} (coverage: {out / 'coverage.md'})")
    if lowbit is not None:
        from quant.lowbit import artifact_report, write_artifact_report
        ids = (eval_ids if eval_ids is not None else calib_ids)[None, :args.lowbit_seq]
        art = artifact_report(lowbit[1], lowbit[0], ids, out / "openvino")
        _, md = write_artifact_report(art, out / "openvino", f"{args.recipe} W{cfg.bits} g{cfg.group_size}: OpenVINO IRs")
        print(md.read_text())
        if not all(r["symptom"] == "ok" for r in art["rows"]):
            return 1
    return 0


def cmd_parity(args) -> int:
    from fuzz.errors import Refusal
    from quant.parity import HINTS, compare, load_subject, parity_markdown, write_report
    try:
        model, ids, info = load_subject(args.layout, args.checkpoint, args.transform, _kv(args.option),
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


_SIZE_HELP = ("size guard: refuse a layout whose parameters take more bytes than this (e.g. 4GiB) before "
              "anything is allocated (default 4 GiB, or $ARCHFUZZ_MAX_PARAM_BYTES)")


def build_parser() -> argparse.ArgumentParser:
    # every choice list is read from the module that defines it, never retyped here
    from fuzz.profiles import PROFILES
    from quant.parity import HINT_CHOICES, HINTS
    from quant.quantize import BITS, PRESETS, RECIPES
    from verifier.tolerance import DTYPES
    p = _Parser(prog="archfuzz", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fuzz", help="layout-discovery campaign")
    f.add_argument("--profile", default="ci", choices=list(PROFILES))
    f.add_argument("--max-examples", type=_int_at_least(1, "examples per transform"), default=None,
                   help="examples per transform (>= 1; default: the profile's)")
    f.add_argument("--transform", action="append", help="registry:name (repeatable); default: every registered transform but the mutants")
    f.add_argument("--seed", type=_seed, default=None, help="campaign seed in [0, 2**32)")
    f.add_argument("--dtype", default="float64", choices=list(DTYPES))
    f.add_argument("--require", action="append", type=_key_value, metavar="FIELD=VALUE",
                   help="pin a layout feature (fuzz.strategies.check_constraints says what is accepted)")
    f.add_argument("--out", type=_out_dir, default=None, help="folder for summary.json / summary.md")
    f.add_argument("--quiet", action="store_true")
    f.add_argument("--corpus", type=_out_dir, default=str(_corpus_root()), help="where reduced failures are recorded")
    f.add_argument("--no-corpus", action="store_true", help="do not record new failures (known ones are still named)")
    f.add_argument("--timeout", type=_float_in(0.0, True, "seconds per example"), default=60.0, metavar="SECONDS",
                   help="per example: a transform that runs longer gets a 'timeout' verdict (default 60)")
    f.add_argument("--max-param-bytes", type=_byte_count, default=None, metavar="BYTES",
                   help=_SIZE_HELP + "; the largest layout --require allows must fit")
    f.set_defaults(func=cmd_fuzz, check=check_fuzz)
    v = sub.add_parser("verify", help="verify one transform on one layout JSON")
    v.add_argument("layout")
    v.add_argument("--transform", required=True)
    v.add_argument("--option", action="append", type=_key_value, metavar="KEY=VALUE",
                   help="transform option, checked against the transform's signature")
    v.add_argument("--seed", type=_seed, default=0, help="weight seed in [0, 2**32)")
    v.add_argument("--dtype", default="float64", choices=list(DTYPES))
    v.add_argument("--json", action="store_true")
    v.add_argument("--max-param-bytes", type=_byte_count, default=None, metavar="BYTES", help=_SIZE_HELP)
    v.set_defaults(func=cmd_verify, check=check_verify)
    t = sub.add_parser("transforms", help="list the named transforms")
    t.set_defaults(func=cmd_transforms)
    r = sub.add_parser("replay", help="replay the regression corpus",
                       description="Re-run every corpus entry.  Exit 0 when every entry replayed as expected; 1 "
                       "on a regression (a fixed finding failing again, a mutant not caught or one that raised "
                       "and never ran, an expected refusal now breaking, a replay that proves nothing) or when "
                       "a corrupt entry, stray file or empty folder is found (each reported by path with its "
                       "reason; the other entries still replay); 2 on bad arguments.  Temp leftovers of "
                       "interrupted writes are reported with their age and do not change the exit status.")
    r.add_argument("--root", type=_path, default=str(_corpus_root()), help="corpus folder (must exist)")
    r.add_argument("--no-update", action="store_true", help="do not write outcomes into meta.json")
    r.set_defaults(func=cmd_replay)
    c = sub.add_parser("corpus", help="corpus maintenance: seed, clean",
                       description="seed: record the mutants, the expected refusals and the known third-party "
                       "findings (the folder is created if missing); exit 1 when a mutant is not caught or a "
                       "refusal is not made.  clean: remove temp leftovers of interrupted writes (.<sig>.* "
                       "folders, .<file>.*.tmp files) older than --older-than seconds, never an entry; prints "
                       "what it removed.  Exit 0, or 2 on bad arguments.")
    c.add_argument("action", choices=["seed", "clean"])
    c.add_argument("--root", type=_path, default=str(_corpus_root()), help="corpus folder")
    c.add_argument("--older-than", type=_float_in(0.0, False, "seconds"), default=None, metavar="SECONDS",
                   help="clean only: leftovers at least this old (default 3600; 0 removes all)")
    c.set_defaults(func=cmd_corpus)
    g = sub.add_parser("gate", help="the pre-release invariance gate")
    g.add_argument("--out", type=_out_dir, default=f"runs/gate-{time.strftime('%Y%m%d-%H%M%S')}")
    g.add_argument("--root", type=_existing_dir, default=str(_corpus_root()), help="corpus folder (must exist)")
    g.add_argument("--max-examples", type=_int_at_least(1, "examples per transform"), default=None)
    g.add_argument("--no-checkpoint", action="store_true", help="skip the real-checkpoint stage")
    g.add_argument("--no-extras", action="store_true", help="skip the quantization smoke and the device parity")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=cmd_gate)
    q = sub.add_parser("quantize", help="auto-round on an oracle-proven transformed checkpoint, unfolded")
    q.add_argument("--checkpoint", type=_checkpoint, default=None,
                   help="transformers dir, .safetensors in one, .gguf; default SmolLM2-135M")
    q.add_argument("--recipe", required=True, choices=list(RECIPES))
    q.add_argument("--alpha", type=_float_in(0.0, False, "a scaling exponent"), default=0.5,
                   help="activation-energy scaling exponent (the paper's 0.5); on SmolLM2 at the cpu preset "
                        "0.25 was best at W2 and 0 at W4 (docs/findings.md)")
    q.add_argument("--bits", type=int, default=2, choices=list(BITS))
    q.add_argument("--group-size", type=_int_at_least(1, "weights per quantization group"), default=64)
    q.add_argument("--sym", action="store_true", help="symmetric (default asymmetric)")
    q.add_argument("--preset", default="cpu", choices=list(PRESETS))
    q.add_argument("--iters", type=_int_at_least(0, "tuning iterations"), default=None, help="0 = RTN")
    q.add_argument("--nsamples", type=_int_at_least(1, "calibration windows"), default=None)
    q.add_argument("--seqlen", type=_int_at_least(2, "tokens per calibration window"), default=None)
    q.add_argument("--batch-size", type=_int_at_least(1, "windows per batch"), default=None)
    q.add_argument("--lr", type=_float_in(0.0, True, "a learning rate"), default=None,
                   help="auto-round's sign-SGD learning rate (default: the preset's; cpu 0.01, paper auto-round's 1/iters)")
    q.add_argument("--seed", type=_seed, default=0, help="seed in [0, 2**32)")
    q.add_argument("--calib-text", type=_readable_file, default=None,
                   help="default: Python stdlib docstrings (not wikitext)")
    q.add_argument("--eval-text", type=_readable_file, default=None,
                   help="default: Python stdlib docstrings (not wikitext)")
    q.add_argument("--no-eval", action="store_true")
    q.add_argument("--lowbit", action="store_true", help="also export OpenVINO IRs (f32, f16 and the weights as "
                   "u2/u4 codes) to OUT/openvino and measure size, memory, speed and parity")
    q.add_argument("--lowbit-seq", type=_int_at_least(2, "prefill tokens"), default=128,
                   help="prefill tokens for the low-bit measurement")
    q.add_argument("--out", type=_out_dir, required=True)
    q.set_defaults(func=cmd_quantize, check=check_quantize)
    d = sub.add_parser("parity", help="PyTorch float32 vs OpenVINO per device and precision hint")
    src = d.add_mutually_exclusive_group()
    src.add_argument("--layout", type=_readable_file, default=None,
                     help="layout JSON (weights from --seed, random ids)")
    src.add_argument("--checkpoint", type=_checkpoint, default=None,
                     help="'default' (SmolLM2-135M; the default), a transformers dir, .safetensors in one, .gguf")
    d.add_argument("--transform", default=None, help="registry:name, applied in float64 before the export")
    d.add_argument("--option", action="append", type=_key_value, metavar="KEY=VALUE", help="transform option")
    d.add_argument("--seq", type=_int_at_least(2, "tokens per row"), default=None,
                   help="tokens per row (default 16 for a layout, 128 otherwise)")
    d.add_argument("--batch", type=_int_at_least(1, "rows"), default=1)
    d.add_argument("--seed", type=_seed, default=0, help="seed in [0, 2**32)")
    d.add_argument("--device", action="append", help="OpenVINO device (repeatable); default: every one it reports")
    d.add_argument("--hint", action="append", choices=list(HINT_CHOICES),
                   help=f"precision hint (repeatable); default {', '.join(HINTS)}")
    d.add_argument("--text", type=_readable_file, default=None,
                   help="text whose tokens are compared; default: the evaluation split")
    d.add_argument("--timeout", type=_float_in(0.0, True, "seconds per child process"), default=600.0,
                   help="seconds per child process")
    d.add_argument("--keep-ir", action="store_true", help="keep the IR, logs and logits under OUT/work")
    d.add_argument("--out", type=_out_dir, default=None, help="folder for parity.json / parity.md")
    d.add_argument("--max-param-bytes", type=_byte_count, default=None, metavar="BYTES", help=_SIZE_HELP)
    d.set_defaults(func=cmd_parity, check=check_parity)
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


if __name__ == "__main__":
    sys.exit(main())
