"""The gate's ``quantize-smoke`` stage: a tiny synthesized Llama through the whole quantizer with RTN
(auto-round ``iters=0``, W2 g16) for every recipe that ships: oracle gate, transform, unfold checked in
float64, coverage.  Passes when every recipe's unfold agrees within ``UNFOLD_TOL`` and every weight is
covered."""

from __future__ import annotations

import torch

from fuzz import build, materialize
from fuzz.families import family_spec, to_transformers
from quant.checkpoints import word_tokenizer
from quant.quantize import RECIPES as QUANT_RECIPES
from quant.quantize import UNFOLD_TOL, QuantConfig, quantize
from quant.transforms import RECIPES as TRANSFORM_RECIPES

SMOKE_DIMS = dict(vocab=64, hidden=64, n_heads=4, n_kv_heads=2, head_dim=16, intermediate=128, n_layers=2)
# every quantizer recipe that is also a transform recipe, in the transform list's order, after "none"
SMOKE_RECIPES = ("none",) + tuple(r for r in TRANSFORM_RECIPES if r in QUANT_RECIPES)


def quantize_smoke(recipes: tuple[str, ...] = SMOKE_RECIPES) -> dict:
    """RTN through :func:`quant.quantize.quantize` on a tiny synthesized Llama, one row per recipe."""
    cfg = QuantConfig(bits=2, group_size=16, iters=0, nsamples=4, seqlen=32, batch_size=2)
    windows = torch.randint(0, SMOKE_DIMS["vocab"], (4, 32), generator=torch.Generator().manual_seed(0))
    rows = []
    for recipe in recipes:
        model = to_transformers(materialize(build(family_spec("llama", **SMOKE_DIMS)), seed=3)).float().eval()
        try:
            report = quantize(model, word_tokenizer(SMOKE_DIMS["vocab"]), recipe, cfg, windows)
        except Exception as exc:  # a refusal or a crash is a failed smoke, reported with its message
            rows.append({"recipe": recipe, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
            continue
        unfold, cov = report["unfold"], report["coverage"]
        ok = bool(unfold["checked"] and unfold["max_rel_err_f64"] <= UNFOLD_TOL and cov["ok"])
        rows.append({"recipe": recipe, "ok": ok, "gate": (report["gate"] or {}).get("status", "-"),
                     "unfold_rel_f64": unfold["max_rel_err_f64"], "quantized": cov["counts"].get("quantized", 0),
                     "excluded": cov["counts"].get("excluded", 0)})
    return {"ok": all(r["ok"] for r in rows), "rows": rows}
