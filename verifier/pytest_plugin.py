"""The pytest helper: a property reads ``assert_invariant(transform, layout)``."""

from __future__ import annotations

import torch

from .oracle import Verdict, verify
from .outcomes import FAILING


def assert_invariant(transform, subject, *, allow_refusal: bool = True, dtype: torch.dtype = torch.float64,
                     seed: int = 0, **kwargs) -> Verdict:
    """Fail (with the verdict and a repro script) unless ``transform`` preserves ``subject``'s function.

    A documented refusal passes when ``allow_refusal`` (the transform said honestly that it cannot
    apply); every other status fails: the failures of the transform (``verifier.outcomes.FAILING``: a
    divergence, an error, NaN, a non-causal result, a timeout) and the verdicts that prove nothing (an
    inconclusive comparison, a degenerate subject that fails its positive control).  Only the former are
    recorded in ``ARCHFUZZ_CORPUS``.  Under hypothesis the worst error is fed to ``target()`` so a
    campaign climbs toward violations.
    """
    verdict = verify(transform, subject, dtype=dtype, seed=seed, **kwargs)
    try:
        from hypothesis import event, target
        from hypothesis.control import _current_build_context
        if _current_build_context.value is not None:
            event(f"verdict:{verdict.status}")
            if verdict.max_rel_err is not None:
                target(min(verdict.max_rel_err, 1e300), label="invariance rel err")
    except ImportError:  # hypothesis is optional for plain unit tests
        pass
    if verdict.ok or (allow_refusal and verdict.refused):
        return verdict
    where = _record(transform, verdict, dtype)
    raise AssertionError(f"{verdict}{where}\n--- repro ---\n{verdict.repro()}")


_RECORDED: set = set()


def _record(transform, verdict: Verdict, dtype) -> str:
    """With ``ARCHFUZZ_CORPUS=DIR`` set, reduce the failure and write it to that corpus, once per
    (transform, symptom, first divergent op) per process: hypothesis' shrink steps do not flood it."""
    import os
    root = os.environ.get("ARCHFUZZ_CORPUS")
    if not root or verdict.layout_json is None or not hasattr(transform, "spec") or verdict.status not in FAILING:
        return ""
    key = (verdict.transform, verdict.status, (verdict.first_divergent or {}).get("op"))
    if key in _RECORDED:
        return ""
    _RECORDED.add(key)
    from .campaign import record_reduced
    path, created = record_reduced(transform, verdict, root, dtype)
    return f"\n--- corpus: {'new entry' if created else 'known'} {path}"
