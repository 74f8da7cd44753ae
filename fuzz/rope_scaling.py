"""Scaled RoPE: the inverse-frequency recipes of transformers' ``modeling_rope_utils.py``, and the table a
``rope`` node uses at a given length.

A ``rope`` node holds its scaling as parameters (:mod:`fuzz.ops`): ``scaling`` names the recipe
(transformers' ``rope_type``), ``inv_freq`` the table of a static recipe (``linear``, ``llama3``, ``yarn``,
``longrope``'s short table; ``()`` = the default table of ``theta``), ``attention_factor`` the cos/sin scale
(YaRN's mscale, LongRoPE's factor), and for the length-dependent recipes ``max_positions`` with ``factor``
(``proportional``: Gemma4's table, 0 past the rotated proportion; ``dynamic``: NTK theta ``theta ((factor t / M) - (factor - 1)) ** (r / (r - 2))`` for ``t > M``) or
``long_inv_freq`` (``longrope``: the long table for ``t > M``).  Transformers' dynamic RoPE keeps the largest
table it has grown to until a length below ``M`` resets it (a cache); the node is the pure function of the
length, and the import check, which runs lengths in increasing order, decides whether they agree.

:func:`recipe_table` computes the static tables as transformers does (float32), for the synthesizer;
the importer measures them from the model (``fuzz.importer.rope``).
"""

from __future__ import annotations

import math

import torch


def _exponent(r: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(0, r, 2, dtype=torch.int64).to(dtype) / r


def inv_freq_at(p: dict, seq: int, table_dtype: torch.dtype) -> torch.Tensor:
    """The inverse frequencies node ``p`` uses for a sequence of ``seq`` tokens, in ``table_dtype``
    (float32 replays transformers' own arithmetic)."""
    r, kind = p["rotary_dim"], p.get("scaling", "none")
    if kind == "longrope" and seq > p["max_positions"]:
        return torch.tensor(p["long_inv_freq"], dtype=torch.float64).to(table_dtype)
    if p.get("inv_freq"):
        return torch.tensor(p["inv_freq"], dtype=torch.float64).to(table_dtype)
    theta = p["theta"]
    if kind == "dynamic" and seq > p["max_positions"]:
        f, m = p["factor"], p["max_positions"]
        if table_dtype == torch.float32:  # transformers: seq_len is an int64 tensor, the base a float32 one
            base = theta * ((f * torch.tensor(seq) / m) - (f - 1)) ** (r / (r - 2))
            return 1.0 / (base ** _exponent(r, torch.float32))
        theta = theta * ((f * seq / m) - (f - 1)) ** (r / (r - 2))
    return 1.0 / (theta ** _exponent(r, table_dtype))


def recipe_table(kind: str, theta: float, r: int, factor: float = 4.0, original_max_positions: int = 16,
                 low_freq_factor: float = 1.0, high_freq_factor: float = 4.0, beta_fast: float = 32.0,
                 beta_slow: float = 1.0, short_factor: list[float] | None = None,
                 proportion: float = 1.0) -> tuple[tuple[float, ...], float]:
    """``(inv_freq, attention_factor)`` of a static recipe as transformers computes it (float32 table).

    ``proportional`` (Gemma4's full-attention layers): ``int(proportion * r // 2)`` frequencies
    ``theta ** (-2i / r)`` (the exponent over the whole rotation width ``r``, not the rotated part), then 0 for
    the remaining pairs (``cos = 1``, ``sin = 0``: unrotated), all divided by ``factor``."""
    inv = 1.0 / (theta ** (torch.arange(0, r, 2, dtype=torch.int64).to(torch.float32) / r))
    attention_factor = 1.0
    if kind == "linear":
        inv = inv / factor
    elif kind == "llama3":
        low_wavelen, high_wavelen = original_max_positions / low_freq_factor, original_max_positions / high_freq_factor
        wavelen = 2 * math.pi / inv
        llama = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (original_max_positions / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * llama / factor + smooth * llama
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        inv = torch.where(medium, smoothed, llama)
    elif kind == "yarn":
        attention_factor = 0.1 * math.log(factor) + 1.0

        def correction_dim(rotations):
            return (r * math.log(original_max_positions / (rotations * 2 * math.pi))) / (2 * math.log(theta))

        low, high = max(math.floor(correction_dim(beta_fast)), 0), min(math.ceil(correction_dim(beta_slow)), r - 1)
        if low == high:
            high += 0.001
        pos = theta ** (torch.arange(0, r, 2).to(dtype=torch.float) / r)
        extrapolation, interpolation = 1.0 / pos, 1.0 / (factor * pos)
        ramp = torch.clamp((torch.arange(r // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
        keep = 1 - ramp
        inv = interpolation * (1 - keep) + extrapolation * keep
    elif kind == "longrope":
        ext = torch.tensor(short_factor, dtype=torch.float32)
        inv = 1.0 / (ext * theta ** (torch.arange(0, r, 2, dtype=torch.int64).float() / r))
        attention_factor = math.sqrt(1 + math.log(factor) / math.log(original_max_positions)) if factor > 1 else 1.0
    elif kind == "proportional":
        angles = int(proportion * r // 2)
        rotated = 1.0 / (theta ** (torch.arange(0, 2 * angles, 2, dtype=torch.int64).to(torch.float32) / r))
        inv = torch.cat((rotated, torch.zeros(r // 2 - angles, dtype=torch.float32))) / factor
    elif kind != "none":
        raise ValueError(f"no static recipe {kind!r}")
    return tuple(float(v) for v in inv.tolist()), float(attention_factor)
