"""The online rotation's cost in OpenVINO, isolated: every FWHT BBT-spectral adds to SmolLM2-135M, per form.

SmolLM2-135M has 30 layers; per layer T1 needs 4 online rotations (one per distinct input,
``quant/online.py``): three of width 576 -> 1024 (q/k/v, o, gate/up) and one 1536 -> 2048 (down).  This script
chains those :class:`quant.online.OnlineRotation` modules (``--layers`` of the 30, scaled to 30) (each output sliced back to its input
width so that the next can read it; the ``none`` row is the same chain with the rotation replaced by the pad
alone, the baseline subtracted), exports each form through ``openvino.convert_model``, compiles it on CPU with the
f32 accuracy configuration (``quant.parity.compile_config``) and times one decoded token (1 x 1) and a 128-token
prefill, interleaved across forms (min and median).  Writes ``docs/data/online_rotation.json`` and prints a markdown table.

    python -m benchmarks.online_rotation [--repeats 200] [--out docs/data/online_rotation.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LAYERS, HIDDEN, INTER = 30, 576, 1536


class _Chain(nn.Module):
    def __init__(self, mode: str, layers: int = LAYERS):
        super().__init__()
        from fuzz.hadamard import next_pow2
        from quant.online import OnlineRotation
        self.mode = mode
        g = torch.Generator().manual_seed(0)
        rots = []
        for _ in range(layers):
            for d in (HIDDEN, HIDDEN, HIDDEN, INTER):
                s = torch.exp(0.1 * torch.randn(next_pow2(d), generator=g, dtype=torch.float64))
                rots.append(OnlineRotation(d, next_pow2(d), 1, s, "kron" if mode == "none" else mode))
        self.rots = nn.ModuleList(rots)

    def forward(self, x, y):
        for i, r in enumerate(self.rots):
            if i % 4 == 3:
                y = (F.pad(y, (0, r.d_pad - r.d_in)) if self.mode == "none" else r(y))[..., :r.d_in]
            else:
                x = (F.pad(x, (0, r.d_pad - r.d_in)) if self.mode == "none" else r(x))[..., :r.d_in]
        return x, y


def compiled(mode: str, tokens: int, layers: int):
    import openvino as ov

    from quant.parity import compile_config
    x, y = torch.randn(1, tokens, HIDDEN), torch.randn(1, tokens, INTER)
    with torch.no_grad():
        m = ov.convert_model(_Chain(mode, layers).eval(), example_input=(x, y))
    req = ov.Core().compile_model(m, "CPU", compile_config("CPU", "f32")).create_infer_request()
    return req, {0: x.numpy(), 1: y.numpy()}, len(m.get_ops())


def measure(tokens: int, repeats: int, layers: int) -> list[dict]:
    """Every form compiled, then timed interleaved (one call of each per round) so that the load of a shared
    machine falls on all alike; min and median per form, the pad-only chain subtracted, scaled to 30 layers."""
    reqs = {mode: compiled(mode, tokens, layers) for mode in MODES}
    times = {mode: [] for mode in MODES}
    for r in range(repeats + 3):
        for mode, (req, feed, _) in reqs.items():
            t = time.perf_counter()
            req.infer(feed)
            if r >= 3:
                times[mode].append(time.perf_counter() - t)
    rows = []
    for mode in MODES:
        mn, med = 1e3 * min(times[mode]), 1e3 * float(np.median(times[mode]))
        base_mn, base_med = 1e3 * min(times["none"]), 1e3 * float(np.median(times["none"]))
        scale = LAYERS / layers
        rows.append({"mode": mode, "tokens": tokens, "layers_measured": layers, "rotations_measured": 4 * layers,
                     "ir_ops": reqs[mode][2], "min_ms": mn, "median_ms": med,
                     "smollm2_rotation_ms_min": (mn - base_mn) * scale, "smollm2_rotation_ms_median": (med - base_med) * scale,
                     "smollm2_rotation_ms_per_token_min": (mn - base_mn) * scale / tokens})
    return rows


MODES = ("none", "kron", "butterfly", "dense")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--layers", type=int, default=4, help="layers of SmolLM2's rotations chained (scaled to 30)")
    ap.add_argument("--out", default="docs/data/online_rotation.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for tokens, reps in ((1, args.repeats), (128, max(10, args.repeats // 10))):
        for r in measure(tokens, reps, args.layers):
            rows.append(r)
            print(json.dumps(r), flush=True)
    import openvino as ov
    out = {"what": "120 online rotations of SmolLM2-135M (30 layers x 3 of 576->1024 and 1 of 1536->2048) in "
                   "OpenVINO CPU, f32 accuracy config: --layers layers chained and timed interleaved, minus the pad-only "
                   "chain ('none'), scaled to 30 layers; min is the least disturbed by a shared machine",
           "command": "python -m benchmarks.online_rotation", "openvino": ov.__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print("| form | tokens | chain min / median ms | SmolLM2 rotations ms (min) | per token ms (min) | IR ops |\n"
          "|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['tokens']} | {r['min_ms']:.3f} / {r['median_ms']:.3f} | "
              f"{r['smollm2_rotation_ms_min']:.3f} | {r['smollm2_rotation_ms_per_token_min']:.4f} | {r['ir_ops']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
