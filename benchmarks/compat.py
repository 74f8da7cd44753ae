"""The compatibility matrix: every ``*ForCausalLM`` class of the installed transformers, imported or refused.

    python -m benchmarks.compat [--classes Llama,Mistral ...] [--limit N] [--timeout 60] [--no-recipes]
                                [--json docs/data/compat.json] [--md docs/compat.md] [--readme README.md]
                                [--fresh]

Per class, in a forked child with a time limit (``--timeout`` seconds, default 60):

1. **build**: the class's config from its defaults, shrunk to a tiny size (:func:`tiny_config`: hidden 32,
   2 layers, 4 heads / 2 KV heads, head_dim 8, vocab 64, 4 experts top-2, 128 positions, windows 8), the
   model built in float64 with random weights (:func:`benchmarks.import_check_families.randomize`).  A class
   that does not build (a config that rejects the sizes, a model that needs other inputs) is ``unbuildable``
   with the exception.
2. **kind** (:func:`classify`, from the modules the instance holds): ``decoder`` (attention only),
   ``state-space`` (Mamba-like mixers, no attention), ``linear-attention`` (RWKV, DeltaNet, xLSTM, ...),
   ``hybrid`` (attention and either of those), ``not-causal-lm`` (encoder-decoder, bidirectional-encoder or
   multimodal classes used as a decoder).
3. **import**: :func:`fuzz.importer.import_model` (import check on: lengths 24, 64, 2 W + 8): ``imported``
   with the fidelity error and its bound, or ``refused`` with the reason (the message, the source module it
   names and a normalised ``reason`` key), or ``crash`` (an exception that is not :class:`fuzz.errors.BadInput`
   or :class:`fuzz.Refusal`: an importer bug).
4. **recipes**: each of :data:`quant.transforms.RECIPES` verified in float64 on the imported graph
   (batch 1, 8 tokens): the verdict's status, and the reason of a refusal.

Writes ``--json`` (rows sorted by class, no timings except ``total_seconds``; each finished row is written
at once, atomically, so a crash or a kill loses nothing and a rerun resumes: rows already present for the
installed transformers version are kept unless ``--fresh`` or named by ``--classes``), ``--md`` (the table,
grouped by kind, with counts and the refusal reasons ranked by how many classes they block) and the
README's "Supported architectures" summary between ``<!-- compat:start -->`` and ``<!-- compat:end -->``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import re
import time
import traceback
from collections import Counter
from pathlib import Path

SCHEMA_VERSION = 1
KINDS = ("decoder", "hybrid", "state-space", "linear-attention", "not-causal-lm", "unbuildable", "unknown")
KIND_TITLES = {"decoder": "Decoder-only attention", "hybrid": "Hybrid (attention + state-space / linear)",
               "state-space": "State-space", "linear-attention": "Linear attention / recurrent",
               "not-causal-lm": "Encoder-decoder or not a plain causal LM",
               "unbuildable": "Not buildable as a tiny instance from its config defaults",
               "unknown": "Not classified (no row within the time limit: rerun with a longer --timeout)"}
OUTCOMES = ("imported", "refused", "crash", "timeout", "unbuildable")
MARK_START, MARK_END = "<!-- compat:start -->", "<!-- compat:end -->"
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "docs" / "data" / "compat.json"
DEFAULT_MD = ROOT / "docs" / "compat.md"
DEFAULT_README = ROOT / "README.md"

# attention temperature tuning's original length L (1 + beta log(1 + floor(pos / L)) on the queries): small enough
# that the factor steps within the recording (8 tokens) and again within the import check (24, 64 tokens)
TEMPERATURE_LENGTH = 4
# the tiny sizes; each key is set when the class's config has it (its defaults, before any override)
TINY = dict(
    vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
    vocab_size_per_layer_input=64,  # Gemma4: the per-layer embedding table, one row per token id
    # other spellings of the same sizes
    d_model=32, n_embd=32, n_embed=32, dim=32, n_layer=2, n_layers=2, num_layers=2, n_head=4, n_heads=4,
    num_heads=4, ffn_dim=48, n_inner=48, ffn_hidden_size=48, d_ff=48, n_positions=128, max_seq_len=128,
    max_sequence_length=128, seq_length=128, num_kv_heads=2, n_kv_heads=2, multi_query_group_num=2,
    # MoE
    num_experts=4, num_local_experts=4, n_routed_experts=4, moe_num_experts=4, num_experts_per_tok=2,
    moe_topk=2, top_k=2, moe_k=2, moe_intermediate_size=16, expert_intermediate_size=16, n_shared_experts=1,
    shared_expert_intermediate_size=16, n_group=1, topk_group=1, first_k_dense_replace=1,
    # MLA and low-rank projections
    rotary_dim=4,  # GPT-J / CodeGen: a partial rotary width that fits head_dim 8
    q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8,
    # DeepSeek Sparse Attention's indexer: a top-k below the import check's lengths (24, 64), or it keeps every
    # key and the check cannot see a dropped selection
    index_topk=4, index_head_dim=8, index_n_heads=2,
    # windows and chunks: short, so the check's 2 W + 8 sees them
    sliding_window=8, attention_chunk_size=8,
    # Llama-4's attention temperature length (its NoPE layers): short, so the factor steps within the recording
    floor_scale=TEMPERATURE_LENGTH,
    # hybrids laid out by period / offset: one layer of each kind in the first two
    attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
    # state-space / linear-attention sizes
    state_size=8, ssm_state_size=8, mamba_d_state=8, mamba_n_heads=4, mamba_d_head=8, n_groups=1,
    mamba_n_groups=1, conv_kernel=4, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
    linear_value_head_dim=8, time_step_rank=4, mamba_dt_rank=4,
    # Blt: its hash n-gram embedding tables (500002 rows each by default: 96M float64 parameters, 90 s to build);
    # the local encoder's and decoder's view of the global transformer's width (its hidden_size, shrunk above)
    encoder_hash_byte_group_vocab=64, hidden_size_global=32,
)
# not touched: ids of special tokens (None: no padding row to worry about)
NO_TOKENS = dict(pad_token_id=None, bos_token_id=None, eos_token_id=None)


# ------------------------------------------------------------------------------------------------ build

def causal_lm_classes() -> list[str]:
    """Every ``*ForCausalLM`` class name transformers exports (the Auto class left out), sorted."""
    import transformers as tf
    return sorted(n for n in dir(tf) if n.endswith("ForCausalLM") and not n.startswith("Auto"))


def _tiny_kwargs(have: dict) -> dict:
    """The keyword arguments that shrink a config whose defaults are ``have`` (see :func:`tiny_config`)."""
    n_default = next((have[k] for k in ("num_hidden_layers", "n_layer", "n_layers", "num_layers")
                      if isinstance(have.get(k), int)), None)
    kw = {k: v for k, v in TINY.items() if k in have and not isinstance(have[k], (dict, bool))
          and (have[k] is None or isinstance(have[k], (int, float)))}
    if "head_dim" in kw and have.get("head_dim") is None:
        kw.pop("head_dim")  # derived from hidden / heads in that family
    if "head_dim" in kw and "qk_rope_head_dim" in kw and have.get("head_dim") == have.get("qk_rope_head_dim"):
        kw["head_dim"] = kw["qk_rope_head_dim"]  # MLA: head_dim is the RoPE part's width (DeepSeek-V2/V3 and kin)
    if "qk_rope_head_dim" in have and "num_key_value_heads" in kw and "num_attention_heads" in kw:
        kw["num_key_value_heads"] = kw["num_attention_heads"]  # MLA: one latent per head (DeepSeek sets them equal)
    n_layers = next((kw[k] for k in ("num_hidden_layers", "n_layer", "n_layers", "num_layers") if k in kw), None)
    for key, value in have.items():
        if n_default and n_layers and isinstance(value, list) and len(value) == n_default and key != "architectures":
            kinds = list(dict.fromkeys(map(str, value)))
            picked = [value[[str(v) for v in value].index(k)] for k in kinds][:n_layers]
            kw[key] = (picked + list(value))[:n_layers] if len(picked) < n_layers else picked
    kw.update({k: v for k, v in NO_TOKENS.items() if k in have})
    if "rope_parameters" in have and isinstance(have["rope_parameters"], dict):
        kw["rope_parameters"] = dict(have["rope_parameters"])
        if kw["rope_parameters"].get("llama_4_scaling_beta") is not None:  # attention temperature (Ministral3,
            # Mistral4): its first step at original_max_position_embeddings, shrunk to show within the recording
            kw["rope_parameters"]["original_max_position_embeddings"] = TEMPERATURE_LENGTH
    return kw


def tiny_config(cls):
    """The config of ``cls`` from its defaults with every size :data:`TINY` names that it has, shrunk.

    Per-layer lists of the default length (``layer_types``, ``mlp_layer_types``, ...) are cut to the first
    layers, keeping one of each kind the list holds where there is room.  Nested configs (``sub_configs``: a
    multimodal wrapper's ``text_config`` / ``vision_config`` / ``audio_config``, Blt's patcher, encoder, global and
    decoder) are shrunk the same way: left at their defaults they build billion-parameter float64 towers (Fuyu's
    4096-wide text model with a 262144-token vocabulary) that never give a row within the time limit.
    """
    cfg_cls = cls.config_class
    defaults = cfg_cls()
    have = defaults.to_dict()
    kw = _tiny_kwargs(have)
    for name in getattr(cfg_cls, "sub_configs", None) or {}:
        sub = getattr(defaults, name, None)
        if sub is None or not hasattr(sub, "to_dict"):
            continue
        sub_have = sub.to_dict()
        sub_kw = _tiny_kwargs(sub_have)
        if any(k not in NO_TOKENS and sub_have.get(k) != v for k, v in sub_kw.items()):
            keep = {k: v for k, v in sub_have.items() if k not in ("transformers_version", "architectures")}
            kw[name] = type(sub)(**{**keep, **sub_kw})
    cfg = cfg_cls(**kw)
    heads = kw.get("num_attention_heads")
    try:
        head_dim = getattr(cfg, "head_dim", 0)
    except Exception:  # noqa: BLE001 - Gemma4: a per-layer attribute its heterogeneous config refuses to read
        head_dim = 0
    if "head_dim" in have and head_dim is None and heads and kw.get("hidden_size"):
        cfg.head_dim = kw["hidden_size"] // heads  # families that read config.head_dim and leave it None
    return cfg


def build(name: str, seed: int = 0):
    """A tiny float64 instance of the transformers class ``name`` with random weights."""
    import transformers as tf
    from benchmarks.import_check_families import instantiate
    cls = getattr(tf, name)
    return instantiate(cls, tiny_config(cls), seed)


# class names are CamelCase: "SSM"/"Ssm" as a word part (not "SeedOssMLP"), Mamba, S4/S6, Hyena, recurrences
_SSM = re.compile(r"(?i:mamba|hyena|recurrent|rglru|shortconv|conv1d)|SSM|Ssm(?=[A-Z]|$)|S[46](?=[A-Z]|$)")
_LINEAR = re.compile(r"rwkv|deltanet|delta_net|linearattention|linear_attn|lightning|retention|xlstm|mlstm|slstm|"
                     r"gla\b|kda|gated_delta", re.IGNORECASE)
_ATTN = re.compile(r"attention|attn|selfattn", re.IGNORECASE)


def _takes(module, *names: str) -> bool:
    """Whether ``module.forward`` has a parameter called one of ``names``."""
    import inspect
    try:
        return bool(set(inspect.signature(module.forward).parameters) & set(names))
    except (TypeError, ValueError):
        return False


def _never_run(model, modules: list[tuple[str, object]]) -> list[str]:
    """The paths of ``modules`` that a text-only forward of ``model`` (8 token ids) never calls."""
    import torch
    called: set[str] = set()
    hooks = [m.register_forward_pre_hook(lambda mod, args, path=path: called.add(path)) for path, m in modules]
    try:
        vocab = int(getattr(getattr(model, "config", None), "vocab_size", None) or 2)
        with torch.no_grad():
            model(input_ids=torch.arange(8).remainder(vocab)[None])
    except Exception:  # noqa: BLE001  (no text-only forward: no evidence either way)
        return []
    finally:
        for h in hooks:
            h.remove()
    return [path for path, _ in modules if path not in called]


def _cross_attention(model) -> str | None:
    """A cross-attention over an encoder's states the instance holds: an attention module owning parameters,
    whose forward takes ``key_value_states`` / ``encoder_hidden_states``, in a layer whose forward takes
    ``encoder_hidden_states``, and that a text-only forward never runs (TrOCR's ``encoder_attn``: the text
    decoder of a VisionEncoderDecoder; its logits never read those weights).  Bart-style decoder-only code
    with ``add_cross_attention`` off holds no such module; a self-attention taking the same arguments runs."""
    found = [(f"{path}.{name}" if path else name, child) for path, layer in model.named_modules()
             if _takes(layer, "encoder_hidden_states") for name, child in layer.named_children()
             if _ATTN.search(type(child).__name__) and _takes(child, "key_value_states", "encoder_hidden_states")
             and any(True for _ in child.parameters())]
    idle = _never_run(model, found) if found else []
    return idle[0] if idle else None


# a forward argument carrying another modality, and the modules that read one (by class name or attribute path)
_MODALITY_ARGS = ("pixel_values", "image_patches", "image_pixel_values", "pixel_values_videos", "audio_input_features",
                  "input_features", "audio_values")
_MODALITY_MODULE = re.compile(r"vision|image|audio|speech|visual", re.IGNORECASE)


def _modality_input(model) -> str | None:
    """The image (or audio) encoder of an image-to-text class (GIT, Fuyu, Phi-4-multimodal): the class's forward
    takes ``pixel_values`` (or image patches, audio features), and the instance holds a module owning parameters,
    named for that modality (its class: GIT's ``GitVisionModel``; or its attribute: Fuyu's
    ``vision_embed_tokens`` linear, Phi-4-multimodal's ``embed_tokens_extend.image_embed``), that a text-only
    forward never runs; None otherwise."""
    args = [a for a in _MODALITY_ARGS if _takes(model, a)]
    if not args:
        return None
    found: list[tuple[str, object]] = []
    for path, m in model.named_modules():
        if (path and (_MODALITY_MODULE.search(type(m).__name__) or _MODALITY_MODULE.search(path.rsplit(".", 1)[-1]))
                and any(True for _ in m.parameters()) and not any(path.startswith(f + ".") for f, _ in found)):
            found.append((path, m))
    idle = _never_run(model, found) if found else []
    if not idle:
        return None
    kind = "image-to-text" if any("pixel" in a or "image" in a for a in args) else "audio-to-text"
    reader = type(model.get_submodule(idle[0])).__name__
    return f"{kind}: its forward takes {', '.join(args)}, read by {reader} ({idle[0]})"


def classify(model) -> tuple[str, str]:
    """``(kind, why)`` from the config and the module classes of the instance (see :data:`KINDS`).

    ``not-causal-lm``: the decoder of an encoder-decoder model, by its config (``is_encoder_decoder``,
    ``add_cross_attention``), by a ``*Cross*Attention`` module, or by evidence in the instance
    (:func:`_cross_attention`: an attention over ``key_value_states`` / ``encoder_hidden_states``, owning
    parameters, in a layer taking ``encoder_hidden_states``, that a text-only forward never runs: TrOCR, the text
    decoder of a VisionEncoderDecoder); an image-to-text class whose forward takes ``pixel_values`` (or image
    patches, audio features), read by an encoder it holds that a text-only forward never runs
    (:func:`_modality_input`: GIT, Fuyu, Phi-4-multimodal); a bidirectional encoder family used as a decoder.  The forward runs only where the module structure finds a candidate."""
    cfg = getattr(model, "config", None)
    defaults = type(cfg)() if cfg is not None else None
    if getattr(cfg, "is_encoder_decoder", False) or getattr(defaults, "is_encoder_decoder", False):
        return "not-causal-lm", "the decoder of an encoder-decoder model (config.is_encoder_decoder)"
    if cfg is not None and "type_vocab_size" in cfg.to_dict():
        return "not-causal-lm", "a bidirectional encoder family used as a decoder (config.type_vocab_size)"
    names = {type(m).__name__ for m in model.modules()}
    linear = sorted(n for n in names if _LINEAR.search(n))
    ssm = sorted(n for n in names if _SSM.search(n) and not _ATTN.search(n) and n not in linear)
    attn = sorted(n for n in names if _ATTN.search(n) and not _LINEAR.search(n) and "Cross" not in n)
    cross = sorted(n for n in names if "Cross" in n and _ATTN.search(n))
    if cross or getattr(cfg, "add_cross_attention", False):
        return "not-causal-lm", f"cross-attention ({', '.join(cross) or 'config.add_cross_attention'})"
    over_encoder = _cross_attention(model)
    if over_encoder:
        return "not-causal-lm", f"cross-attention over an encoder's states ({over_encoder})"
    other = _modality_input(model)
    if other:
        return "not-causal-lm", other
    if getattr(cfg, "is_decoder", None) is False and any(n.endswith(("BertModel", "RobertaModel")) for n in names):
        return "not-causal-lm", "bidirectional encoder"
    if attn and (ssm or linear):
        return "hybrid", f"{attn[0]} + {(linear or ssm)[0]}"
    if linear:
        return "linear-attention", linear[0]
    if ssm:
        return "state-space", ssm[0]
    if attn:
        return "decoder", attn[0]
    return "not-causal-lm", "no attention, state-space or linear-attention module"


# ------------------------------------------------------------------------------------------------ one row

_MODULE = re.compile(r"(?:source module|module) '?([A-Za-z_][\w.]*)'?")


def _generic(text: str) -> str:
    text = re.sub(r"\b[A-Za-z_][\w]*(\.[\w]+)+\b", "<module>", text)  # dotted module paths
    text = re.sub(r"\b\d+(\.\d+)?(e-?\d+)?\b", "N", text)
    return re.sub(r"\s+", " ", text).strip()[:200]


def reason_key(message: str) -> str:
    """A normalised refusal reason (the feature, without layer indices or class-specific node names), so
    classes that are blocked by the same thing group under one key."""
    m = message.split("\n")[0]
    opaque = re.search(r"opaque op '([^']+)'(: ([^(;]+))?", m)
    if opaque and opaque.group(3):  # the refusal names the feature: "opaque op 'topk': mixture of attention heads (…"
        return f"{opaque.group(3).strip()} (opaque op '{opaque.group(1)}')"
    if opaque:
        return f"opaque op '{opaque.group(1)}'"
    if "not exact" in m or "does not compute what the model computes" in m:
        op = re.search(r"first divergent node '[^']*' \(([^)]+)\)", m)
        tail = "; sliding window (measured)" if "sliding window: measured" in m else ""
        return f"import check: differs from the source, first at a{'n' if op and op.group(1)[0] in 'aeiou' else ''} " \
               f"{op.group(1) if op else 'unknown'} node{tail}"
    cannot = re.match(r"cannot import \S+ \((.*)", m)
    if cannot:
        rest = re.sub(r"; recorded node '[^']*'\)?", "", cannot.group(1))
        rest = re.sub(r"\[[^\]]*\]", "[…]", rest)
        return "cannot import: " + _generic(rest.rstrip(")"))
    return _generic(re.sub(r"'[^']*'", "'…'", m) if len(m) > 200 else m)


def refused_module(message: str) -> str | None:
    """The source module a refusal names (layer indices kept), if it names one."""
    for pat in (r"cannot import (\S+) \(", r"in module ([A-Za-z_][\w.]*)", r"source module '([^']+)'",
                r"module '([^']+)'", r"at \w+ '([^']+)'", r"node '([^']+)'"):
        m = re.search(pat, message)
        if m:
            return m.group(1)
    return None


def T_RECIPES() -> tuple[str, ...]:
    """The recipes each imported class is verified with (:data:`quant.transforms.RECIPES`)."""
    import quant.transforms as T
    return tuple(T.RECIPES)


def _recipe_verdicts(graph) -> dict:
    import torch
    import quant.transforms as T
    from verifier import verify
    out = {}
    for recipe in T.RECIPES:
        try:
            v = verify(T.get(recipe), graph, dtype=torch.float64, batch=1, seq=8, calib_batch=1)
        except Exception as exc:  # noqa: BLE001  (the matrix reports; it never stops)
            out[recipe] = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        row = {"status": str(v.status)}
        if v.refused or not v.ok:
            row["reason"] = (v.message or "")[:300]
        if v.ok and v.max_rel_err is not None:
            row["max_rel_err"] = float(f"{v.max_rel_err:.1e}")
        out[recipe] = row
    return out


def run_class(name: str, recipes: bool = True) -> dict:
    """One matrix row for the transformers class ``name`` (see the module docstring)."""
    import torch
    from fuzz import Refusal
    from fuzz.errors import BadInput, LayoutError
    from fuzz.importer import import_model
    torch.manual_seed(0)
    row: dict = {"class": name}
    try:
        model = build(name)
        ids = torch.arange(12).remainder(model.get_input_embeddings().weight.shape[0])[None]
        with torch.no_grad():  # the tiny instance must run its own forward, or the row says nothing of the importer
            try:
                model(input_ids=ids)
            except Exception:  # noqa: BLE001 - a forward whose cache cannot be built from its config (Blt's
                model(input_ids=ids, use_cache=False)  # DynamicCache reads num_hidden_layers it lacks): uncached
    except Exception as exc:  # noqa: BLE001
        text = str(exc).splitlines()[0] if str(exc) else ""
        row.update(kind="unbuildable", outcome="unbuildable", reason=f"{type(exc).__name__}: {text}"[:300])
        return row
    kind, why = classify(model)
    row.update(kind=kind, kind_evidence=why, model_type=getattr(model.config, "model_type", None))
    try:
        graph = import_model(model)
    except LayoutError as exc:  # the converter built an invalid layout: an importer bug, not a refusal
        row.update(outcome="crash", error_type="LayoutError", module=None, where="layout validation",
                   reason="LayoutError (an invalid layout built by the importer)", message=str(exc)[:600])
        return row
    except (BadInput, Refusal) as exc:
        msg = str(exc)
        row.update(outcome="refused", error_type=type(exc).__name__, module=refused_module(msg),
                   reason=reason_key(msg), message=msg[:600])
        return row
    except Exception as exc:  # noqa: BLE001  (an importer bug: reported as a crash)
        tb = traceback.extract_tb(exc.__traceback__)
        where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(tb) if "/fuzz/" in f.filename),
                     f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?")
        row.update(outcome="crash", error_type=type(exc).__name__, module=None, where=where,
                   reason=f"{type(exc).__name__} at {where}", message=f"{type(exc).__name__}: {exc}"[:600])
        return row
    chk = graph.layout.meta["import_check"]
    row.update(outcome="imported", floor=chk["floor"], bound=float(f"{chk['bound']:.2e}"),
               max_rel_err=float(f"{min(chk['max_rel_err'].values()):.2e}"), lengths=list(chk["lengths"]))
    if recipes:
        row["recipes"] = _recipe_verdicts(graph)
    return row


def _child(name: str, recipes: bool, conn) -> None:
    import torch
    torch.set_num_threads(1)
    try:
        row = run_class(name, recipes)
    except BaseException as exc:  # noqa: BLE001
        row = {"class": name, "kind": "unknown", "outcome": "crash", "reason": f"harness: {type(exc).__name__}",
               "message": str(exc)[:600]}
    conn.send(row)
    conn.close()


def run_isolated(name: str, timeout: float, recipes: bool = True) -> dict:
    """:func:`run_class` in a forked child, killed after ``timeout`` seconds (``outcome: timeout``)."""
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(name, recipes, send), daemon=True)
    proc.start()
    send.close()
    row = None
    if recv.poll(timeout):
        try:
            row = recv.recv()
        except EOFError:
            row = None
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if row is None and recv.poll(0):  # finished just past the limit: its row is in the pipe
        try:
            row = recv.recv()
        except EOFError:
            row = None
    if row is None:
        if proc.exitcode in (None, 0, -9):
            return {"class": name, "kind": "unknown", "outcome": "timeout",
                    "reason": f"no row within {timeout:g} s"}
        return {"class": name, "kind": "unknown", "outcome": "crash",
                "reason": f"child exited with {proc.exitcode}"}
    return row


# ------------------------------------------------------------------------------------------------ outputs

def load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA_VERSION else {}


def summary(rows: list[dict]) -> dict:
    """Counts per kind and outcome, and the refusal reasons ranked by how many classes they block."""
    by_kind = {k: dict(Counter(r["outcome"] for r in rows if r["kind"] == k)) for k in KINDS}
    reasons = Counter(r["reason"] for r in rows if r["outcome"] in ("refused", "crash"))
    recipe_status: dict = {}
    for r in rows:
        for recipe, v in r.get("recipes", {}).items():
            recipe_status.setdefault(recipe, Counter())[v["status"]] += 1
    dec = by_kind["decoder"]
    n_dec = sum(dec.values())
    return {"classes": len(rows), "by_kind": {k: v for k, v in by_kind.items() if v},
            "decoder_imported": f"{dec.get('imported', 0)}/{n_dec}",
            "imported": sum(r["outcome"] == "imported" for r in rows),
            "crashes": sorted(r["class"] for r in rows if r["outcome"] == "crash"),
            "reasons": [{"reason": k, "classes": n} for k, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))],
            "recipes": {k: dict(sorted(v.items())) for k, v in recipe_status.items()}}


def write_json(path: Path, rows: dict, meta: dict) -> None:
    from fuzz.layout import atomic_write_text
    ordered = [rows[k] for k in sorted(rows)]
    for r in ordered:  # reasons re-derived from the message: a better reason_key needs no rerun
        if r.get("outcome") in ("timeout", "crash") and "model_type" not in r:
            r["kind"] = "unknown"  # never classified (rows of earlier runs said "unbuildable")
        if r.get("outcome") == "refused" and r.get("message"):
            r["reason"], r["module"] = reason_key(r["message"]), refused_module(r["message"])
    data = {"schema": SCHEMA_VERSION, **meta, "summary": summary(ordered), "rows": ordered}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=False) + "\n")


def _cell(r: dict) -> str:
    if r["outcome"] == "imported":
        return f"imported ({r['floor']}, {r['max_rel_err']:.1e} <= {r['bound']:.0e})"
    text = r.get("message") or r.get("reason", "")
    text = text.replace("|", "\\|").replace("\n", " ")
    return f"**{r['outcome']}**: {text[:220]}"


def _recipes_cell(r: dict) -> str:
    rec = r.get("recipes")
    if not rec:
        return ""
    short = {"invariant": "ok", "refused": "ref"}
    return " ".join(f"{short.get(v['status'], v['status'].upper())}" for v in rec.values())


def markdown(data: dict) -> str:
    rows, s = data["rows"], data["summary"]
    import quant.transforms as T
    out = ["# Compatibility matrix", "",
           f"Generated by `python -m benchmarks.compat` (transformers {data['transformers']}, torch "
           f"{data['torch']}): every `*ForCausalLM` class, built as a tiny float64 instance from its config "
           "defaults (hidden 32, 2 layers, 4 heads / 2 KV heads, vocab 64, 4 experts top-2, windows 8), imported "
           "through `fuzz.importer.import_model` (import check at 24, 64 and 2 W + 8 tokens) or refused with "
           "the reason, and each recipe verified in float64 on the imported graph (batch 1, 8 tokens). "
           f"Data: `docs/data/compat.json`. Whole run: {data.get('total_seconds', 0):.0f} s.", "",
           "## Counts", "", "| kind | classes | imported | refused | crash | timeout |", "|---|---:|---:|---:|---:|---:|"]
    for kind, c in s["by_kind"].items():
        out.append(f"| {KIND_TITLES[kind]} | {sum(c.values())} | {c.get('imported', 0)} | {c.get('refused', 0)} | "
                   f"{c.get('crash', 0)} | {c.get('timeout', 0)} |")
    out += ["", f"Decoder-only attention classes imported: **{s['decoder_imported']}**.", "",
            "## Refusal reasons, ranked by how many classes they block", "", "| classes | reason |", "|---:|---|"]
    for item in s["reasons"]:
        out.append(f"| {item['classes']} | {item['reason'].replace('|', chr(92) + '|')} |")
    out += ["", "## Recipes on the imported graphs (float64)", "",
            "| recipe | " + " | ".join(sorted({k for v in s["recipes"].values() for k in v})) + " |"]
    statuses = sorted({k for v in s["recipes"].values() for k in v})
    out.append("|---|" + "---:|" * len(statuses))
    for recipe, c in s["recipes"].items():
        out.append(f"| `{recipe}` | " + " | ".join(str(c.get(st, 0)) for st in statuses) + " |")
    out += ["", f"Recipe columns below, in order: {', '.join(T.RECIPES)} (`ok` invariant, `ref` refused, "
            "anything else in capitals).", ""]
    for kind in KINDS:
        group = [r for r in rows if r["kind"] == kind]
        if not group:
            continue
        out += [f"## {KIND_TITLES[kind]} ({len(group)})", "", "| class | import | recipes |", "|---|---|---|"]
        out += [f"| `{r['class']}` | {_cell(r)} | {_recipes_cell(r)} |" for r in group]
        out.append("")
    return "\n".join(out) + "\n"


def readme_summary(data: dict) -> str:
    s = data["summary"]
    dec = s["by_kind"].get("decoder", {})
    lines = [f"Measured by `python -m benchmarks.compat` on transformers {data['transformers']} "
             f"(`docs/compat.md`, `docs/data/compat.json`): of {s['classes']} `*ForCausalLM` classes, "
             f"{s['imported']} import faithfully (the import check passes); decoder-only attention: "
             f"{s['decoder_imported']} imported, {dec.get('refused', 0)} refused by name.", "",
             "| kind | classes | imported | refused | crash / timeout |", "|---|---:|---:|---:|---:|"]
    for kind, c in s["by_kind"].items():
        lines.append(f"| {KIND_TITLES[kind]} | {sum(c.values())} | {c.get('imported', 0)} | {c.get('refused', 0)} | "
                     f"{c.get('crash', 0) + c.get('timeout', 0)} |")
    top = s["reasons"][:5]
    if top:
        lines += ["", "Most common refusals: " + "; ".join(f"{t['reason'][:90]} ({t['classes']})" for t in top) + "."]
    return "\n".join(lines)


def update_readme(path: Path, data: dict) -> None:
    from fuzz.layout import atomic_write_text
    text = path.read_text()
    block = f"{MARK_START}\n{readme_summary(data)}\n{MARK_END}"
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        text = head + block + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## Supported architectures\n\n{block}\n"
    atomic_write_text(path, text)


def write_outputs(json_path: Path, md_path: Path | None, readme: Path | None) -> None:
    data = load(json_path)
    if not data:
        return
    from fuzz.layout import atomic_write_text
    if md_path:
        md_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(md_path, markdown(data))
    if readme:
        update_readme(readme, data)


# ------------------------------------------------------------------------------------------------ main

def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", default=None, help="comma-separated class names or prefixes (Llama = "
                    "LlamaForCausalLM); default: every *ForCausalLM class")
    ap.add_argument("--limit", type=int, default=None, help="at most N classes (after --classes)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per class (default 60)")
    ap.add_argument("--no-recipes", action="store_true", help="import only; no recipe verdicts")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--md", type=Path, default=DEFAULT_MD)
    ap.add_argument("--readme", default=str(DEFAULT_README), help="README to update ('' to skip)")
    ap.add_argument("--fresh", action="store_true", help="rerun every selected class (default: resume)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.timeout <= 0 or not math.isfinite(args.timeout):
        ap.error("--timeout must be a finite number of seconds > 0")
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be >= 1")
    return args


def select(classes: str | None, limit: int | None) -> list[str]:
    every = causal_lm_classes()
    if classes:
        wanted = [c.strip() for c in classes.split(",") if c.strip()]
        names = [n if n.endswith("ForCausalLM") else f"{n}ForCausalLM" for n in wanted]
        unknown = [n for n in names if n not in every]
        if unknown:
            raise SystemExit(f"--classes: unknown class(es) {unknown}")
        every = names
    return every[:limit] if limit else every


def main(argv=None) -> int:
    args = parse(argv)
    import torch
    import transformers
    from tqdm import tqdm
    import quant.transforms  # noqa: F401  (loaded before forking)
    import fuzz.importer  # noqa: F401
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    names = select(args.classes, args.limit)
    meta = {"transformers": transformers.__version__, "torch": torch.__version__.split("+")[0],
            "recipes": list(quant.transforms.RECIPES), "timeout_s": args.timeout}
    old = load(args.json)
    rows: dict = {}
    total = 0.0
    if old and old.get("transformers") == meta["transformers"] and not args.fresh:
        rows = {r["class"]: r for r in old.get("rows", [])}
        total = float(old.get("total_seconds", 0.0))
    todo = [n for n in names if n not in rows or args.classes or r_needs(rows[n], args)]
    t0 = time.perf_counter()
    bar = tqdm(todo, desc="compat", unit="class", disable=args.quiet)
    for name in bar:
        bar.set_postfix_str(name)
        t1 = time.perf_counter()
        rows[name] = run_isolated(name, args.timeout, recipes=not args.no_recipes)
        total += time.perf_counter() - t1
        write_json(args.json, rows, {**meta, "total_seconds": round(total)})
        if args.quiet:
            print(f"{name}: {rows[name]['kind']} {rows[name]['outcome']} {rows[name].get('reason', '')[:100]}",
                  flush=True)
    if not todo:
        write_json(args.json, rows, {**meta, "total_seconds": round(total)})
    write_outputs(args.json, args.md, Path(args.readme) if args.readme else None)
    print(f"{len(todo)} classes in {time.perf_counter() - t0:.0f} s; {args.json}", flush=True)
    s = load(args.json)["summary"]
    print(json.dumps({k: s[k] for k in ("classes", "by_kind", "decoder_imported", "crashes")}, indent=1))
    return 0


def r_needs(row: dict, args) -> bool:
    """A kept row is rerun when it lacks what this run asks for (recipe verdicts) or did not finish."""
    harness = row.get("outcome") == "crash" and str(row.get("reason", "")).startswith(("child exited", "harness"))
    return row.get("outcome") in ("timeout",) or harness or (not args.no_recipes and row.get("outcome") == "imported"
                                                 and "recipes" not in row)


if __name__ == "__main__":
    raise SystemExit(main())
