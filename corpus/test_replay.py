"""Replay of the regression corpus: `pytest corpus/` (and `archfuzz replay`).

One test per entry folder.  A fixed finding that fails again, a mutant the oracle no longer catches (or
one that raised and never ran), or a replay that proves nothing fails the run; an open finding that
still fails is an expected failure (xfail) with its verdict.  A corrupt entry, a stray file or an empty
folder is one failing test of its own, named by the path and the reason, and the others still run;
entry folders are never imported (``corpus/conftest.py``).  Set ARCHFUZZ_CORPUS_UPDATE=1 to write the
outcomes (and open -> fixed transitions) back into meta.json.
"""

import os
from pathlib import Path

import pytest

from verifier.corpus import load_entries, replay

ROOT = Path(__file__).resolve().parent
ENTRIES, BAD = load_entries(ROOT)


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_replay(entry):
    result = replay(entry, update=os.environ.get("ARCHFUZZ_CORPUS_UPDATE") == "1")
    assert not result.regression, f"{entry.path}: {result.outcome}: {result.reason}: {result.verdict}"
    if result.outcome == "still-failing" and entry.meta["kind"] == "finding":
        pytest.xfail(f"open finding still fails: {result.verdict}")


@pytest.mark.parametrize("path, reason", BAD, ids=[p.name for p, _ in BAD])
def test_corrupt_entry(path, reason):
    pytest.fail(f"corrupt corpus entry: {reason}", pytrace=False)


def test_corpus_is_not_empty():
    assert ENTRIES, f"no corpus entries under {ROOT}"
