"""The gate's checkpoint stage: every recipe on the default real checkpoint (SmolLM2-135M), proved in
float64 on the imported GraphModel and checked in float32 on the transformers module that ships."""

from __future__ import annotations

import torch

import quant.transforms as T
from fuzz.importer import import_model
from quant.checkpoints import load_default_checkpoint
from verifier.oracle import verify


def check_checkpoint(recipes: list[str] | None = None) -> dict:
    """Every recipe (default: ``quant.transforms.RECIPES``, in its order) on the default checkpoint."""
    model, _ = load_default_checkpoint(torch.float32)
    graph = import_model(model)  # checked against the transformers model first (fuzz.importer.check_import)
    checked = graph.layout.meta["import_check"]  # its floor ("exact" / "float32") goes into the report
    rows = []
    for recipe in (T.RECIPES if recipes is None else recipes):  # verify works on private copies: the checkpoint is loaded once
        proof = verify(T.get(recipe), graph, dtype=torch.float64, batch=1, seq=16, calib_batch=2)
        ships = verify(T.get(recipe, host="transformers"), model, dtype=torch.float32, batch=1, seq=16,
                       calib_batch=2)
        rows.append({"recipe": recipe, "float64": proof.status, "float64_rel": proof.max_rel_err,
                     "float32": ships.status, "float32_rel": ships.max_rel_err,
                     "ok": proof.ok and ships.ok})
    return {"ok": all(r["ok"] for r in rows), "rows": rows,
            "import_check": {k: checked[k] for k in ("floor", "max_rel_err", "bound", "lengths", "downcasts")}}
