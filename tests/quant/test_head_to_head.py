"""The head-to-head benchmark's reporting: grouping over seeds, failures kept, the targets judged."""

from types import SimpleNamespace

import pytest

from benchmarks import head_to_head as h2h


def rows():
    out = [{"method": "fp", "bits": None, "seed": 0, "ppl": 29.0, "seconds": 40}]
    for seed, (van, bbt) in enumerate([(1000.0, 500.0), (11000.0, 5000.0), (12000.0, 6000.0)]):
        out.append({"method": "autoround", "bits": 2, "seed": seed, "ppl": van, "seconds": 200})
        out.append({"method": "bbt-spectral-a0.5", "bits": 2, "seed": seed, "ppl": bbt, "seconds": 500})
    out.append({"method": "autoround-hadamard", "bits": 2, "seed": 0, "error": "RuntimeError: boom", "seconds": 3})
    return out


def test_groups_targets_and_failures_are_reported():
    args = SimpleNamespace(group_size=64, sym=False, max_tokens=8192, window=1024, bits=[2])
    summary = h2h._summarise(rows(), args, {}, {}, {}, "ckpt")
    g = summary["groups"]
    assert g["autoround|2"]["n"] == 3 and g["autoround|2"]["mean"] == pytest.approx(8000.0)
    assert g["bbt-spectral-a0.5|2"]["geomean"] == pytest.approx((500 * 5000 * 6000) ** (1 / 3))
    assert g["fp|fp"]["std"] == 0.0 and g["fp|fp"]["n"] == 1
    assert summary["errors"] == [{"method": "autoround-hadamard", "bits": 2, "seed": 0, "error": "RuntimeError: boom"}]
    md = h2h._markdown(summary, {"iters": 10}, {"source": "calib"}, {"source": "eval"}, "ckpt", args)
    assert "52.1% lower PPL (target >= 45%): MET" in md
    assert "- autoround-hadamard W2 seed 0: RuntimeError: boom" in md


@pytest.mark.parametrize("bbt_ppls, verdict", [
    ([39.0, 39.8, 39.2], "MET"),
    ([31.4, 31.5, 31.3], "LOWER than vanilla beyond the noise"),
    ([71.0, 73.0, 72.0], "NOT MET (higher"),
    ([31.4], "UNDECIDED"),
])
def test_w4_target_says_which_side_of_the_noise(bbt_ppls, verdict):
    out = []
    for seed, van in enumerate([39.4, 40.2, 39.0]):
        out.append({"method": "autoround", "bits": 4, "seed": seed, "ppl": van, "seconds": 200})
    out += [{"method": "bbt-spectral-a0.5", "bits": 4, "seed": s, "ppl": p, "seconds": 400} for s, p in enumerate(bbt_ppls)]
    args = SimpleNamespace(group_size=64, sym=False, max_tokens=8192, window=1024, bits=[4])
    md = h2h._markdown(h2h._summarise(out, args, {}, {}, {}, "ckpt"), {}, {"source": "c"}, {"source": "e"}, "ckpt", args)
    assert verdict in md


def test_plot_is_written(tmp_path):
    """matplotlib is a declared dependency: the sweep must not die at its last step (it once did)."""
    args = SimpleNamespace(group_size=64, sym=False, max_tokens=8192, window=1024, bits=[2])
    h2h._plot(h2h._summarise(rows(), args, {}, {}, {}, "ckpt"), tmp_path / "results.png")
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
