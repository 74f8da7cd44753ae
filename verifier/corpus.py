"""The regression corpus: every layout that ever broke a transform, as data, replayed forever.

An entry is a folder ``<corpus>/<signature>/`` holding

* ``layout.json``  the canonical (reduced) layout,
* ``meta.json``    transform (name, options, registry), stage, symptom, first divergent node, message,
                   tolerance, seed, dtype, versions of torch / transformers / auto-round / compressed-tensors /
                   openvino / hypothesis, ``status`` (``open`` | ``fixed`` | ``expected-refusal``), ``kind``
                   (``finding`` or ``mutant``: a known-buggy transform the oracle must keep catching),
                   first seen, replay history,
* ``repro.py``     a self-contained script that rebuilds the model from ``layout.json`` and asserts.

Entries are deduplicated by a signature (transform, stage, symptom, first divergent node's op kind,
minimal feature set), never by log text.  An entry folder is written complete in a temporary folder
and renamed into place, so concurrent writers (pytest-xdist workers sharing one corpus) never leave a
half-written entry, and the second writer of the same signature simply finds it there.

Replay re-runs an entry against the installed versions.  An ``open`` finding that no longer fails
becomes ``fixed`` (with the versions that fixed it) and stays as a regression example; a ``fixed``
entry that fails again is a regression; a mutant counts as caught only when it ran and the oracle saw
the function break (``CAUGHT``): a mutant that raised, timed out, refused or passed is a regression of
the oracle's teeth.  A replay that proves nothing (``inconclusive``, ``degenerate``) is a regression
too, and so is an entry that cannot be replayed at all.  Nothing is ever deleted.

Loading never stops at a bad folder: a corrupt, partial or foreign entry (meta.json checked against
``META_SCHEMA``), a stray file at the root or an empty folder is returned as ``(path, reason)``.  Temp
leftovers of interrupted writes (``.<sig>.*`` folders, ``.<file>.*.tmp`` files) are not entries:
:func:`find_leftovers` reports them with their age and :func:`clean_leftovers` removes them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from fuzz.errors import BadInput
from fuzz.layout import Layout, atomic_write_text
from fuzz.materialize import materialize

from . import registry
from .oracle import Verdict, verify
from .outcomes import CAUGHT, FAILING, NOT_RUN, PARITY_STAGES, Stage, Status  # noqa: F401  (NOT_RUN, CAUGHT: API)
from .registry import available, resolve
from .tolerance import DTYPES, default_tolerance

#: An entry's own status (not a verdict's): a finding still open, fixed since, or a refusal that must stay.
ENTRY_STATUSES = ("open", "fixed", "expected-refusal")
KINDS = ("finding", "mutant")
ENTRY_FILES = ("layout.json", "meta.json", "repro.py")
#: Names at the corpus root that belong to the replay harness, not to the data.
HARNESS = ("conftest.py", "test_replay.py", "__pycache__")
DEFAULT_ROOT = Path(__file__).resolve().parents[1] / "corpus"


def versions() -> dict[str, str | None]:
    out = {}
    for package in ("torch", "transformers", "auto-round", "compressed-tensors", "openvino", "hypothesis", "archfuzz"):
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
    prefix = registry.prefix_of(spec["registry"]) or spec["registry"]
    options = {k: v for k, v in spec["options"].items() if isinstance(v, (int, float, str, bool, type(None)))}
    return {**spec, "options": options, "registry_name": f"{prefix}:{spec['name']}"}


def record_failure(verdict: Verdict, layout: Layout, transform, *, root: str | Path = DEFAULT_ROOT,
                   stage: str = Stage.VERIFY, kind: str = "finding", status: str = "open",
                   note: str = "") -> tuple[Path, bool]:
    """Write the entry for a failure (or an expected refusal); returns ``(path, created)``.

    ``created`` is False when an entry with the same signature already exists (deduplicated).
    """
    if status not in ENTRY_STATUSES:
        raise BadInput(f"corpus status must be one of {ENTRY_STATUSES}, got {status!r}")
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


def _temp_dir(root: Path, sig: str) -> Path:
    """A fresh ``root/.<sig>.<random>`` folder, made like any mkdir (0o777 less the umask)."""
    while True:
        tmp = root / f".{sig}.{os.urandom(4).hex()}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def _write_entry(root: Path, sig: str, meta: dict, layout: Layout, repro: str) -> tuple[Path, bool]:
    """Write ``root/sig`` complete in a temporary folder, then rename it into place (first writer wins)."""
    final = root / sig
    root.mkdir(parents=True, exist_ok=True)
    tmp = _temp_dir(root, sig)
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


# ------------------------------------------------------------------ exporter findings (device parity)
#: The subject of an exporter finding: the model exported and run by OpenVINO CPU f32, against PyTorch.
PARITY_SUBJECT = {"name": "openvino-cpu-f32", "registry": "parity", "registry_name": "parity:openvino-cpu-f32",
                  "options": {}}


@dataclass(frozen=True)
class Replayer:
    """How the entries of a non-transform registry (``parity``) are compared again: ``compare(model, ids,
    devices=[...], hints=[...])`` returns a parity report; ``repro`` is the template of their ``repro.py``
    (fields ``sig``, ``stage``, ``symptom``)."""

    compare: Callable[..., dict]
    repro: str


_REPLAYERS: dict[str, Replayer] = {}


def register_replayer(registry_name: str, compare: Callable[..., dict], *, repro: str) -> None:
    """Let the owner of the ``registry_name`` entries (``parity``: the device-parity module, loaded with the
    registries, :func:`verifier.registry.load_plugins`) compare them again and write their repro script."""
    _REPLAYERS[registry_name] = Replayer(compare, repro)


def _replayer(registry_name: str) -> Replayer:
    registry.load_plugins()
    if registry_name not in _REPLAYERS:
        failed = "; ".join(f"{k}: {v}" for k, v in registry.unavailable().items())
        raise BadInput(f"no replayer for {registry_name!r} entries: the module that registers it "
                       f"(register_replayer, through the {registry.ENTRY_POINTS!r} entry points) did not load"
                       + (f" ({failed})" if failed else ""))
    return _REPLAYERS[registry_name]


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
    repro = _replayer(PARITY_SUBJECT["registry"]).repro
    return _write_entry(Path(root), sig, meta, layout, repro.format(sig=sig, stage=stage, symptom=symptom))


def _replay_parity(entry: "Entry") -> tuple[bool, str, float | None]:
    """Re-run a parity entry: ``(failing, status, rel_err)``."""
    compare = _replayer(entry.meta["transform"].get("registry", PARITY_SUBJECT["registry"])).compare
    model, ids = parity_subject(entry.layout, entry.meta)
    failure = parity_failure(compare(model, ids, devices=["CPU"], hints=["f32"]))
    if failure is None:
        return False, "ok", None
    stage, symptom, _, message, rel = failure
    return True, f"{stage}/{symptom}: {message[:200]}", rel


# ------------------------------------------------------------------ loading: schema, corrupt entries
_NONE = type(None)


@dataclass(frozen=True)
class Key:
    """One key of ``meta.json``: the JSON types it may hold, whether it must be there, allowed values."""

    types: tuple
    required: bool = False
    allowed: tuple | None = None

    def describe(self) -> str:
        if self.allowed:
            return "one of " + ", ".join(repr(a) for a in self.allowed)
        names = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
                 bool: "true/false", _NONE: "null"}
        return " or ".join(dict.fromkeys(names[t] for t in self.types))


#: The schema of ``meta.json`` (unknown keys are kept and ignored).
META_SCHEMA = {
    "signature": Key((str,), True), "transform": Key((dict,), True), "stage": Key((str,), True),
    "symptom": Key((str,), True), "kind": Key((str,), True, KINDS), "status": Key((str,), True, ENTRY_STATUSES),
    "seed": Key((int,), True), "dtype": Key((str,), True, DTYPES),
    "first_divergent": Key((dict, _NONE)), "message": Key((str, _NONE)), "max_rel_err": Key((int, float, _NONE)),
    "tolerance": Key((dict, int, float, _NONE)), "layout_hash": Key((str,)), "features": Key((list,)),
    "versions": Key((dict,)), "first_seen": Key((str,)), "note": Key((str,)), "replays": Key((list,)),
    "fixed_in": Key((dict,)), "ids": Key((dict,)),
}
#: The schema of ``meta.json``'s ``transform`` object.
TRANSFORM_SCHEMA = {"name": Key((str,), True), "registry_name": Key((str,)), "registry": Key((str,)),
                    "options": Key((dict,))}


def _is(value, types: tuple) -> bool:
    """``isinstance`` for JSON values: true/false is not an integer or a number here."""
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def _check_keys(obj: dict, schema: dict[str, Key], where: str) -> None:
    for key, spec in schema.items():
        if key not in obj:
            if spec.required:
                raise BadInput(f"{where}missing {key!r} (must be {spec.describe()})")
            continue
        value = obj[key]
        if not _is(value, spec.types) or (spec.allowed and value not in spec.allowed):
            raise BadInput(f"{where}key {key!r} must be {spec.describe()}, got {json.dumps(value)[:80]}")


def check_meta(meta, known: dict[str, list[str]] | None = None) -> None:
    """Raise ``BadInput`` naming the key when ``meta`` (parsed meta.json) does not fit ``META_SCHEMA``.

    ``known`` (registry -> names, as :func:`verifier.registry.available` gives) also checks that the
    transform exists.
    """
    if not isinstance(meta, dict):
        raise BadInput(f"must hold a JSON object, got {type(meta).__name__ if meta is not None else 'null'}")
    _check_keys(meta, META_SCHEMA, "")
    t = meta["transform"]
    _check_keys(t, TRANSFORM_SCHEMA, "transform: ")
    for k, v in t.get("options", {}).items():
        if not _is(v, (int, float, str, bool, _NONE)):
            raise BadInput(f"transform: option {k!r} must be a number, string, true/false or null, "
                           f"got {json.dumps(v)[:80]}")
    if not all(isinstance(f, str) for f in meta.get("features", [])):
        raise BadInput("key 'features' must be a list of strings")
    if not all(isinstance(r, dict) for r in meta.get("replays", [])):
        raise BadInput("key 'replays' must be a list of objects")
    if meta["stage"] in PARITY_STAGES:
        ids = meta.get("ids")
        if not isinstance(ids, dict) or not _is(ids.get("seed"), (int,)) or not isinstance(ids.get("shape"), list) \
                or len(ids["shape"]) != 2 or not all(_is(n, (int,)) and n > 0 for n in ids["shape"]):
            raise BadInput(f"key 'ids' (stage {meta['stage']!r}) must be an object with an integer 'seed' and "
                           f"'shape' [batch, tokens] of positive integers, got {json.dumps(ids)[:80]}")
    elif known is not None:
        name = t.get("registry_name", t["name"])
        prefix, _, bare = name.rpartition(":")
        if prefix and prefix not in known:
            failed = "".join(f"; {ep}: {why}" for ep, why in registry.unavailable().items())
            raise BadInput(f"transform {name!r}: unknown registry {prefix!r} (registries: {', '.join(known)}"
                           f"{failed})")
        if not any(bare in names for reg, names in known.items() if not prefix or reg == prefix):
            listing = "; ".join(f"{reg}: {', '.join(n)}" for reg, n in known.items())
            raise BadInput(f"unknown transform {name!r} (known: {listing})")


def _read_json(path: Path):
    """``(text, value)`` of a JSON file; ``BadInput`` with the reason (unreadable, not UTF-8, not JSON)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"not UTF-8 text (byte {exc.start})") from None
    try:
        return text, json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"invalid JSON ({exc})") from None


def load_entries(root: str | Path = DEFAULT_ROOT) -> tuple[list[Entry], list[tuple[Path, str]]]:
    """Every entry, plus ``(path, reason)`` for each name at the root that is not a valid entry (never
    fatal): a corrupt or partial entry, a stray file, an empty folder.  Harness files and temp leftovers
    (:func:`find_leftovers`) are neither."""
    entries, bad = [], []
    root = Path(root)
    if not root.is_dir():
        return entries, bad
    known = available()
    for path in sorted(root.iterdir()):
        if path.name in HARNESS or _leftover_kind(path, at_root=True):
            continue
        try:
            entries.append(load_entry(path, known))
        except BadInput as exc:
            bad.append((path, str(exc)))
        except Exception as exc:  # a bug in loading must not hide the other entries
            bad.append((path, f"{path}: cannot load ({type(exc).__name__}: {exc})"))
    return entries, bad


def load_entry(path: Path, known: dict[str, list[str]] | None = None) -> Entry:
    """The entry in folder ``path``; ``BadInput`` naming the path and the reason otherwise."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        kind = "a symbolic link" if path.is_symlink() else "a file"
        raise BadInput(f"{path}: not an entry: {kind} at the corpus root (entries are folders holding "
                       f"{', '.join(ENTRY_FILES)})")
    names = {p.name for p in path.iterdir() if not _leftover_kind(p, at_root=False)}
    if not names:
        raise BadInput(f"{path}: empty folder, not an entry (entries hold {', '.join(ENTRY_FILES)})")
    foreign = sorted(names - set(ENTRY_FILES))
    if foreign:
        raise BadInput(f"{path}: foreign file(s) in the entry: {', '.join(foreign)} (an entry holds only "
                       f"{', '.join(ENTRY_FILES)}; nothing in it is ever run)")
    missing = [name for name in ENTRY_FILES if name not in names]
    if missing:
        raise BadInput(f"{path}: partial entry: missing {', '.join(missing)}")
    try:
        _, meta = _read_json(path / "meta.json")
        check_meta(meta, known)
    except BadInput as exc:
        raise BadInput(f"{path}/meta.json: {exc}") from None
    if meta["signature"] != path.name:
        raise BadInput(f"{path}/meta.json: key 'signature' is {meta['signature']!r} but the folder is "
                       f"{path.name!r} (a copied or renamed entry)")
    try:
        text, _ = _read_json(path / "layout.json")
        layout = Layout.from_json(text)
    except BadInput as exc:
        raise BadInput(f"{path}/layout.json: {exc}") from None
    except Exception as exc:  # a malformed graph the loader did not anticipate
        raise BadInput(f"{path}/layout.json: not a valid layout ({type(exc).__name__}: {exc})") from None
    return Entry(path, meta, layout)


# ------------------------------------------------------------------ temp leftovers of interrupted writes
# exactly the names our writers give (8 random characters), so that nothing else is ever taken for one:
# _temp_dir's .<sig>.<8 hex> (tempfile.mkdtemp's .<sig>.<8 of [a-z0-9_]> before), atomic_write_text's
# .<name>.<8 hex>.tmp (tempfile.mkstemp's .<file>.<8 of [a-z0-9_]> before)
_ENTRY_TEMP = re.compile(r"^\.[0-9a-f]{16}\.[a-z0-9_]{8}$")
_FILE_TEMP = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$|^\.(?:layout\.json|meta\.json|repro\.py)\.[a-z0-9_]{8}$")


@dataclass
class Leftover:
    path: Path
    what: str  # "entry temp folder" | "temp file"
    age_s: float


def _leftover_kind(path: Path, *, at_root: bool) -> str | None:
    if path.is_symlink():
        return None
    if at_root and path.is_dir() and _ENTRY_TEMP.match(path.name):
        return "entry temp folder"
    if path.is_file() and _FILE_TEMP.match(path.name):
        return "temp file"
    return None


def find_leftovers(root: str | Path = DEFAULT_ROOT) -> list[Leftover]:
    """Temp folders and files that interrupted writes left at the root or inside entries, with their age."""
    root, out, now = Path(root), [], time.time()
    if not root.is_dir():
        return out
    for path in sorted(root.iterdir()):
        kind = _leftover_kind(path, at_root=True)
        if kind:
            out.append(Leftover(path, kind, now - path.lstat().st_mtime))
        elif path.is_dir() and not path.is_symlink() and path.name not in HARNESS:
            out += [Leftover(p, kind, now - p.lstat().st_mtime) for p in sorted(path.iterdir())
                    if (kind := _leftover_kind(p, at_root=False))]
    return out


def clean_leftovers(root: str | Path = DEFAULT_ROOT, older_than: float = 3600.0) -> list[Leftover]:
    """Remove the temp leftovers older than ``older_than`` seconds (never an entry); returns what went."""
    removed = []
    for left in find_leftovers(root):
        if left.age_s < older_than:
            continue
        try:
            if left.what == "entry temp folder":
                shutil.rmtree(left.path)
            else:
                left.path.unlink()
        except FileNotFoundError:  # renamed into place or removed by someone else meanwhile
            continue
        removed.append(left)
    return removed


@dataclass
class Replay:
    entry: str
    # still-failing | fixed-now | ok | still-refusing | regression | lost-teeth | unproven | unreplayable
    outcome: str
    verdict: str
    regression: bool
    reason: str = ""


def _run(entry: Entry) -> tuple[str, float | None, str]:
    """Re-run an entry: ``(status, max_rel_err, verdict text)``; a parity entry's status is ``ok`` or
    ``failing``."""
    meta = entry.meta
    if meta["stage"] in PARITY_STAGES:
        failing, text, rel = _replay_parity(entry)
        return ("failing" if failing else "ok"), rel, text
    t = meta["transform"]
    transform = resolve(t.get("registry_name", t["name"]), **t.get("options", {}))
    dtype = getattr(torch, meta["dtype"])
    verdict = verify(transform, entry.layout, dtype=dtype, seed=meta["seed"], tolerance=default_tolerance(dtype))
    return verdict.status, verdict.max_rel_err, str(verdict)


def _judge(meta: dict, status: str) -> tuple[str, bool, str]:
    """``(outcome, regression, reason)`` of a replayed status for an entry of this kind and status."""
    passed, refused = status in (Status.INVARIANT, "ok"), status == Status.REFUSED
    failing = status in FAILING or status == "failing"
    if meta["kind"] == "mutant":
        if status in CAUGHT:
            return "still-failing", False, ""
        why = {Status.ERROR: "the mutant raised: it never ran, so it tested nothing",
               Status.TIMEOUT: "the mutant ran out of time: it never finished, so it tested nothing",
               Status.REFUSED: "the mutant refused the layout: it never ran, so it tested nothing"}
        return "lost-teeth", True, why.get(status, f"the oracle no longer catches the mutant ({status})")
    if not (passed or refused or failing):
        return "unproven", True, f"the replay proved nothing ({status}): the entry no longer tests anything"
    if meta["status"] == "expected-refusal":  # refusing is right; silently breaking is a regression
        if refused:
            return "still-refusing", False, ""
        return ("regression", True, "the transform now breaks where it used to refuse") if failing else ("ok", False, "")
    if meta["status"] == "open":
        return ("still-failing", False, "") if failing else ("fixed-now", False, "")
    return ("regression", True, "a fixed finding fails again") if failing else ("ok", False, "")


def replay(entry: Entry, *, update: bool = True) -> Replay:
    """Re-run one entry; ``update`` writes the outcome (and a ``fixed`` transition) into its meta.

    Never raises for the entry's sake: an entry that cannot be re-run is outcome ``unreplayable``."""
    meta = entry.meta
    try:
        status, rel, text = _run(entry)
    except Exception as exc:
        if meta["kind"] == "mutant":
            return Replay(entry.name, "lost-teeth", f"{type(exc).__name__}: {exc}", True,
                          "the mutant could not be built or run: it never ran, so it tested nothing")
        return Replay(entry.name, "unreplayable", f"{type(exc).__name__}: {exc}", True,
                      "the entry could not be re-run")
    outcome, regression, reason = _judge(meta, status)
    if update:
        meta = dict(meta)
        meta["replays"] = meta.get("replays", [])[-9:] + [{
            "date": dt.date.today().isoformat(), "outcome": outcome,
            "status": text if meta["stage"] in PARITY_STAGES else status,
            "max_rel_err": rel, "versions": versions()}]
        if outcome == "fixed-now":
            meta["status"] = "fixed"
            meta["fixed_in"] = versions()
        atomic_write_text(entry.path / "meta.json", json.dumps(meta, indent=1, sort_keys=True, default=str))
        entry.meta = meta
    return Replay(entry.name, outcome, text, regression, reason)
