"""The W2 ablation table: groups over seeds, single seeds marked, the targets judged only on 3-seed rows
within the time budget, every method described by its recipe, options and settings."""

from benchmarks import head_to_head as h2h
from benchmarks import w2_ablation as w2


def row(method, bits, seed, ppl, secs=300.0):
    return {"method": method, "bits": bits, "seed": seed, "ppl": ppl, "seconds": secs + 20, "quant_seconds": secs,
            "load_start": [2.5, 2.0, 1.0], "torch_threads": 2}


def test_ablation_methods_are_head_to_head_methods():
    assert set(w2.ABLATION) <= set(h2h.METHODS)
    assert h2h._method_keys(h2h.METHODS["autoround"]) == {}  # plain methods keep their cache keys
    keys = h2h._method_keys(h2h.METHODS["bbt-spectral-a0.25-neuqi-algext"])
    assert keys == {"enable_alg_ext": True, "options": {"enable_neuqi": True}}


def test_table_marks_single_seeds_and_judges_only_three_seed_rows_in_budget():
    rows = [row("autoround-neuqi", 2, 0, 50.0)]  # one seed: best PPL, but not a 3-seed result
    rows += [row("bbt-spectral-a0.25-neuqi-algext", 2, s, p) for s, p in enumerate([90.0, 96.0, 99.0])]
    rows += [row("bbt-spectral-a0.25", 2, s, p, secs=700.0) for s, p in enumerate([60.0, 61.0, 62.0])]  # over budget
    rows += [row("bbt-spectral-a0.25-neuqi-algext", 4, 0, 31.0), {"method": "autoround", "bits": 2, "seed": 0, "error": "x"}]
    data = w2.collect(rows)
    g = {(x["method"], x["bits"]): x for x in data["groups"]}
    assert g[("autoround-neuqi", 2)]["std"] is None and g[("bbt-spectral-a0.25-neuqi-algext", 2)]["n"] == 3
    assert g[("bbt-spectral-a0.25-neuqi-algext", 2)]["options"] == {"enable_neuqi": True}
    assert ("autoround", 2) not in g
    md = w2.markdown(data)
    assert "| 2 | autoround-neuqi | 50.00 | (1 seed) | 0 |" in md
    assert ("best W2 with 3 seeds within the budget (on the mean time): bbt-spectral-a0.25-neuqi-algext 95.00 +- 4.58 "
            "(mean 300 s, slowest seed 300 s): MET") in md
    assert "| 90.00, 96.00, 99.00 | 300 (300, 300, 300) |" in md
    assert "W4 control of bbt-spectral-a0.25-neuqi-algext: 31.00 over 1 seed(s) (ceiling 31.1): MET" in md


def test_plot_is_a_png(tmp_path):
    data = w2.collect([row("fp", None, 0, 29.0), row("autoround", 2, 0, 400.0), row("autoround", 4, 0, 33.0)])
    w2.plot(data, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_merge_keeps_old_rows_and_replaces_a_rerun_cell():
    old = [row("autoround", 2, 0, 400.0), row("bbt-spectral-a0.25", 2, 0, 190.0)]
    new = [row("bbt-spectral-a0.25", 2, 0, 185.0), row("bbt-spectral-block-a0.25-neuqi16-algext", 2, 0, 100.0)]
    merged = w2.merge_rows(old, new)
    assert [(r["method"], r["ppl"]) for r in merged] == [("autoround", 400.0), ("bbt-spectral-a0.25", 185.0),
                                                         ("bbt-spectral-block-a0.25-neuqi16-algext", 100.0)]
    assert "bbt-spectral-block-a0.25-neuqi16-algext" in w2.ABLATION
