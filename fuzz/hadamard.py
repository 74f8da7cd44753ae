"""Walsh-Hadamard and exact-width orthogonal matrices, built in float64.

``Q = H_n / sqrt(n)`` (Sylvester order) is symmetric and orthogonal.  :func:`fwht` applies ``x Q`` along
the last axis with the O(n log n) butterfly; ``H_n`` is never materialised in a hot loop.
:func:`orthogonal` gives an exact-width orthogonal matrix for residual rotations: Hadamard where the width
is a power of two, a block-diagonal Hadamard where a power-of-two block divides it, otherwise a seeded
random orthogonal (QR of a Gaussian, signs fixed so it is unique for a seed).  :func:`block_fwht` applies
the block-diagonal ``Q_b = I_{n/b} (x) H_b / sqrt(b)``: each run of ``b`` coordinates gets its own Hadamard.
:func:`exact_hadamard` / :func:`exact_fwht` give a full Hadamard of a width that is not a power of two,
``Q_n = (H_m (x) H_{2^k}) / sqrt(n)`` with ``H_m`` from Paley's constructions (:func:`paley`).

T1's three rotation forms, named by the ``block`` value, live here once: :func:`check_form` is the one check of a
form against a width and :func:`rotation` gives its :class:`Rotation` (``Q``, the padded width, the butterfly, the
dense matrix and the Kronecker factors).  Every reader (the ``wht_in`` op, T1's weights, calibration, the quantize
hook, the online rotation) goes through them.

=========  ===========================================  ===========  ======================================
``block``  ``x~ = [x, 0] Q``                            ``d_pad``    precondition
=========  ===========================================  ===========  ======================================
``None``   ``Q = H_{d_pad} / sqrt(d_pad)`` (padded)      ``2^k >= d``  none (``d_pad`` a power of two >= ``d``)
``b``      ``Q_b = I_{d/b} (x) H_b / sqrt(b)``          ``d``         ``b`` a power of two dividing ``d``
``EXACT``  ``Q_n = (H_m (x) H_{2^k}) / sqrt(d)``        ``d``         an order-``d`` Hadamard constructed here
=========  ===========================================  ===========  ======================================
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import FormError

#: the ``block`` value of T1's exact-width full form (the others: ``None`` padded, an int block)
EXACT = "exact"


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


# ------------------------------------------------------------------ T1's rotation forms, in one place
def form_name(block: int | str | None) -> str:
    return "padded form" if block is None else "exact form" if block == EXACT else f"block {block}"


def check_form(block: int | str | None, d_in: int, d_pad: int | None = None) -> int:
    """The padded width of form ``block`` on ``d_in`` input columns (``d_pad``, when given, checked against it);
    :class:`FormError` naming the feature when the form does not fit (module docstring's table)."""
    if block is None:
        d_pad = next_pow2(d_in) if d_pad is None else d_pad
        if not (is_pow2(d_pad) and d_pad >= d_in):
            raise FormError(f"padded form: d_pad {d_pad} must be a power of two >= in_features {d_in}", "form-padding")
        return d_pad
    if block == EXACT:
        if hadamard_split(d_in) is None:
            raise FormError(f"exact form: no Hadamard matrix of order {d_in} (in_features) is constructed here "
                            f"(Sylvester x Paley I/II over a prime)", "no-hadamard-order")
    elif isinstance(block, bool) or not isinstance(block, int):
        raise FormError(f"block must be None (padded), a power of two or {EXACT!r}, got {block!r}", "not-a-form")
    elif not (is_pow2(block) and d_in % block == 0):
        raise FormError(f"block {block} is not a power of two dividing in_features {d_in}: the blocks would not "
                        f"align with its input columns", "block-misaligned")
    if d_pad is not None and d_pad != d_in:
        raise FormError(f"{form_name(block)} is not padded: d_pad {d_pad} must equal in_features {d_in}",
                        "form-padding")
    return d_in


@dataclass(frozen=True)
class Rotation:
    """T1's orthonormal ``Q`` of one form (``block``) on ``d_in`` input columns: ``x~ = [x, 0] Q``, ``x`` zero-padded
    to ``d_pad`` (the padded form only; ``d_pad = d_in`` otherwise).  Build it with :func:`rotation`."""

    block: int | str | None
    d_in: int
    d_pad: int

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``[x, 0] Q`` along the last axis by butterflies (:func:`fwht`, :func:`block_fwht`, :func:`exact_fwht`)."""
        if x.shape[-1] != self.d_in:
            raise ValueError(f"{form_name(self.block)} of width {self.d_in} applied to width {x.shape[-1]}")
        if self.block == EXACT:
            return exact_fwht(x)
        if self.block is not None:
            return block_fwht(x, self.block)
        return fwht(F.pad(x, (0, self.d_pad - self.d_in)) if self.d_pad > self.d_in else x)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """``(y Q^T)[..., :d_in]``: back from the rotated basis (``Q`` is symmetric but in the exact form); a copy,
        never a view of the padded result."""
        if self.block == EXACT:
            return exact_fwht(y, transpose=True)
        if self.block is not None:
            return block_fwht(y, self.block)
        return fwht(y)[..., :self.d_in].clone()

    def matrix(self) -> torch.Tensor:
        """The dense ``(d_in, d_pad)`` float64 matrix ``M`` with ``[x, 0] Q = x M`` (``Q``'s first ``d_in`` rows)."""
        if self.block == EXACT:
            return exact_hadamard(self.d_in)
        if self.block is not None:
            return block_fwht(torch.eye(self.d_in, dtype=torch.float64), self.block)
        return hadamard(self.d_pad)[:self.d_in]

    def factors(self) -> tuple[tuple[int, int], torch.Tensor | None, torch.Tensor]:
        """``((a, b), A, B)`` with ``[x, 0] Q = vec(A X B)``, ``X = [x, 0]`` reshaped ``(a, b)`` row-major (float64;
        ``A = None``: the identity).  Padded: ``Q = Q_a (x) Q_b`` (Sylvester order), ``a = 2^floor(k / 2)``; block:
        ``A = I``, ``B = Q_b``; exact: ``x (Q_m (x) Q_b) = vec(Q_m^T X Q_b)``, ``A = Q_m^T``."""
        if self.block == EXACT:
            m, b = hadamard_split(self.d_in)
            return (m, b), paley_q(m).T.contiguous(), hadamard(b)
        if self.block is not None:
            return (self.d_in // self.block, self.block), None, hadamard(self.block)
        a = 1 << (int(math.log2(self.d_pad)) // 2)
        return (a, self.d_pad // a), hadamard(a), hadamard(self.d_pad // a)


def rotation(block: int | str | None, d_in: int, d_pad: int | None = None) -> Rotation:
    """The :class:`Rotation` of form ``block`` on ``d_in`` columns (``d_pad``: the padded form's width, default
    ``next_pow2(d_in)``), checked by :func:`check_form`."""
    return Rotation(block, d_in, check_form(block, d_in, d_pad))


def online_input(x: torch.Tensor, scale: torch.Tensor, d_pad: int, block: int | str | None = None) -> torch.Tensor:
    """``x~ = [x, 0] Q / scale``: a T1 linear's online input in form ``block`` (``d_pad``: the width of ``scale``)."""
    return rotation(block, x.shape[-1], d_pad).apply(x) / scale
