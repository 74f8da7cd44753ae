"""One lookup for every named transform: ``registry:name`` (``reference:permute_hidden``,
``mutants:pair_reflection``, ``quant:bbt-spectral`` once the transform library is installed).  A bare
name is looked up in the registries in that order.

Registries are filled by the layer that owns their entries: :func:`register` ``(prefix, module_or_registry,
**properties)``, where the registry is anything with ``names()`` and ``get(name, **options)`` and the
properties say what the campaign must know about its transforms (see :func:`properties`).  verifier
registers its own (``reference``, ``mutants``); an upper layer registers its registries when its module is
imported.  verifier never names an upper module: the modules to import are found through Python entry
points, group :data:`ENTRY_POINTS` (``[project.entry-points."archfuzz.registries"]`` in pyproject.toml, read
with :mod:`importlib.metadata`), loaded once on the first lookup, in name order: the registries they register
are looked up in that order, after verifier's own.  Why entry points rather than
"import quant first": a lookup works from any entry point (a repro script, ``python -c``, the corpus
replay, a test) without each one knowing which upper packages to import, and an installed third-party
package can add its registry the same way.  A plugin that fails to import is reported by
:func:`unavailable` and its prefix is unknown, never silently half-loaded.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import threading
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Any, Mapping

from fuzz.errors import BadInput

from .transform import NamedTransform, check_options

#: Entry-point group of the modules that register registries (and corpus replayers) on import.
ENTRY_POINTS = "archfuzz.registries"
#: verifier's own registries, listed first (module names in this layer, imported on first lookup).
_OWN = {"reference": "verifier.reference", "mutants": "verifier.mutants"}


@dataclass(frozen=True)
class Registry:
    """A registered registry: its ``prefix``, the object holding ``names()``/``get()`` and its properties."""

    prefix: str
    source: Any
    properties: Mapping[str, Any] = field(default_factory=dict)

    @property
    def module(self) -> str:
        """The module name a :class:`NamedTransform` of this registry carries as ``registry``."""
        return self.source.__name__ if isinstance(self.source, ModuleType) else type(self.source).__module__


_REGISTRIES: dict[str, Registry] = {}
_FAILED: dict[str, str] = {}  # entry point name -> why its module did not import
_ORDER: list[str] = []  # modules in lookup order: verifier's own, then the entry points by name
_loaded = False
_LOADING = threading.RLock()  # one loader; a registering module that looks something up re-enters


def register(prefix: str, module_or_registry: Any, **properties) -> None:
    """Make ``module_or_registry`` (``names()``, ``get(name, **options)``) the registry ``prefix``.

    Properties the campaign reads (all optional): ``float64_options`` (options a float64 campaign adds:
    the transforms run float64 only when asked), ``precision_option`` / ``default_precision`` (the option
    naming the precision policy, reported per transform), ``noisy_loggers`` (``{logger: module that
    configures it on import}``, quieted during a campaign), ``signature_free_options`` (options that do not
    change what failed: an entry recorded without them is the same finding).  Registering a prefix again
    from the same module replaces it (a re-import); from another module is an error.
    """
    if not (hasattr(module_or_registry, "names") and hasattr(module_or_registry, "get")):
        raise TypeError(f"registry {prefix!r} must have names() and get(name, **options)")
    new = Registry(prefix, module_or_registry, MappingProxyType(dict(properties)))
    old = _REGISTRIES.get(prefix)
    if old is not None and old.module != new.module:
        raise ValueError(f"registry {prefix!r} registered twice: {old.module}, then {new.module}")
    _REGISTRIES[prefix] = new


def unregister(prefix: str) -> None:
    """Forget the registry ``prefix`` (tests that register a registry of their own)."""
    _REGISTRIES.pop(prefix, None)


def load_plugins() -> None:
    """Register verifier's own registries and import every :data:`ENTRY_POINTS` module (once)."""
    global _loaded
    with _LOADING:
        if _loaded:
            return
        _loaded = True
        for prefix, module in _OWN.items():
            register(prefix, importlib.import_module(module))
        _ORDER.extend(_OWN.values())
        for ep in _entry_points():
            _ORDER.append(ep.value)
            try:
                ep.load()
            except ImportError as exc:
                _FAILED[ep.name] = f"{ep.value} does not import here ({type(exc).__name__}: {exc})"


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    """The :data:`ENTRY_POINTS` of every installed distribution, in name order (the registries' lookup order).

    Every distribution is read, not only the first of a name: a stale ``archfuzz.egg-info`` in the working
    directory must not hide the installed metadata."""
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points.select(group=ENTRY_POINTS):
            found.setdefault(ep.name, ep)
    return sorted(found.values(), key=lambda ep: ep.name)


def unavailable() -> dict[str, str]:
    """``{entry point: why}`` for the registry plugins that failed to import."""
    load_plugins()
    return dict(_FAILED)


def registries() -> list[Registry]:
    """Every registered registry, in lookup order."""
    load_plugins()
    rank = {module: i for i, module in enumerate(_ORDER)}
    return sorted(_REGISTRIES.values(), key=lambda r: rank.get(r.module, len(rank)))


def prefixes() -> list[str]:
    return [r.prefix for r in registries()]


def _registry(prefix: str) -> Registry:
    load_plugins()
    if prefix not in _REGISTRIES:
        failed = "".join(f"; {name}: {why}" for name, why in _FAILED.items())
        raise BadInput(f"unknown registry {prefix!r}; registries: {sorted(_REGISTRIES)} (an upper layer "
                       f"registers its registries through the {ENTRY_POINTS!r} entry points: is archfuzz "
                       f"installed, pip install -e .?){failed}")
    return _REGISTRIES[prefix]


def prefix_of(module: str) -> str | None:
    """The prefix of the registry whose transforms carry ``registry=module``, or None."""
    return next((r.prefix for r in registries() if r.module == module), None)


def properties(transform: NamedTransform) -> Mapping[str, Any]:
    """The properties its registry declared for ``transform`` (empty for a transform of no registry)."""
    prefix = prefix_of(transform.registry)
    return _REGISTRIES[prefix].properties if prefix is not None else MappingProxyType({})


def available() -> dict[str, list[str]]:
    return {r.prefix: list(r.source.names()) for r in registries()}


def resolve(name: str, **options) -> NamedTransform:
    """The transform called ``name`` with ``options``; unknown names list everything available.
    Options are checked against the transform's signature (names and types) before anything runs."""
    prefix, _, bare = name.rpartition(":")
    found = [_registry(prefix)] if prefix else registries()
    for reg in found:
        if bare in reg.source.names() or bare in getattr(reg.source, "EXTRA", {}):  # EXTRA: resolvable, unlisted
            transform = reg.source.get(bare, **options)
            _check(reg.prefix, bare, transform, options)
            return transform
    listing = "; ".join(f"{p}: {', '.join(n)}" for p, n in available().items())
    raise BadInput(f"unknown transform {name!r}; available: {listing}")


def _check(prefix: str, bare: str, transform: NamedTransform, options: dict) -> None:
    """Options against the signature of what runs: a mutant's correct transform, less the bug's own options."""
    fn, fixed = transform.fn, ()
    if prefix == "mutants":
        mutant = _REGISTRIES[prefix].source.mutant(bare)
        fn, fixed = resolve(mutant.base).fn, tuple(mutant.fixed)
    check_options(f"{prefix}:{bare}", fn, options, fixed)
