"""One lookup for every named transform: ``registry:name`` (``reference:permute_hidden``,
``mutants:pair_reflection``, ``quant:bbt-spectral`` once the transform library is installed).  A bare
name is looked up in the registries in that order."""

from __future__ import annotations

import importlib

from fuzz.errors import BadInput

from .transform import NamedTransform, check_options

REGISTRIES = {"reference": "verifier.reference", "mutants": "verifier.mutants", "quant": "quant.transforms",
              "peers": "quant.peers"}


def _module(prefix: str):
    try:
        return importlib.import_module(REGISTRIES[prefix])
    except ModuleNotFoundError:
        return None


def available() -> dict[str, list[str]]:
    out = {}
    for prefix in REGISTRIES:
        mod = _module(prefix)
        if mod is not None and hasattr(mod, "names"):
            out[prefix] = list(mod.names())
    return out


def resolve(name: str, **options) -> NamedTransform:
    """The transform called ``name`` with ``options``; unknown names list everything available.
    Options are checked against the transform's signature (names and types) before anything runs."""
    prefix, _, bare = name.rpartition(":")
    prefixes = [prefix] if prefix else list(REGISTRIES)
    if prefix and prefix not in REGISTRIES:
        raise BadInput(f"unknown registry {prefix!r}; registries: {sorted(REGISTRIES)}")
    for p in prefixes:
        mod = _module(p)
        if mod is not None and hasattr(mod, "names") and bare in mod.names():
            transform = mod.get(bare, **options)
            _check(p, bare, transform, options)
            return transform
    listing = "; ".join(f"{p}: {', '.join(n)}" for p, n in available().items())
    raise BadInput(f"unknown transform {name!r}; available: {listing}")


def _check(prefix: str, bare: str, transform: NamedTransform, options: dict) -> None:
    """Options against the signature of what runs: a mutant's correct transform, less the bug's own options."""
    fn, fixed = transform.fn, ()
    if prefix == "mutants":
        registry, base, bug = _module(prefix).MUTANTS[bare]
        fn, fixed = importlib.import_module(registry).get(base).fn, tuple(bug)
    check_options(f"{prefix}:{bare}", fn, options, fixed)
