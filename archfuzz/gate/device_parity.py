"""The gate's ``parity`` stage: PyTorch float32 vs OpenVINO (CPU, every precision hint) on the default
checkpoint and on a fixed set of synthesized layouts chosen for the public exporter hazards (GQA in SDPA,
MoE routing with renormalised top-k, a shared expert, q/k norms, partial and interleaved RoPE, LayerNorm,
tied embeddings).  Passes when every subject meets the CPU f32 gate and no hint has a crash, hang or
inconsistency."""

from __future__ import annotations

import torch

from fuzz import DecoderSpec, LayerSpec, build, materialize
from fuzz.families import family_spec
from quant.parity import compare, load_subject


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
