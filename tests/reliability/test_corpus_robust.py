"""Issue 12, items 4 and 5: a robust corpus and honest teeth.

Every corpus here is a ``tmp_path`` copy of real entries from ``corpus/``, one of them damaged.  Each case
is checked in both channels: ``archfuzz replay`` (in process) and ``pytest corpus/`` (one subprocess run
over a corpus holding every damaged case at once, with the harness files copied from ``corpus/``).
"""

import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from archfuzz.cli import main
from verifier.corpus import load_entries, replay

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "corpus"
HEALTHY = "0a9e45af891c5ab7"  # mutants:gproj_omission on a 1-layer layout: replays in ~0.02 s
MUTANT_DONOR = "17a1596768b1207b"  # mutants:pair_reflection
MARKER = "ENTRY_CODE_RAN"


def _meta(path: Path, edit) -> None:
    meta = json.loads((path / "meta.json").read_text())
    edit(meta)
    (path / "meta.json").write_text(json.dumps(meta))


def _bytes(name: str, data: bytes):
    return lambda p: (p / name).write_bytes(data)


def _evil(p: Path) -> None:
    """Code that must never run: it would leave a marker next to the corpus and abort the session."""
    code = (f"from pathlib import Path\nPath(__file__).resolve().parents[2].joinpath({MARKER!r}).write_text('x')\n"
            "raise SystemExit('code inside a corpus entry was executed')\n")
    (p / "conftest.py").write_text(code)
    (p / "test_evil.py").write_text(code + "def test_evil():\n    pass\n")


# case -> (donor entry, damage(entry path), what the reason must say); donor None: a new name at the root
CASES = {
    "meta-null": ("0a2a7f04a04d4001", _bytes("meta.json", b"null"), "must hold a JSON object, got null"),
    "meta-number": ("44a7aa9c8349b0e0", _bytes("meta.json", b"5"), "must hold a JSON object, got int"),
    "meta-list": ("44ca167822845a0d", _bytes("meta.json", b"[]"), "must hold a JSON object, got list"),
    "meta-not-utf8": ("4dcd3409dd834d95", _bytes("meta.json", b'{"kind": "\xff\xfe"}'), "not UTF-8"),
    "meta-not-json": ("5249229f2fe8b074", _bytes("meta.json", b'{"kind": "mutant", '), "invalid JSON"),
    "transform-a-string": ("56f97f92902647c8", lambda p: _meta(p, lambda m: m.update(transform="mutants:gproj_omission")),
                           "key 'transform' must be an object"),
    "transform-missing-name": ("57d9a1d7d5534211", lambda p: _meta(p, lambda m: m["transform"].clear()),
                               "transform: missing 'name'"),
    "missing-key": ("58961f9e360983d0", lambda p: _meta(p, lambda m: m.pop("dtype")), "missing 'dtype'"),
    "seed-a-string": ("6f81e806d8dcbc4f", lambda p: _meta(p, lambda m: m.update(seed="0")),
                      "key 'seed' must be an integer"),
    "options-a-list": ("8c8241e0d5c2345c", lambda p: _meta(p, lambda m: m["transform"].update(options=[1])),
                       "key 'options' must be an object"),
    "unknown-transform": ("9ac57b0d41550241", lambda p: _meta(p, lambda m: m["transform"].update(
        name="no_such_mutant", registry_name="mutants:no_such_mutant")), "unknown transform 'mutants:no_such_mutant'"),
    "layout-missing": ("9fdf45e9b5bb9179", lambda p: (p / "layout.json").unlink(), "missing layout.json"),
    "layout-not-utf8": ("a058ec4971befb67", _bytes("layout.json", b"\xff\xfe{}"), "layout.json: not UTF-8"),
    "layout-meta-a-number": ("a39af19da9a362dd", lambda p: (p / "layout.json").write_text(
        json.dumps({**json.loads((p / "layout.json").read_text()), "meta": 5})), "layout.json: layout JSON 'meta'"),
    "stray-file": (None, lambda p: p.write_text("notes\n"), "not an entry: a file"),
    "empty-folder": (None, lambda p: p.mkdir(), "empty folder"),
    "code-in-entry": ("a534e5cbaa1678d3", _evil, "foreign file(s) in the entry: conftest.py, test_evil.py"),
}
STRAY_NAMES = {"stray-file": "notes.txt", "empty-folder": "0123456789abcdef"}


def _copy(root: Path, name: str) -> Path:
    return Path(shutil.copytree(SOURCE / name, root / name))


def _damage(root: Path, case: str) -> Path:
    donor, damage, _ = CASES[case]
    path = _copy(root, donor) if donor else root / STRAY_NAMES[case]
    damage(path)
    return path


def _corpus(root: Path, *cases: str) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    _copy(root, HEALTHY)
    return {case: _damage(root, case) for case in cases}


def _replay_cli(capsys, root: Path, *extra: str) -> tuple[int, str]:
    rc = main(["replay", "--root", str(root), "--no-update", *extra])
    return rc, capsys.readouterr().out


def _lost_teeth(root: Path) -> Path:
    """A real mutant entry whose options make the mutant raise: it never runs."""
    path = _copy(root, MUTANT_DONOR)
    _meta(path, lambda m: m["transform"].update(options={"seed": "abc"}))
    return path


@pytest.fixture(scope="module")
def pytest_run(tmp_path_factory):
    """``pytest corpus/`` once over a corpus holding every damaged case, a lost-teeth mutant and one
    healthy entry: ``(testcases by name, the run's output, the folder the corpus sits in)``."""
    base = tmp_path_factory.mktemp("pytest-corpus")
    root = base / "corpus"
    _corpus(root, *CASES)
    _lost_teeth(root)
    for name in ("test_replay.py", "conftest.py"):  # the harness as the checkout has it
        if (SOURCE / name).exists():
            shutil.copy(SOURCE / name, root / name)
    (base / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "ARCHFUZZ_CORPUS_UPDATE")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(base / "pytest.ini"),
                           "--junitxml", str(base / "junit.xml"), str(root)],
                          cwd=base, env=env, capture_output=True, text=True, timeout=300)
    cases = {}
    if (base / "junit.xml").exists():
        for tc in ET.parse(base / "junit.xml").iter("testcase"):
            bad = tc.find("failure") if tc.find("failure") is not None else tc.find("error")
            cases[tc.get("name")] = "passed" if bad is None and tc.find("skipped") is None else \
                ("skipped" if bad is None else bad.get("message", "") + "\n" + (bad.text or ""))
    return cases, proc.stdout + proc.stderr, base


# ------------------------------------------------------------------ item 5: corrupt entries, both channels
@pytest.mark.parametrize("case", sorted(CASES))
def test_corrupt_entry_is_reported_by_path_and_the_others_replay(case, tmp_path, capsys, pytest_run):
    root = tmp_path / "corpus"
    bad_path = _corpus(root, case)[case]
    reason = CASES[case][2]

    entries, bad = load_entries(root)
    assert [e.name for e in entries] == [HEALTHY]
    assert len(bad) == 1 and bad[0][0] == bad_path, bad
    assert str(bad_path) in bad[0][1] and reason in bad[0][1], bad[0][1]

    rc, out = _replay_cli(capsys, root)
    assert rc == 1, out
    assert f"CORRUPT {bad_path}: " in out and reason in out, out
    assert f"{HEALTHY} [mutant, open]: still-failing" in out, out

    cases, log, base = pytest_run
    item = cases.get(f"test_corrupt_entry[{bad_path.name}]")
    assert item is not None and item != "passed", f"no failing item for {bad_path.name}:\n{log[-3000:]}"
    assert reason in item and str(base / "corpus" / bad_path.name) in item, item
    assert cases.get(f"test_replay[{HEALTHY}]") == "passed", log[-3000:]


def test_nothing_inside_an_entry_folder_is_run_by_pytest(pytest_run):
    """A conftest.py and a test_*.py dropped into an entry would write a marker and abort: neither runs."""
    cases, log, base = pytest_run
    assert not (base / MARKER).exists(), "pytest executed code from inside a corpus entry"
    assert "test_evil" not in cases and "SystemExit" not in log, log[-3000:]
    assert cases, f"the corpus run produced no test items (a collection-wide failure):\n{log[-3000:]}"
    assert not any(name.startswith("corpus") or name == "" for name in cases), cases  # no collection errors


# ------------------------------------------------------------------ item 4: a mutant that never ran
def test_a_mutant_that_raises_is_a_regression_in_replay_and_in_pytest(tmp_path, capsys, pytest_run):
    root = tmp_path / "corpus"
    _corpus(root)
    path = _lost_teeth(root)
    rc, out = _replay_cli(capsys, root)
    assert rc == 1, out
    assert f"REGRESSION {path.name} [mutant, open]: lost-teeth: " in out and "never ran" in out, out
    assert f"{HEALTHY} [mutant, open]: still-failing" in out

    cases, log, _ = pytest_run
    item = cases.get(f"test_replay[{path.name}]")
    assert item is not None and "lost-teeth" in item, log[-3000:]


# ------------------------------------------------------------------ item 3: modes follow the umask
@pytest.fixture
def umask():
    before = os.umask(0o022)
    os.umask(before)

    def set_(mask):
        os.umask(mask)
    yield set_
    os.umask(before)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_entry_modes_follow_the_umask(tmp_path, umask, mask):
    from fuzz import DecoderSpec, build
    from verifier import mutants, verify
    from verifier.corpus import record_failure
    umask(mask)
    layout = build(DecoderSpec(attn_gate="head_softplus"))
    transform = mutants.get("gproj_omission")
    path, created = record_failure(verify(transform, layout), layout, transform, root=tmp_path / "c", kind="mutant")
    assert created
    assert oct(path.stat().st_mode & 0o777) == oct(0o777 & ~mask)
    for f in path.iterdir():
        assert oct(f.stat().st_mode & 0o777) == oct(0o666 & ~mask), f


def test_rewritten_meta_keeps_the_mode_open_would_give(tmp_path, umask):
    from fuzz.layout import atomic_write_text
    root = tmp_path / "corpus"
    _corpus(root)
    meta = root / HEALTHY / "meta.json"
    meta.chmod(0o644)
    umask(0o077)  # open(meta, "w") on an existing file keeps its mode, whatever the umask
    (entry,), _ = load_entries(root)
    assert replay(entry, update=True).outcome == "still-failing"
    assert json.loads(meta.read_text())["replays"][-1]["outcome"] == "still-failing"
    assert oct(meta.stat().st_mode & 0o777) == oct(0o644)
    umask(0o027)  # a new file: 0o666 less the umask, as open() gives
    assert oct(atomic_write_text(tmp_path / "new.json", "{}").stat().st_mode & 0o777) == oct(0o640)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------ temp leftovers: reported, cleaned
def _leftovers(root: Path, age_s: float) -> list[Path]:
    """What interrupted writes leave: a half-written entry folder, temp files of both generations."""
    half = root / f".{MUTANT_DONOR}.k2j4h6g8"
    half.mkdir()
    (half / "layout.json").write_text("{")
    new_tmp = root / HEALTHY / ".meta.json.0f1e2d3c.tmp"  # atomic_write_text today
    old_tmp = root / HEALTHY / ".meta.json.ab_12cd9"  # tempfile.mkstemp before
    new_tmp.write_text("{")
    old_tmp.write_text("{")
    then = time.time() - age_s
    for p in (half / "layout.json", half, new_tmp, old_tmp):
        os.utime(p, (then, then))
    return [half, new_tmp, old_tmp]


def test_replay_reports_temp_leftovers_with_path_and_age(tmp_path, capsys):
    root = tmp_path / "corpus"
    _corpus(root)
    half, new_tmp, old_tmp = _leftovers(root, 2 * 3600)
    rc, out = _replay_cli(capsys, root)
    assert rc == 0, out  # leftovers are not entries: reported, not failing
    assert f"LEFTOVER {half}: entry temp folder, 2.0 h old" in out, out
    assert f"LEFTOVER {new_tmp}: temp file, 2.0 h old" in out and f"LEFTOVER {old_tmp}: temp file" in out, out
    assert "CORRUPT" not in out and f"{HEALTHY} [mutant, open]: still-failing" in out


def test_corpus_clean_removes_old_leftovers_and_never_an_entry(tmp_path, capsys):
    root = tmp_path / "corpus"
    damaged = _corpus(root, "stray-file", "empty-folder", "meta-null")
    old = _leftovers(root, 3 * 3600)
    fresh = root / f".{HEALTHY}.fresh001"
    fresh.mkdir()
    lookalike = root / ".notes.tmp"  # hidden and .tmp, but not a name our writers give: a user's file
    lookalike.write_text("mine")
    os.utime(lookalike, (time.time() - 3 * 3600,) * 2)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not any(p.is_relative_to(o) for o in old)
              and p != fresh}
    rc = main(["corpus", "clean", "--root", str(root), "--older-than", "60"])
    out = capsys.readouterr().out
    assert rc == 0, out
    for p in old:
        assert not p.exists() and f"removed {p} (" in out, out
    assert fresh.exists() and str(fresh) not in out  # a writer may still be filling it
    assert {p: p.read_bytes() for p in before} == before  # entries, even corrupt ones, untouched
    assert all(p.exists() for p in damaged.values()) and lookalike.read_text() == "mine"
    assert "3 temp leftovers older than 60 s removed" in out
    rc = main(["corpus", "clean", "--root", str(root), "--older-than", "0"])
    assert rc == 0 and not fresh.exists() and f"removed {fresh}" in capsys.readouterr().out
    assert lookalike.exists() and (root / HEALTHY / "meta.json").exists()


# ------------------------------------------------------------------ exit codes and bad arguments
def test_replay_exit_status(tmp_path, capsys):
    root = tmp_path / "corpus"
    _corpus(root)
    rc, out = _replay_cli(capsys, root)
    assert rc == 0 and "1 entries replayed, 0 regressions, 0 corrupt" in out, out
    assert main(["replay", "--root", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "replay --root" in err and "no such folder" in err and len(err.strip().splitlines()) == 1, err
    assert main(["replay", "--root", str(root / HEALTHY / "meta.json")]) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["--older-than", "-1"], "--older-than"), (["--older-than", "abc"], "--older-than"),
    (["--older-than", "nan"], "--older-than"), (["--root", "MISSING"], "corpus clean --root"),
])
def test_corpus_clean_bad_arguments_exit_2(tmp_path, capsys, argv, says):
    argv = [str(tmp_path / "missing") if a == "MISSING" else a for a in argv]
    try:
        rc = main(["corpus", "clean", *argv])
    except SystemExit as exc:  # argparse's own exit for a malformed value
        rc = exc.code
    assert rc == 2 and says in capsys.readouterr().err


def test_corpus_seed_still_works_and_refuses_older_than(tmp_path, capsys):
    from verifier.corpus_seed import seed_refusals
    assert main(["corpus", "seed", "--root", str(tmp_path), "--older-than", "5"]) == 2
    assert "applies to 'corpus clean' only" in capsys.readouterr().err
    made = seed_refusals(tmp_path)  # the cheap half of `corpus seed` (the mutants need a hypothesis search)
    entries, bad = load_entries(tmp_path)
    assert not bad and len(entries) == len(made) and all(e.meta["status"] == "expected-refusal" for e in entries)
    assert all(replay(e, update=False).outcome == "still-refusing" for e in entries)
