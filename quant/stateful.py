"""The low-bit model people can run: a stateful OpenVINO decoder with a KV cache, in OpenVINO GenAI's layout.

:func:`export_stateful` traces a transformers causal LM *with its cache* (``openvino.convert_model`` on a
wrapper taking ``input_ids, attention_mask, position_ids`` and the past keys/values of every layer as flat
tensors, returning ``logits`` and the present keys/values), names the ports the way GenAI and
optimum-intel do (``past_key_values.{i}.key|value`` -> ``present.{i}.key|value``), adds the 1-D ``beam_idx``
input (a ``Gather`` over the batch axis of every past key/value: the beam reorder GenAI drives), and hides
the cache with OpenVINO's own ``apply_make_stateful_transformation``.  Each state starts as zeros of shape
``(batch of input_ids, kv heads, 0, head_dim)``.  The result has the inputs ``input_ids, attention_mask,
position_ids, beam_idx``, the output ``logits`` and one ``ReadValue``/``Assign`` pair per cache tensor.

:func:`build_artifact` writes a directory ``openvino_genai.LLMPipeline(dir, "CPU")`` loads:
``openvino_model.xml/.bin`` (the quantized weights as u2/u4 decompression subgraphs,
:func:`quant.lowbit.compress_model`, when codes are given; float32 otherwise), ``openvino_tokenizer.xml``
and ``openvino_detokenizer.xml`` (``openvino_tokenizers.convert_tokenizer``), ``config.json`` and
``generation_config.json``.  Everything is written into a sibling temporary directory and renamed into
place: the directory is complete or absent (an existing one is replaced only once the new one is complete).

:func:`stateful_parity` is the proof: the stateful IR (``ov.Core``, CPU, f32 accuracy hint) and the PyTorch
model (its own ``DynamicCache``) run the same prompt, then ``steps`` greedy decode steps through the KV
cache; it reports the relative logit error of the prefill and of every decode step and whether the greedy
tokens agree.  :func:`genai_generate` runs the artifact through ``openvino_genai`` and times the decode.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fuzz.errors import BadInput
from fuzz.layout import atomic_dir

MODEL_XML = "openvino_model.xml"
TOKENIZER_XML = "openvino_tokenizer.xml"
DETOKENIZER_XML = "openvino_detokenizer.xml"
INPUTS = ("input_ids", "attention_mask", "position_ids", "beam_idx")
SUPPORTED = ("llama",)  # model_type of the families whose cache layout (batch, kv heads, seq, head_dim) is checked


def check_supported(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "generation_config"):
        raise BadInput(f"{type(model).__name__}: the stateful artifact needs a transformers causal LM")
    if getattr(config, "model_type", None) not in SUPPORTED:
        raise BadInput(f"{type(model).__name__} (model_type {getattr(config, 'model_type', None)!r}): the stateful "
                       f"artifact supports {', '.join(SUPPORTED)} only")
    for name, mod in model.named_modules():  # an online operator would be silently dropped by the export
        if mod._forward_pre_hooks or mod._forward_hooks:
            raise BadInput(f"{name or type(model).__name__}: carries forward hooks (an online operator); the "
                           "stateful artifact exports plain transformers modules only")


class _CachedForward(nn.Module):
    """``(input_ids, attention_mask, position_ids, k_0, v_0, k_1, ...) -> (logits, k'_0, v'_0, ...)``: the
    transformers model with a ``DynamicCache`` holding the given past (each ``(batch, kv heads, past, head_dim)``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache
        cache = DynamicCache(config=self.model.config)
        if len(cache.layers) * 2 != len(past):
            raise BadInput(f"{len(past)} past tensors for {len(cache.layers)} cache layers")
        for i, layer in enumerate(cache.layers):  # filled directly: update() would concatenate onto an empty 1-D tensor
            layer.keys, layer.values = past[2 * i], past[2 * i + 1]
            layer.device, layer.is_initialized = past[0].device, True
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                         use_cache=True)
        flat = []
        for layer in out.cache.layers:
            flat += [layer.keys, layer.values]
        return (out.logits, *flat)


def _cache_dims(config) -> tuple[int, int, int]:
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv, head_dim


def trace_with_cache(model: nn.Module, *, past: int = 3, new: int = 4):
    """The stateless ``ov.Model`` of ``model`` with named cache ports (every dimension but kv heads and
    head_dim dynamic), traced on ``new`` tokens after ``past`` cached ones."""
    import openvino as ov

    check_supported(model)
    layers, kv, head_dim = _cache_dims(model.config)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    example = (torch.randint(0, vocab, (1, new), generator=g), torch.ones(1, past + new, dtype=torch.int64),
               torch.arange(past, past + new)[None],
               *[torch.randn(1, kv, past, head_dim, generator=g) for _ in range(2 * layers)])
    wrapper = _CachedForward(model).eval()
    with torch.no_grad():
        ov_model = ov.convert_model(wrapper, example_input=example)
    names = list(INPUTS[:3]) + [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    outs = ["logits"] + [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    if len(ov_model.inputs) != len(names) or len(ov_model.outputs) != len(outs):
        raise BadInput(f"traced model has {len(ov_model.inputs)} inputs / {len(ov_model.outputs)} outputs, "
                       f"expected {len(names)} / {len(outs)}")
    for port, name in zip(ov_model.inputs, names):
        port.get_tensor().set_names({name})
        if name.startswith("past_key_values."):  # (batch, kv heads, past, head_dim): heads and head_dim static
            port.get_node().set_partial_shape(ov.PartialShape([-1, kv, -1, head_dim]))
    for port, name in zip(ov_model.outputs, outs):
        port.get_tensor().set_names({name})
    ov_model.validate_nodes_and_infer_types()
    return ov_model


def make_stateful(ov_model) -> int:
    """In place: ``beam_idx`` gathers every past key/value along the batch axis, then OpenVINO's
    make-stateful pass turns each ``past_key_values.*`` / ``present.*`` pair into a state; each state is
    initialised with zeros of shape ``(batch of input_ids, kv heads, 0, head_dim)``.  Returns the number of states."""
    import openvino as ov
    import openvino.opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    past = [p for p in ov_model.inputs if p.get_any_name().startswith("past_key_values.")]
    pairs = {p.get_any_name(): p.get_any_name().replace("past_key_values.", "present.") for p in past}
    batch = ov_model.input("input_ids").get_partial_shape()[0]
    beam_idx = ops.parameter(ov.PartialShape([batch]), ov.Type.i32, name="beam_idx")
    beam_idx.output(0).get_tensor().set_names({"beam_idx"})
    ov_model.add_parameters([beam_idx])
    for port in past:
        consumers = list(port.get_target_inputs())
        reordered = ops.gather(port, beam_idx, ops.constant(np.int64(0)))
        for consumer in consumers:
            consumer.replace_source_output(reordered.output(0))
    ov_model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(ov_model, pairs)
    n_batch = ops.gather(ops.shape_of(ov_model.input("input_ids"), ov.Type.i64), ops.constant(np.array([0], np.int64)),
                         ops.constant(np.int64(0)))
    states = 0
    for op in ov_model.get_ops():
        if op.get_type_name() != "ReadValue":
            continue
        shape = op.get_output_partial_shape(0)
        if shape.rank.get_length() != 4 or not (shape[1].is_static and shape[3].is_static):
            raise BadInput(f"state {op.get_friendly_name()}: expected (batch, kv heads, seq, head_dim), got {shape}")
        rest = np.array([shape[1].get_length(), 0, shape[3].get_length()], np.int64)  # kv heads, 0 tokens, head_dim
        dims = ops.concat([n_batch, ops.constant(rest)], 0)
        op.set_arguments([ops.broadcast(ops.constant(np.zeros((), np.float32)), dims)])
        states += 1
    ov_model.validate_nodes_and_infer_types()
    got = [p.get_any_name() for p in ov_model.inputs]
    if got != list(INPUTS) or [o.get_any_name() for o in ov_model.outputs] != ["logits"] or states != len(pairs):
        raise BadInput(f"make-stateful left inputs {got}, outputs {[o.get_any_name() for o in ov_model.outputs]}, "
                       f"{states} states for {len(pairs)} cache tensors")
    return states


def export_stateful(model: nn.Module, codes: dict | None = None, tables: dict | None = None):
    """The stateful ``ov.Model`` of the float32 ``model``; with ``codes`` (:func:`quant.lowbit.grid_codes` of the
    same model) every quantized weight becomes its u2/u4 decompression subgraph, with ``tables``
    (:func:`quant.lowbit.quantize_tables` applied to the same model) the embedding table and output head are
    stored as int8 codes or float16.  Returns ``(ov_model, info)``."""
    from quant.lowbit import check_codes, compress_model, compress_tables

    model = model.float().eval()
    if codes:
        check_codes(dict(model.named_parameters()), codes)  # before the trace: refuse first, then work
    t0 = time.perf_counter()
    ov_model = trace_with_cache(model)
    t1 = time.perf_counter()
    states = make_stateful(ov_model)
    info = {"trace_s": round(t1 - t0, 2), "states": states}
    if codes:
        info["compressed"] = compress_model(ov_model, dict(model.named_parameters()), codes)
    if tables:
        info["tables"] = compress_tables(ov_model, dict(model.named_parameters()), tables)
    return ov_model, info


# ============================================================================ the artifact directory
def _write_configs(model: nn.Module, tokenizer, folder: Path) -> None:
    model.config.save_pretrained(folder)
    gen = copy.deepcopy(model.generation_config)  # the model's own is left as it was
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # GenAI reads these; fill from the tokenizer
        if getattr(gen, key, None) is None and getattr(tokenizer, key, None) is not None:
            setattr(gen, key, getattr(tokenizer, key))
    gen.save_pretrained(folder)


def convert_tokenizer(tokenizer, folder: Path) -> None:
    """``openvino_tokenizer.xml`` and ``openvino_detokenizer.xml`` of the transformers ``tokenizer``."""
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer as convert

    try:
        tok, detok = convert(tokenizer, with_detokenizer=True)
    except Exception as exc:  # openvino_tokenizers raises its own errors for unsupported tokenizer models
        raise BadInput(f"openvino_tokenizers cannot convert {type(tokenizer).__name__}: {type(exc).__name__}: "
                       f"{exc}") from exc
    ov.save_model(tok, str(folder / TOKENIZER_XML))
    ov.save_model(detok, str(folder / DETOKENIZER_XML))


def build_artifact(model: nn.Module, tokenizer, out: str | Path, codes: dict | None = None,
                   tables: dict | None = None) -> dict:
    """Write the GenAI directory of ``model`` (float32, fake-quantized) at ``out``, atomically; see the module."""
    import openvino as ov

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"{out} exists and is not a directory")
    check_supported(model)
    with atomic_dir(out) as tmp:
        ov_model, info = export_stateful(model, codes, tables)
        ov.save_model(ov_model, str(tmp / MODEL_XML), compress_to_fp16=False)
        convert_tokenizer(tokenizer, tmp)
        _write_configs(model, tokenizer, tmp)
        info["ir_bytes"] = (tmp / MODEL_XML).stat().st_size + (tmp / MODEL_XML).with_suffix(".bin").stat().st_size
        (tmp / "archfuzz_artifact.json").write_text(json.dumps(info, indent=1, default=str))
    return info


# ============================================================================ proof and use
def torch_greedy(model: nn.Module, ids: torch.Tensor, steps: int) -> tuple[list[torch.Tensor], list[int]]:
    """The PyTorch reference: prefill ``ids`` (1, seq) then ``steps`` greedy tokens through its ``DynamicCache``.
    Returns the logits of every call (prefill: (seq, vocab); each step: (1, vocab)) and the greedy tokens."""
    from transformers import DynamicCache
    model = model.float().eval()
    cache, logits, tokens = DynamicCache(config=model.config), [], []
    x, n = ids, 0
    with torch.no_grad():
        for _ in range(steps + 1):
            t = x.shape[1]
            out = model(input_ids=x, attention_mask=torch.ones(1, n + t, dtype=torch.int64),
                        position_ids=torch.arange(n, n + t)[None], cache=cache, use_cache=True)
            cache, n = out.cache, n + t
            logits.append(out.logits[0].float())
            tokens.append(int(out.logits[0, -1].argmax()))
            x = torch.tensor([[tokens[-1]]])
    return logits, tokens


def _stateful_request(xml: str | Path, config: dict | None):
    """The stateful IR at ``xml`` compiled for CPU (``config``; f32 accuracy by default) and one infer request."""
    import openvino as ov

    from quant.parity import compile_config
    compiled = ov.Core().compile_model(str(xml), "CPU", compile_config("CPU", "f32") if config is None else config)
    return compiled, compiled.create_infer_request()


def _infer(compiled, req, x: np.ndarray, past: int) -> np.ndarray:
    """One call of the GenAI ports: ids ``x`` (1, t) after ``past`` cached tokens (full mask, positions
    ``past .. past + t - 1``, beam 0); the (t, vocab) logits (a view of the request's output)."""
    t = x.shape[1]
    res = req.infer({"input_ids": x, "attention_mask": np.ones((1, past + t), np.int64),
                     "position_ids": np.arange(past, past + t, dtype=np.int64)[None], "beam_idx": np.zeros(1, np.int32)})
    return res[compiled.output("logits")][0]


def ov_greedy(xml: str | Path, ids: np.ndarray, steps: int, config: dict | None = None):
    """The loop of :func:`torch_greedy` on the stateful IR at ``xml`` (CPU, ``config``; f32 accuracy by default)."""
    compiled, req = _stateful_request(xml, config)
    req.reset_state()
    logits, tokens, times = [], [], []
    x, n = np.asarray(ids, np.int64), 0
    for _ in range(steps + 1):
        t = x.shape[1]
        t0 = time.perf_counter()
        out = _infer(compiled, req, x, n).copy()
        times.append(time.perf_counter() - t0)
        n += t
        logits.append(torch.from_numpy(out))
        tokens.append(int(out[-1].argmax()))
        x = np.array([[tokens[-1]]], np.int64)
    return logits, tokens, times


def stateful_parity(model: nn.Module, xml: str | Path, ids: torch.Tensor, steps: int = 4) -> dict:
    """The stateful IR against PyTorch: relative logit error (max |diff| / max |ref|) of the prefill and of each
    decode step fed the PyTorch greedy token, and whether the greedy tokens agree."""
    ref_logits, ref_tokens = torch_greedy(model, ids, steps)
    got_logits, got_tokens, times = ov_greedy(xml, ids.numpy(), steps)
    rel = [((g - r).abs().max() / r.abs().max()).item() for g, r in zip(got_logits, ref_logits)]
    return {"prefill_rel_err": rel[0], "decode_rel_err": rel[1:], "max_rel_err": max(rel),
            "torch_tokens": ref_tokens, "ov_tokens": got_tokens, "tokens_agree": ref_tokens == got_tokens,
            "prefill_tokens": int(ids.shape[1]), "ov_step_s": times}


def ov_perplexity(xml: str | Path, ids: torch.Tensor, window: int | None = None, max_tokens: int | None = None,
                  config: dict | None = None) -> dict:
    """:func:`quant.perplexity.perplexity` through the stateful IR at ``xml`` (CPU, ``config``; f32 accuracy by
    default): the same windows, each a fresh sequence (the KV state reset, positions from 0, full mask), the
    same scoring (float64 cross-entropy, the first token of a window unscored)."""
    from quant.perplexity import MAX_TOKENS, WINDOW, windowed_perplexity
    compiled, req = _stateful_request(xml, config)

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        req.reset_state()
        return torch.from_numpy(_infer(compiled, req, x.numpy().astype(np.int64), 0).copy())

    return windowed_perplexity(logits_of, ids, window or WINDOW, max_tokens or MAX_TOKENS)


PPL_TOL = 5e-3  # relative perplexity difference of the stateful IR against the PyTorch reference (issue 15: 0.5%)


def perplexity_parity(model: nn.Module, xml: str | Path, ids: torch.Tensor, window: int | None = None,
                      max_tokens: int | None = None) -> dict:
    """PyTorch's and the stateful IR's perplexity of the same windows of ``ids``; ``rel_diff`` = |ov - torch| / torch."""
    from quant.perplexity import MAX_TOKENS, WINDOW, perplexity
    window, max_tokens = window or WINDOW, max_tokens or MAX_TOKENS
    ref = perplexity(model.float().eval(), ids, window=window, max_tokens=max_tokens)
    got = ov_perplexity(xml, ids, window, max_tokens)
    return {"torch": ref, "ov": got, "rel_diff": abs(got["ppl"] - ref["ppl"]) / ref["ppl"], "tolerance": PPL_TOL}


def genai_generate(folder: str | Path, prompt, max_new_tokens: int, *, device: str = "CPU",
                   properties: dict | None = None, apply_chat_template: bool = False, ignore_eos: bool = False) -> dict:
    """Run the artifact through ``openvino_genai.LLMPipeline`` with greedy decoding.

    ``prompt`` is a string (tokenized by the artifact's tokenizer, no special tokens added, the chat template
    only with ``apply_chat_template``) or a list of token ids; ``properties`` go to the pipeline (e.g.
    ``ATTENTION_BACKEND``: ``PA``, GenAI's default on CPU, or ``SDPA``, the stateful model as it is).  Returns the
    generated token ids, the text, and GenAI's own timings (:func:`quant.genai_probe.greedy`)."""
    import openvino_genai as genai

    from .genai_probe import greedy

    folder = _check_artifact(folder)
    pipe = genai.LLMPipeline(str(folder), device, **(properties or {}))
    tok = pipe.get_tokenizer()
    if isinstance(prompt, str):
        ids = np.asarray(tok.encode(prompt, add_special_tokens=False).input_ids.data, np.int64)
    else:
        ids = np.asarray([list(prompt)], np.int64)
    out = greedy(pipe, ids, max_new_tokens, ignore_eos=ignore_eos, apply_chat_template=apply_chat_template)
    return {**out, "text": tok.decode(out["tokens"])}


def _check_artifact(folder: str | Path) -> Path:
    """``folder`` as a Path, refused unless it holds a stateful artifact's model and tokenizers."""
    folder = Path(folder)
    missing = [f for f in (MODEL_XML, TOKENIZER_XML, DETOKENIZER_XML) if not (folder / f).is_file()]
    if missing:
        raise BadInput(f"{folder} is not a stateful OpenVINO artifact: {', '.join(missing)} missing")
    return folder


def fresh_genai_run(folder: str | Path, prompt: list[int], new_tokens: int, *, device: str = "CPU",
                    properties: dict | None = None, timeout: float = 900.0) -> dict:
    """``openvino_genai`` greedy generation of ``new_tokens`` after the token ids ``prompt`` in a fresh Python process
    (``quant/genai_probe.py`` run as a script: no torch, no archfuzz, what a user's process holds), EOS ignored.
    Returns its GenAI timings (prefill = time to first token, decode tokens/s with the KV cache), load time and peak
    RSS (the child's own ``VmHWM``; why not ``ru_maxrss``: see the probe)."""
    import subprocess
    import sys

    folder = _check_artifact(folder)
    spec = {"prompt": [int(t) for t in prompt], "new_tokens": int(new_tokens), "device": device,
            "properties": properties or {}, "ignore_eos": True}
    probe = Path(__file__).with_name("genai_probe.py")
    proc = subprocess.run([sys.executable, str(probe), str(folder), json.dumps(spec)], capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the GenAI run of {folder} exited with {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


STATEFUL_TOL = 1e-4  # relative logit error of the stateful IR (CPU, f32 accuracy) against PyTorch float32


def stateful_report(model: nn.Module, tokenizer, codes: dict, ids: torch.Tensor, folder: str | Path, *,
                    steps: int = 8, new_tokens: int = 128, floor: float | None = None, tables: dict | None = None,
                    eval_ids: torch.Tensor | None = None, window: int | None = None,
                    max_tokens: int | None = None) -> dict:
    """Build the GenAI artifact at ``folder`` and prove and time it: :func:`stateful_parity` on the prompt
    ``ids`` (1, seq) with ``steps`` cached decode steps, then ``new_tokens`` greedy tokens through
    ``openvino_genai`` (its default CPU settings, EOS ignored) in a fresh process (:func:`fresh_genai_run`): prefill
    and decode tokens/s with the KV cache and the process's peak RSS.

    ``ok``: the greedy tokens agree and the relative error is within :data:`STATEFUL_TOL`, or within twice
    ``floor`` when that is larger: the error of the stateless dequantized f32 IR of the same model on the same
    prompt (float32's own floor on it; a degenerate RTN W2 model reaches ~3e-4 with either export).

    ``tables``: the embedding table / output head storage (:func:`quant.lowbit.quantize_tables`, already applied
    to ``model``, so PyTorch is the reference of the artifact as stored).  ``eval_ids``: the evaluation tokens;
    the perplexity through the IR is then compared with PyTorch's (:func:`perplexity_parity`) and must be within
    :data:`PPL_TOL` for ``ok``."""
    folder = Path(folder)
    info = build_artifact(model, tokenizer, folder, codes, tables)
    parity = stateful_parity(model, folder / MODEL_XML, ids, steps=steps)
    bound = max(STATEFUL_TOL, 2 * floor) if floor is not None else STATEFUL_TOL
    ppl = None if eval_ids is None else perplexity_parity(model, folder / MODEL_XML, eval_ids, window, max_tokens)
    gen = fresh_genai_run(folder, ids[0].tolist(), new_tokens)  # a fresh process: its peak RSS is the artifact's
    return {"folder": str(folder), "ir_mib": round(info["ir_bytes"] / 2**20, 2), "states": info["states"],
            "compressed": info.get("compressed"), "tables": info.get("tables") or {"mode": "f32", "tables": {}},
            "parity": parity, "tolerance": bound, "floor": floor, "perplexity": ppl,
            "ok": parity["max_rel_err"] <= bound and parity["tokens_agree"] and (ppl is None or ppl["rel_diff"] <= PPL_TOL),
            "genai": {k: gen[k] for k in ("prompt_tokens", "ttft_ms", "tpot_ms", "decode_tok_s", "prefill_tok_s",
                                          "generate_s", "load_s", "rss_imports_mib", "peak_rss_mib")}
            | {"new_tokens": len(gen["tokens"])}}


def stateful_markdown(rep: dict) -> str:
    p, g = rep["parity"], rep["genai"]
    tables = rep.get("tables") or {"mode": "f32", "tables": {}}
    pp = rep.get("perplexity")
    lines = [
        "## Stateful artifact (KV cache, openvino_genai)", "",
        f"`{rep['folder']}`: {rep['ir_mib']} MiB IR, {rep['states']} KV states, "
        f"{(rep['compressed'] or {}).get('replaced', 0)} weights as codes; run it with "
        f"`archfuzz generate {rep['folder']} --prompt ...`", "",
        f"- parity against PyTorch (CPU, f32 accuracy): prefill ({p['prefill_tokens']} tokens) rel err "
        f"{p['prefill_rel_err']:.2e}, {len(p['decode_rel_err'])} cached decode steps max rel err "
        f"{max(p['decode_rel_err'] or [0.0]):.2e}; greedy tokens {'agree' if p['tokens_agree'] else 'DIFFER'} "
        f"(bound {rep['tolerance']:.1e}" + (f", twice the dequantized f32 IR's {rep['floor']:.1e}"
                                            if rep.get("floor") and rep["tolerance"] > STATEFUL_TOL else "")
        + f": {'ok' if p['max_rel_err'] <= rep['tolerance'] and p['tokens_agree'] else 'FAILED'})",
        f"- openvino_genai greedy in a fresh process, {g['new_tokens']} new tokens after {g['prompt_tokens']} prompt "
        f"tokens, batch 1: time to first token {g['ttft_ms']:.1f} ms (prefill {g['prefill_tok_s']:.0f} tokens/s), "
        f"decode {g['decode_tok_s']:.1f} tokens/s ({g['tpot_ms']:.2f} ms/token); peak RSS {g['peak_rss_mib']:.0f} MiB "
        f"({g['rss_imports_mib']:.0f} MiB after importing openvino_genai)"]
    lines.insert(4, f"- embedding table / output head stored as {tables['mode']}"
                 + (f" ({', '.join(tables['tables'])}; the PyTorch reference applies the same quantization)"
                    if tables["tables"] else " (as exported)"))
    if pp is not None:
        t, o = pp["torch"], pp["ov"]
        lines.append(f"- perplexity through the stateful IR (CPU, f32 accuracy, {o['windows']} windows of {o['window']}, "
                     f"{o['tokens_scored']} tokens scored, state reset per window): {o['ppl']:.4f} against PyTorch's "
                     f"{t['ppl']:.4f} (relative difference {pp['rel_diff']:.1e}, bound {pp['tolerance']:.1e}: "
                     f"{'ok' if pp['rel_diff'] <= pp['tolerance'] else 'FAILED'})")
    return "\n".join(lines + [""])
