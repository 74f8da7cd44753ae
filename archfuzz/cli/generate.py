"""``archfuzz generate``: run a stateful OpenVINO artifact (``archfuzz quantize --lowbit`` writes one to
``OUT/openvino/genai``) on a prompt through ``openvino_genai.LLMPipeline``, greedy; prints the text and the
decode speed with the KV cache (:func:`quant.stateful.genai_generate`)."""

from __future__ import annotations

import json

from fuzz.errors import BadInput

from . import arguments

BACKENDS = ("default", "PA", "SDPA")


def register(subparsers) -> None:
    g = subparsers.add_parser("generate", help="generate text with a stateful OpenVINO artifact (openvino_genai)",
                              description="Greedy generation through openvino_genai.LLMPipeline on a folder holding "
                              "openvino_model.xml, openvino_tokenizer.xml and openvino_detokenizer.xml (what "
                              "`archfuzz quantize --lowbit` writes to OUT/openvino/genai).  Prints the generated "
                              "text, then the prompt length, time to first token and decode tokens/s.")
    g.add_argument("dir", type=arguments.existing_dir, help="the artifact folder")
    g.add_argument("--prompt", required=True, help="the prompt text (tokenized by the artifact's own tokenizer)")
    g.add_argument("--max-new-tokens", type=arguments.int_at_least(1, "tokens to generate"), default=64)
    g.add_argument("--device", default="CPU", help="OpenVINO device (default CPU)")
    g.add_argument("--backend", default="default", choices=BACKENDS,
                   help="GenAI's ATTENTION_BACKEND: PA (paged attention, GenAI's CPU default) or SDPA (the stateful "
                        "model as exported)")
    g.add_argument("--f32", action="store_true", help="pin f32 inference precision and KV cache (accuracy mode)")
    g.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template to the prompt")
    g.add_argument("--ignore-eos", action="store_true", help="always generate --max-new-tokens tokens")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    g.set_defaults(func=run, check=check)


def check(args) -> None:
    from pathlib import Path

    from quant.stateful import DETOKENIZER_XML, MODEL_XML, TOKENIZER_XML
    missing = [f for f in (MODEL_XML, TOKENIZER_XML, DETOKENIZER_XML) if not (Path(args.dir) / f).is_file()]
    if missing:
        raise BadInput(f"argument dir: {args.dir!r} is not a stateful OpenVINO artifact ({', '.join(missing)} "
                       "missing); `archfuzz quantize --lowbit` writes one to OUT/openvino/genai")
    if not args.prompt.strip():
        raise BadInput("argument --prompt: expected text, got an empty prompt")
    from quant.parity import available_devices
    known = sorted(available_devices())
    if args.device not in known:
        raise BadInput(f"--device {args.device!r} is not a device OpenVINO reports here; devices: {known}")


def run(args) -> int:
    from quant.parity import compile_config
    from quant.stateful import genai_generate
    props = dict(compile_config(args.device, "f32")) if args.f32 else {}
    if args.backend != "default":
        props["ATTENTION_BACKEND"] = args.backend
    res = genai_generate(args.dir, args.prompt, args.max_new_tokens, device=args.device, properties=props,
                         apply_chat_template=args.chat, ignore_eos=args.ignore_eos)
    if args.json:
        print(json.dumps({"prompt": args.prompt, **res}))
        return 0
    print(res["text"])  # the continuation (the prompt is not repeated)
    print(f"--- {len(res['tokens'])} new tokens after {res['prompt_tokens']} prompt tokens on {args.device}: "
          f"time to first token {res['ttft_ms']:.1f} ms, decode {res['decode_tok_s']:.1f} tokens/s "
          f"({res['tpot_ms']:.2f} ms/token, KV cache)")
    return 0
