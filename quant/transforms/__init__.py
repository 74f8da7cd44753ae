"""The transform library: one module per transform (its math in the docstring, its preconditions as
code that refuses), plus named recipes.  ``get(name, **options)`` returns a callable
``(model, calib) -> model`` that ``verifier.verify`` accepts; ``names()`` lists them.

Adding a transform = one module and one ``@register("name")`` line.  The library is verifier's registry
``quant`` (``quant:<name>``): it registers itself on import (:func:`verifier.registry.register`).
"""

from __future__ import annotations

import sys
from typing import Callable

from fuzz.errors import BadInput
from verifier import registry as _registries
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


def get(name: str, host: str = "graph", **options) -> NamedTransform:
    """The transform ``name`` with ``options``; unknown names list what is available.

    ``host="transformers"`` makes it take a transformers model: the model is imported through its
    recorded dataflow (a GraphModel sharing its parameters) and the import is checked against the model
    first (:func:`fuzz.importer.check_import`: several lengths past every window, transformers' float32
    floor; a model the layout cannot reproduce is refused with :class:`~fuzz.errors.BadInput` naming its
    first divergent module, never transformed into something else).  Then it is transformed and, when the
    transform only edited weights, the transformers model itself (edited in place) is returned; a
    transform that adds operators returns the GraphModel.
    """
    if name not in _REGISTRY:
        raise BadInput(f"unknown transform {name!r}; available: {names()}")
    if host not in ("graph", "transformers"):
        raise BadInput(f"host must be 'graph' or 'transformers', got {host!r}")
    fn = _REGISTRY[name] if host == "graph" else _on_transformers(_REGISTRY[name])
    extra = {} if host == "graph" else {"host": host}
    return NamedTransform(name, fn, {**extra, **options}, registry="quant.transforms")


def _on_transformers(fn: Callable) -> Callable:
    def run(model, calib, host=None, **options):
        from fuzz.importer import import_model
        graph = import_model(model)  # checked: no transform runs on a graph that computes something else
        out = fn(graph, calib, **options)
        if out is graph and out.layout is graph.layout:
            return model  # weight-only: the shared parameters were edited in place
        return out
    return run


from . import norm_absorb  # noqa: E402,F401  (registration order = import order)
from . import pair_pca  # noqa: E402,F401
from . import wht_scale  # noqa
from . import spectral_pca  # noqa
from . import residual_rotation  # noqa: E402,F401
from . import moe  # noqa: E402,F401
from . import recipes  # noqa: E402,F401

RECIPES = recipes.RECIPES  # the named recipes, in order (defined in :mod:`.recipes`)

_registries.register("quant", sys.modules[__name__])
