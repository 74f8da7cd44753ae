"""Hypothesis profiles for the whole suite live in fuzz.profiles; ``dev`` unless told otherwise."""

from hypothesis import settings

import fuzz.profiles  # noqa: F401  (registers dev / ci / nightly / release)

settings.load_profile("dev")


import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The suite's matrices are tiny: one thread per worker beats two threads fighting over 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cpu_f32_parity():
    """``check(model, ids) -> report``: the OpenVINO export of ``model`` compared with PyTorch on CPU at the f32
    hint; asserts the export ran and the one row is within the parity gate's relative error."""
    pytest.importorskip("openvino")
    from quant.parity import GATE, compare

    def check(model, ids):
        report = compare(model, ids, devices=["CPU"], hints=["f32"], timeout=300)
        assert report["export"]["symptom"] == "ok", report["export"]
        (row,) = report["rows"]
        assert row["rel_err"] is not None and row["rel_err"] <= GATE["rel_err"], row
        return report
    return check
