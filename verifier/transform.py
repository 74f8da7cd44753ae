"""What the oracle accepts as a transform, and a named, reproducible wrapper for it.

A transform is ANY callable ``transform(model, calib) -> model`` (ours, auto-round's ``apply_rotation``
wrapped in two lines, user code).  It receives a private deep copy of the model and may edit it in
place or return a new module.  :class:`NamedTransform` adds a name and options so that verdicts,
corpus entries and repro scripts can rebuild it from a registry.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from fuzz.errors import BadInput


@dataclass
class Calibration:
    """Calibration data handed to a transform: token ids disjoint from the oracle's test inputs."""

    input_ids: torch.Tensor
    seed: int = 0

    def batches(self, size: int = 1):
        for i in range(0, self.input_ids.shape[0], size):
            yield self.input_ids[i:i + size]


@dataclass
class NamedTransform:
    """A transform with a registry name and options: ``registry.get(name, **options)`` rebuilds it."""

    name: str
    fn: Callable[..., torch.nn.Module]
    options: dict[str, Any] = field(default_factory=dict)
    registry: str = "verifier.reference"  # module whose ``get(name, **options)`` rebuilds this transform

    def __call__(self, model: torch.nn.Module, calib: Calibration) -> torch.nn.Module:
        return self.fn(model, calib, **self.options)

    def spec(self) -> dict:
        return {"name": self.name, "options": dict(self.options), "registry": self.registry}

    def repro_expr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"__import__('importlib').import_module({self.registry!r}).get({self.name!r}{', ' if opts else ''}{opts})"

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.name}({opts})"


def describe(transform: Callable) -> tuple[str, str | None]:
    """``(display name, python expression that rebuilds it or None)`` for any transform callable."""
    if isinstance(transform, NamedTransform):
        return repr(transform), transform.repro_expr()
    name = getattr(transform, "__qualname__", None) or type(transform).__qualname__
    module = getattr(transform, "__module__", None)
    if module and "<" not in name and module != "__main__":
        return f"{module}.{name}", f"__import__('importlib').import_module({module!r}).{name}"
    return name, None


def _hints(fn: Callable) -> dict:
    """Resolved annotations of ``fn`` (or of its ``__call__``); empty when they cannot be resolved."""
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else getattr(fn, "__call__", fn)
    try:
        return typing.get_type_hints(target)
    except Exception:  # an annotation that names something not importable here: check by default instead
        return {}


def _accepts(kind: Any, value: Any) -> bool:
    """Whether ``value`` fits the annotation ``kind`` (int/float/bool/str, ``X | None``, ``list[X]``,
    ``Literal[...]``)."""
    origin = typing.get_origin(kind)
    if origin is typing.Literal:
        return any(type(value) is type(v) and value == v for v in typing.get_args(kind))
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(k, value) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if origin in (list, tuple):
        args = typing.get_args(kind)
        return isinstance(value, (list, tuple)) and (not args or all(_accepts(args[0], v) for v in value))
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(kind, type):
        return isinstance(value, kind)
    return True  # Any, callables, protocols: nothing to check


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(kind)))
    return getattr(kind, "__name__", None) if isinstance(kind, type) else str(kind).replace("typing.", "")


def check_options(name: str, fn: Callable, options: dict, fixed: tuple[str, ...] = ()) -> None:
    """Raise :class:`~fuzz.errors.BadInput` unless every option is a keyword parameter of ``fn``
    (after ``model, calib``) of the right type; ``fixed`` are options the transform sets itself."""
    try:
        params = list(inspect.signature(fn).parameters.values())[2:]
    except (TypeError, ValueError):
        return
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params)
    named = {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    hints = _hints(fn)
    for key, value in options.items():
        if key in fixed:
            raise BadInput(f"transform {name}: option {key!r} is fixed by the transform itself; "
                           f"options: {sorted(set(named) - set(fixed)) or 'none'}")
        if key not in named:
            if open_ended:
                continue
            raise BadInput(f"transform {name} has no option {key!r}; options: {sorted(named) or 'none'}")
        kind = hints.get(key)
        if kind is None:
            default = named[key].default
            kind = type(default) if default is not inspect.Parameter.empty and default is not None else None
        if kind is not None and not _accepts(kind, value):
            raise BadInput(f"transform {name}: option {key}={value!r} must be {_type_name(kind)}")
