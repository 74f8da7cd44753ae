"""Layer-local W2 error of T1's padded and group-aligned block forms on SmolLM2-135M, without auto-round.

For every linear ``y = x W^T`` of the checkpoint and each basis (``none``: ``W`` itself; ``bbt-spectral``: the
padded ``W~ = [W, 0] Q D``; ``bbt-spectral-block``: ``W~ = W Q_b D``; ``bbt-spectral-exact``: the exact-width full
Hadamard ``W~ = W Q_n D``), the weight is rounded to nearest on the
asymmetric min/max grid of ``bits`` bits per group of ``group`` input columns, ``R(W~)``, and the error it makes
on the layer's output is measured on evaluation tokens through the transformed input ``x~``:

    err = ||x~ (R(W~) - W~)^T||_F / ||x W^T||_F            (x~ W~^T = x W^T exactly)

The scales ``D`` come from calibration windows (``quant.quantize.prepare``, the same path ``archfuzz quantize``
takes); the errors are accumulated over the evaluation windows, averaged over the linears (and per kind).  The
padded form rounds a wider matrix (``d_pad`` columns: more weights and more groups per row), part of whose error
falls outside the ``d_in``-dimensional span of ``x~`` and costs nothing; the block and exact forms round exactly
the plain weight count (the exact form mixing every coordinate, as the padded one does).  No auto-round: this isolates the basis, not the tuning.  Writes ``docs/data/block_rtn_error.json``
and prints a markdown table.

``--alpha-search`` adds the padded form with alpha chosen per linear (``bbt-spectral-alpha-search`` over its grid, for
this ``--bits`` / ``--group``), and from its ``transform_log`` the per-linear choice (a histogram by kind) and the
calibration err the choice minimises, ``err_l(alpha) = sum_j E[h_j^2] / s_j^2 sum_i (W~ - R(W~))_ij^2`` (its
diagonal approximation on the calibration windows), summed over the linears at each global alpha of the grid and at
the per-linear choice.

    python -m benchmarks.block_rtn_error [--bits 2] [--alphas 0 0.25] [--recipes ...] [--alpha-search] [--tokens 512] [--out docs/data/block_rtn_error.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from quant.transforms.rtn import rtn

DATA = Path(__file__).resolve().parent.parent / "docs" / "data"
BASES = ("bbt-spectral", "bbt-spectral-block", "bbt-spectral-exact")
KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SEARCH = "bbt-spectral-alpha-search"


def search_summary(log: list[dict]) -> dict:
    """From T1's ``transform_log`` with an alpha grid: chosen alphas by linear kind, and the calibration err summed
    over the linears at each global alpha and at the per-linear choice (in total and by kind)."""
    rows = [e for e in log if "alpha_search" in e]
    grid = rows[0]["alpha_search"]["grid"]
    kind = {e["node"]: next((k for k in KINDS if k in e["node"]), "other") for e in rows}
    kinds = [k for k in KINDS + ("other",) if k in kind.values()]
    chosen = {k: {str(a): sum(1 for e in rows if kind[e["node"]] == k and e["alpha"] == a) for a in grid}
              for k in kinds}

    def totals(of):
        sel = [e for e in rows if of(e)]
        return {"global": {str(a): sum(e["alpha_search"]["err"][i] for e in sel) for i, a in enumerate(grid)},
                "per_linear": sum(min(e["alpha_search"]["err"]) for e in sel), "linears": len(sel)}
    return {"grid": grid, "chosen_by_kind": chosen, "calib_err": totals(lambda e: True),
            "calib_err_by_kind": {k: totals(lambda e, k=k: kind[e["node"]] == k) for k in kinds},
            "per_linear": {e["node"]: {"alpha": e["alpha"], "err": e["alpha_search"]["err"]} for e in rows}}


def layer_errors(model, ids: torch.Tensor, bits: int, group: int) -> dict[str, dict]:
    """``{module path: {"err": ...}}`` for every ``nn.Linear`` but the lm_head, over ``ids``."""
    from torch import nn
    sums: dict[str, list[float]] = {}
    handles = []
    for path, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or path.endswith("lm_head"):
            continue
        w = mod.weight.detach().double()
        dw = rtn(w, bits, group) - w
        sums[path] = [0.0, 0.0]

        def hook(m, args, out, path=path, dw=dw):
            x = args[0].detach().double().reshape(-1, dw.shape[1])  # x~: the pre-hooks already ran
            sums[path][0] += (x @ dw.T).pow(2).sum().item()
            sums[path][1] += out.detach().double().pow(2).sum().item()
        handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for row in ids:
                model(input_ids=row[None], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {p: {"err": (e / max(y, 1e-300)) ** 0.5} for p, (e, y) in sums.items()}


def main(argv=None) -> int:
    from fuzz.layout import atomic_write_text
    from quant.checkpoints import load_checkpoint
    from quant.quantize import prepare, text_ids
    from quant.text import calibration_windows

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--group", type=int, default=64)
    p.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25])
    p.add_argument("--recipes", nargs="+", default=list(BASES), choices=BASES)
    p.add_argument("--alpha-search", action="store_true", help=f"also {SEARCH} (alpha chosen per linear)")
    p.add_argument("--tokens", type=int, default=512, help="evaluation tokens (windows of 256)")
    p.add_argument("--calib-text", default="/work/shared/data/wikitext-2-valid-unk.txt")
    p.add_argument("--eval-text", default="/work/shared/data/wikitext-2-raw-test.raw")
    p.add_argument("--out", default=str(DATA / "block_rtn_error.json"))
    args = p.parse_args(argv)
    t0 = time.time()
    base, tok = load_checkpoint(None)
    calib_ids, _ = text_ids(tok, args.calib_text, "calibration")
    eval_ids, _ = text_ids(tok, args.eval_text, "evaluation")
    windows = calibration_windows(calib_ids, 8, 256, 0)  # the cpu preset's nsamples / seqlen, seed 0
    ids = eval_ids[: args.tokens // 256 * 256].reshape(-1, 256)
    variants = [("none", None)] + [(r, a) for r in args.recipes for a in args.alphas]
    variants += [(SEARCH, None)] if args.alpha_search else []
    out = {"checkpoint": "SmolLM2-135M", "bits": args.bits, "group": args.group, "eval_tokens": ids.numel(),
           "calib": "8 x 256 calibration windows, seed 0", "rounding": "min/max asymmetric RTN", "rows": []}
    for recipe, alpha in variants:
        model = copy.deepcopy(base)
        prepared = None
        if recipe != "none":
            prepared = prepare(model, recipe, windows, alpha=alpha, bits=args.bits, group_size=args.group)
        errs = layer_errors(model, ids, args.bits, args.group)
        per_kind = {k: statistics.fmean(v["err"] for p, v in errs.items() if p.endswith(k)) for k in KINDS}
        cols = {p.rsplit(".", 1)[0]: m.weight.shape[1] for p, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and not p.endswith("lm_head")}
        row = {"recipe": recipe, "alpha": alpha, "mean_err": statistics.fmean(v["err"] for v in errs.values()),
               "per_kind": per_kind, "weights": sum(m.weight.numel() for p, m in model.named_modules()
                                                     if isinstance(m, torch.nn.Linear) and not p.endswith("lm_head")),
               "in_features": sorted(set(cols.values()))}
        if recipe == SEARCH:
            row["alpha_search"] = search_summary(prepared.log)
            print(json.dumps({k: row["alpha_search"][k] for k in ("chosen_by_kind", "calib_err")}), flush=True)
        out["rows"].append(row)
        print(f"{recipe} a{alpha}: mean relative output error {row['mean_err']:.4f} "
              f"({time.time() - t0:.0f} s)", flush=True)
        del model
    out["seconds"] = time.time() - t0
    atomic_write_text(args.out, json.dumps(out, indent=1))
    print("| basis | alpha | weights | mean rel. output error | " + " | ".join(KINDS) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(KINDS))
    for r in out["rows"]:
        print(f"| {r['recipe']} | {r['alpha']} | {r['weights']:,} | {r['mean_err']:.4f} | "
              + " | ".join(f"{r['per_kind'][k]:.4f}" for k in KINDS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
