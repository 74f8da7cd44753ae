"""Pairwise coverage of feature values: which combinations a campaign can reach, which it reached, and
covering examples that reach them in few layouts.

The bugs of this field live in combinations (a q/k norm with interleaved RoPE, a shared expert with
tied embeddings), and a layout drawn at random reaches a given pair of feature values only with the
product of their probabilities: tens to hundreds of examples for the rarer pairs.  So a campaign starts
with *covering examples*: a covering built row by row (:func:`_covering`, AETG style: each row the draw of
a seeded pool that reaches the most weight not yet reached, rare pairs weighing more, then improved by
replaying its choices with a few changed, so every row is a draw of :func:`~fuzz.strategies.spec_from`
under the campaign's constraints), its redundant rows dropped, ordered so that its first rows reach the
most; its first :data:`PREFIX` rows (those of a budget of 50) then changed together to reach more
(:func:`_improve`) and the rest covered anew; run as hypothesis' explicit examples (``@example``) for up to
:data:`SHARE` of the budget, before
hypothesis draws the rest.  The draws themselves, their shrinking toward fewer features and the
derandomized profiles are untouched.  :func:`lower_bound` is what no covering can beat (75 rows: more than a
budget of 50, so some pairs wait for the rows past it).

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
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import networkx as nx
import numpy as np

from .decoder import DecoderSpec, build
from .layout import Layout
from .strategies import Picked, check_constraints, spec_from

#: the riskiest axes, each a tuple of feature-tag groups: one tag of each group makes a triple
TRIPLES: tuple[tuple[tuple[str, ...], ...], ...] = (
    (("qk_norm:none", "qk_norm:per_head", "qk_norm:full", "qk_norm:per_head_own"),
     ("rope:half", "rope:interleaved"), ("attn:mha", "attn:mqa", "attn:gqa")),
    (("moe", "moe:shared_expert", "moe:mixed-dense-sparse"), ("embeddings:tied", "embeddings:untied"),
     ("placement:pre", "placement:sandwich", "placement:post")),
)
TRIPLE_WEIGHT = 10  # a risky triple counts as this many pairs when covering examples are chosen
#: the most of a budget covering examples take (rounded down); hypothesis draws the rest, so layouts with
#: fewer features (dense only, no RoPE, ...) still come: covering examples favour feature-rich layouts, and
#: a feature that crashes a transform would otherwise mask every bug of the layouts without it.  The
#: covering (88 rows for 14688 pairs at seed 3, its first 45 reaching 98.8%; :func:`lower_bound` 75, 63 by the
#: decoder's rules alone: no 45 or 50 rows reach every pair, docs/interactions.md) is larger than a budget of
#: 50, and its rows past the first 30 still reach pairs that draws mostly miss (at 9641 pairs: with 45 covering
#: examples of 50, 8669 pairs were caught on every seed of 10, with 30 7809, with 50 8872;
#: ``python -m benchmarks.covering_split``, docs/findings.md); 90% keeps 5 draws of 50 (its 45 covering rows
#: are the :data:`PREFIX` that :func:`_improve` works on), and 22 + 3 of the ci profile's 25
SHARE = 0.9
POOL = 3000  # uniform draws that define what is possible (space) and what covering examples choose from
CLIMB = 30  # tries per covering row to reach more with a changed choice (:func:`_covering`)
PREFIX = 45  # the covering rows of a budget of 50 (:func:`covering_share`): :func:`_improve` makes them reach more
IMPROVE = 12000  # tries :func:`_improve` makes on those rows
GRAFT = 0.4  # the share of :func:`_improve`'s tries that graft a pool draw holding the missing interaction
HARD = 20  # a targeted try aims at one of the this many rarest interactions not yet reached


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
    check_constraints(constraints)
    pick = Picked(random.Random(seed))
    out = []
    for _ in range(size):
        spec = spec_from(pick, constraints)
        out.append((spec, tags(build(spec))))
    return out


_REPLACED = object()  # a recorded choice to draw afresh


class Replayed(Picked):
    """A :class:`~fuzz.strategies.Picked` that replays recorded choices, each while the call it answers still
    allows it (a choice among the same options, an integer in range), and draws the others afresh; it records
    what it picked (``made``) and which call each was (``keys``: the call, its arguments and how many times
    that call was made so far; a key names the same axis in every draw).  With nothing to replay it draws
    exactly what :class:`~fuzz.strategies.Picked` draws from the same random source.  ``replay``: the
    choices in call order, or a dict from key to choice (a key's choice replayed wherever that call comes, so
    changing the layer count keeps every other axis)."""

    def __init__(self, rng: random.Random, replay: list | tuple | dict = ()):
        super().__init__(rng)
        self.replay = replay if isinstance(replay, dict) else list(replay)
        self.made, self.keys, self._calls = [], [], Counter()

    def _take(self, call: tuple, allowed, fresh):
        self._calls[call] += 1
        key = (call, self._calls[call])
        if isinstance(self.replay, dict):  # by key: a choice keeps its value when an earlier one changes
            value = self.replay.get(key, _REPLACED)
        else:  # by position
            value = self.replay[len(self.made)] if len(self.made) < len(self.replay) else _REPLACED
        value = value if value is not _REPLACED and allowed(value) else fresh()
        self.keys.append(key)
        self.made.append(value)
        return value

    def integer(self, lo: int, hi: int) -> int:
        return self._take(("integer", lo, hi), lambda v: type(v) is int and lo <= v <= hi,
                          lambda: super(Replayed, self).integer(lo, hi))

    def even(self, lo: int, hi: int) -> int:
        return self._take(("even", lo, hi), lambda v: type(v) is int and v % 2 == 0 and lo <= v // 2 <= hi,
                          lambda: super(Replayed, self).even(lo, hi))

    def choice(self, options: tuple):
        return self._take(("choice", options), lambda v: any(type(v) is type(o) and v == o for o in options),
                          lambda: super(Replayed, self).choice(options))

    def flag(self, shrink_to: bool = False) -> bool:
        return self._take(("flag", shrink_to), lambda v: type(v) is bool,
                          lambda: super(Replayed, self).flag(shrink_to))


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


def apart(**constraints) -> list[tuple[str, str]]:
    """Pairs of :func:`space` no two of which one draw of the pool (seed 0, the one that defines the space) holds:
    each takes a row of its own, so no covering has fewer rows.  Greedy, rarest first (the pair fewest draws hold,
    then by name), a pair kept when no draw holding it holds one kept before (a maximal set, not always the
    largest)."""
    key = _key(constraints)
    pairs = space(**constraints).pairs
    holds: dict[str, int] = {}  # tag -> the pool draws holding it, one bit each
    for e, (_, t) in enumerate(_pool(0, key)):
        for tag in t:
            holds[tag] = holds.get(tag, 0) | 1 << e
    both = {p: holds.get(p[0], 0) & holds.get(p[1], 0) for p in pairs}
    used, kept = 0, []
    for p in sorted(pairs, key=lambda p: (both[p].bit_count(), p)):
        if both[p] and not both[p] & used:  # (a pair beyond every draw of this pool: no evidence either way)
            kept.append(p)
            used |= both[p]
    return kept


#: the activations only a dense layer's MLP without xIELU writes (``decoder._glu_or_gelu``; the shared expert writes
#: silu, per-layer inputs gelu_tanh, experts no ``act`` op): a layout with two layers holds at most two
DENSE_ACTS = ("op:act:gelu", "op:act:relu", "op:act:relu2", "op:act:quick_gelu", "op:act:fast_gelu",
              "op:act:bloom_gelu", "op:clamped_glu")


def one_a_row(**constraints) -> dict[str, frozenset[tuple[str, str]]]:
    """Pairs of :func:`space` no layout holds two of, by the decoder's rules at two layers or fewer, in four kinds
    no layout is two of, each holding one pair of its kind:

    * ``act x experts``: one of :data:`DENSE_ACTS` with an expert form: a dense layer and a sparse one, so one
      activation and one form;
    * ``layers:1 x act``: ``layers:1`` with one of :data:`DENSE_ACTS`: one layer, one activation;
    * ``xielu x mlp``: ``op:xielu`` with an MLP: xIELU leaves no layer an MLP of its own, so the spec's tag alone;
    * ``mlp x mlp``: two MLPs: two dense layers, the second with its own MLP (never with xIELU).

    So a covering of every pair has at least as many rows as all four hold together.  Refuses (``ValueError``) a
    ``max_layers`` above 2, where a layout holds a sparse layer and two dense ones."""
    if constraints.get("max_layers", 2) > 2:
        raise ValueError(f"one_a_row holds for two layers or fewer, not max_layers={constraints['max_layers']}")
    pairs = space(**constraints).pairs
    tagged = {t for p in pairs for t in p}
    forms = sorted(t for t in tagged if t.startswith("moe:experts:"))
    mlps = sorted(t for t in tagged if t.startswith("mlp:") and t not in ("mlp:per-layer", "mlp:xielu"))
    kinds = {"act x experts": {(a, f) for a in DENSE_ACTS for f in forms},
             "layers:1 x act": {("layers:1", a) for a in DENSE_ACTS},
             "xielu x mlp": {("op:xielu", m) for m in mlps},
             "mlp x mlp": set(itertools.combinations(mlps, 2))}
    return {k: frozenset(tuple(sorted(p)) for p in v) & pairs for k, v in kinds.items()}


def lower_bound(**constraints) -> tuple[int, tuple[str, str]]:
    """The fewest rows any covering of the pairs of :func:`space` needs, by three counting arguments on the pool
    of seed 0 (the tags of one axis: one name before the last ``:``, ``mlp:gelu``, ``mlp:relu``, ...):

    * two axes: tags of one axis that no pair combines are exclusive, a layout carries at most one of them (of an
      axis, the largest such set: a largest clique of the graph joining two of its tags that never share a
      layout); between two such sets a row reaches at most one pair, so a covering has at least as many rows as
      the pairs the synthesizer combines between them;
    * one axis: tags of an axis of which no layout carries more than two (two layers, each its own MLP or RoPE
      scaling) reach at most one pair among them a row, so a covering has at least as many rows as the pairs
      among them; of an axis, its tags less, one at a time, the tag in the most pool draws holding three or more
      of those left;
    * any axes: the pairs no draw holds two of (:func:`apart`), one row each.

    Returns the largest count and its two axes (one axis twice for the second argument, ``("*", "*")`` for the
    third)."""
    key = _key(constraints)
    pairs = space(**constraints).pairs
    axes: dict[str, list[str]] = {}
    for t in sorted({t for p in pairs for t in p}):
        axes.setdefault(t.rsplit(":", 1)[0], []).append(t)
    exclusive, within = {}, []
    drawn = [t for _, t in _pool(0, key)]
    for a, values in axes.items():
        never = nx.Graph()
        never.add_nodes_from(values)
        never.add_edges_from(p for p in itertools.combinations(values, 2) if p not in pairs)
        clique, _ = nx.max_weight_clique(never, weight=None)
        if len(clique) > 1:
            exclusive[a] = sorted(clique)
        two = set(values)
        while True:
            full = Counter(v for t in drawn if len(t & two) > 2 for v in t & two)
            if not full:
                break
            two.remove(max(sorted(full), key=full.get))
        within.append((sum(p in pairs for p in itertools.combinations(sorted(two), 2)), (a, a)))
    across = [(sum(tuple(sorted((x, y))) in pairs for x in exclusive[a] for y in exclusive[b]), (a, b))
              for a, b in itertools.combinations(sorted(exclusive), 2)]
    return max(across + within + [(len(apart(**constraints)), ("*", "*"))])


def covering_specs(n: int, seed: int = 0, **constraints) -> list[DecoderSpec]:
    """The first ``n`` rows of the covering of seed ``seed`` under ``constraints`` (:func:`_covering`): few
    specs that together reach the interactions of :func:`space`, the ones that reach the most first."""
    return list(_covering(seed, _key(constraints))[:n])


def covering_size(seed: int = 0, **constraints) -> int:
    """The rows of that covering: how many examples reach every interaction it reaches."""
    return len(_covering(seed, _key(constraints)))


@lru_cache(maxsize=16)
def _covering(seed: int, key: tuple) -> tuple[DecoderSpec, ...]:
    """A covering in prefix order.  Rows are built one at a time (AETG style), each a valid draw of
    :func:`~fuzz.strategies.spec_from` under the constraints: the draw of a seeded pool (:data:`POOL`
    uniform draws, recorded by :class:`Replayed`) that adds the most weight not yet reached, then
    :data:`CLIMB` tries to add more by replaying it with changed choices (every other try aims at one of
    the :data:`HARD` rarest interactions left and sets the choices that most often bring its tags;
    the others redraw one or two choices), a try kept when it adds no less.  An interaction weighs more the
    rarer it is in the pool (``POOL / (draws holding it + 1)``; a risky triple :data:`TRIPLE_WEIGHT` times
    that), so rows take the pairs few draws can reach while they can.  Rows stop when nothing is left
    to add; a row whose every interaction another row reaches is dropped; the rest are ordered greedily
    by interactions newly reached (a risky triple counting :data:`TRIPLE_WEIGHT` pairs), so that a budget
    smaller than the covering takes the rows that reach the most.  A covering longer than :data:`PREFIX`
    keeps its first :data:`PREFIX` rows, changed by :func:`_improve` to reach more of what the whole
    covering reaches, and builds the rest anew for what they leave (rows, redundant rows dropped, order).
    Choices are replayed by key (:class:`Replayed`)."""
    constraints = dict(key)
    universe = space(**constraints)
    order = sorted(universe.pairs) + sorted(universe.triples)
    index = {i: k for k, i in enumerate(order)}
    rng = random.Random(seed)
    known = dict(_pool(seed, key))  # the same draws as the pool below: their tags, built once
    seen: dict[DecoderSpec, tuple[frozenset[str], np.ndarray]] = {}

    def draw(replay=()):
        pick = Replayed(rng, replay)
        spec = spec_from(pick, constraints)
        if spec not in seen:
            t = known[spec] if spec in known else tags(build(spec))
            seen[spec] = t, np.array(sorted(index[i] for i in interactions(t, universe.always) if i in index),
                                     dtype=np.int64)
        return spec, pick.made, pick.keys, seen[spec][1]

    pool = [draw() for _ in range(POOL)]
    held = np.bincount(np.concatenate([p[3] for p in pool]), minlength=len(order))
    weight = (POOL / (held + 1.0)) * np.array([TRIPLE_WEIGHT if len(i) == 3 else 1 for i in order])
    # which recorded choice brings a tag: tag -> the (call, value)s whose draws hold it most often
    vocab = sorted({t for spec, *_ in pool for t in seen[spec][0]} - universe.always)
    present = np.array([[t in seen[spec][0] for t in vocab] for spec, *_ in pool])
    drawn_with: dict[tuple, list[int]] = {}
    value_of = {}
    for e, (_, made, keys, _) in enumerate(pool):
        for k, v in zip(keys, made):
            drawn_with.setdefault((k, repr(v)), []).append(e)
            value_of[k, repr(v)] = v
    often = sorted((kv for kv, es in drawn_with.items() if len(es) >= 5), key=repr)
    share = np.array([present[drawn_with[kv]].mean(axis=0) for kv in often])  # (call, value) x tag
    top = np.argsort(-share, axis=0, kind="stable")[:2]
    steer = {t: [(often[r][0], value_of[often[r]]) for r in top[:, j]] for j, t in enumerate(vocab)}

    flat = np.concatenate([p[3] for p in pool])
    sizes = np.array([len(p[3]) for p in pool])
    starts = np.cumsum(np.concatenate([[0], sizes[:-1]]))

    def steered(row, inter) -> dict:
        """``row``'s choices by key, with the choices that most often bring ``inter``'s missing tags set."""
        rec = dict(zip(row[2], row[1]))
        for t in order[inter]:
            options = steer.get(t, []) if t not in seen[row[0]][0] else []
            if options:
                k, v = options[0] if len(options) == 1 or rng.random() < 0.7 else options[1]
                rec[k] = v
        return rec

    def jolted(row) -> dict:
        """``row``'s choices by key, one or two of them to draw afresh."""
        rec = dict(zip(row[2], row[1]))
        for _ in range(rng.randint(1, 2)):
            rec[row[2][rng.randrange(len(row[2]))]] = _REPLACED
        return rec

    def grow(left: np.ndarray) -> list:
        """Rows (AETG style) until no weight is ``left``; ``left`` is spent."""
        rows = []
        while True:
            # each pool draw's weight left (a trailing 0 keeps every start in range; a draw reaching nothing: 0)
            gains = np.where(sizes > 0, np.add.reduceat(np.append(left[flat], 0.0), starts), 0.0)
            best = pool[int(np.argmax(gains))]
            best_gain = left[best[3]].sum()
            if best_gain == 0:
                return rows
            open_ = np.flatnonzero(left)
            hard = open_[np.argsort(held[open_], kind="stable")[:HARD]]
            for attempt in range(CLIMB):
                rec = steered(best, int(hard[rng.randrange(len(hard))])) if attempt % 2 == 0 else jolted(best)
                tried = draw(rec)
                gain = left[tried[3]].sum()
                if gain >= best_gain:
                    best, best_gain = tried, gain
            rows.append(best)
            left[best[3]] = 0

    def needed(rows: list, before: list = ()) -> list:
        """``rows`` less those whose every interaction another row (or one of ``before``) reaches."""
        reach = [set(r[3].tolist()) for r in rows]
        base = set().union(*(set(r[3].tolist()) for r in before))
        kept = list(range(len(rows)))
        for r in reversed(range(len(rows))):
            if reach[r] <= base.union(*(reach[o] for o in kept if o != r)):
                kept.remove(r)
        return [rows[r] for r in kept]

    counts = np.array([TRIPLE_WEIGHT if len(i) == 3 else 1 for i in order])

    def ordered(rows: list, before: list = ()) -> list:
        """``rows`` greedily, each the one that newly reaches the most after ``before`` and the ones before it."""
        reached = np.zeros(len(order), dtype=bool)
        for r in before:
            reached[r[3]] = True
        rows, out = list(rows), []
        while rows:
            r = max(range(len(rows)), key=lambda r: (counts[rows[r][3]] * ~reached[rows[r][3]]).sum())
            out.append(rows.pop(r))
            reached[out[-1][3]] = True
        return out

    rows = ordered(needed(grow(weight.copy())))
    if len(rows) > PREFIX:  # the rows a budget of 50 runs: reach more with them, then cover the rest anew
        target = np.zeros(len(order), dtype=bool)
        for r in rows:
            target[r[3]] = True
        donors: dict[int, list] = {}  # interaction -> the pool draws holding it
        for p in pool:
            for i in p[3].tolist():
                donors.setdefault(i, []).append(p)

        def grafted(row, inter) -> dict:
            """``row``'s choices by key, a random share of them replaced by a pool draw's that holds ``inter``."""
            rec = dict(zip(row[2], row[1]))
            if inter in donors:
                donor = donors[inter][rng.randrange(len(donors[inter]))]
                share = rng.uniform(0.2, 0.8)
                rec.update({k: v for k, v in zip(donor[2], donor[1]) if rng.random() < share})
            return rec

        prefix = _improve(rows[:PREFIX], target, IMPROVE, draw, steered, jolted, seen, order, rng, grafted)
        left = np.where(target, weight, 0.0)
        for r in prefix:
            left[r[3]] = 0
        prefix = ordered(prefix)
        rows = prefix + ordered(needed(grow(left), prefix), prefix)
    return tuple(r[0] for r in rows)


def _improve(rows: list, target: np.ndarray, tries: int, draw, steered, jolted, seen: dict, order: list,
             rng: random.Random, grafted=None) -> list:
    """``rows`` changed to reach more of ``target`` together (a local search over their recorded choices):
    ``tries`` times a missing interaction is picked and a row is replayed changed: with ``grafted``, in
    :data:`GRAFT` of the tries any row with a random share of its choices taken from a pool draw holding that
    interaction; else a row holding one of its tags with the choices that most often bring the others (or, one
    time in five, any row with one or two choices drawn afresh); the change is kept when it newly reaches at
    least as many interactions as it loses (those only that row reached), so the count reached never drops."""
    rows = list(rows)
    cnt = np.zeros(len(order), dtype=np.int64)
    for r in rows:
        cnt[r[3]] += 1
    missing = set(np.flatnonzero(target & (cnt == 0)).tolist())
    for _ in range(tries):
        if not missing:
            break
        m = rng.choice(sorted(missing))
        holders = [j for j, row in enumerate(rows) if any(t in seen[row[0]][0] for t in order[m])]
        u = rng.random()
        if grafted is not None and u < GRAFT:
            j = rng.randrange(len(rows))
            new = draw(grafted(rows[j], m))
        elif holders and u < 0.8:
            j = rng.choice(holders)
            new = draw(steered(rows[j], m))
        else:
            j = rng.randrange(len(rows))
            new = draw(jolted(rows[j]))
        old = rows[j]
        if new[0] == old[0]:
            continue
        lost = np.setdiff1d(old[3][cnt[old[3]] == 1], new[3], assume_unique=True)
        gained = new[3][(cnt[new[3]] == 0) & target[new[3]]]
        if len(gained) >= len(lost):
            cnt[old[3]] -= 1
            cnt[new[3]] += 1
            rows[j] = new
            missing = (missing - set(gained.tolist())) | set(lost.tolist())
    return rows


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
