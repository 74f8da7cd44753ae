"""The transform library: one module per transform (its math in the docstring, its preconditions as
code that refuses), plus named recipes.  ``get(name, **options)`` returns a callable
``(model, calib) -> model`` that ``verifier.verify`` accepts; ``names()`` lists them.

Adding a transform = one module and one ``@register("name")`` line.
"""

from __future__ import annotations

from typing import Callable

from fuzz.errors import BadInput
from verifier.transform import NamedTransform

_REGISTRY: dict[str, Callable] = {}


def register(name: str):
    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"transform {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn
    return deco


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str, **options) -> NamedTransform:
    """The transform ``name`` with ``options``; unknown names list what is available."""
    if name not in _REGISTRY:
        raise BadInput(f"unknown transform {name!r}; available: {names()}")
    return NamedTransform(name, _REGISTRY[name], options, registry="quant.transforms")


from . import norm_absorb  # noqa: E402,F401  (registration order = import order)
from . import pair_pca  # noqa: E402,F401
from . import wht_scale  # noqa
from . import spectral_pca  # noqa
from . import residual_rotation  # noqa: E402,F401
from . import moe  # noqa: E402,F401
from . import recipes  # noqa: E402,F401
