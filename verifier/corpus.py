"""The regression corpus: every layout that ever broke a transform, as data, replayed forever.

An entry is a folder ``<corpus>/<signature>/`` holding

* ``layout.json``  the canonical (reduced) layout,
* ``meta.json``    transform (name, options, registry), stage, symptom, first divergent node, message,
                   tolerance, seed, dtype, versions of torch / transformers / auto-round / openvino /
                   hypothesis, ``status`` (``open`` | ``fixed`` | ``expected-refusal``), ``kind``
                   (``finding`` or ``mutant``: a known-buggy transform the oracle must keep catching),
                   first seen, replay history,
* ``repro.py``     a self-contained script that rebuilds the model from ``layout.json`` and asserts.

Entries are deduplicated by a signature (transform, stage, symptom, first divergent node's op kind,
minimal feature set), never by log text.  An entry folder is written complete in a temporary folder
and renamed into place, so concurrent writers (pytest-xdist workers sharing one corpus) never leave a
half-written entry, and the second writer of the same signature simply finds it there.

Replay re-runs an entry against the installed versions.  An ``open`` finding that no longer fails
becomes ``fixed`` (with the versions that fixed it) and stays as a regression example; a ``fixed``
entry that fails again is a regression; a mutant the oracle no longer catches is a regression of the
oracle itself.  Nothing is ever deleted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from fuzz.errors import BadInput
from fuzz.layout import Layout, atomic_write_text
from fuzz.materialize import materialize

from .oracle import Verdict, verify
from .registry import resolve
from .tolerance import default_tolerance

STATUSES = ("open", "fixed", "expected-refusal")
FAILING = ("diverged", "error", "non-finite")
DEFAULT_ROOT = Path(__file__).resolve().parents[1] / "corpus"


def versions() -> dict[str, str | None]:
    out = {}
    for package in ("torch", "transformers", "auto-round", "openvino", "hypothesis", "archfuzz"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def signature(transform: dict, stage: str, symptom: str, first_divergent_op: str | None,
              features: list[str]) -> str:
    """16 hex digits naming a distinct failure (never the log text)."""
    key = {"transform": transform["name"], "registry": transform.get("registry"),
           "options": {k: v for k, v in sorted(transform.get("options", {}).items()) if k != "seed"},
           "stage": stage, "symptom": symptom, "first_divergent_op": first_divergent_op,
           "features": sorted(features)}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


REPRO = '''"""Self-contained repro of corpus entry {sig}: {summary}"""
import json
from pathlib import Path

import torch

from fuzz import Layout
from verifier import verify
from verifier.registry import resolve

here = Path(__file__).resolve().parent
meta = json.loads((here / "meta.json").read_text())
layout = Layout.load(here / "layout.json")
transform = resolve(meta["transform"]["registry_name"], **meta["transform"]["options"])
verdict = verify(transform, layout, dtype=getattr(torch, meta["dtype"]), seed=meta["seed"])
print(verdict)
assert verdict.ok or verdict.refused, verdict.message
'''


@dataclass
class Entry:
    path: Path
    meta: dict
    layout: Layout

    @property
    def name(self) -> str:
        return self.path.name


def _transform_record(transform) -> dict:
    spec = transform.spec()
    prefix = {"verifier.reference": "reference", "verifier.mutants": "mutants",
              "quant.transforms": "quant", "quant.peers": "peers"}.get(spec["registry"], spec["registry"])
    options = {k: v for k, v in spec["options"].items() if isinstance(v, (int, float, str, bool, type(None)))}
    return {**spec, "options": options, "registry_name": f"{prefix}:{spec['name']}"}


def record_failure(verdict: Verdict, layout: Layout, transform, *, root: str | Path = DEFAULT_ROOT,
                   stage: str = "verify", kind: str = "finding", status: str = "open",
                   note: str = "") -> tuple[Path, bool]:
    """Write the entry for a failure (or an expected refusal); returns ``(path, created)``.

    ``created`` is False when an entry with the same signature already exists (deduplicated).
    """
    if status not in STATUSES:
        raise BadInput(f"corpus status must be one of {STATUSES}, got {status!r}")
    t = _transform_record(transform)
    fd = verdict.first_divergent or {}
    sig = signature(t, stage, verdict.status, fd.get("op"), layout.features())
    root = Path(root)
    if (root / sig).exists():
        return root / sig, False
    meta = {
        "signature": sig, "transform": t, "stage": stage, "symptom": verdict.status, "kind": kind,
        "status": status, "first_divergent": verdict.first_divergent, "message": verdict.message,
        "max_rel_err": verdict.max_rel_err, "tolerance": verdict.tolerance, "seed": verdict.seed,
        "dtype": verdict.dtype, "layout_hash": layout.hash(), "features": layout.features(),
        "versions": versions(), "first_seen": dt.date.today().isoformat(), "note": note, "replays": [],
    }
    summary = f"{t['name']} {stage}/{verdict.status}" + (f" at {fd.get('op')}" if fd else "")
    return _write_entry(root, sig, meta, layout, REPRO.format(sig=sig, summary=summary))


def _write_entry(root: Path, sig: str, meta: dict, layout: Layout, repro: str) -> tuple[Path, bool]:
    """Write ``root/sig`` complete in a temporary folder, then rename it into place (first writer wins)."""
    final = root / sig
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{sig}.", dir=root))
    try:
        atomic_write_text(tmp / "layout.json", layout.to_json())
        atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=1, sort_keys=True, default=str))
        atomic_write_text(tmp / "repro.py", repro)
        try:
            os.rename(tmp, final)  # atomic; fails if another writer got there first
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            return final, False
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, True


# ------------------------------------------------------------------ exporter findings (OpenVINO parity)
PARITY_STAGES = ("export", "compile", "execute")
PARITY_SUBJECT = {"name": "openvino-cpu-f32", "registry": "parity", "registry_name": "parity:openvino-cpu-f32",
                  "options": {}}

PARITY_REPRO = '''"""Self-contained repro of corpus entry {sig}: OpenVINO {stage}/{symptom} (CPU f32 vs PyTorch)"""
import json
from pathlib import Path

from fuzz import Layout
from verifier.corpus import parity_subject

here = Path(__file__).resolve().parent
meta = json.loads((here / "meta.json").read_text())
model, ids = parity_subject(Layout.load(here / "layout.json"), meta)

if __name__ == "__main__":
    from quant.parity import compare
    report = compare(model, ids, devices=["CPU"], hints=["f32"])
    print(json.dumps({{"export": report["export"], "rows": report["rows"]}}, indent=1, default=str))
    assert report["ok"], "OpenVINO CPU f32 does not match PyTorch"
'''


def parity_subject(layout: Layout, meta: dict):
    """``(float32 model, ids)`` of a parity entry: weights from ``meta['seed']``, ids from ``meta['ids']``."""
    model = materialize(layout, dtype=torch.float32, seed=meta["seed"])
    ids_meta = meta["ids"]
    ids = torch.randint(0, layout.params(layout.source)["vocab"], tuple(ids_meta["shape"]),
                        generator=torch.Generator().manual_seed(ids_meta["seed"]))
    return model, ids


def parity_failure(report: dict) -> tuple[str, str, str | None, str, float | None] | None:
    """``(stage, symptom, step, message, rel_err)`` of the first failing step of a CPU f32 parity report,
    or None when it passed."""
    ex = report["export"]
    if ex["symptom"] != "ok":
        return ex["stage"], ex["symptom"], ex.get("step"), ex["message"], None
    for row in report["rows"]:
        if row["symptom"] != "ok":
            return row["stage"], row["symptom"], row.get("step"), row["message"], row.get("rel_err")
    return None


def record_parity_failure(report: dict, layout: Layout, *, seed: int, ids_seed: int, ids_shape: list[int],
                          root: str | Path = DEFAULT_ROOT, note: str = "") -> tuple[Path, bool]:
    """Write the entry for an exporter finding (stage ``export`` / ``compile`` / ``execute``)."""
    failure = parity_failure(report)
    if failure is None:
        raise BadInput("the parity report passed: nothing to record")
    stage, symptom, step, message, rel = failure
    sig = signature(PARITY_SUBJECT, stage, symptom, step, layout.features())
    meta = {"signature": sig, "transform": PARITY_SUBJECT, "stage": stage, "symptom": symptom, "kind": "finding",
            "status": "open", "first_divergent": {"op": step} if step else None, "message": message,
            "max_rel_err": rel, "tolerance": report["gate"]["rel_err"], "seed": seed, "dtype": "float32",
            "ids": {"seed": ids_seed, "shape": list(ids_shape)}, "layout_hash": layout.hash(),
            "features": layout.features(), "versions": versions(), "first_seen": dt.date.today().isoformat(),
            "note": note, "replays": []}
    return _write_entry(Path(root), sig, meta, layout, PARITY_REPRO.format(sig=sig, stage=stage, symptom=symptom))


def _replay_parity(entry: "Entry") -> tuple[bool, str, float | None]:
    """Re-run a parity entry: ``(failing, status, rel_err)``."""
    from quant.parity import compare
    model, ids = parity_subject(entry.layout, entry.meta)
    failure = parity_failure(compare(model, ids, devices=["CPU"], hints=["f32"]))
    if failure is None:
        return False, "ok", None
    stage, symptom, _, message, rel = failure
    return True, f"{stage}/{symptom}: {message[:200]}", rel


def load_entries(root: str | Path = DEFAULT_ROOT) -> tuple[list[Entry], list[tuple[Path, str]]]:
    """Every entry, plus ``(path, reason)`` for each folder that is not a valid entry (never fatal)."""
    entries, bad = [], []
    root = Path(root)
    if not root.exists():
        return entries, bad
    for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        try:
            entries.append(load_entry(path))
        except BadInput as exc:
            bad.append((path, str(exc)))
    return entries, bad


def load_entry(path: Path) -> Entry:
    try:
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        raise BadInput(f"{path}: missing meta.json") from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}/meta.json: invalid JSON ({exc})") from None
    for key in ("transform", "status", "seed", "dtype", "symptom", "kind"):
        if key not in meta:
            raise BadInput(f"{path}/meta.json: missing {key!r}")
    if meta["status"] not in STATUSES:
        raise BadInput(f"{path}/meta.json: status {meta['status']!r} is not one of {STATUSES}")
    if meta["dtype"] not in ("float64", "float32"):
        raise BadInput(f"{path}/meta.json: dtype {meta['dtype']!r}")
    try:
        layout = Layout.load(path / "layout.json")
    except BadInput as exc:
        raise BadInput(f"{path}: {exc}") from None
    return Entry(path, meta, layout)


@dataclass
class Replay:
    entry: str
    outcome: str  # still-failing | fixed-now | ok | regression | lost-teeth | still-refusing
    verdict: str
    regression: bool


def replay(entry: Entry, *, update: bool = True) -> Replay:
    """Re-run one entry; ``update`` writes the outcome (and a ``fixed`` transition) into its meta."""
    meta = entry.meta
    if meta.get("stage") in PARITY_STAGES:
        failing, status, rel = _replay_parity(entry)
        refused = False
    else:
        t = meta["transform"]
        transform = resolve(t.get("registry_name", t["name"]), **t.get("options", {}))
        verdict = verify(transform, entry.layout, dtype=getattr(torch, meta["dtype"]), seed=meta["seed"],
                         tolerance=default_tolerance(getattr(torch, meta["dtype"])))
        failing, status, rel, refused = verdict.status in FAILING, verdict.status, verdict.max_rel_err, verdict.refused
    if meta["kind"] == "mutant":
        outcome, regression = ("still-failing", False) if failing else ("lost-teeth", True)
    elif meta["status"] == "open":
        outcome, regression = ("still-failing", False) if failing else ("fixed-now", False)
    elif meta["status"] == "fixed":
        outcome, regression = ("regression", True) if failing else ("ok", False)
    else:  # expected-refusal: refusing is right; silently breaking is a regression
        outcome = "still-refusing" if refused else ("regression" if failing else "ok")
        regression = failing
    if update:
        meta = dict(meta)
        meta["replays"] = meta.get("replays", [])[-9:] + [{
            "date": dt.date.today().isoformat(), "outcome": outcome, "status": status,
            "max_rel_err": rel, "versions": versions()}]
        if outcome == "fixed-now":
            meta["status"] = "fixed"
            meta["fixed_in"] = versions()
        atomic_write_text(entry.path / "meta.json", json.dumps(meta, indent=1, sort_keys=True, default=str))
        entry.meta = meta
    return Replay(entry.name, outcome, status if meta.get("stage") in PARITY_STAGES else str(verdict), regression)
