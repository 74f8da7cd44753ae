"""The one exception family of archfuzz.

Three kinds that never mix (after NNSmith's ConstraintError / InternalError split):

* :class:`BadInput`  -- malformed user data: a layout JSON, a corpus entry, a checkpoint, a module
  that is not a causal LM.  Always names what is wrong and where.
* :class:`Refusal`   -- a transform cannot apply to this layout.  Names the op, the module path and the
  feature.  A refusal is an honest outcome, never a bug.
* anything else      -- an internal error (a bug).  Never caught by archfuzz.
"""

from __future__ import annotations


class ArchfuzzError(Exception):
    """Base of every error archfuzz raises on purpose."""


class BadInput(ArchfuzzError, ValueError):
    """Malformed or inconsistent input (layout, corpus entry, checkpoint, module)."""


class LayoutError(BadInput):
    """A layout graph violates a constraint; ``node`` names the offending node."""

    def __init__(self, message: str, node: str | None = None):
        self.node = node
        super().__init__(f"node {node!r}: {message}" if node is not None else message)


class FormError(BadInput):
    """A T1 rotation form (``block``: ``None`` padded, a power-of-two block, ``"exact"``) that does not fit its
    width (:func:`fuzz.hadamard.check_form`, the one check); ``feature`` names the precondition, ``reason`` is the
    message without it.  Callers that own a node say where: the ``wht_in`` op as a :class:`LayoutError`, T1 as a
    :class:`Refusal` with the same reason and feature."""

    def __init__(self, reason: str, feature: str):
        self.reason, self.feature = reason, feature
        super().__init__(f"{reason} [{feature}]")


class Refusal(ArchfuzzError):
    """A transform's precondition does not hold: it refuses instead of producing a wrong model.

    ``op`` is the op kind (e.g. ``"gate"``), ``path`` the node id or module path, ``feature`` the
    layout feature that blocks the transform (e.g. ``"nonlinear-consumer"``).
    """

    def __init__(self, transform: str, message: str, *, op: str | None = None,
                 path: str | None = None, feature: str | None = None):
        self.transform, self.op, self.path, self.feature = transform, op, path, feature
        where = f" at {op} {path!r}" if path else ""
        tag = f" [{feature}]" if feature else ""
        super().__init__(f"{transform} refuses{where}{tag}: {message}")
