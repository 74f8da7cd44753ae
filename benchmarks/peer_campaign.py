"""Every auto-round peer (``quant.peers``), or the compressed-tensors ones (``quant.ct_peers``, named in
``--peers``), against hypothesis-drawn family layouts, three ways.

    python -m benchmarks.peer_campaign [--examples 40] [--seed 20261124] [--peers a,b] [--widths mixed]
                                       [--modes float64,float32,exact] [--out runs/peers] [--no-progress]

Draws ``--examples`` family cases once (``fuzz.families.family_cases`` over every registered family,
fixed seed, generate phase only) and verifies every peer on the same cases.  ``--widths mixed`` (the
default) draws half of them with power-of-two dims (hidden, intermediate, heads, head_dim, expert
widths), since Hadamard rotations need those; ``any`` keeps the families' own draws, ``pow2`` snaps all.

Modes, per case:

* ``float64`` -- the layout as subject (float64 GraphModel), the peer converts it to transformers.
  transformers' float32 RMSNorm / RoPE / router policy bounds what this can see (~1e-7): ``hf-bridge``
  (conversion only) shows that floor.
* ``float32`` -- the same in float32, tolerance 1e-4: the verdict on what ships.
* ``exact``   -- float64 with :class:`quant.peers.ExactFloat64` as subject (the transformers model with
  every float32 request made float64, default dtype float64): only the peer's own arithmetic is left.

Outcomes: invariant (and, among them, *vacuous*: the peer changed no weight and added no hook),
refused, crashed (status ``error``: exception type and message, deduplicated), silently broke
(``diverged`` / ``non-finite``: with the max relative error).  In ``float64`` a divergence within 10x
the ``hf-bridge`` error on the same case is *floor* (transformers' precision, not the peer), so run
``hf-bridge`` first (it is, by default).  Tags per case: the layout's
``features()``, ``family:<transformers family>`` and ``dims:<dim>-non-pow2`` for heads / head_dim.
JSON + markdown are written atomically to ``--out``; the markdown is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import random
import re
import time
from collections import Counter, defaultdict

os.environ.setdefault("TQDM_DISABLE", "1")  # auto-round's per-layer progress bars

import torch
from hypothesis import HealthCheck, Phase, given, seed as hseed, settings, strategies as st

from fuzz.decoder import DecoderSpec, build
from fuzz.families import FAMILIES, FamilyCase, family, family_cases, family_of, to_transformers
from fuzz.layout import write_report
from fuzz.materialize import materialize
from quant import ct_peers as CT
from quant import peers as P
from verifier import verify

MODES = {"float64": torch.float64, "float32": torch.float32, "exact": torch.float64}
OUTCOMES = ("invariant", "refused", "crashed", "diverged")
_OUTCOME = {"invariant": "invariant", "refused": "refused", "error": "crashed", "diverged": "diverged",
            "non-finite": "diverged", "inconclusive": "inconclusive", "degenerate": "inconclusive"}


def _registry(name: str):
    """The module whose peer ``name`` is: :mod:`quant.ct_peers` for ``ct-*`` names, else :mod:`quant.peers`."""
    return CT if name.startswith("ct-") else P


# ---------------------------------------------------------------------------------------------- draws
def _pow2(draw, lo: int, hi: int) -> int:
    return draw(st.sampled_from([2 ** k for k in range(lo, hi + 1)]))


@st.composite
def pow2_cases(draw, names: tuple[str, ...] | None = None) -> FamilyCase:
    """A family case whose dims are powers of two (the family's own knobs kept)."""
    case = draw(family_cases(names))
    fam = family(case.family)
    knobs = fam.knobs(DecoderSpec.from_dict(case.layout.meta["spec"]))
    kv, group, head_dim = _pow2(draw, 0, 1), _pow2(draw, 0, 1), _pow2(draw, 1, 4)
    knobs.update(n_kv_heads=kv, n_heads=kv * group, hidden=_pow2(draw, 3, 6), intermediate=_pow2(draw, 3, 6))
    for k in ("moe_intermediate", "shared_intermediate"):
        if k in knobs:
            knobs[k] = _pow2(draw, 3, 5)
    if case.family == "stablelm":
        knobs["hidden"] = kv * group * head_dim
    else:
        knobs["head_dim"] = head_dim
    if knobs.get("rotary_dim") is not None:
        r = min(knobs["rotary_dim"], head_dim) // 2 * 2
        knobs["rotary_dim"] = None if r in (0, head_dim) else r
    if case.family == "phi3" and head_dim >= 4:  # full rotary would make it a Llama
        knobs["rotary_dim"] = head_dim // 2
    layout = build(fam.preset(**knobs), name=case.family)
    return FamilyCase(case.family, layout, case.seed, case.seq)


def draw_cases(n: int, seed: int, widths: str, pool: int = 10) -> list[tuple[str, FamilyCase]]:
    """``n`` distinct family cases, ``(width kind, case)``, spread evenly over the families (and width
    kinds).  Each slot samples its cases (seeded) from ``pool`` times as many hypothesis draws: the
    first draws of a run are the minimal ones, which alone would make a poor campaign."""
    kinds = {"any": ["any"], "pow2": ["pow2"], "mixed": ["any", "pow2"]}[widths]
    slots = Counter((FAMILIES[i % len(FAMILIES)], kinds[(i // len(FAMILIES)) % len(kinds)]) for i in range(n))
    out: list[tuple[str, FamilyCase]] = []
    for (name, kind), count in slots.items():
        found: dict[str, FamilyCase] = {}

        @hseed(seed)
        @settings(max_examples=count * pool, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=pow2_cases((name,)) if kind == "pow2" else family_cases((name,)))
        def collect(case):
            found.setdefault(f"{case.layout.hash()}:{case.seed % 1000}", case)

        collect()
        picked = random.Random(f"{seed}:{name}:{kind}").sample(list(found.values()), min(count, len(found)))
        out += [(kind, c) for c in picked]
    return out


def tags(layout) -> list[str]:
    """The layout's features, its transformers family and its non-power-of-two head dims."""
    spec = DecoderSpec.from_dict(layout.meta["spec"])
    extra = [f"family:{family_of(layout)}"]
    extra += [f"dims:{name}-non-pow2" for name, w in (("heads", spec.n_heads), ("head_dim", spec.head_dim))
              if w & (w - 1)]
    return sorted(set(layout.features()) | set(extra))


# ---------------------------------------------------------------------------------------------- run
def run_one(name: str, case: FamilyCase, mode: str) -> dict:
    """One verdict as a record: status, outcome, errors, what the peer changed, time."""
    transform = _registry(name).get(name)
    weight_seed = case.seed % 1000
    subject = case.layout
    if mode == "exact":
        subject = P.ExactFloat64(to_transformers(materialize(case.layout, dtype=torch.float64, seed=weight_seed)))
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # auto-round's progress bars and warnings
        v = verify(transform, subject, dtype=MODES[mode], seed=weight_seed)
    last = transform.fn.last
    vacuous = v.ok and name != "hf-bridge" and last.get("weights_changed") == 0 and last.get("hooks_added") == 0
    return {"status": v.status, "outcome": _OUTCOME[v.status], "rel": v.max_rel_err, "message": v.message,
            "vacuous": vacuous, "weights_changed": last.get("weights_changed"),
            "hooks_added": last.get("hooks_added"), "seconds": round(time.perf_counter() - t0, 3)}


def _error_key(message: str) -> str:
    """A crash message without its location and with numbers blanked: one failure, many widths."""
    return re.sub(r"\d+", "N", re.sub(r" \(at [^)]*\)$", "", message.removeprefix("transform raised ")))


def mark_bridge_floor(records: list[dict], factor: float = 10.0) -> None:
    """A float64 divergence within ``factor`` x the ``hf-bridge`` error on the same case is transformers'
    float32 policy, not the peer: its outcome becomes ``"floor"``."""
    floor = {r["case"]: r["rel"] for r in records if r["peer"] == "hf-bridge" and r["mode"] == "float64"}
    for r in records:
        if (r["mode"] == "float64" and r["peer"] != "hf-bridge" and r["outcome"] == "diverged"
                and r["rel"] is not None and floor.get(r["case"]) and r["rel"] <= factor * floor[r["case"]]):
            r["outcome"] = "floor"


def summarise(records: list[dict], cases: list[dict], peers: list[str], modes: list[str]) -> dict:
    """Counts per mode x peer, per mode x peer x tag; deduplicated crashes; silent breaks."""
    per_peer: dict = {m: {p: Counter() for p in peers} for m in modes}
    per_tag: dict = {m: {p: defaultdict(Counter) for p in peers} for m in modes}
    worst: dict = {m: {p: {"invariant": 0.0, "floor": 0.0, "diverged": 0.0} for p in peers} for m in modes}
    crashes: dict = defaultdict(lambda: {"count": 0, "example": "", "tags": None, "modes": set()})
    breaks: dict = defaultdict(lambda: {"count": 0, "max_rel": 0.0, "tags": None, "example_case": None})
    for r in records:
        m, p, o = r["mode"], r["peer"], r["outcome"]
        per_peer[m][p][o] += 1
        per_peer[m][p]["vacuous"] += r["vacuous"]
        for t in cases[r["case"]]["tags"]:
            per_tag[m][p][t][o] += 1
        if r["rel"] is not None and o in worst[m][p]:
            worst[m][p][o] = max(worst[m][p][o], r["rel"])
        case_tags = set(cases[r["case"]]["tags"])
        if o == "crashed":
            c = crashes[(p, _error_key(r["message"]))]
            c["count"] += 1
            c["example"] = c["example"] or r["message"]
            c["tags"] = case_tags if c["tags"] is None else c["tags"] & case_tags
            c["modes"].add(m)
        elif o == "diverged":
            b = breaks[(m, p)]
            b["count"] += 1
            b["max_rel"] = max(b["max_rel"], r["rel"] or float("inf"))
            b["tags"] = case_tags if b["tags"] is None else b["tags"] & case_tags
            b["example_case"] = b["example_case"] if b["example_case"] is not None else r["case"]
    return {
        "per_peer": {m: {p: dict(c) for p, c in d.items()} for m, d in per_peer.items()},
        "worst_rel": worst,
        "per_tag": {m: {p: {t: dict(c) for t, c in sorted(d.items())} for p, d in dd.items()}
                    for m, dd in per_tag.items()},
        "crashes": [{"peer": p, "error": k, "count": c["count"], "example": c["example"],
                     "modes": sorted(c["modes"]), "common_tags": sorted(c["tags"] or [])}
                    for (p, k), c in sorted(crashes.items(), key=lambda kv: (kv[0][0], -kv[1]["count"]))],
        "silent_breaks": [{"mode": m, "peer": p, "count": b["count"], "max_rel": b["max_rel"],
                           "common_tags": sorted(b["tags"] or []), "example_case": b["example_case"]}
                          for (m, p), b in sorted(breaks.items())],
    }


# ---------------------------------------------------------------------------------------------- report
def _cell(c: dict) -> str:
    return "/".join(str(c.get(o, 0)) for o in OUTCOMES)


def markdown(report: dict) -> str:
    s, peers, modes = report["summary"], report["peers"], report["modes"]
    n = len(report["cases"])
    lines = [f"# peers through the archfuzz oracle ({n} family cases per peer, seed {report['seed']}, "
             f"widths {report['widths']})", "",
             f"auto-round {report['versions']['auto_round']}, compressed-tensors "
             f"{report['versions'].get('compressed_tensors')}, transformers {report['versions']['transformers']}, "
             f"torch {report['versions']['torch']}; {report['seconds']} s in all.", "",
             "Modes: `float64` = float64 GraphModel subject through the transformers bridge (its float32 "
             "policy bounds this at ~1e-7; see `hf-bridge`); `float32` = tolerance 1e-4, what ships; "
             "`exact` = float64 everywhere (ExactFloat64 subject): the peer's own arithmetic.", "",
             "## Outcomes per peer", "",
             "A float64 divergence within 10x the `hf-bridge` error on the same case counts as *floor* "
             "(transformers' precision, not the peer). *Vacuous*: invariant while the peer changed no weight "
             "and added no hook.", "",
             "| peer | mode | invariant (vacuous) | refused | crashed | floor | diverged | inconclusive | "
             "max rel (invariant) | max rel (diverged) | s / case |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in peers:
        for m in modes:
            c, w = s["per_peer"][m][p], s["worst_rel"][m][p]
            secs = report["seconds_per_case"][m][p]
            lines.append(f"| {p} | {m} | {c.get('invariant', 0)} ({c.get('vacuous', 0)}) | {c.get('refused', 0)} | "
                         f"{c.get('crashed', 0)} | {c.get('floor', 0)} | {c.get('diverged', 0)} | "
                         f"{c.get('inconclusive', 0)} | {w['invariant']:.1e} | "
                         f"{w['diverged']:.1e} | {secs:.2f} |")
    for m in [m for m in ("float32", "exact") if m in modes]:
        all_tags = sorted({t for p in peers for t in s["per_tag"][m][p]})
        lines += ["", f"## Per feature, {m} (invariant/refused/crashed/diverged)", "",
                  "| feature | " + " | ".join(peers) + " |", "|---|" + "---:|" * len(peers)]
        for t in all_tags:
            lines.append(f"| {t} | " + " | ".join(_cell(s["per_tag"][m][p].get(t, {})) for p in peers) + " |")
    lines += ["", "## Crashes (deduplicated; numbers blanked)", "", "| peer | count | modes | error | common tags |",
              "|---|---:|---|---|---|"]
    for c in s["crashes"]:
        tags_ = ", ".join(t for t in c["common_tags"] if not t.startswith(("layers:", "embeddings:")))
        lines.append(f"| {c['peer']} | {c['count']} | {', '.join(c['modes'])} | `{c['example'][:160]}` | {tags_} |")
    lines += ["", "## Silent breaks (diverged)", "", "| mode | peer | count | max rel | tags common to all |",
              "|---|---|---:|---:|---|"]
    for b in s["silent_breaks"]:
        tags_ = ", ".join(t for t in b["common_tags"] if not t.startswith(("layers:", "embeddings:")))
        lines.append(f"| {b['mode']} | {b['peer']} | {b['count']} | {b['max_rel']:.2e} | {tags_} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=40, help="family cases per peer")
    ap.add_argument("--seed", type=int, default=20261124)
    ap.add_argument("--peers", default=",".join(P.names()))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--widths", choices=("mixed", "any", "pow2"), default="mixed")
    ap.add_argument("--out", default="runs/peers")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    peers, modes = args.peers.split(","), args.modes.split(",")
    for p in peers:
        _registry(p).peer(p)  # unknown names fail here, listing what exists
    unknown = set(modes) - set(MODES)
    if unknown:
        ap.error(f"unknown mode(s) {sorted(unknown)}; modes: {list(MODES)}")
    torch.set_num_threads(1)  # tiny matmuls

    import auto_round
    import compressed_tensors
    import transformers

    logging.getLogger("autoround").setLevel(logging.ERROR)

    started = time.perf_counter()
    drawn = draw_cases(args.examples, args.seed, args.widths)
    cases = [{"family": c.family, "widths": kind, "seed": c.seed % 1000, "hash": c.layout.hash(),
              "tags": tags(c.layout), "layout": json.loads(c.layout.to_json())} for kind, c in drawn]
    records: list[dict] = []
    spent: dict = {m: Counter() for m in modes}
    with _progress(not args.no_progress, peers, len(drawn) * len(modes)) as bar:
        for p in peers:
            for i, (_, case) in enumerate(drawn):
                for m in modes:
                    r = run_one(p, case, m)
                    spent[m][p] += r["seconds"]
                    records.append({"peer": p, "mode": m, "case": i, **r})
                    bar(p)
    report = {"seed": args.seed, "examples": args.examples, "widths": args.widths, "peers": peers, "modes": modes,
              "versions": {"auto_round": auto_round.__version__,
                           "compressed_tensors": compressed_tensors.__version__, "transformers": transformers.__version__,
                           "torch": torch.__version__},
              "seconds": round(time.perf_counter() - started, 1),
              "seconds_per_case": {m: {p: spent[m][p] / max(len(drawn), 1) for p in peers} for m in modes},
              "cases": cases, "records": records}
    mark_bridge_floor(records)
    report["summary"] = summarise(records, cases, peers, modes)
    md = markdown(report)
    write_report(args.out, "peers", report, md)
    print(md)
    return report


class _progress:
    """A rich progress bar per peer (silent when disabled); calling it advances that peer's bar."""

    def __init__(self, enabled: bool, peers: list[str], total: int):
        self.enabled, self.peers, self.total = enabled, peers, total

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            self.bar = Progress(TextColumn("{task.description:<26}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn())
            self.bar.__enter__()
            self.tasks = {p: self.bar.add_task(p, total=self.total) for p in self.peers}
        return self

    def __call__(self, peer: str) -> None:
        if self.enabled:
            self.bar.advance(self.tasks[peer])

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)


if __name__ == "__main__":
    main()
