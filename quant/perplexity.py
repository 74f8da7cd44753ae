"""Perplexity, the seed paper's convention (see ../shared/data/README.md).

The evaluation text is tokenized once (CRLF -> LF, no special tokens); the first ``max_tokens`` tokens
(default 8,192) are cut into non-overlapping windows of ``window`` tokens (default 1,024; a tail shorter
than a window is dropped); each window is scored with teacher forcing, its first token is not scored
(no context), so 8 windows score 8 x 1,023 = 8,184 tokens.  ``PPL = exp(sum NLL / scored tokens)``.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from fuzz.errors import BadInput

WINDOW = 1024
MAX_TOKENS = 8192


@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor, window: int = WINDOW, max_tokens: int = MAX_TOKENS) -> dict:
    """``{"ppl", "nll", "tokens_scored", "windows", "window", "max_tokens", "seconds"}`` of ``model`` on ``ids``."""
    model.eval()

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        out = model(input_ids=x, use_cache=False) if _is_hf(model) else model(x)
        return (out.logits if hasattr(out, "logits") else out)[0]

    return windowed_perplexity(logits_of, ids, window, max_tokens)


def windowed_perplexity(logits_of, ids: torch.Tensor, window: int = WINDOW, max_tokens: int = MAX_TOKENS) -> dict:
    """:func:`perplexity` of any runtime: ``logits_of(x)`` gives the ``(window, vocab)`` logits of one window
    ``x`` (1, window), a fresh sequence; the windows and the scoring are the module docstring's."""
    ids = ids.reshape(-1)[:max_tokens]
    n = ids.numel() // window
    if n == 0:
        raise BadInput(f"the evaluation text has {ids.numel()} tokens: fewer than one window of {window}")
    t0 = time.time()
    total, count = 0.0, 0
    for i in range(n):
        x = ids[i * window:(i + 1) * window][None]
        logits = logits_of(x)[:-1].double()
        total += float(F.cross_entropy(logits, x[0, 1:], reduction="sum"))
        count += window - 1
    nll = total / count
    return {"ppl": math.exp(nll), "nll": nll, "tokens_scored": count, "windows": n, "window": window,
            "max_tokens": max_tokens, "seconds": round(time.time() - t0, 1)}


def _is_hf(model: nn.Module) -> bool:
    return hasattr(model, "config") and hasattr(model, "generation_config")
