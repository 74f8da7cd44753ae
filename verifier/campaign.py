"""A layout-discovery campaign: every named transform against hypothesis-drawn layouts.

Per transform, one hypothesis run under the chosen profile: each drawn layout is verified in float64;
the first failure (diverged, error, non-finite) stops that transform's search and hypothesis shrinks
it to a minimal layout, which the summary keeps with its verdict and repro.  Refusals are honest
outcomes and are counted, not failed; inconclusive comparisons (every position after a MoE near-tie)
are counted separately.

The summary (JSON + markdown, written atomically) lists the layouts tried, per-feature coverage,
per-transform outcomes and worst errors, and the failures.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import torch
from hypothesis import given, seed as hypothesis_seed, settings

import fuzz.profiles  # noqa: F401
from fuzz import strategies as S
from fuzz.layout import atomic_write_text

from .oracle import Verdict, verify
from .registry import resolve

FAILING = ("diverged", "error", "non-finite")


class _Found(Exception):
    def __init__(self, verdict: Verdict, features: list[str]):
        self.verdict, self.features = verdict, features
        super().__init__(str(verdict))


def run_campaign(transforms: list[str], *, profile: str = "dev", max_examples: int | None = None,
                 seed: int | None = None, constraints: dict | None = None, progress: bool = True,
                 dtype: torch.dtype = torch.float64, corpus: str | Path | None = None) -> dict:
    """Run the campaign and return its summary dict (see the module docstring).

    With ``corpus``, each failure is reduced (:mod:`verifier.reduce`) and written there as an entry.
    """
    constraints = constraints or {}
    base = settings.get_profile(profile)
    budget = max_examples or base.max_examples
    resolved = [resolve(name) for name in transforms]
    features: Counter = Counter()
    layouts_seen: set[str] = set()
    per_transform: dict[str, dict] = {}
    failures: list[dict] = []
    started = time.perf_counter()

    bar = _Progress(progress, budget, [t.name for t in resolved])
    with bar:
        for transform in resolved:
            stats = {"examples": 0, "status": Counter(), "worst_rel_err": 0.0}
            per_transform[transform.name] = stats

            @settings(base, max_examples=budget)
            @given(layout=S.layouts(**constraints), weight_seed=S.seeds())
            def prop(layout, weight_seed):
                verdict = verify(transform, layout, seed=weight_seed % 1000, dtype=dtype)
                stats["examples"] += 1
                stats["status"][verdict.status] += 1
                if verdict.max_rel_err is not None:
                    stats["worst_rel_err"] = max(stats["worst_rel_err"], verdict.max_rel_err)
                if layout.hash() not in layouts_seen:
                    layouts_seen.add(layout.hash())
                    features.update(layout.features())
                bar.advance(transform.name)
                if verdict.status in FAILING:
                    raise _Found(verdict, layout.features())

            if seed is not None:
                prop = hypothesis_seed(seed)(prop)
            try:
                prop()
            except _Found as found:  # hypothesis re-raises the minimal (shrunk) failing example
                v = found.verdict
                failure = {"transform": transform.name, "status": v.status, "verdict": v.to_dict(),
                           "features": found.features, "minimal_layout": json.loads(v.layout_json),
                           "repro": v.repro()}
                if corpus is not None:
                    failure["corpus_entry"], failure["new_entry"] = _to_corpus(transform, v, corpus, dtype)
                failures.append(failure)
            stats["status"] = dict(stats["status"])
    return {
        "profile": profile, "max_examples": budget, "seed": seed, "dtype": str(dtype).removeprefix("torch."),
        "constraints": constraints, "transforms": [t.name for t in resolved],
        "layouts_tried": len(layouts_seen), "features": dict(sorted(features.items())),
        "per_transform": per_transform, "failures": failures,
        "seconds": round(time.perf_counter() - started, 2), "ok": not failures,
    }


def _to_corpus(transform, verdict: Verdict, root, dtype) -> tuple[str, bool]:
    """Reduce the failing layout while the same symptom at the same op reproduces, then record it."""
    from fuzz.layout import Layout

    from .corpus import record_failure
    from .reduce import reduce_layout
    op = (verdict.first_divergent or {}).get("op")

    def same(candidate):
        v = verify(transform, candidate, seed=verdict.seed, dtype=dtype)
        return v.status == verdict.status and (v.first_divergent or {}).get("op") == op

    layout, _ = reduce_layout(Layout.from_json(verdict.layout_json), same)
    final = verify(transform, layout, seed=verdict.seed, dtype=dtype)
    path, created = record_failure(final, layout, transform, root=root)
    return str(path), created


def summary_markdown(summary: dict) -> str:
    lines = [f"# archfuzz campaign ({summary['profile']}, {summary['max_examples']} examples per transform, "
             f"{summary['dtype']})", "",
             f"Layouts tried: {summary['layouts_tried']}; time {summary['seconds']} s; "
             f"result: {'no failures' if summary['ok'] else str(len(summary['failures'])) + ' failure(s)'}", "",
             "| transform | examples | invariant | refused | inconclusive | failed | worst rel err |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, st in summary["per_transform"].items():
        s = st["status"]
        failed = sum(s.get(k, 0) for k in FAILING)
        lines.append(f"| {name} | {st['examples']} | {s.get('invariant', 0)} | {s.get('refused', 0)} | "
                     f"{s.get('inconclusive', 0)} | {failed} | {st['worst_rel_err']:.2e} |")
    lines += ["", "| feature | layouts |", "|---|---:|"]
    lines += [f"| {f} | {n} |" for f, n in summary["features"].items()]
    for f in summary["failures"]:
        v = f["verdict"]
        lines += ["", f"## {f['transform']}: {f['status']}", "", f"- {v['message']}",
                  f"- first divergent node: {v['first_divergent']}", f"- features: {', '.join(f['features'])}",
                  "", "```python", f["repro"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def write_summary(summary: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    js = atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, sort_keys=True))
    md = atomic_write_text(out / "summary.md", summary_markdown(summary))
    return js, md


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
