"""Corpus: entries as data, dedup by signature, concurrent writers, replay transitions, bad entries."""

import json
import multiprocessing as mp
import shutil
from pathlib import Path

import pytest
import torch

from fuzz import DecoderSpec, LayerSpec, build
from verifier import mutants, reference, verify
from verifier.corpus import load_entries, record_failure, replay
from verifier.reduce import reduce_layout

BIG = DecoderSpec(layers=(LayerSpec(), LayerSpec(sparse=True), LayerSpec()), attn_gate="head_softplus",
                  qkv_bias=True, n_heads=6, n_kv_heads=3, shared_expert=True, hidden=40)


def failing(name="gproj_omission", spec=BIG):
    layout = build(spec)
    transform = mutants.get(name)
    return verify(transform, layout), layout, transform


def test_entry_is_complete_and_deduplicated(tmp_path):
    verdict, layout, transform = failing()
    path, created = record_failure(verdict, layout, transform, root=tmp_path, kind="mutant")
    assert created and {p.name for p in path.iterdir()} == {"layout.json", "meta.json", "repro.py"}
    meta = json.loads((path / "meta.json").read_text())
    for key in ("transform", "stage", "symptom", "first_divergent", "tolerance", "seed", "versions", "status",
                "first_seen", "kind"):
        assert key in meta
    assert meta["versions"]["torch"].startswith("2.13")
    again, created = record_failure(verify(transform, layout, seed=5), layout, transform, root=tmp_path,
                                    kind="mutant")
    assert again == path and not created  # same signature: not a new entry, whatever the log says


def _write(root, i):
    verdict, layout, transform = failing()
    record_failure(verdict, layout, transform, root=root, kind="mutant")


def test_concurrent_writers_leave_one_complete_entry(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write, args=(tmp_path, i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    entries = [p for p in tmp_path.iterdir()]
    assert len(entries) == 1 and len(list(entries[0].iterdir())) == 3
    assert load_entries(tmp_path)[1] == []


def test_reducer_keeps_the_signature_and_shrinks(tmp_path):
    verdict, layout, transform = failing()
    op = verdict.first_divergent["op"]
    small, tried = reduce_layout(layout, lambda c: (v := verify(transform, c)).status == "diverged"
                                 and v.first_divergent["op"] == op)
    assert tried > 0 and len(small.order) < len(layout.order)
    assert "attn_gate:head_softplus" in small.features()  # the feature the bug needs survives
    assert "moe" not in small.features() and "layers:1" in small.features()
    assert verify(transform, small).status == "diverged"


def test_replay_transitions(tmp_path):
    layout = build(DecoderSpec())
    good = reference.get("permute_hidden")
    ok_verdict = verify(good, layout)
    ok_verdict.status = "diverged"  # pretend an old version failed here: an open finding
    path, _ = record_failure(ok_verdict, layout, good, root=tmp_path)
    entry = load_entries(tmp_path)[0][0]
    result = replay(entry)
    assert result.outcome == "fixed-now" and not result.regression
    meta = json.loads((path / "meta.json").read_text())
    assert meta["status"] == "fixed" and meta["fixed_in"]["torch"] and meta["replays"]
    assert replay(load_entries(tmp_path)[0][0]).outcome == "ok"

    verdict, layout, bad = failing()
    path, _ = record_failure(verdict, layout, bad, root=tmp_path, status="fixed")  # a fix that regressed
    entry = next(e for e in load_entries(tmp_path)[0] if e.path == path)
    assert replay(entry, update=False).outcome == "regression"


def test_mutant_entries_must_keep_failing(tmp_path):
    verdict, layout, transform = failing()
    path, _ = record_failure(verdict, layout, transform, root=tmp_path, kind="mutant")
    meta = json.loads((path / "meta.json").read_text())
    meta["transform"]["registry_name"] = "reference:identity"  # hand-edited: now it cannot fail
    (path / "meta.json").write_text(json.dumps(meta))
    assert replay(load_entries(tmp_path)[0][0], update=False).outcome == "lost-teeth"


def _edit_meta(path, edit):
    meta = json.loads((path / "meta.json").read_text())
    edit(meta)
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, reason", [
    (lambda p: (p / "meta.json").write_text("{oops"), "invalid JSON"),
    (lambda p: (p / "meta.json").unlink(), "missing meta.json"),
    (lambda p: (p / "layout.json").write_text('{"format": "archfuzz.layout/1", "nodes": [{"id": "a", "op": "warp"}], "edges": []}'), "unknown op kind"),
    (lambda p: _edit_meta(p, lambda m: m.pop("transform")), "missing 'transform'"),
    (lambda p: _edit_meta(p, lambda m: m.update(seed="0")), "key 'seed' must be an integer"),
    (lambda p: _edit_meta(p, lambda m: m.update(kind="bug")), "key 'kind' must be one of 'finding', 'mutant'"),
    (lambda p: (p / "meta.json").write_text("null"), "must hold a JSON object, got null"),
])
def test_corrupt_entries_are_reported_by_path_and_do_not_stop_the_others(tmp_path, damage, reason):
    verdict, layout, transform = failing()
    broken, _ = record_failure(verdict, layout, transform, root=tmp_path, kind="mutant")
    other_layout = build(DecoderSpec(qk_norm="none"))
    other = mutants.get("pair_reflection")
    record_failure(verify(other, other_layout), other_layout, other, root=tmp_path, kind="mutant")
    damage(broken)
    entries, bad = load_entries(tmp_path)
    assert len(entries) == 1 and len(bad) == 1
    assert bad[0][0] == broken and reason in bad[0][1]
    assert replay(entries[0], update=False).outcome == "still-failing"


@pytest.mark.parametrize("kind, status, replayed, outcome, regression", [
    ("mutant", "open", "diverged", "still-failing", False),
    ("mutant", "open", "non-finite", "still-failing", False),
    ("mutant", "open", "error", "lost-teeth", True),      # raised: never ran
    ("mutant", "open", "timeout", "lost-teeth", True),    # never finished
    ("mutant", "open", "refused", "lost-teeth", True),
    ("mutant", "open", "invariant", "lost-teeth", True),
    ("mutant", "open", "degenerate", "lost-teeth", True),
    ("finding", "open", "error", "still-failing", False),  # a transform that crashes is a finding
    ("finding", "open", "invariant", "fixed-now", False),
    ("finding", "open", "inconclusive", "unproven", True),  # proves nothing: never a silent "fixed"
    ("finding", "fixed", "degenerate", "unproven", True),
    ("finding", "fixed", "diverged", "regression", True),
    ("finding", "fixed", "refused", "ok", False),
    ("finding", "expected-refusal", "refused", "still-refusing", False),
    ("finding", "expected-refusal", "diverged", "regression", True),
    ("finding", "expected-refusal", "invariant", "ok", False),
])
def test_replay_judgement(kind, status, replayed, outcome, regression):
    from verifier.corpus import _judge
    got = _judge({"kind": kind, "status": status}, replayed)
    assert got[:2] == (outcome, regression) and (got[2] != "") == regression, got


# ------------------------------------------------------------------ registries filled by their owners
def test_registry_names_on_disk_come_from_the_registries_their_owners_registered():
    """The prefix of an entry's ``registry_name`` is the registry's, found from the transform's module (no
    table of module names in verifier): the same strings the corpus holds on disk."""
    from verifier.corpus import _transform_record
    from verifier.registry import prefixes, resolve
    assert prefixes()[:4] == ["reference", "mutants", "quant", "peers"]  # lookup order, as before
    for name, module in [("reference:permute_hidden", "verifier.reference"), ("mutants:pair_reflection",
                         "verifier.mutants"), ("quant:norm-absorb", "quant.transforms"), ("peers:hf-bridge",
                                                                                        "quant.peers")]:
        record = _transform_record(resolve(name))
        assert record["registry_name"] == name and record["registry"] == module


def test_an_unknown_registry_says_where_registries_come_from():
    from fuzz.errors import BadInput
    from verifier.registry import resolve
    with pytest.raises(BadInput, match="unknown registry 'nowhere'.*archfuzz.registries"):
        resolve("nowhere:x")


def test_a_registry_declares_its_properties_and_the_campaign_reads_them():
    from verifier.campaign import campaign_transform
    from verifier.registry import properties, resolve
    peer = resolve("peers:hf-bridge")
    assert properties(peer)["float64_options"] == {"precision": "float64"}
    assert campaign_transform("peers:hf-bridge").options == {"precision": "float64"}
    assert campaign_transform("peers:hf-bridge", torch.float32).options == {}
    assert dict(properties(resolve("quant:norm-absorb"))) == {}
    assert campaign_transform("quant:norm-absorb").options == {}


def test_parity_entries_are_compared_through_the_hook_the_parity_module_registers():
    from quant.parity import compare
    from verifier.corpus import _replayer
    hook = _replayer("parity")
    assert hook.compare is compare and "from verifier.corpus import parity_subject" in hook.repro
