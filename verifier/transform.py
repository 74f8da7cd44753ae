"""What the oracle accepts as a transform, and a named, reproducible wrapper for it.

A transform is ANY callable ``transform(model, calib) -> model`` (ours, auto-round's ``apply_rotation``
wrapped in two lines, user code).  It receives a private deep copy of the model and may edit it in
place or return a new module.  :class:`NamedTransform` adds a name and options so that verdicts,
corpus entries and repro scripts can rebuild it from a registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch


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
