"""Delta-debugging reducer: shrink a failing layout while the same failure signature reproduces.

Beyond hypothesis' own shrinking (which works on the random choices), this works on the layout's
features: drop a layer, halve the heads or kv heads, drop experts, lower top-k, turn a feature off,
narrow a width (which features and widths, their simplest values and order: :data:`fuzz.axes.AXES`).
A candidate is kept only while ``still_fails(candidate)`` holds, the loop repeats until no candidate is
kept (a 1-minimal layout with respect to these steps).  Layouts without a
``DecoderSpec`` in their meta (imported checkpoints) are returned unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterator

from fuzz.axes import NARROWED, OFF_ORDER
from fuzz.decoder import DecoderSpec, LayerSpec, build
from fuzz.errors import LayoutError
from fuzz.layout import Layout

def _candidates(s: DecoderSpec) -> Iterator[DecoderSpec]:
    if len(s.layers) > 1:
        for i in range(len(s.layers)):
            yield replace(s, layers=s.layers[:i] + s.layers[i + 1:])
    for i, layer in enumerate(s.layers):
        if layer.sparse:
            yield replace(s, layers=s.layers[:i] + (replace(layer, sparse=False),) + s.layers[i + 1:])
        if not layer.rope:
            yield replace(s, layers=s.layers[:i] + (replace(layer, rope=True),) + s.layers[i + 1:])
        if layer.rope_theta is not None:  # the layer's own RoPE theta back to the spec's
            yield replace(s, layers=s.layers[:i] + (replace(layer, rope_theta=None),) + s.layers[i + 1:])
        for name in ("rope_scaling", "mlp"):  # the layer's own RoPE scaling / MLP back to the spec's
            if getattr(layer, name) is not None:
                yield replace(s, layers=s.layers[:i] + (replace(layer, **{name: None}),) + s.layers[i + 1:])
    for axis in OFF_ORDER:
        if getattr(s, axis.name) != axis.off:
            yield replace(s, **{axis.name: axis.off})
    group = s.n_heads // s.n_kv_heads
    if s.n_kv_heads > 1:
        yield replace(s, n_kv_heads=s.n_kv_heads // 2, n_heads=(s.n_kv_heads // 2) * group)
        yield replace(s, n_kv_heads=1, n_heads=group)
    if group > 1:
        yield replace(s, n_heads=s.n_kv_heads)
    if s.n_experts > 2:
        yield replace(s, n_experts=s.n_experts - 1, top_k=min(s.top_k, s.n_experts - 1))
    if s.top_k > 1:
        yield replace(s, top_k=s.top_k - 1)
    for axis in NARROWED:
        value = getattr(s, axis.name)
        smaller = max(axis.floor, value // 2)
        smaller -= smaller % axis.step
        if smaller < value:
            yield replace(s, **{axis.name: smaller})


def reduce_layout(layout: Layout, still_fails: Callable[[Layout], bool], *, max_steps: int = 200) -> tuple[Layout, int]:
    """The smallest layout reached while ``still_fails`` holds, and how many candidates were tried."""
    if "spec" not in layout.meta:
        return layout, 0
    spec = DecoderSpec.from_dict(layout.meta["spec"])
    best = layout
    tried = 0
    progress = True
    while progress and tried < max_steps:
        progress = False
        for candidate in _candidates(spec):
            if candidate.rotary_dim is not None and candidate.rotary_dim >= candidate.head_dim:
                candidate = replace(candidate, rotary_dim=None)
            try:
                cand_layout = build(candidate)
            except LayoutError:
                continue
            tried += 1
            if still_fails(cand_layout):
                spec, best, progress = candidate, cand_layout, True
                break
            if tried >= max_steps:
                break
    return best, tried
