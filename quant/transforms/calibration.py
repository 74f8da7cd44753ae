"""Calibration statistics, collected from activations in one pass over the calibration token ids.

All sums are accumulated in float64 over every calibration token:

* ``energy[node]``        ``E[x_l^2]`` of the node's output, per channel (the basis where T2's ``s`` acts)
* ``wht_energy[node]``    ``E[h_l^2]`` with ``h = [x, 0] Q`` of the node's *input*, ``Q`` T1's rotation in the
                           form asked for (``fuzz.hadamard.rotation``): all ``d_pad`` coordinates of the padded form,
                           as the paper defines ``rho``; ``d_in`` of the block (``Q_b``) and exact (``Q_n``) forms
* ``head_cov[node]``      ``E[y_h y_h^T]`` per head block of the node's output (T4 / T5), shape
                           ``(heads, block, block)``
* ``expert_energy[node]`` per expert, ``E[m_e^2]`` of the intermediate ``act(gate_e x) * up_e x`` over the
                           tokens routed to it, shape ``(E, I)`` (T6), and ``expert_tokens`` the counts
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch

from fuzz.hadamard import rotation
from fuzz.materialize import GraphModel
from verifier.transform import Calibration


# telemetry: seconds spent in calibration passes since the process started (benchmarks read it)
TELEMETRY = {"seconds": 0.0, "passes": 0}


def energy_scales(energy: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = (1 + d * rho)^alpha`` with ``rho = e / sum(e)`` and ``d = len(e)``: s >= 1, uniform -> 2^alpha."""
    total = energy.sum()
    rho = energy / total if total > 0 else torch.full_like(energy, 1.0 / energy.numel())
    return (1.0 + energy.numel() * rho) ** alpha


def collect(model: GraphModel, calib: Calibration, *, energy=(), wht_energy=(), head_cov=(),
            expert_energy=()) -> dict[str, dict]:
    """Run the calibration ids once and return ``{kind: {node: tensor}}`` (see the module docstring).

    ``wht_energy`` takes ``(node, form)`` pairs (``form``: T1's ``block`` value), ``head_cov`` ``(node, heads)``.
    """
    started = time.perf_counter()
    sums: dict[str, dict] = defaultdict(dict)
    counts: dict[str, dict] = defaultdict(dict)
    handles = []

    def add(kind, node, value, n):
        if node in sums[kind]:
            sums[kind][node] += value
            counts[kind][node] += n
        else:
            sums[kind][node], counts[kind][node] = value, n

    def rows(t):
        return t.detach().reshape(-1, t.shape[-1]).double()

    for node in energy:
        handles.append(model.nodes[node].register_forward_hook(
            lambda m, a, out, node=node: add("energy", node, rows(out).pow(2).sum(0), rows(out).shape[0])))
    for node, form in wht_energy:
        def hook(m, args, out, node=node, form=form):
            x = rows(args[0])
            add("wht_energy", node, rotation(form, x.shape[1]).apply(x).pow(2).sum(0), x.shape[0])
        handles.append(model.nodes[node].register_forward_pre_hook(lambda m, a, hook=hook: hook(m, a, None)))
    for node, heads in head_cov:
        def hook(m, args, out, node=node, heads=heads):
            y = rows(out).reshape(-1, heads, out.shape[-1] // heads)
            add("head_cov", node, torch.einsum("nhi,nhj->hij", y, y), y.shape[0])
        handles.append(model.nodes[node].register_forward_hook(hook))
    for node in expert_energy:
        def hook(m, args, out, node=node):
            x, w = rows(args[0]), rows(args[1])
            inter = m.p["intermediate"]
            e_sum = torch.zeros(m.p["n_experts"], inter, dtype=torch.float64)
            e_cnt = torch.zeros(m.p["n_experts"], dtype=torch.float64)
            for e in range(m.p["n_experts"]):
                routed = w[:, e] != 0
                if routed.any():
                    xe = x[routed] * w[routed, e, None] if m.p["scale_input"] else x[routed]  # Llama 4
                    mid = m.intermediate(xe.to(m.gate_up_proj.dtype), e).double()
                    e_sum[e] = mid.pow(2).sum(0)
                    e_cnt[e] = routed.sum()
            add("expert_energy", node, e_sum, 0)
            sums["expert_tokens"][node] = sums["expert_tokens"].get(node, 0) + e_cnt
        handles.append(model.nodes[node].register_forward_hook(hook))
    try:
        with torch.no_grad():
            for batch in calib.batches(size=max(1, calib.input_ids.shape[0])):
                model(batch)
    finally:
        for h in handles:
            h.remove()
        TELEMETRY["seconds"] += time.perf_counter() - started
        TELEMETRY["passes"] += 1
    out: dict[str, dict] = {}
    for kind, per_node in sums.items():
        if kind == "expert_tokens":
            out[kind] = dict(per_node)
            continue
        if kind == "expert_energy":
            out[kind] = {n: v / sums["expert_tokens"][n].clamp(min=1)[:, None] for n, v in per_node.items()}
            continue
        out[kind] = {n: v / max(counts[kind][n], 1) for n, v in per_node.items()}
    return out
