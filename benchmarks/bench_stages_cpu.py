"""bench_verify's pipeline timed per stage in CPU seconds of this process (``time.process_time``), with the
layout sizes: on a shared machine CPU time moves less than wall time.  Uses only the API every tree since
6179e86 has, so another tree runs it with ``PYTHONPATH`` set to that tree:

    PYTHONPATH=TREE python benchmarks/bench_stages_cpu.py [--examples 150] [--json out.json]

Stages as in :mod:`benchmarks.bench_verify` (same seed, limits and round-robin transforms), ``build`` split from
``synthesize`` (what is left: hypothesis' drawing), and the mean node count of the drawn layouts.
"""

from __future__ import annotations

import argparse
import json
import time

t0 = time.process_time()
import torch  # noqa: E402
from hypothesis import given, seed, settings  # noqa: E402

import fuzz.profiles  # noqa: E402,F401
from fuzz import build, materialize, strategies as S  # noqa: E402
from fuzz.layout import atomic_write_text  # noqa: E402
from verifier import reference, verify  # noqa: E402

IMPORT_S = time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=150)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    clock = time.process_time
    names = [n for n in reference.names() if n != "identity"]
    st = {"synthesize": 0.0, "build": 0.0, "materialize": 0.0, "transform": 0.0, "verdict": 0.0}
    nodes: list[int] = []
    statuses: dict[str, int] = {}

    def timed(transform):
        def run(model, calib):
            t = clock()
            out = transform(model, calib)
            st["transform"] += clock() - t
            return out
        return run

    @seed(20261124)
    @settings(settings.get_profile("dev"), max_examples=args.examples, database=None, phases=["generate"])
    @given(spec=S.specs(max_hidden=128, max_layers=2), weight_seed=S.seeds())
    def one(spec, weight_seed):
        t1 = clock()
        layout = build(spec)
        t2 = clock()
        model = materialize(layout, seed=weight_seed % 1000)
        t3 = clock()
        before = st["transform"]
        verdict = verify(timed(reference.get(names[len(nodes) % len(names)], seed=1)), model, seed=1)
        st["verdict"] += (clock() - t3) - (st["transform"] - before)
        st["build"] += t2 - t1
        st["materialize"] += t3 - t2
        nodes.append(len(layout.order))
        statuses[str(verdict.status)] = statuses.get(str(verdict.status), 0) + 1

    start = clock()
    one()
    total = clock() - start
    st["synthesize"] = total - sum(v for k, v in st.items() if k != "synthesize")
    result = {"examples": len(nodes), "import_cpu_s": round(IMPORT_S, 3), "pipeline_cpu_s": round(total, 3),
              "layouts_per_cpu_s": round(len(nodes) / total, 2), "stages_cpu_s": {k: round(v, 3) for k, v in st.items()},
              "nodes_per_layout": round(sum(nodes) / len(nodes), 2), "statuses": statuses}
    print(json.dumps(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
