"""Text for calibration and evaluation, read by path and tokenized once.

The benchmark convention (see ../shared/data/README.md): CRLF normalised to LF, the whole text
tokenized once; calibration takes ``nsamples`` contiguous, non-overlapping windows of ``seqlen`` tokens
starting at seeded offsets.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fuzz.errors import BadInput


def read_text(path: str | Path) -> str:
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8").replace("\r\n", "\n")
    except OSError as exc:
        raise BadInput(f"cannot read text {p}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise BadInput(f"text {p} is not UTF-8") from None


def tokenize(tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if ids.numel() == 0:
        raise BadInput("the text tokenizes to nothing")
    return ids


def calibration_windows(ids: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``(nsamples, seqlen)`` non-overlapping windows at seeded positions of the token stream."""
    slots = ids.numel() // seqlen
    if slots < nsamples:
        raise BadInput(f"the calibration text has {ids.numel()} tokens: fewer than {nsamples} x {seqlen}")
    order = torch.randperm(slots, generator=torch.Generator().manual_seed(seed))[:nsamples]
    return torch.stack([ids[int(i) * seqlen:(int(i) + 1) * seqlen] for i in order])
