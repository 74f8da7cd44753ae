"""The tolerance model of the oracle: how close is "the same function".

Error measure (as in the seed paper): ``rel = max|y' - y| / max|y|`` over the logits of every
comparable position, and ``abs = max|y' - y|``.

float64 (the default, the oracle's proof mode).  A function-preserving transform built entirely in
float64 reproduces the logits to a few hundred ulps: rounding grows about like ``sqrt(width) * depth
* eps`` with ``eps = 2.2e-16``; the worst correct transforms in the suite stay below ``1e-12``.  The
bound is ``1e-9``: three orders above that floor, and three below the smallest real bug class seen
(a rotation matrix built in float32 inside a float64 model "diverges" by ~1e-8; a missed consumer, a
reflection or a forgotten bias by 1e-3 and more).

float32.  Correct transforms reach ~1e-7 to 6e-6 (the paper's floors: input-WHT < 5e-7, spectral-PCA
6e-6) and depth adds to it, so the bound is ``1e-4``: it still separates every real bug class (>= 1e-3)
but cannot see float32-precision bugs.  Use it to check what ships, never as the proof.

MoE routing is discrete: a token whose top-k margin (k-th minus (k+1)-th router probability) is below
``tie_margin`` may legitimately switch experts under rounding, so the positions from it onward are set
aside (causal attention spreads a flip forward only), and the verdict says how many.

Positive control (``control_rel``).  A bound on the logits proves something only if the logits can
show a change of that size.  Every ``invariant`` verdict therefore shows, on the same subject and test
inputs, that changing any one parameter unit (a layout node's parameters, a module's own parameters)
by ``control_rel`` of its norm, in its most visible direction, moves the logits by more than ``rel``
(``verifier.oracle.positive_control``).  float64: ``control_rel = 1e-2`` (a one-percent error in any
single weight is caught).  Measured with the identity transform over 900 synthesized layouts
(``strategies.specs(max_hidden=128, max_layers=3)``, hypothesis seeds 1, 3 and 7, 300 each): the weakest
unit of every layout moved the logits by at least 329 times the bound (a per-head softplus gate
projection; typically a q/k norm at 1e4 to 1e5 times), while a dead unit (behind an infinite ``eps`` or a
zero multiplier) moves them by nothing.  float32: ``control_rel = 1.0`` (the check mode sees only
changes as large as the weight itself; at 0.5 that gate projection was 1.5 times the bound); seeds 1
and 7 (300 each) and 3 (200): at least 24 times the bound.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    dtype: str
    rel: float  # bound on max|y'-y| / max|y| of the logits
    tie_margin: float  # router top-k margins below this are near-ties (set aside)
    node_rel: float  # bound used when comparing intermediate activations (first divergent node)
    reason: str
    control_rel: float = 1e-2  # positive control: a relative change of any parameter unit this large must show

    def __post_init__(self):
        for key in ("rel", "tie_margin", "node_rel", "control_rel"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                from fuzz.errors import BadInput
                raise BadInput(f"Tolerance.{key} must be a finite number > 0, got {value!r}")
        if not self.control_rel > self.rel:
            from fuzz.errors import BadInput
            raise BadInput(f"Tolerance.control_rel ({self.control_rel!r}) must exceed rel ({self.rel!r}): a parameter "
                           "change smaller than the bound can never show past it")

    def to_dict(self) -> dict:
        return asdict(self)


_DEFAULTS = {
    torch.float64: Tolerance("float64", 1e-9, 1e-7, 1e-10,
                             "float64 proof mode: correct transforms <= 1e-12, real bugs >= 1e-8"),
    torch.float32: Tolerance("float32", 1e-4, 1e-3, 1e-3,
                             "float32 check mode: correct transforms <= ~6e-6, real bug classes >= 1e-3", 1.0),
}
#: The oracle's dtypes by name (proof mode first): the one list the CLI's ``--dtype`` and the corpus read.
DTYPE_BY_NAME = {tol.dtype: dtype for dtype, tol in _DEFAULTS.items()}
DTYPES = tuple(DTYPE_BY_NAME)


def default_tolerance(dtype: torch.dtype) -> Tolerance:
    """The documented bound for ``dtype`` (float64 or float32)."""
    try:
        return _DEFAULTS[dtype]
    except KeyError:
        from fuzz.errors import BadInput
        raise BadInput(f"the oracle runs in float64 or float32, not {dtype}") from None


def relative_error(y: torch.Tensor, y_ref: torch.Tensor) -> tuple[float, float]:
    """``(max|y - y_ref| / max|y_ref|, max|y - y_ref|)`` in float64; ``0/0`` is 0, ``x/0`` is inf.

    The shapes must be equal: broadcasting would compare a ``(.., 1)`` tensor against every column."""
    if tuple(y.shape) != tuple(y_ref.shape):
        from fuzz.errors import BadInput
        raise BadInput(f"relative_error compares tensors of one shape, got {tuple(y.shape)} and {tuple(y_ref.shape)}")
    diff = (y.double() - y_ref.double()).abs().max().item() if y.numel() else 0.0
    scale = y_ref.double().abs().max().item() if y_ref.numel() else 0.0
    return (diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))), diff
