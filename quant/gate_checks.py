"""The gate's quantization and device-parity stages (registered in ``verifier.gate.EXTRA_CHECKS``).

* ``quantize-smoke`` -- a tiny synthesized Llama through the whole quantizer with RTN (auto-round
  ``iters=0``, W2 g16) for every recipe that ships: oracle gate, transform, unfold checked in float64,
  coverage.  Passes when every recipe's unfold agrees within ``UNFOLD_TOL`` and every weight is covered.
* ``parity`` -- PyTorch float32 vs OpenVINO (CPU, every precision hint) on the default checkpoint and on a
  fixed set of synthesized layouts chosen for the public exporter hazards (GQA in SDPA, MoE routing with
  renormalised top-k, a shared expert, q/k norms, partial and interleaved RoPE, LayerNorm, tied embeddings).
  Passes when every subject meets the CPU f32 gate and no hint has a crash, hang or inconsistency.
"""

from __future__ import annotations

import torch

from fuzz import DecoderSpec, LayerSpec, build, materialize
from fuzz.families import family_spec, to_transformers
from quant.quantize import RECIPES as QUANT_RECIPES
from quant.transforms import RECIPES as TRANSFORM_RECIPES

SMOKE_DIMS = dict(vocab=64, hidden=64, n_heads=4, n_kv_heads=2, head_dim=16, intermediate=128, n_layers=2)
# every quantizer recipe that is also a transform recipe, in the transform list's order, after "none"
SMOKE_RECIPES = ("none",) + tuple(r for r in TRANSFORM_RECIPES if r in QUANT_RECIPES)


def quantize_smoke(recipes: tuple[str, ...] = SMOKE_RECIPES) -> dict:
    """RTN through :func:`quant.quantize.quantize` on a tiny synthesized Llama, one row per recipe."""
    from quant.checkpoints import word_tokenizer
    from quant.quantize import UNFOLD_TOL, QuantConfig, quantize

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


def parity_layouts() -> dict[str, DecoderSpec]:
    """The fixed synthesized subjects of the parity stage, each named after the hazard it covers."""
    dims = dict(vocab=96, hidden=32, n_heads=4, n_kv_heads=2, head_dim=8, intermediate=48, n_layers=2)
    return {
        "llama-gqa": family_spec("llama", **dims),
        "qwen3-moe-qk-norm-renorm-topk": family_spec("qwen3_moe", **dims),
        "mixtral-moe": family_spec("mixtral", **dims),
        "phi3-partial-rope": family_spec("phi3", **dims, rotary_dim=4),
        "mqa-interleaved-rope-shared-expert-layernorm": DecoderSpec(
            vocab=80, hidden=24, n_heads=3, n_kv_heads=1, head_dim=8, intermediate=40, rope_style="interleaved",
            layers=(LayerSpec(), LayerSpec(sparse=True, rope=False)), n_experts=3, top_k=2, renormalize=True,
            shared_expert=True, norm="layer", norm_bias=True, placement="sandwich", tie_embeddings=True),
    }


def parity_checks(*, checkpoint: bool = True, seq: int = 32) -> dict:
    """:func:`quant.parity.compare` on CPU for every subject; one row per subject."""
    from quant.parity import compare, load_subject

    subjects = []
    for name, spec in parity_layouts().items():
        layout = build(spec)
        ids = torch.randint(0, spec.vocab, (2, 12), generator=torch.Generator().manual_seed(0))
        subjects.append((name, lambda layout=layout: materialize(layout, seed=1), ids))
    if checkpoint:
        model, ids, _ = load_subject(seq=seq)
        subjects.append(("SmolLM2-135M", lambda model=model: model, ids))
    rows = []
    for name, make, ids in subjects:
        report = compare(make(), ids, devices=["CPU"])
        f32 = next((r for r in report["rows"] if r["hint"] == "f32"), {})
        rows.append({"subject": name, "ok": bool(report["ok"]), "export": report["export"]["symptom"],
                     "f32_rel_err": f32.get("rel_err"), "f32_dppl": f32.get("dppl"),
                     "ref_ppl": report["reference"]["ppl"],
                     "symptoms": {r["hint"]: r["symptom"] for r in report["rows"]},
                     "effective": {r["hint"]: r.get("effective_precision") for r in report["rows"]}})
    return {"ok": all(r["ok"] for r in rows), "rows": rows}
