"""Pairwise coverage of feature values: which combinations a campaign can reach, which it reached, and
covering examples that reach them in few layouts.

The bugs of this field live in combinations (a q/k norm with interleaved RoPE, a shared expert with
tied embeddings), and a layout drawn at random reaches a given pair of feature values only with the
product of their probabilities: tens to hundreds of examples for the rarer pairs.  So a campaign starts
with *covering examples*: layouts chosen greedily (each covers the most pairs not yet covered, AETG
style) from a pool drawn by the same rule as :func:`fuzz.strategies.specs` (:func:`~fuzz.strategies.
spec_from` with a seeded uniform :class:`~fuzz.strategies.Picked`), run as hypothesis' explicit examples
(``@example``) for :data:`SHARE` of the budget, before hypothesis draws the rest.  The draws themselves,
their shrinking toward fewer features and the derandomized profiles are untouched.

An *interaction* is a pair of feature tags (the tags ``strategies.layouts`` reports with ``event``:
:func:`tags`) both present in one layout, or a triple from :data:`TRIPLES`, the riskiest axes
(q/k norm x RoPE kind x attention kind; MoE x tied embeddings x norm placement).  Tags every layout
carries (``op:add``, ...) form no combination and are left out (:attr:`Space.always`).  What is
*possible* under some constraints is what a pool of :data:`POOL` uniform draws reaches
(:func:`space`), plus anything a campaign saw beyond it.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .decoder import DecoderSpec, build
from .layout import Layout

#: the riskiest axes, each a tuple of feature-tag groups: one tag of each group makes a triple
TRIPLES: tuple[tuple[tuple[str, ...], ...], ...] = (
    (("qk_norm:none", "qk_norm:per_head", "qk_norm:full", "qk_norm:per_head_own"),
     ("rope:half", "rope:interleaved"), ("attn:mha", "attn:mqa", "attn:gqa")),
    (("moe", "moe:shared_expert", "moe:mixed-dense-sparse"), ("embeddings:tied", "embeddings:untied"),
     ("placement:pre", "placement:sandwich", "placement:post")),
)
TRIPLE_WEIGHT = 10  # a risky triple counts as this many pairs when covering examples are chosen
#: the share of a budget given to covering examples; hypothesis draws the rest, so layouts with fewer
#: features (dense only, no RoPE, ...) still come: covering examples favour feature-rich layouts, and a
#: feature that crashes a transform would otherwise mask every bug of the layouts without it
SHARE = 0.6
POOL = 3000  # uniform draws that define what is possible (space) and what covering examples choose from


def tags(layout: Layout) -> frozenset[str]:
    """The feature tags of ``layout``, as ``strategies.layouts`` reports them with ``event``."""
    return frozenset(layout.features() + layout.op_features())


def interactions(present: frozenset[str] | set[str], always: frozenset[str] = frozenset()) -> set[tuple]:
    """The pairs (sorted tag 2-tuples) and :data:`TRIPLES` triples among ``present``, ``always`` left out."""
    free = sorted(set(present) - always)
    found = set(itertools.combinations(free, 2))
    for groups in TRIPLES:
        found.update(itertools.product(*[[t for t in g if t in present] for g in groups]))
    return found


def draw_pool(size: int, seed: int, **constraints) -> list[tuple[DecoderSpec, frozenset[str]]]:
    """``size`` specs drawn uniformly by :func:`fuzz.strategies.spec_from` (constraints checked), with their tags."""
    from .strategies import Picked, check_constraints, spec_from
    check_constraints(constraints)
    pick = Picked(random.Random(seed))
    out = []
    for _ in range(size):
        spec = spec_from(pick, constraints)
        out.append((spec, tags(build(spec))))
    return out


@dataclass(frozen=True)
class Space:
    """What a campaign under some constraints can combine: ``always`` (tags every layout carries),
    ``pairs`` and ``triples`` possible."""

    always: frozenset[str]
    pairs: frozenset[tuple[str, str]]
    triples: frozenset[tuple[str, str, str]]

    def reached(self, seen: list[frozenset[str]] | list[set[str]]) -> dict:
        """Coverage of the layouts' tag sets ``seen``: pairs and triples seen / possible (an interaction
        seen beyond the pool counts as possible too), and the possible pairs never seen."""
        got = set()
        for t in seen:
            got |= interactions(t, self.always)
        pairs = {i for i in got if len(i) == 2}
        triples = got - pairs
        possible_pairs, possible_triples = self.pairs | pairs, self.triples | triples
        return {"pairs_seen": len(pairs), "pairs_possible": len(possible_pairs),
                "triples_seen": len(triples), "triples_possible": len(possible_triples),
                "pairs_missing": sorted(possible_pairs - pairs)}


def _key(constraints: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in constraints.items()))


@lru_cache(maxsize=16)
def _pool(seed: int, key: tuple) -> tuple[tuple[DecoderSpec, frozenset[str]], ...]:
    return tuple(draw_pool(POOL, seed, **dict(key)))


@lru_cache(maxsize=16)
def _space(key: tuple) -> Space:
    pool = _pool(0, key)
    always = frozenset.intersection(*[t for _, t in pool])
    found = set()
    for _, t in pool:
        found |= interactions(t, always)
    return Space(always, frozenset(i for i in found if len(i) == 2), frozenset(i for i in found if len(i) == 3))


def space(**constraints) -> Space:
    """The interactions possible under ``constraints`` (the pool of :data:`POOL` uniform draws of seed 0; cached)."""
    return _space(_key(constraints))


def covering_specs(n: int, seed: int = 0, **constraints) -> list[DecoderSpec]:
    """At most ``n`` specs that together reach the interactions of :func:`space` in few layouts: greedily,
    each the draw of a seeded pool (:data:`POOL` uniform draws under ``constraints``) that adds the most
    interactions not yet reached (a risky triple weighs :data:`TRIPLE_WEIGHT` pairs).  Stops early when the
    pool has nothing new to add."""
    return list(_covering(seed, _key(constraints))[:n])


@lru_cache(maxsize=16)
def _covering(seed: int, key: tuple) -> tuple[DecoderSpec, ...]:
    """The greedy order until the pool adds nothing (its first ``n`` are the greedy choice of ``n``)."""
    universe = space(**dict(key))
    pool = _pool(seed, key)
    order = sorted(universe.pairs) + sorted(universe.triples)  # a mask's high bits are its triples
    index = {i: k for k, i in enumerate(order)}
    masks = []
    for _, t in pool:
        bits = np.zeros(len(index), dtype=bool)
        bits[[index[i] for i in interactions(t, universe.always) if i in index]] = True
        masks.append(int.from_bytes(np.packbits(bits[::-1]).tobytes(), "big") >> (-len(index) % 8))
    uncovered = (1 << len(index)) - 1
    n_pairs = len(universe.pairs)
    chosen = []
    while True:
        gains = [(new := m & uncovered).bit_count() + (TRIPLE_WEIGHT - 1) * (new >> n_pairs).bit_count()
                 for m in masks]
        best = max(range(len(pool)), key=gains.__getitem__)
        if gains[best] == 0:
            break
        chosen.append(pool[best][0])
        uncovered &= ~masks[best]
    return tuple(chosen)


def covering_examples(n: int, seed: int = 0, **constraints) -> list[tuple[Layout, int]]:
    """:func:`covering_specs` built, each with a weight seed (drawn from ``seed``), for ``@example``."""
    rng = random.Random(seed)
    return [(build(spec), rng.randrange(2**31)) for spec in covering_specs(n, seed, **constraints)]


def covering_share(budget: int, share: float = SHARE) -> int:
    """How many of ``budget`` examples are covering examples: ``share`` of it, rounded down."""
    return int(budget * share)


def with_covering_examples(test, budget: int, seed: int = 0, share: float = SHARE, **constraints):
    """``test``, a hypothesis test of ``layout`` and ``weight_seed``, with the first
    :func:`covering_share` of ``budget`` covering examples as its explicit examples (run in covering
    order); returns ``(test, drawn)``: ``drawn`` is what is left of ``budget`` for hypothesis to draw
    (its ``max_examples``; no generate phase at 0)."""
    from hypothesis import example
    rows = covering_examples(covering_share(budget, share), seed, **constraints)
    for layout, weight_seed in reversed(rows):  # hypothesis runs the last one added first
        test = example(layout=layout, weight_seed=weight_seed)(test)
    return test, budget - len(rows)
