"""Hypothesis draws of family instances: shared dims first, then the family's own knobs (``Family.draw_knobs``)."""

from __future__ import annotations

from typing import NamedTuple

from hypothesis import strategies as st

from ..axes import AXES
from ..decoder import DecoderSpec, build
from ..layout import Layout
from .registry import FAMILIES, family, family_spec


class FamilyCase(NamedTuple):
    """One drawn family instance: the family, its layout, a weight seed and a sequence length."""

    family: str
    layout: Layout
    seed: int
    seq: int


@st.composite
def family_specs(draw, names: tuple[str, ...] | None = None) -> tuple[str, DecoderSpec]:
    """Draw ``(family, spec)``: layers 1-2, kv heads -> group -> heads (MQA/GQA/MHA), head_dim independent of
    hidden, tiny widths (hidden <= 64, vocab <= 128), tied or not, then the family's own knobs.

    ``norm_eps`` comes from its axis (:data:`fuzz.axes.AXES`); ``rope_theta`` (1e6 before 500.0) and the
    families' knobs (``Family.draw_knobs``) keep draws of their own, which the drawn examples depend on."""
    name = draw(st.sampled_from(tuple(names or FAMILIES)))
    kv = draw(st.integers(1, 3))
    group = draw(st.integers(1, 3))
    dims = dict(n_layers=draw(st.integers(1, 2)), vocab=draw(st.integers(8, 128)), hidden=draw(st.integers(4, 64)),
                n_kv_heads=kv, n_heads=kv * group, head_dim=draw(st.integers(1, 8).map(lambda x: 2 * x)),
                intermediate=draw(st.integers(2, 64)), rope_theta=draw(st.sampled_from((10000.0, 1e6, 500.0))),
                norm_eps=draw(st.sampled_from(AXES["norm_eps"].options)), tie_embeddings=draw(st.booleans()))
    knobs = family(name).draw_knobs(draw, dims)
    return name, family_spec(name, **dims, **knobs)


@st.composite
def family_cases(draw, names: tuple[str, ...] | None = None, max_seq: int = 8) -> FamilyCase:
    """Draw a :class:`FamilyCase`: a family instance layout (named after its family), a seed, a length."""
    name, spec = draw(family_specs(names))
    return FamilyCase(name, build(spec, name=name), draw(st.integers(0, 2**31 - 1)), draw(st.integers(1, max_seq)))


def family_layouts(names: tuple[str, ...] | None = None) -> st.SearchStrategy[Layout]:
    """Layouts that are instances of a registered family."""
    return family_cases(names).map(lambda c: c.layout)
