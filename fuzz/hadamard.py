"""Walsh-Hadamard and exact-width orthogonal matrices, built in float64.

``Q = H_n / sqrt(n)`` (Sylvester order) is symmetric and orthogonal.  :func:`fwht` applies ``x Q`` along
the last axis with the O(n log n) butterfly; ``H_n`` is never materialised in a hot loop.
:func:`orthogonal` gives an exact-width orthogonal matrix for residual rotations: Hadamard where the width
is a power of two, a block-diagonal Hadamard where a power-of-two block divides it, otherwise a seeded
random orthogonal (QR of a Gaussian, signs fixed so it is unique for a seed).  :func:`block_fwht` applies
the block-diagonal ``Q_b = I_{n/b} (x) H_b / sqrt(b)``: each run of ``b`` coordinates gets its own Hadamard.
"""

from __future__ import annotations

import math

import torch


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def fwht(x: torch.Tensor) -> torch.Tensor:
    """``x Q`` along the last axis (length a power of two), ``Q = H / sqrt(n)``; exact inverse of itself."""
    n = x.shape[-1]
    if not is_pow2(n):
        raise ValueError(f"fwht needs a power-of-two length, got {n}")
    lead = x.shape[:-1]
    y = x
    h = 1
    while h < n:
        y = y.reshape(*lead, n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack((a + b, a - b), dim=-2)
        h *= 2
    return y.reshape(x.shape) / math.sqrt(n)


def block_fwht(x: torch.Tensor, block: int) -> torch.Tensor:
    """``x Q_b`` along the last axis, ``Q_b = I_{n/b} (x) H_b / sqrt(b)`` (block-diagonal, orthonormal, symmetric,
    its own inverse): :func:`fwht` on each run of ``block`` coordinates.  ``block`` is a power of two dividing
    ``n``; ``block = n`` is :func:`fwht`, ``block = 1`` the identity."""
    n = x.shape[-1]
    if not is_pow2(block) or n % block:
        raise ValueError(f"block_fwht needs a power-of-two block dividing the length {n}, got {block}")
    return fwht(x.reshape(*x.shape[:-1], n // block, block)).reshape(x.shape)


def hadamard(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The dense normalised Sylvester matrix ``Q`` (for tests and small widths)."""
    return fwht(torch.eye(n, dtype=torch.float64)).to(dtype)


def orthogonal(n: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, str]:
    """An ``n x n`` orthogonal matrix and how it was built (``hadamard``, ``block-hadamard-B``, ``random``)."""
    if is_pow2(n):
        return hadamard(n, dtype), "hadamard"
    block = 1 << (n & -n).bit_length() - 1  # largest power of two dividing n
    if block >= 8:
        return torch.block_diag(*[hadamard(block)] * (n // block)).to(dtype), f"block-hadamard-{block}"
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))[None, :]
    return q.to(dtype), "random"


def online_input(x: torch.Tensor, scale: torch.Tensor, d_pad: int, block: int | None = None) -> torch.Tensor:
    """``x~ = fwht([x, 0]) / scale``: a spectrally transformed layer's input, ``x`` zero-padded to ``d_pad``;
    with ``block``, ``x~ = block_fwht(x, block) / scale`` (no padding: ``d_pad`` is the width itself)."""
    if block is not None:
        return block_fwht(x, block) / scale
    return fwht(torch.nn.functional.pad(x, (0, d_pad - x.shape[-1]))) / scale
