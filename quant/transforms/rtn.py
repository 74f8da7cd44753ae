"""Group-wise round to nearest: the weight quantizer T1's alpha search and the RTN benchmarks measure against.

Per row and per group ``g`` of ``group`` consecutive input columns, on the asymmetric min/max grid of ``bits`` bits:

    step = (max g - min g) / (2^bits - 1),   z = round(-min g / step),
    q(w) = (clamp(round(w / step) + z, 0, 2^bits - 1) - z) * step
"""

from __future__ import annotations

import torch


def rtn(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Round to nearest on the asymmetric min/max grid of ``bits`` bits per ``group`` consecutive input columns
    (``group`` must divide ``w.shape[1]``)."""
    rows, cols = w.shape
    g = w.reshape(rows, cols // group, group)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = ((hi - lo) / (2 ** bits - 1)).clamp(min=1e-12)
    zp = torch.round(-lo / scale)
    q = torch.clamp(torch.round(g / scale) + zp, 0, 2 ** bits - 1)
    return ((q - zp) * scale).reshape(rows, cols)
