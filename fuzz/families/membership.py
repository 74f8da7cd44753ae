"""Membership by round trip: a layout is an instance of a family iff rebuilding the family's preset from the
knobs read back from its spec gives the same graph."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, NamedTuple

from ..decoder import DecoderSpec, LayerSpec, build
from ..errors import BadInput, LayoutError
from ..layout import Layout
from .base import Family
from .registry import _REGISTRY, FAMILIES, family


class _Subject(NamedTuple):
    """What membership is decided on: the layout, its spec (None if unusable) and why it is unusable."""

    layout: Layout
    spec: DecoderSpec | None
    why_no_spec: str | None = None


def _subject(x) -> _Subject:
    """Accept a Layout, a GraphModel or a DecoderSpec (an invalid spec raises LayoutError)."""
    if isinstance(x, DecoderSpec):
        return _Subject(build(x), x)
    layout = getattr(x, "layout", x)
    if not isinstance(layout, Layout):
        raise BadInput(f"expected a Layout, DecoderSpec or GraphModel, got {type(x).__name__}")
    raw = layout.meta.get("spec")
    if not isinstance(raw, dict):
        return _Subject(layout, None, "the layout carries no decoder spec (meta['spec'])")
    try:
        spec = DecoderSpec.from_dict(raw)
        same = build(spec) == layout
    except (TypeError, ValueError) as exc:  # LayoutError is a ValueError
        return _Subject(layout, None, f"meta['spec'] is not a valid decoder spec: {exc}")
    if not same:
        return _Subject(layout, None, "the layout graph differs from build(meta['spec']) "
                                      "(it was transformed after synthesis)")
    return _Subject(layout, spec)


def _mismatch(fam: Family, subject: _Subject, explain: bool = False) -> str | None:
    """None when the layout is exactly an instance of ``fam``, else why not (field by field if ``explain``)."""
    spec, layout = subject.spec, subject.layout
    if spec is None:
        return subject.why_no_spec
    reason = fam.supported(spec)
    if reason:
        return reason
    try:
        preset = fam.preset(**fam.knobs(spec))
        if build(preset) == layout:
            return None
    except BadInput as exc:  # LayoutError included
        return f"the family cannot express these dims: {exc}"
    if not explain:
        return "unsupported feature(s)"
    blame = []
    for f in fields(DecoderSpec):
        mine, theirs = getattr(spec, f.name), getattr(preset, f.name)
        if mine == theirs:
            continue
        try:  # a field whose change leaves the graph unchanged is not to blame (e.g. mlp_bias, all-sparse)
            if build(spec.with_(**{f.name: theirs})) == layout:
                continue
        except LayoutError:
            pass
        blame.append(f"{f.name}={_short(mine)} (family: {_short(theirs)})")
    return "unsupported feature(s): " + (", ".join(blame) or "a combination of fields")


def _short(v: Any) -> str:
    if isinstance(v, tuple) and v and isinstance(v[0], LayerSpec):
        return "[" + ", ".join(("sparse" if l.sparse else "dense") + ("" if l.rope else "/nope") for l in v) + "]"
    return repr(v)


def families_of(layout_or_spec) -> list[str]:
    """Every registered family whose transformers class reproduces the layout exactly.

    Accepts a Layout, a GraphModel or a DecoderSpec (an invalid spec raises LayoutError).
    """
    subject = _subject(layout_or_spec)
    return [name for name, fam in _REGISTRY.items() if _mismatch(fam, subject) is None]


def family_of(layout_or_spec) -> str | None:
    """The first family (registry order) that the layout is exactly an instance of, or None."""
    subject = _subject(layout_or_spec)
    return next((name for name, fam in _REGISTRY.items() if _mismatch(fam, subject) is None), None)


def check_family(layout_or_spec, name: str | None = None) -> tuple[str, DecoderSpec]:
    """``(family name, spec)`` for a member layout; :class:`BadInput` naming what blocks it otherwise.

    With ``name``, membership of that family is required; without, the first member family is used.
    """
    subject = _subject(layout_or_spec)
    names = [name] if name is not None else FAMILIES
    reasons = []
    for n in names:
        why = _mismatch(family(n), subject, explain=True)
        if why is None:
            return n, subject.spec
        reasons.append(f"  {n}: {why}")
    layout = subject.layout
    what = f"family {name!r}" if name else "any known transformers family"
    if subject.spec is None:
        reasons = [f"  {subject.why_no_spec}"]
    raise BadInput(f"layout {layout.meta.get('name', layout.hash())} is not an instance of {what}:\n"
                   + "\n".join(reasons))
