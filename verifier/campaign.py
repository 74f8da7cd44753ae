"""A layout-discovery campaign: every named transform against hypothesis-drawn layouts.

Per transform, one hypothesis run of exactly the budget (phases explicit / reuse / generate / target, no
shrinking): each drawn layout is verified in the campaign dtype with a per-example timeout, and the search
goes on after a failure.  Failing verdicts are grouped by a cheap key (status, first divergent op kind, and
for a crash its exception type and location); one representative per group is reduced by delta debugging
(:mod:`verifier.reduce`) while the same key reproduces, and its corpus signature (transform, stage,
symptom, first divergent op kind, minimal feature set: :func:`verifier.corpus.signature`) is computed on
the reduced layout.  Distinct signatures are reported once each.

A signature that names an existing corpus entry (any status) is reported as *known*, with the entry path.
Mutants (registry ``mutants``) are reported as *caught* (kind ``mutant``) and never written.  Only
a new break of a real transform is written to the corpus (atomically, :func:`~verifier.corpus.record_failure`)
and makes the campaign fail.  Refusals are honest outcomes and are counted; inconclusive and degenerate
comparisons are counted separately.

What a registry declares about its transforms (:func:`verifier.registry.register`) is read here, never
keyed on a registry's name: ``float64_options`` are added in a float64 campaign (third-party peers,
registry ``peers``, run with ``precision="float64"``: the subject is converted and run float64 everywhere,
so the bare conversion ``hf-bridge`` is exact and a verdict sees the peer's own arithmetic, not
transformers' float32 RMSNorm/RoPE); ``precision_option`` is reported per transform (:data:`PEER_MODE`);
``noisy_loggers`` are quieted; a break found with ``signature_free_options`` set is also known when an
entry recorded without them has the same signature.

Each transform's budget starts with covering examples (:mod:`fuzz.covering`: layouts chosen so that few
reach every pair of feature values, run as hypothesis' explicit examples, the ones that reach the most
first; up to 90% of the budget, :data:`fuzz.covering.SHARE`) and hypothesis draws the rest.

The summary (JSON + markdown, written atomically) lists the layouts tried, per-feature coverage, pair
coverage (pairs of feature tags seen / possible, and the riskiest triples; ``layout_tags``, the tag set of each
distinct layout, lets campaigns sharded by seed merge their coverage), per-transform outcomes, worst errors, seconds, the peers' precision mode, and new / known / caught failures.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch
from hypothesis import Phase, given, seed as hypothesis_seed, settings

import fuzz.profiles  # noqa: F401
from fuzz import covering, strategies as S
from fuzz.errors import BadInput
from fuzz.layout import Layout, write_report

from . import registry
from .oracle import Verdict, verify
from .outcomes import FAILING, Stage, Status
from .registry import resolve
from .transform import NamedTransform

PER_EXAMPLE_TIMEOUT = 60.0  # seconds; a transform that hangs longer gets a ``timeout`` verdict
REDUCE_STEPS = 60  # candidates tried per reduced failure (a count, so a derandomized run reproduces)
#: What a transform's precision policy (its registry's ``precision_option``) means for a campaign's verdicts.
PEER_MODE = {"float64": "float64 everywhere (hf-bridge floor 0)",
             "transformers": "transformers' float32 norms/RoPE (a float64 verdict is blind below ~1e-7)",
             "transformers-float32": "transformers' float32 norms/RoPE (float32 campaign)"}


def campaign_transform(name: str | NamedTransform, dtype: torch.dtype = torch.float64) -> NamedTransform:
    """``name`` resolved for a campaign: in a float64 campaign with its registry's ``float64_options`` (a peer
    gets ``precision="float64"``)."""
    if isinstance(name, NamedTransform):
        return name
    transform = resolve(name)
    float64_options = registry.properties(transform).get("float64_options")
    if float64_options and dtype == torch.float64:
        transform = resolve(name, **float64_options)
    return transform


def _kind(transform: NamedTransform) -> str:
    return "mutant" if registry.prefix_of(transform.registry) == "mutants" else "finding"


def _group_key(verdict: Verdict) -> tuple:
    """Cheap key of a failing verdict: status, first divergent op, and what and where a crash raised."""
    op = (verdict.first_divergent or {}).get("op")
    detail = None
    if verdict.status == Status.ERROR:
        m = re.search(r"raised (\w+).*\(at ([^()]*)\)\s*$", verdict.message, re.S)
        detail = m.groups() if m else re.sub(r"\d+(\.\d+)?(e[+-]?\d+)?", "#", verdict.message)[:120]
    return verdict.status, op, detail


def _stage(verdict: Verdict) -> str:
    """As the corpus seeds it: a crash of the transform itself is stage ``transform``."""
    crashed = verdict.status == Status.ERROR and verdict.message.startswith("transform raised")
    return Stage.TRANSFORM if crashed else Stage.VERIFY


def run_campaign(transforms: list[str | NamedTransform], *, profile: str = "dev", max_examples: int | None = None,
                 seed: int | None = None, constraints: dict | None = None, progress: bool = True,
                 dtype: torch.dtype = torch.float64, corpus: str | Path | None = None, record: bool = True,
                 per_example_timeout: float | None = PER_EXAMPLE_TIMEOUT,
                 reduce_steps: int = REDUCE_STEPS, cover: bool = True) -> dict:
    """Run the campaign and return its summary dict (see the module docstring).

    ``corpus``: the entries that make a failure *known*, and where new ones are written (``record``).
    ``cover``: the budget starts with covering examples (:func:`fuzz.covering.with_covering_examples`, seeded
    by ``seed`` or 0; up to :data:`fuzz.covering.SHARE` of it) and hypothesis draws the rest; False: hypothesis
    draws the whole budget.
    """
    constraints = constraints or {}
    base = settings.get_profile(profile)
    budget = base.max_examples if max_examples is None else max_examples
    resolved = [campaign_transform(name, dtype) for name in transforms]
    known = _known_signatures(corpus)
    features: Counter = Counter()
    layouts_seen: set[str] = set()
    tags_seen: list[frozenset[str]] = []
    explicit = covering.covering_share(budget) if cover else 0
    explicit = len(covering.covering_specs(explicit, seed or 0, **constraints)) if explicit else 0
    drawn = budget - explicit
    per_transform: dict[str, dict] = {}
    failures: list[dict] = []
    started = time.perf_counter()
    phases = [p for p in base.phases if p != Phase.shrink and (drawn or p not in (Phase.generate, Phase.target))]

    bar = _Progress(progress, budget, [t.name for t in resolved])
    noisy = {k: v for t in resolved for k, v in registry.properties(t).get("noisy_loggers", {}).items()}
    with bar, _third_party_quiet(noisy):
        for transform in resolved:
            t0 = time.perf_counter()
            stats = {"examples": 0, "status": Counter(), "worst_rel_err": 0.0, "kind": _kind(transform)}
            props = registry.properties(transform)
            if "precision_option" in props:
                mode = transform.options.get(props["precision_option"], props["default_precision"])
                stats["precision"] = PEER_MODE[mode if mode == "float64" or dtype == torch.float64
                                               else "transformers-float32"]
            per_transform[transform.name] = stats
            groups: dict[tuple, dict] = {}

            @settings(base, max_examples=max(drawn, 1), phases=phases)
            @given(layout=S.layouts(**constraints), weight_seed=S.seeds())
            def prop(layout, weight_seed):
                stats["examples"] += 1
                if layout.hash() not in layouts_seen:
                    layouts_seen.add(layout.hash())
                    features.update(layout.features())
                    tags_seen.append(covering.tags(layout))
                bar.advance(transform.name)
                try:
                    verdict = verify(transform, layout, seed=weight_seed % 1000, dtype=dtype,
                                     timeout=per_example_timeout)
                except BadInput as exc:  # the drawn subject itself is unusable: counted, never a pass
                    stats["status"]["bad-subject"] += 1
                    stats.setdefault("bad_subject_example", str(exc)[:300])
                    return
                stats["status"][verdict.status] += 1
                if verdict.max_rel_err is not None:
                    stats["worst_rel_err"] = max(stats["worst_rel_err"], verdict.max_rel_err)
                if verdict.status in FAILING:
                    group = groups.setdefault(_group_key(verdict), {"verdict": verdict, "layout": layout, "count": 0})
                    group["count"] += 1

            if cover:
                prop, _ = covering.with_covering_examples(prop, budget, seed or 0, **constraints)
            if seed is not None:
                prop = hypothesis_seed(seed)(prop)
            prop()
            found = {}
            for key, group in groups.items():
                failure = _classify(transform, key, group, known, dtype, reduce_steps, per_example_timeout)
                if failure["signature"] in found:  # two keys reduced to one signature
                    found[failure["signature"]]["examples_failing"] += failure["examples_failing"]
                    continue
                if failure["kind"] == "finding" and not failure["known"] and corpus is not None and record:
                    failure["corpus_entry"], failure["new_entry"] = _record(transform, failure, corpus)
                    known[failure["signature"]] = failure["corpus_entry"]
                found[failure["signature"]] = failure
            failures += found.values()
            stats["status"] = dict(stats["status"])
            stats["failures"] = {outcome: sum(f["outcome"] == outcome for f in found.values())
                                 for outcome in ("new", "known", "caught")}
            stats["seconds"] = round(time.perf_counter() - t0, 2)
    new = [f for f in failures if f["outcome"] == "new"]
    return {
        "profile": profile, "max_examples": budget, "seed": seed, "dtype": str(dtype).removeprefix("torch."),
        "constraints": constraints, "transforms": [t.name for t in resolved],
        "per_example_timeout": per_example_timeout, "corpus": None if corpus is None else str(corpus),
        "layouts_tried": len(layouts_seen), "covering_examples": explicit,
        "features": dict(sorted(features.items())), "interactions": _interactions(constraints, tags_seen),
        "layout_tags": [sorted(t) for t in tags_seen],
        "per_transform": per_transform, "failures": [_public(f) for f in failures],
        "new_findings": len(new), "known_failures": sum(f["outcome"] == "known" for f in failures),
        "mutants_caught": sum(f["outcome"] == "caught" for f in failures),
        "seconds": round(time.perf_counter() - started, 2), "ok": not new,
    }


def examples_to_catch(name: str, budget: int, seed: int | None = None, cover: bool = True) -> int | None:
    """How many layouts a campaign's search tries before the oracle first catches the known-buggy transform
    ``name`` (:mod:`verifier.mutants`), None if not within ``budget``: covering examples first
    (:func:`fuzz.covering.with_covering_examples`, seeded by ``seed`` or 0; ``cover=False``: none), then
    hypothesis' draws of the whole space (derandomized when ``seed`` is None)."""
    from . import mutants
    count, first = [0], []

    def search(layout, weight_seed):
        count[0] += 1
        if not first and verify(mutants.get(name, seed=weight_seed % 1000), layout,
                                seed=weight_seed % 97).status == Status.DIVERGED:
            first.append(count[0])

    search, drawn = given(layout=S.layouts(), weight_seed=S.seeds())(search), budget
    if cover:
        search, drawn = covering.with_covering_examples(search, budget, seed or 0)
    phases = [Phase.explicit, Phase.generate] if drawn else [Phase.explicit]
    search = settings(max_examples=max(drawn, 1), database=None, deadline=None, phases=phases,
                      derandomize=seed is None)(search)
    if seed is not None:
        search = hypothesis_seed(seed)(search)
    search()
    return first[0] if first else None


def _interactions(constraints: dict, seen: list[frozenset[str]]) -> dict:
    """Pair (and risky-triple) coverage of the distinct layouts tried (:meth:`fuzz.covering.Space.reached`);
    the possible pairs never seen: their count and the first few."""
    reached = covering.space(**constraints).reached(seen)
    missing = reached.pop("pairs_missing")
    return {**reached, "pairs_missing": len(missing), "pairs_missing_first": [list(p) for p in missing[:20]]}


def _classify(transform: NamedTransform, key: tuple, group: dict, known: dict, dtype, reduce_steps: int,
              timeout) -> dict:
    """Reduce a group's representative while its key reproduces; its signature, known entry and outcome."""
    from .corpus import _transform_record, signature
    from .reduce import reduce_layout
    verdict, layout = group["verdict"], group["layout"]
    record = _transform_record(transform)
    steps = 0
    if verdict.status != Status.TIMEOUT:  # reducing a hang would cost a timeout per candidate

        def same(candidate: Layout) -> bool:
            try:
                v = verify(transform, candidate, seed=verdict.seed, dtype=dtype, timeout=timeout)
            except BadInput:
                return False
            return v.status in FAILING and _group_key(v) == key

        reduced, steps = reduce_layout(layout, same, max_steps=reduce_steps)
        if reduced is not layout:
            layout = reduced
            verdict = verify(transform, layout, seed=verdict.seed, dtype=dtype, timeout=timeout)
    stage, op = _stage(verdict), (verdict.first_divergent or {}).get("op")
    sig = signature(record, stage, verdict.status, op, layout.features())
    alike = [sig]
    free = set(registry.properties(transform).get("signature_free_options", ())) & set(record["options"])
    if free:  # the same break recorded without those options (a peer at its default precision)
        plain = {**record, "options": {k: v for k, v in record["options"].items() if k not in free}}
        alike.append(signature(plain, stage, verdict.status, op, layout.features()))
    entry = next((known[s] for s in alike if s in known), None)
    kind = _kind(transform)
    outcome = "caught" if kind == "mutant" else ("known" if entry else "new")
    return {"transform": transform.name, "registry_name": record["registry_name"], "options": record["options"],
            "kind": kind, "outcome": outcome, "known": entry is not None, "corpus_entry": entry, "new_entry": False,
            "status": verdict.status, "stage": stage, "signature": sig, "examples_failing": group["count"],
            "reduce_steps": steps, "verdict": verdict.to_dict(), "features": layout.features(),
            "minimal_layout": json.loads(layout.to_json()), "repro": verdict.repro(),
            "_verdict": verdict, "_layout": layout}


@contextmanager
def _third_party_quiet(loggers: dict[str, str]):
    """The registries' ``noisy_loggers`` (``{logger: module that configures it}``: auto-round's INFO/WARNING
    lines, one block per peer call) stay out of the campaign's output, at ERROR, until the end."""
    saved = []
    for name, module in loggers.items():
        importlib.import_module(module)  # it sets its level on import: import it first
        log = logging.getLogger(name)
        saved.append((log, log.level))
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in saved:
            log.setLevel(level)


def _known_signatures(corpus) -> dict[str, str]:
    """``{signature: entry path}`` of every readable entry under ``corpus``."""
    if corpus is None:
        return {}
    from .corpus import load_entries
    entries, _ = load_entries(corpus)
    return {e.meta.get("signature", e.name): str(e.path) for e in entries}


def record_reduced(transform: NamedTransform, verdict: Verdict, root, dtype: torch.dtype = torch.float64, *,
                   reduce_steps: int = REDUCE_STEPS, timeout: float | None = None) -> tuple[str, bool]:
    """Reduce a failing verdict's layout while its failure reproduces and write it to the corpus at ``root``
    (what a campaign does for one group); returns ``(path, created)``."""
    layout = Layout.from_json(verdict.layout_json)
    group = {"verdict": verdict, "layout": layout, "count": 1}
    failure = _classify(transform, _group_key(verdict), group, {}, dtype, reduce_steps, timeout)
    return _record(transform, failure, root)


def _record(transform: NamedTransform, failure: dict, root) -> tuple[str, bool]:
    from .corpus import record_failure
    path, created = record_failure(failure["_verdict"], failure["_layout"], transform, root=root,
                                   stage=failure["stage"])
    return str(path), created


def _public(failure: dict) -> dict:
    return {k: v for k, v in failure.items() if not k.startswith("_")}


def summary_markdown(summary: dict) -> str:
    new, known, caught = (summary["new_findings"], summary["known_failures"], summary["mutants_caught"])
    result = f"{new} new finding(s)" if new else "no new findings"
    lines = [f"# archfuzz campaign ({summary['profile']}, {summary['max_examples']} examples per transform, "
             f"{summary['dtype']})", "",
             f"Layouts tried: {summary['layouts_tried']}; time {summary['seconds']} s; result: {result}; "
             f"{known} known failure(s); {caught} mutant failure(s) caught", "",
             "| transform | examples | invariant | refused | other | failed | worst rel err | new | known | caught "
             "| seconds | mode |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, st in summary["per_transform"].items():
        s = st["status"]
        failed = sum(s.get(k, 0) for k in FAILING)
        other = sum(s.values()) - failed - s.get(Status.INVARIANT, 0) - s.get(Status.REFUSED, 0)
        f = st.get("failures", {})
        lines.append(f"| {name} | {st['examples']} | {s.get('invariant', 0)} | {s.get('refused', 0)} | {other} | "
                     f"{failed} | {st['worst_rel_err']:.2e} | {f.get('new', 0)} | {f.get('known', 0)} | "
                     f"{f.get('caught', 0)} | {st.get('seconds', '')} | {st.get('precision', '')} |")
    inter = summary["interactions"]
    share = inter["pairs_seen"] / inter["pairs_possible"] if inter["pairs_possible"] else 1.0
    lines += ["", f"Pair coverage: {inter['pairs_seen']} / {inter['pairs_possible']} pairs of feature tags "
              f"({share:.1%}); risky triples {inter['triples_seen']} / {inter['triples_possible']}; "
              f"{summary['covering_examples']} covering example(s) per transform"]
    if inter["pairs_missing"]:
        first = ", ".join("+".join(p) for p in inter["pairs_missing_first"][:5])
        lines += ["", f"Pairs never seen: {inter['pairs_missing']} (first: {first})"]
    lines += ["", "| feature | layouts |", "|---|---:|"]
    lines += [f"| {f} | {n} |" for f, n in summary["features"].items()]
    for f in summary["failures"]:
        v = f["verdict"]
        where = f"known: {f['corpus_entry']}" if f["outcome"] == "known" else (
            f"new: {f['corpus_entry'] or 'not recorded'}" if f["outcome"] == "new" else "mutant caught")
        lines += ["", f"## {f['transform']}: {f['status']} ({where})", "", f"- {v['message']}",
                  f"- first divergent node: {v['first_divergent']}", f"- signature: {f['signature']} "
                  f"(stage {f['stage']}, {f['examples_failing']} failing example(s))",
                  f"- features: {', '.join(f['features'])}"]
        if f["outcome"] == "new":
            lines += ["", "```python", f["repro"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def write_summary(summary: dict, out_dir: str | Path) -> tuple[Path, Path]:
    return write_report(out_dir, "summary", summary, summary_markdown(summary))


class _Progress:
    """A rich progress bar per transform (silent when ``enabled`` is False)."""

    def __init__(self, enabled: bool, total: int, names: list[str]):
        self.enabled, self.total, self.names = enabled, total, names
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            self.bar = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn())
            self.bar.__enter__()
            self.tasks = {n: self.bar.add_task(n, total=self.total) for n in self.names}
        return self

    def advance(self, name: str) -> None:
        if self.enabled:
            self.bar.advance(self.tasks[name])

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)
