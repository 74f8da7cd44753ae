"""archfuzz's invariance oracle: float64 proof that a transform preserves a causal LM's function."""

from .oracle import (FAILING, STATUSES, Verdict, activation_mismatch, capture, comparable_positions, topk_recorder,
                     verify)
from .pytest_plugin import assert_invariant
from .tolerance import Tolerance, default_tolerance, relative_error
from .transform import Calibration, NamedTransform

__all__ = ["verify", "Verdict", "STATUSES", "FAILING", "assert_invariant", "Tolerance", "default_tolerance", "relative_error",
           "Calibration", "NamedTransform", "capture", "activation_mismatch", "comparable_positions", "topk_recorder"]
