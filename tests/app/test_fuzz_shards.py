"""A campaign sharded by seed (benchmarks.fuzz_shards): shards merge into one summary, new findings are
recorded once by the driver, known ones only named."""

import json

from benchmarks import fuzz_shards


def test_shards_merge_and_a_mutant_is_caught_in_every_seed(tmp_path):
    """Two seeds of a known-buggy transform, in process: each shard catches it; the merge sums the examples,
    names the seeds of each failure signature, and counts pair coverage over both shards' layouts; a rerun of
    the same code reads the shards back from the cache."""
    out = tmp_path / "out"
    rc = fuzz_shards.main(["--seeds", "0", "1", "--transform", "mutants:gproj_omission", "--max-examples", "8",
                           "--engine", "serial", "--out", str(out), "--corpus", str(tmp_path / "corpus"),
                           "--no-progress", "--reduce-steps", "4"])
    summary = json.loads((out / "summary.json").read_text())
    assert rc == 0  # a caught mutant is not a new finding
    (st,) = summary["per_transform"].values()
    assert sorted(st["seeds"]) == [0, 1] and st["examples"] == 2 * 8
    caught = [f for f in summary["failures"] if f["outcome"] == "caught"]
    assert {seed for f in caught for seed in f["seeds"]} == {0, 1}
    inter = summary["interactions"]
    single = [json.loads(p.read_text()) for p in (out / "cache").glob("*.json")]
    assert len(single) == 2
    assert inter["pairs_seen"] >= max(r["interactions"]["pairs_seen"] for r in single)
    assert not (tmp_path / "corpus").exists() or not any((tmp_path / "corpus").iterdir())
    again = fuzz_shards.main(["--seeds", "0", "1", "--transform", "mutants:gproj_omission", "--max-examples",
                              "8", "--engine", "serial", "--out", str(out), "--corpus", str(tmp_path / "corpus"),
                              "--no-progress", "--reduce-steps", "4"])
    assert again == 0 and json.loads((out / "summary.json").read_text())["per_transform"] == summary["per_transform"]
