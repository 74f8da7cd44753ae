"""benchmarks.lowbit_side_by_side's report: the interleaved runs' single-threaded CPU ms per decoded token next to
the wall times (a column per run and its median, the BBT / vanilla ratio of the medians), and the build rows' column;
older entries without it shown as '-'."""

from pathlib import Path

from benchmarks import lowbit_side_by_side as sbs

SETTINGS = {"alpha": 0.25, "nsamples": 4, "seqlen": 256, "prompt": 128, "new_tokens": 128, "window": 256,
            "max_tokens": 1024}


def interleaved(tpot, cpu):
    return {"tpot_ms": tpot, "best_tpot_ms": min(tpot), "median_tpot_ms": sorted(tpot)[1], "prefill_tok_s": [1, 2, 3],
            "median_prefill_tok_s": 2.0, "peak_rss_mib": [1, 1, 1], "median_peak_rss_mib": 1.0,
            "loadavg_1min": [3.0, 4.0, 5.0], "cpu_ms_per_token": cpu, "median_cpu_ms_per_token": sorted(cpu)[1]}


def test_the_interleaved_table_has_the_cpu_column_and_ratio():
    w4 = {"none": interleaved([10.0, 30.0, 12.0], [8.0, 8.5, 8.25]),
          "bbt-spectral": interleaved([14.0, 40.0, 16.0], [11.0, 11.5, 12.0]), "omp_num_threads": "1",
          "bbt_over_vanilla_best": 1.4, "bbt_over_vanilla_median": 16.0 / 12.0, "bbt_over_vanilla_cpu_median": 11.5 / 8.25,
          "over_vanilla": {"bbt-spectral": {"median": 16.0 / 12.0, "best": 1.4, "cpu_median": 11.5 / 8.25}}}
    old = {"none": {k: v for k, v in interleaved([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]).items() if "cpu" not in k}}
    rows = [{"bits": 4, "artifact": "vanilla", "ir_mib": 84.68, "tpot_ms": 12.0, "cpu_ms_per_token": 8.25},
            {"bits": 4, "artifact": "f16 dequantized (vanilla)", "ir_mib": 258.94, "tpot_ms": 20.0}]
    md = sbs.markdown({"rows": rows, "settings": SETTINGS, "decode_interleaved": {"w4": w4, "w4-old": old}})
    assert "| none | 10.0, 30.0, 12.0 | 10.0 | 12.0 | 8.00, 8.50, 8.25 | 8.25 |" in md
    assert "| bbt-spectral | 14.0, 40.0, 16.0 | 14.0 | 16.0 | 11.00, 11.50, 12.00 | 11.50 |" in md
    assert ("**bbt-spectral / vanilla time per token: 1.33x (median), 1.40x (best); CPU per token on one thread: "
            "1.39x (median)** (target <= 1.3x).") in md
    assert "| none | 1.0, 2.0, 3.0 | 1.0 | 2.0 | - | - |" in md  # measured before the column existed
    assert "| W4 | vanilla | 84.68 | 32.7% | 1 | - | 83.3 | 1.00 | 8.25 |" in md
    assert "| W4 | f16 dequantized (vanilla) | 258.94 | 100.0% | - | - | 50.0 | 1.67 | - |" in md


def test_the_runs_of_an_artifact_carry_the_pinned_cpu_figures(monkeypatch):
    """``_runs``: the default run's wall times and memory, the pinned run's CPU figures, in one record."""
    import quant.stateful
    from quant.genai_probe import PINNED
    calls = []

    def fake(folder, prompt, new_tokens, properties=None):
        calls.append(properties)
        pinned = properties == PINNED
        return {"tpot_ms": 30.0 if pinned else 10.0, "prefill_tok_s": 5.0, "ttft_ms": 25.0, "peak_rss_mib": 300.0,
                "tokens": [1] * new_tokens, "cpu_ms_per_token": 9.0 if pinned else 20.0, "cpu_prefill_ms": 100.0}

    monkeypatch.setattr(quant.stateful, "fresh_genai_run", fake)
    got = sbs._runs(Path("x"), [1, 2], 4)
    assert calls == [None, PINNED]
    assert got["tpot_ms"] == 10.0 and got["pinned_tpot_ms"] == 30.0 and got["cpu_ms_per_token"] == 9.0
    assert got["new_tokens"] == 4 and got["peak_rss_mib"] == 300.0 and "loadavg_1min" in got
