"""Walsh-Hadamard and exact-width orthogonal matrices, built in float64.

``Q = H_n / sqrt(n)`` (Sylvester order) is symmetric and orthogonal.  :func:`fwht` applies ``x Q`` along
the last axis with the O(n log n) butterfly; ``H_n`` is never materialised in a hot loop.
:func:`orthogonal` gives an exact-width orthogonal matrix for residual rotations: Hadamard where the width
is a power of two, a block-diagonal Hadamard where a power-of-two block divides it, otherwise a seeded
random orthogonal (QR of a Gaussian, signs fixed so it is unique for a seed).  :func:`block_fwht` applies
the block-diagonal ``Q_b = I_{n/b} (x) H_b / sqrt(b)``: each run of ``b`` coordinates gets its own Hadamard.
:func:`exact_hadamard` / :func:`exact_fwht` give a full Hadamard of a width that is not a power of two,
``Q_n = (H_m (x) H_{2^k}) / sqrt(n)`` with ``H_m`` from Paley's constructions (:func:`paley`).
"""

from __future__ import annotations

import functools
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


def online_input(x: torch.Tensor, scale: torch.Tensor, d_pad: int, block: int | None = None,
                 exact: bool = False) -> torch.Tensor:
    """``x~ = fwht([x, 0]) / scale``: a spectrally transformed layer's input, ``x`` zero-padded to ``d_pad``;
    with ``block``, ``x~ = block_fwht(x, block) / scale``, with ``exact``, ``x~ = exact_fwht(x) / scale = x Q_n / s``
    (no padding in either: ``d_pad`` is the width itself)."""
    if exact:
        return exact_fwht(x) / scale
    if block is not None:
        return block_fwht(x, block) / scale
    return fwht(torch.nn.functional.pad(x, (0, d_pad - x.shape[-1]))) / scale


# ------------------------------------------------------------------ exact-width Hadamard (Paley x Sylvester)
def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % p for p in range(2, math.isqrt(q) + 1))


@functools.lru_cache(maxsize=None)
def paley(m: int) -> torch.Tensor | None:
    """A Hadamard matrix ``H_m`` (entries +-1, ``H H^T = m I``) from Paley's constructions, or ``None``.

    With the Jacobsthal matrix ``J[i, j] = chi(j - i)`` over GF(q), ``q`` prime (``chi`` the Legendre symbol) and
    ``C = [[0, 1^T], [+-1, J]]`` (cached: do not modify the result): Paley I (``m = q + 1``, ``q = 3 mod 4``,
    ``C`` skew) ``H = I + C``; Paley II
    (``m = 2 (q + 1)``, ``q = 1 mod 4``, ``C`` symmetric) ``H = C (x) [[1, 1], [1, -1]] + I (x) [[1, -1], [-1, -1]]``.
    """
    for q, kind in ((m - 1, 1), (m // 2 - 1 if m % 2 == 0 else -1, 2)):
        if not _is_prime(q) or q % 4 != (3 if kind == 1 else 1):
            continue
        squares = {(i * i) % q for i in range(1, q)}
        chi = torch.tensor([0] + [1 if r in squares else -1 for r in range(1, q)], dtype=torch.float64)
        idx = torch.arange(q)
        c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
        c[0, 1:] = 1
        c[1:, 0] = -1 if kind == 1 else 1
        c[1:, 1:] = chi[(idx[None, :] - idx[:, None]) % q]
        if kind == 1:
            return torch.eye(m, dtype=torch.float64) + c
        e = torch.eye(q + 1, dtype=torch.float64)
        h2, g2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]]), torch.tensor([[1.0, -1.0], [-1.0, -1.0]])
        return torch.kron(c, h2.double()) + torch.kron(e, g2.double())
    return None


def hadamard_split(n: int) -> tuple[int, int] | None:
    """``(m, b)`` with ``n = m b``, ``b`` a power of two and ``H_m`` a Paley matrix (``m = 1``: ``n`` itself is a
    power of two), the smallest such ``m``; ``None`` when no construction here reaches ``n``."""
    if n <= 0:
        return None
    if is_pow2(n):
        return 1, n
    m = n // (n & -n)  # the odd part; try m, 2m, 4m, ... while it divides n
    while n % m == 0:
        if paley(m) is not None:
            return m, n // m
        m *= 2
    return None


def exact_hadamard(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``Q_n = (H_m (x) H_b) / sqrt(n)`` (orthonormal; not symmetric unless ``m = 1``); ``ValueError`` when no
    order-``n`` construction is known (:func:`hadamard_split`)."""
    split = hadamard_split(n)
    if split is None:
        raise ValueError(f"no Hadamard construction of order {n} (Sylvester x Paley I/II)")
    m, b = split
    hm = torch.ones(1, 1, dtype=torch.float64) if m == 1 else paley(m)
    return (torch.kron(hm, fwht(torch.eye(b, dtype=torch.float64)) * math.sqrt(b)) / math.sqrt(n)).to(dtype)


def paley_q(m: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``H_m / sqrt(m)`` (``m = 1``: ``[[1]]``)."""
    return (torch.ones(1, 1, dtype=torch.float64) if m == 1 else paley(m) / math.sqrt(m)).to(dtype)


def exact_fwht(x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """``x Q_n`` (or ``x Q_n^T``) along the last axis without forming ``Q_n``: with ``X = x`` reshaped ``(m, b)``
    (row-major), ``x (A (x) B) = vec(A^T X B)``, so ``x Q_n = vec(Q_m^T X Q_b)`` and ``x Q_n^T = vec(Q_m X Q_b)``
    (``Q_b`` symmetric, applied by :func:`fwht`)."""
    n = x.shape[-1]
    split = hadamard_split(n)
    if split is None:
        raise ValueError(f"no Hadamard construction of order {n} (Sylvester x Paley I/II)")
    m, b = split
    y = fwht(x.reshape(*x.shape[:-1], m, b))
    qm = paley_q(m, x.dtype)
    return (qm if transpose else qm.T).matmul(y).reshape(x.shape)
