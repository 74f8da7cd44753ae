"""The registry of families: one module per family, listed here in :func:`family_of` priority order."""

from __future__ import annotations

import importlib

from ..decoder import DecoderSpec
from ..errors import BadInput
from .base import Family

# each module declares ``FAMILY``; the first member wins (a Granite layout without multipliers is a Llama)
_MODULES = ("llama", "qwen2", "qwen3", "qwen3_moe", "mixtral", "granite", "gemma", "qwen2_moe", "mistral", "phi3",
            "stablelm")

_REGISTRY: dict[str, Family] = {f.name: f for f in (importlib.import_module(f"{__package__}.{m}").FAMILY
                                                    for m in _MODULES)}

FAMILIES: list[str] = list(_REGISTRY)


def family(name: str) -> Family:
    """The registered :class:`Family` called ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BadInput(f"unknown family {name!r}; known: {FAMILIES}") from None


def family_spec(name: str, **dims) -> DecoderSpec:
    """The :class:`DecoderSpec` of family ``name`` with the given dims and knobs (see the preset functions)."""
    return family(name).preset(**dims)
