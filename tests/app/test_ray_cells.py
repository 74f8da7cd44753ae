"""Sweeps as Ray tasks (benchmarks.ray_cells): every cell runs once, is cached, and a sweep resumes."""

import json
import os

import pytest

from benchmarks import ray_cells


def square(cell: dict) -> dict:
    """A cell function for the in-process engine."""
    if cell["x"] < 0:
        raise ValueError(f"negative x {cell['x']}")
    return {"y": cell["x"] ** 2, "pid": os.getpid()}


def cells(*xs):
    return [{"name": f"sq{x}", "x": x} for x in xs]


def probes(n, fail=()):
    return [{"name": f"probe{i}", "i": i, "fail": i in fail} for i in range(n)]


def test_serial_caches_every_cell_and_resumes(tmp_path):
    first = ray_cells.run_cells(square, cells(1, 2, 3), tmp_path, engine="serial", progress=False)
    assert [r["y"] for r in first] == [1, 4, 9] and not any(r["cached"] for r in first)
    assert sorted(p.name.split("-")[0] for p in tmp_path.glob("*.json")) == ["sq1", "sq2", "sq3"]
    again = ray_cells.run_cells(square, cells(1, 2, 3, 4), tmp_path, engine="serial", progress=False)
    assert [r["cached"] for r in again] == [True, True, True, False]
    assert [r["y"] for r in again] == [1, 4, 9, 16]
    only = ray_cells.run_cells(square, cells(5, 1), tmp_path, engine="serial", progress=False, report_only=True)
    assert only[0] is None and only[1]["y"] == 1


def test_a_failing_cell_is_reported_and_not_cached(tmp_path):
    out = ray_cells.run_cells(square, cells(-1, 2), tmp_path, engine="serial", progress=False)
    assert out[0]["error"] == "ValueError: negative x -1" and "Traceback" in out[0]["traceback"]
    assert out[1]["y"] == 4
    assert [p.name.split("-")[0] for p in tmp_path.glob("*.json")] == ["sq2"]  # the failure is retried next time


def test_key_is_the_config_not_its_order():
    assert ray_cells.cell_key({"a": 1, "b": [2, 3]}) == ray_cells.cell_key({"b": [2, 3], "a": 1})
    assert ray_cells.cell_key({"a": 1}) != ray_cells.cell_key({"a": 2})


def test_ray_runs_cells_as_tasks_in_worker_processes(tmp_path):
    """A local Ray (2 CPUs): the results are the serial ones, computed outside this process, cached on disk."""
    pytest.importorskip("ray")
    import ray
    try:
        out = ray_cells.run_cells(ray_cells.probe, probes(4, fail={3}), tmp_path, engine="ray", num_cpus=2,
                                  progress=False)
    finally:
        ray.shutdown()
    assert [r.get("i") for r in out] == [0, 1, 2, None]
    assert out[3]["error"] == "ValueError: probe 3 asked to fail" and not out[3]["cached"]
    assert all(r["pid"] != os.getpid() for r in out[:3])
    assert all(r["torch_threads"] == 1 for r in out[:3])  # cpus_per_cell=1 pins the workers' torch threads
    cached = {p.name.split("-")[0]: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert sorted(cached) == ["probe0", "probe1", "probe2"] and cached["probe2"]["cell"]["i"] == 2


def test_unknown_engine_is_refused(tmp_path):
    with pytest.raises(ValueError, match="engine 'dask'"):
        ray_cells.run_cells(square, cells(1), tmp_path, engine="dask")
