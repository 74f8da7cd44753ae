"""Sweeps as Ray tasks: every cell of a grid runs once, as one task, cached and resumable.

A *cell* is a JSON-able dict (one configuration: method, bits, seed, settings, ...); its key is the first 16
hex digits of the SHA-256 of its canonical JSON, and its result, a JSON dict, is cached as
``CACHE/<name>-<key>.json``.  :func:`run_cells` returns one result per cell, in the cells' order: cached
ones are read back, the others run as Ray tasks (``ray.remote(fn)``, ``cpus_per_cell`` CPUs each, so Ray's
scheduler runs as many side by side as the machine or cluster has CPUs) and each is written atomically by the
driver as soon as it finishes, so an interrupted sweep resumes where it stopped.  A task that raises is
reported as ``{"error": ..., "cell": ...}`` and not cached (a rerun retries it).

Ray: a local Ray is started on this machine by default (``num_cpus`` CPUs, default all; no dashboard); with
``address`` (``"auto"``, ``"ray://host:10001"``, ...) the driver joins that cluster and ships this repository as
the tasks' working directory (Ray's ``runtime_env``), so workers import the same code.  ``engine="serial"``
runs the cells in this process instead (debugging, profiling; same caching).

``python -m benchmarks.ray_cells [--address ADDR] [--num-cpus N] [--cells N]`` checks an engine: it runs
``N`` :func:`probe` cells (uncached) and prints where each ran.

Workers are reused processes: a cell function that needs an expensive shared input (a checkpoint, a tokenized
text) loads it through a per-process cache (``functools.lru_cache``), once per worker, not once per cell.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

ENGINES = ("ray", "serial")
REPO = Path(__file__).resolve().parent.parent
#: kept out of the working directory shipped to a cluster (caches, results, environments)
SHIP_EXCLUDES = [".git", ".venv", "runs", "**/__pycache__", "*.egg-info"]


def cell_key(cell: dict) -> str:
    """The first 16 hex digits of the SHA-256 of the cell's canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(cell, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cell_path(cache: Path, cell: dict) -> Path:
    return cache / f"{cell.get('name', 'cell')}-{cell_key(cell)}.json"


def start_ray(address: str | None = None, num_cpus: int | None = None, threads_per_task: int = 1):
    """Join ``address`` or start a local Ray with ``num_cpus`` CPUs; idempotent.  Returns the ``ray`` module."""
    import ray
    if ray.is_initialized():
        return ray
    env = {"OMP_NUM_THREADS": str(threads_per_task), "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    runtime_env = {"env_vars": env}
    if address is not None:  # a cluster's workers do not see this checkout: ship it
        env.pop("PYTHONPATH")
        runtime_env["working_dir"] = str(REPO)
        runtime_env["excludes"] = SHIP_EXCLUDES
    ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
             runtime_env=runtime_env, log_to_driver=False, logging_level="ERROR")
    return ray


def importable(fn: Callable) -> Callable:
    """``fn`` as workers can import it: a function of a module run as ``python -m pkg.mod`` lives in ``__main__``,
    which a Ray worker cannot import by that name, so it is taken from ``pkg.mod`` instead."""
    if getattr(fn, "__module__", None) != "__main__":
        return fn
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None:
        raise ValueError(f"{fn.__name__} is defined in a script run by path: run it as `python -m <module>` so "
                         "that Ray workers can import it")
    return getattr(importlib.import_module(spec.name), fn.__name__)


def _guarded(fn: Callable[[dict], dict], cell: dict) -> dict:
    """``fn(cell)``, or the exception as ``{"error", "traceback"}``: one failing cell never ends a sweep."""
    t0 = time.perf_counter()
    try:
        result = fn(cell)
    except Exception as exc:  # noqa: BLE001 -- recorded and reported, never hidden
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=8),
                "cell_seconds": round(time.perf_counter() - t0, 3)}
    if not isinstance(result, dict):
        return {"error": f"TypeError: cell function returned {type(result).__name__}, not a dict"}
    return {**result, "cell_seconds": round(time.perf_counter() - t0, 3)}


def run_cells(fn: Callable[[dict], dict], cells: Sequence[dict], cache: str | Path, *, engine: str = "ray",
              address: str | None = None, num_cpus: int | None = None, cpus_per_cell: float = 1,
              progress: bool = True, report_only: bool = False, desc: str = "cells") -> list[dict | None]:
    """One result per cell (see the module docstring); ``None`` for a missing cell under ``report_only``.

    ``fn`` must be a module-level function (Ray ships it by reference).  Each result carries ``"cell"`` (the
    config), ``"key"`` and ``"cached"`` (whether it was read back rather than run now).
    """
    from fuzz.layout import atomic_write_text
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    results: list[dict | None] = [None] * len(cells)
    todo = []
    for i, cell in enumerate(cells):
        path = cell_path(cache, cell)
        if path.is_file():
            results[i] = {**json.loads(path.read_text()), "cached": True}
        elif not report_only:
            todo.append(i)
    if not todo:
        return results

    def finish(i: int, result: dict) -> None:
        result = {**result, "cell": cells[i], "key": cell_key(cells[i])}
        if "error" not in result:
            atomic_write_text(cell_path(cache, cells[i]), json.dumps(result, indent=1, default=str))
        results[i] = {**result, "cached": False}

    bar = tqdm(total=len(todo), desc=desc, disable=not progress, unit="cell")
    if engine == "serial":
        for i in todo:
            finish(i, _guarded(fn, cells[i]))
            bar.update()
    else:
        threads = max(1, int(cpus_per_cell))
        ray = start_ray(address, num_cpus, threads)
        task = ray.remote(num_cpus=cpus_per_cell, max_retries=0)(_guarded)
        shipped = importable(fn)
        pending = {task.remote(shipped, cells[i]): i for i in todo}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 -- the worker itself died (killed, out of memory)
                    result = {"error": f"{type(exc).__name__}: {str(exc)[:2000]}"}
                finish(i, result)
                bar.update()
    bar.close()
    return results


def probe(cell: dict) -> dict:
    """A cell that reports where it ran (host, process, torch threads) and fails on request (``"fail"``)."""
    if cell.get("fail"):
        raise ValueError(f"probe {cell.get('i')} asked to fail")
    import torch
    return {"i": cell.get("i"), "host": socket.gethostname(), "pid": os.getpid(),
            "torch_threads": torch.get_num_threads()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="run probe cells on an engine and print where each ran")
    ap.add_argument("--engine", default="ray", choices=ENGINES)
    ap.add_argument("--address", default=None)
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--cells", type=int, default=4)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as cache:
        out = run_cells(probe, [{"name": "probe", "i": i, "nonce": time.time_ns()} for i in range(args.cells)],
                        cache, engine=args.engine, address=args.address, num_cpus=args.num_cpus, progress=False)
    for r in out:
        print(json.dumps({k: r.get(k) for k in ("i", "host", "pid", "torch_threads", "cell_seconds", "error")}))
    return 0 if all("error" not in r for r in out) else 1


if __name__ == "__main__":
    sys.exit(main())
