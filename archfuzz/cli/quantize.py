"""``archfuzz quantize``: auto-round on an oracle-proven transformed checkpoint, unfolded, with coverage,
perplexity and optionally the low-bit OpenVINO artifact (``docs/quantize.md``)."""

from __future__ import annotations

import argparse
import copy
import json

from fuzz.errors import BadInput
from fuzz.layout import atomic_write_text

from . import arguments


def register(subparsers) -> None:
    from quant.quantize import BITS, PRESETS, RECIPES
    q = subparsers.add_parser("quantize", help="auto-round on an oracle-proven transformed checkpoint, unfolded")
    q.add_argument("--checkpoint", type=arguments.checkpoint, default=None,
                   help="transformers dir, .safetensors in one, .gguf; default SmolLM2-135M")
    q.add_argument("--recipe", required=True, choices=list(RECIPES))
    q.add_argument("--alpha", type=arguments.float_in(0.0, False, "a scaling exponent"), default=None,
                   help="activation-energy scaling exponent; default 0.25 at W2 (the best W2 alpha on SmolLM2 at "
                        "the cpu preset, with the NeUQI search and 20 iterations the preset uses at W2), else the paper's 0.5 (at "
                        "W4, 0 was best: docs/findings.md); not with bbt-spectral-alpha-search, which chooses alpha "
                        "per linear from its grid")
    q.add_argument("--bits", type=int, default=2, choices=list(BITS))
    q.add_argument("--group-size", type=arguments.int_at_least(1, "weights per quantization group"), default=64)
    q.add_argument("--sym", action="store_true", help="symmetric (default asymmetric)")
    q.add_argument("--preset", default="cpu", choices=list(PRESETS))
    q.add_argument("--iters", type=arguments.int_at_least(0, "tuning iterations"), default=None, help="0 = RTN")
    q.add_argument("--nsamples", type=arguments.int_at_least(1, "calibration windows"), default=None)
    q.add_argument("--seqlen", type=arguments.int_at_least(2, "tokens per calibration window"), default=None)
    q.add_argument("--batch-size", type=arguments.int_at_least(1, "windows per batch"), default=None)
    q.add_argument("--lr", type=arguments.float_in(0.0, True, "a learning rate"), default=None,
                   help="auto-round's sign-SGD learning rate (default: the preset's; cpu 0.01, paper auto-round's 1/iters)")
    q.add_argument("--alg-ext", action=argparse.BooleanOptionalAction, default=None,
                   help="auto-round's enable_alg_ext (for asymmetric int weights: collect an imatrix, which "
                        "enable_neuqi weights its grid search with); default: the preset's (cpu: on at W2)")
    q.add_argument("--autoround-option", action="append", type=arguments.key_value, metavar="NAME=VALUE",
                   help="a further auto-round SignRound option (repeatable; quant.quantize.AUTOROUND_OPTIONS), e.g. "
                        "minmax_lr=0.05; over the preset's (cpu at W2: enable_neuqi=True)")
    q.add_argument("--seed", type=arguments.seed, default=0, help="seed in [0, 2**32)")
    q.add_argument("--calib-text", type=arguments.readable_file, default=None,
                   help="default: Python stdlib docstrings (not wikitext)")
    q.add_argument("--eval-text", type=arguments.readable_file, default=None,
                   help="default: Python stdlib docstrings (not wikitext)")
    q.add_argument("--no-eval", action="store_true")
    q.add_argument("--lowbit", action="store_true", help="also export OpenVINO IRs (f32, f16 and the weights as "
                   "u2/u4 codes) to OUT/openvino and measure size, memory, speed and parity, and the stateful "
                   "u2/u4 model with its KV cache and tokenizer for openvino_genai to OUT/openvino/genai "
                   "(`archfuzz generate OUT/openvino/genai --prompt ...`)")
    q.add_argument("--embedding", default="int8", choices=["int8", "f16", "f32"],
                   help="how the low-bit artifacts store the (tied) embedding table and output head: int8 codes with "
                        "a float16 scale per row (default), float16, or float32 as exported; a lossy step beyond "
                        "auto-round's, applied to the PyTorch reference the artifacts are checked against too")
    q.add_argument("--online-fwht", default="kron", choices=["kron", "butterfly", "dense"],
                   help="with --lowbit and bbt-spectral(-block, -exact): the form of the online Walsh-Hadamard in the IR (quant/online.py; "
                        "kron, two small matmuls, was the fastest measured: docs/data/online_rotation.json)")
    q.add_argument("--lowbit-seq", type=arguments.int_at_least(2, "prefill tokens"), default=128,
                   help="prefill tokens for the low-bit measurement")
    q.add_argument("--lowbit-new-tokens", type=arguments.int_at_least(1, "decoded tokens"), default=128,
                   help="greedy tokens decoded through openvino_genai (KV cache) for the decode speed")
    q.add_argument("--out", type=arguments.out_dir, required=True)
    q.set_defaults(func=run, check=check)


def check(args) -> None:
    from quant.quantize import ALPHA_SEARCH, ONLINE
    if args.alpha is not None and args.recipe in ALPHA_SEARCH:
        raise BadInput(f"--alpha: recipe {args.recipe} chooses alpha per linear from its grid; drop --alpha")
    if args.online_fwht != "kron" and not (args.lowbit and args.recipe in ONLINE):
        raise BadInput(f"--online-fwht applies to --lowbit with --recipe {' or '.join(ONLINE)}")
    if args.embedding != "int8" and not args.lowbit:
        raise BadInput("--embedding applies to the low-bit artifacts: add --lowbit")
    if args.no_eval and args.eval_text is not None:
        raise BadInput("--eval-text has no use with --no-eval (nothing is evaluated)")


def resolve(args):
    """The :class:`quant.quantize.QuantConfig` (checked) and alpha the flags ask for, the defaults filled in: the
    preset's settings (at W2 with tuning, its W2 settings too) and :func:`quant.quantize.default_alpha`."""
    from quant.quantize import ALPHA_SEARCH, QuantConfig, default_alpha, preset_settings

    from .checks import key_values
    settings = preset_settings(args.preset, bits=args.bits, iters=args.iters, nsamples=args.nsamples,
                               seqlen=args.seqlen, batch_size=args.batch_size, lr=args.lr, enable_alg_ext=args.alg_ext)
    settings["options"] = {**settings.get("options", {}), **key_values(args.autoround_option)}
    cfg = QuantConfig(bits=args.bits, group_size=args.group_size, sym=args.sym, seed=args.seed, **settings)
    cfg.check()
    if args.recipe in ALPHA_SEARCH:  # its grid (quant.quantize.recipe_options), for this bits and group size
        return cfg, None
    return cfg, default_alpha(args.bits) if args.alpha is None else args.alpha


def run(args) -> int:
    from quant.checkpoints import load_checkpoint
    from quant.perplexity import perplexity
    from quant.quantize import ONLINE, coverage_markdown, quantize, save, text_ids
    from quant.text import calibration_windows

    cfg, args.alpha = resolve(args)
    if args.lowbit:
        from quant.lowbit import check_lowbit_request
        check_lowbit_request(args.recipe, cfg)  # before any work
    model, tok = load_checkpoint(args.checkpoint)
    if args.lowbit:
        from quant.stateful import check_supported
        check_supported(model)  # the stateful artifact's family, before quantizing
    calib_ids, calib_info = text_ids(tok, args.calib_text, "calibration")
    windows = calibration_windows(calib_ids, cfg.nsamples, cfg.seqlen, cfg.seed)
    eval_ids = eval_info = fp = None
    if not args.no_eval:
        eval_ids, eval_info = text_ids(tok, args.eval_text, "evaluation")
        fp = perplexity(model, eval_ids)
        print(f"full precision PPL {fp['ppl']:.3f}", flush=True)
    held = {}
    before_unfold = None
    if args.lowbit and args.recipe in ONLINE:  # T1: ship W^ with its rotation online, not the dense unfold
        from quant.online import make_online

        def before_unfold(prepared):
            held["online"] = make_online(prepared.model, windows[:1, :16], mode=args.online_fwht)
    report = quantize(model, tok, args.recipe, cfg, windows, alpha=args.alpha,
                      check_ids=eval_ids[None, :16] if eval_ids is not None else None, before_unfold=before_unfold)
    report["calibration_text"] = calib_info
    if eval_ids is not None:
        report["evaluation_text"] = eval_info
        report["ppl_full_precision"] = fp
        report["ppl_quantized"] = perplexity(model, eval_ids)
    rows = report.pop("coverage_rows")
    lowbit = None
    if args.lowbit:
        from quant.lowbit import grid_codes, quantize_tables
        if "online" in held:  # W^ (in_features d_pad) with explicit FWHT modules, one per distinct input
            online_model, online_info = held.pop("online")
            report["online_rotation"] = {k: online_info[k] for k in ("mode", "rotations", "linears")}
            lowbit = (grid_codes(online_model, cfg.bits, cfg.group_size), online_model)
        else:
            lowbit = (grid_codes(model, cfg.bits, cfg.group_size), copy.deepcopy(model))  # save() drops scale/zp
        # the artifacts' embedding storage, applied to their PyTorch reference (the copy) only
        tables = quantize_tables(lowbit[1], args.embedding, skip=lowbit[0])
    out = save(model, tok, args.out, report)
    atomic_write_text(out / "coverage.md", coverage_markdown({**report["coverage"], "rows": rows}))
    print(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=1, default=str))
    print(f"plain checkpoint written to {out} (coverage: {out / 'coverage.md'})")
    if lowbit is not None:
        from quant.lowbit import artifact_report, write_artifact_report
        ids = (eval_ids if eval_ids is not None else calib_ids)[None, :args.lowbit_seq]
        from quant.stateful import stateful_report
        art = artifact_report(lowbit[1], lowbit[0], ids, out / "openvino", tables=tables)
        if "online_rotation" in report:
            art["online_rotation"] = report["online_rotation"]
        f32 = next((r for r in art["rows"] if r["artifact"] == "dequantized f32 IR" and r["symptom"] == "ok"), None)
        art["stateful"] = stateful_report(lowbit[1], tok, lowbit[0], ids, out / "openvino" / "genai",
                                          new_tokens=args.lowbit_new_tokens, floor=f32 and f32["rel_err"],
                                          tables=tables, eval_ids=eval_ids)
        _, md = write_artifact_report(art, out / "openvino", f"{args.recipe} W{cfg.bits} g{cfg.group_size}: OpenVINO IRs")
        print(md.read_text())
        if not all(r["symptom"] == "ok" for r in art["rows"]) or not art["stateful"]["ok"]:
            return 1
    return 0
