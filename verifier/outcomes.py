"""Outcomes as enums: a verdict's :class:`Status`, the :class:`Stage` a failure happened in, and the one
:data:`FAILING` set.

Members are :class:`enum.StrEnum`: ``Status.DIVERGED == "diverged"``, ``json.dumps`` writes the plain value
and ``f"{Status.ERROR}"`` is ``"error"``, so verdicts, corpus entries and reports on disk read as before.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Every verdict status.  ``invariant`` is the only passing one.

    * ``invariant``    -- same function within the tolerance, and the subject passed its positive control
    * ``diverged``     -- the transformed logits differ by more than the tolerance
    * ``refused``      -- the transform raised :class:`~fuzz.errors.Refusal` (honest, not a failure)
    * ``error``        -- the transform raised, returned something that is not a causal LM of the same
                          vocabulary, or the transformed forward raised
    * ``non-finite``   -- the transformed model gives NaN or Inf logits
    * ``non-causal``   -- the transformed model lets a position read a later token (the subject does not)
    * ``timeout``      -- ``verify(..., timeout=s)`` ran out of time (a hang counts against the transform)
    * ``inconclusive`` -- every test position follows a MoE top-k near-tie: nothing left to compare
    * ``degenerate``   -- the logits would have matched, but the subject fails its positive control (a
                          weight whose change the test inputs cannot see, or logits equal across positions
                          or vocabulary): the comparison would prove nothing, so no ``invariant`` is given
    """

    INVARIANT = "invariant"
    DIVERGED = "diverged"
    REFUSED = "refused"
    ERROR = "error"
    NON_FINITE = "non-finite"
    NON_CAUSAL = "non-causal"
    TIMEOUT = "timeout"
    INCONCLUSIVE = "inconclusive"
    DEGENERATE = "degenerate"


#: The statuses that mean the transform broke something (a campaign failure, a corpus finding).
#: ``refused``, ``inconclusive`` and ``degenerate`` are not: they say nothing was proven either way.
FAILING = (Status.DIVERGED, Status.ERROR, Status.NON_FINITE, Status.NON_CAUSAL, Status.TIMEOUT)
#: Failing statuses in which the transform never ran to the end (a mutant there tested nothing).
NOT_RUN = (Status.ERROR, Status.TIMEOUT)
#: A mutant is caught only when it ran and the oracle saw the function break (diverged, non-finite, ...).
CAUGHT = tuple(s for s in FAILING if s not in NOT_RUN)


class Stage(StrEnum):
    """Where a failure happened: the transform itself or the oracle's check of its result; for device
    parity, the export to OpenVINO IR, the plugin's compile, or the execution (wrong numbers included)."""

    TRANSFORM = "transform"
    VERIFY = "verify"
    EXPORT = "export"
    COMPILE = "compile"
    EXECUTE = "execute"


#: The stages of device parity (an exporter finding in the corpus carries one of these).
PARITY_STAGES = (Stage.EXPORT, Stage.COMPILE, Stage.EXECUTE)


class Symptom(StrEnum):
    """How a device-parity step ended (``quant.parity``): ``ok``; the child raised (``exception``), was killed
    by SIGSEGV (``segfault``) or another signal or exited without a result (``crash``), ran out of time
    (``timeout``); or it ran and the numbers are wrong (``inconsistency``, stage ``execute``)."""

    OK = "ok"
    EXCEPTION = "exception"
    SEGFAULT = "segfault"
    CRASH = "crash"
    TIMEOUT = "timeout"
    INCONSISTENCY = "inconsistency"
