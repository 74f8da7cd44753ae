"""The import check (``fuzz.importer.check_import``) over transformers decoder families: accepted exact,
accepted at transformers' float32 floor, or refused with the first divergent module.

    python -m benchmarks.import_check_families [--json runs/import_check/results.json]

Tiny float64 instances (vocab 64, hidden 32, 2 layers, 4 heads / 2 KV heads, head_dim 8, random weights,
``max_position_embeddings`` 128): every family the project registers (``fuzz.families``: a synthesized
layout copied into the transformers class), and, built from each transformers config's defaults with the
dims above (windows set to 8 where the config has one, MoE with 4 experts, top-2, and the model cast to
float64 as a whole), Mistral, Mixtral, Phi-3, Starcoder2, Qwen2 with a window in its second layer only,
Cohere, Helium, Ernie-4.5, GLM-4-MoE, MPT, MiniCPM5-MoE and Solar-Open.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch


DIMS = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=128, pad_token_id=None, bos_token_id=None,
            eos_token_id=None)
_MOE = dict(moe_intermediate_size=16, num_experts_per_tok=2, n_routed_experts=4, n_shared_experts=1)
# name -> (transformers class prefix, config overrides on top of DIMS)
CONFIG_FAMILIES = {
    "mistral (sliding_window=8)": ("Mistral", dict(sliding_window=8)),
    "mixtral (sliding_window=8)": ("Mixtral", dict(sliding_window=8, num_local_experts=4, num_experts_per_tok=2)),
    "phi3 (sliding_window=8)": ("Phi3", dict(sliding_window=8)),
    "starcoder2 (sliding_window=8)": ("Starcoder2", dict(sliding_window=8)),
    "qwen2 (sliding_window=8 in layer 1 of 2)": ("Qwen2", dict(use_sliding_window=True, sliding_window=8,
                                                                 max_window_layers=1)),
    "cohere": ("Cohere", {}),
    "helium": ("Helium", {}),
    "ernie4_5": ("Ernie4_5", {}),
    "glm4_moe": ("Glm4Moe", dict(first_k_dense_replace=1, **_MOE)),
    "minicpm5_moe": ("MiniCPM5Moe", dict(mlp_layer_types=["dense", "sparse"], **_MOE)),
    "solar_open": ("SolarOpen", _MOE),
    "mpt": ("Mpt", dict(d_model=32, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=128, vocab_size=64)),
}


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random: 1-D ones around 1 (norm weights, biases), matrices ~ N(0, 1/fan_in)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            z = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            p.copy_(1.0 + 0.3 * z if p.dim() == 1 else z / math.sqrt(p.shape[-1]))
    return model.eval()


def from_config(name: str, seed: int = 0) -> torch.nn.Module:
    """A tiny float64 instance of a ``CONFIG_FAMILIES`` entry (or of a transformers class prefix)."""
    import transformers as tf
    prefix, extra = CONFIG_FAMILIES.get(name, (name, {}))
    cfg_cls, cls = getattr(tf, f"{prefix}Config"), getattr(tf, f"{prefix}ForCausalLM")
    return instantiate(cls, cfg_cls(**({} if prefix == "Mpt" else DIMS), **extra), seed)


def instantiate(cls, cfg, seed: int = 0) -> torch.nn.Module:
    """``cls`` built from ``cfg`` in float64 with :func:`randomize` weights (fused experts as the eager loop,
    what the recorder contracts; routers the class keeps in float32 made float64 too)."""
    try:
        model = cls._from_config(cfg, dtype=torch.float64, experts_implementation="eager")
    except (TypeError, ValueError):
        model = cls._from_config(cfg, dtype=torch.float64)
    return randomize(model.to(torch.float64), seed)


def from_registry(family: str) -> torch.nn.Module:
    """A tiny instance of a family ``fuzz.families`` registers (as tests/quant/test_real_models.py builds it)."""
    from fuzz import build, materialize
    from fuzz.families import family_spec, to_transformers
    dims = dict(vocab=64, hidden=32, n_heads=4, n_kv_heads=2, head_dim=8, intermediate=48, n_layers=2)
    if family == "stablelm":
        dims.pop("head_dim")
    return to_transformers(materialize(build(family_spec(family, **dims)), seed=3))


def outcome(model: torch.nn.Module) -> dict:
    """The import check's outcome on ``model``: accepted (floor, error, bound) or refused (the message)."""
    from fuzz.errors import BadInput
    from fuzz.importer import import_model
    t0 = time.perf_counter()
    try:
        layout = import_model(model).layout
        checked = layout.meta["import_check"]
        windows = [layout.params(n)["window"] for n in layout.of_op("attention")]
    except BadInput as exc:
        return {"outcome": "refused", "message": str(exc), "seconds": round(time.perf_counter() - t0, 2)}
    return {"outcome": f"accepted {checked['floor']}", "max_rel_err": min(checked["max_rel_err"].values()),
            "bound": checked["bound"], "lengths": checked["lengths"], "downcasts": checked["downcasts"],
            **({"windows": windows} if any(w is not None for w in windows) else {}), "padded": checked.get("padded"),
            "seconds": round(time.perf_counter() - t0, 2)}


def _cell(r: dict) -> str:
    if r["outcome"] == "refused":
        msg = r["message"]
        first = msg.split("first divergent node ", 1)[-1].split(";")[0] if "first divergent" in msg else msg[:160]
        at = msg.split(" at (", 1)[-1].split(")")[0] if " at (" in msg else "?"
        window = " **sliding window (measured)**" if "sliding window" in msg else ""
        return f"refused at ({at}) ids: {first}{window}"
    windows = f", measured windows {r['windows']}" if r.get("windows") else ""
    return f"{r['outcome']}: {r['max_rel_err']:.2e} (bound {r['bound']:.2e}, downcasts {r['downcasts']}{windows})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from fuzz.families import FAMILIES
    rows = []
    for family in FAMILIES:
        rows.append({"family": family, "built": "fuzz.families", **outcome(from_registry(family))})
    for name in CONFIG_FAMILIES:
        rows.append({"family": name, "built": "config defaults", **outcome(from_config(name))})
    print("| family | built from | import check |\n|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['built']} | {_cell(r)} |")
    if args.json:
        from fuzz.layout import atomic_write_text
        atomic_write_text(Path(args.json), json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
