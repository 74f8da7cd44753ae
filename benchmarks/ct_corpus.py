"""Record the compressed-tensors peers' findings (``quant.ct_peers``) as minimal corpus entries.

    python -m benchmarks.ct_corpus [--dry-run] [--root corpus]

Each finding is one smallest family layout (one layer, the narrowest widths that show it) verified float64
everywhere (option ``precision="float64"``, so a fix would show as exact); the verdict must be the expected
one before anything is written (``record_failure``, deduplicated by signature).  The publicly reported
breaks that the installed versions no longer show are written with status ``fixed`` and the versions, so the
replay keeps them fixed.  A failing layout is then reduced by the campaign's own delta debugging
(``verifier.reduce.reduce_layout``, while the same failure -- status, first divergent op, exception and where
it raised -- reproduces) and recorded at the campaign's stage, so the main job (``archfuzz fuzz``) finds the
same signature and names the entry ``known``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

from fuzz import build
from fuzz.families import family_spec
from fuzz.errors import BadInput
from verifier import verify
from verifier.campaign import _group_key, _stage
from verifier.corpus import DEFAULT_ROOT, record_failure, versions
from verifier.outcomes import FAILING
from verifier.reduce import reduce_layout
from verifier.registry import resolve

SMALL = dict(n_layers=1, hidden=16, n_heads=2, n_kv_heads=1, head_dim=8, intermediate=32, vocab=32)


@dataclass
class Finding:
    peer: str
    family: str
    expect: str  # verdict status expected now
    note: str
    dims: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    status: str = "open"  # entry status

    def layout(self):
        dims = {**SMALL, **self.dims}
        if self.family == "stablelm":  # head_dim = hidden / n_heads there
            dims.pop("head_dim")
        return build(family_spec(self.family, **dims), name=self.family)


FINDINGS = [
    Finding("ct-spinquant", "llama", "diverged",
            "SpinQuantModifier centres the embedding rows (center_embeddings) before R1: invariant under LayerNorm, "
            "not under RMSNorm, so every Llama-style model moves (the 8e-3 logits MSE llm-compressor's own "
            "test_correctness tolerates); without the centring R1/R2 are exact"),
    Finding("ct-spinquant-random-matrix", "llama", "diverged",
            "transform_type='random-matrix' draws a uniform (non-orthogonal) R1; RMSNorm commutes only with "
            "orthogonal maps, so R1 cannot be fused through the norms: breaks even without the centring",
            options={"center": False}),
    Finding("ct-spinquant-r1234", "llama", "diverged",
            "R3 (q_attn + k_cache): compressed-tensors 0.20.1 hooks the key states through the attention's "
            "past_key_values / past_key_value kwarg, transformers 5.x names it `cache`, so its hooked cache is "
            "never called: queries are rotated, keys are not.  R4 alone is exact",
            options={"center": False}),
    Finding("ct-spinquant", "gemma", "diverged",
            "llm-compressor issue 2005 (SpinQuant on Gemma), reproduced as the norm fusion on Gemma's (1 + w) "
            "RMSNorm: fuse_norm_linears multiplies the stored w into the linears and sets w to ones, which "
            "Gemma reads as a scale of 2, and the Llama fallback mapping is used (no Gemma entry)",
            options={"center": False}),
    Finding("ct-spinquant", "phi3", "error",
            "Phi-3's fused qkv_proj: the Llama fallback's attn_v regex `.*v_proj$` also matches `qkv_proj`, while "
            "q_proj/k_proj match nothing, so the norm fusion's match_modules_set raises 'Found a final incomplete "
            "set' (partial rotary: with full rotary the layout converts as a Llama)",
            dims=dict(rotary_dim=4), options={"center": False}),
    Finding("ct-spinquant", "qwen3_moe", "error",
            "fused-expert MoE (Qwen3-MoE, Llama fallback mapping): the norm fusion's match_modules_set finds "
            "post_attention_layernorm with no up_proj/gate_proj Linear beside it (the experts' weights are fused "
            "parameters, the router is mlp.gate) and raises 'Found a final incomplete set'",
            options={"center": False}),
    Finding("ct-spinquant", "llama", "error",
            "non-power-of-two widths (SpinQuant issue 33, QuaRot issues 41/44): transform_type='hadamard' raises "
            "ValueError 'Cannot construct deterministic hadamard of size != 2^n' (found at hidden 24, reduced to 6)",
            dims=dict(hidden=24, n_heads=2, n_kv_heads=1, head_dim=8, intermediate=32), options={"center": False}),
    Finding("ct-spinquant-random-hadamard", "llama", "error",
            "non-power-of-two widths with transform_type='random-hadamard': a head_dim of 6 (no known Hadamard "
            "matrix of order 6) still asserts in compressed-tensors' _matmul_hadU",
            dims=dict(hidden=12, n_heads=2, n_kv_heads=1, head_dim=6, intermediate=32), options={"center": False}),
    Finding("ct-spinquant", "qwen2_moe", "diverged",
            "MoE with a shared expert (Qwen2-MoE): the shared expert's up/gate/down_proj complete the fallback's "
            "norm set, so nothing raises, but the router and the fused experts are no Linear the mapping names: "
            "R1 rotates the residual stream around them, a silent break (found by benchmarks.peer_campaign)",
            options={"center": False}),
    Finding("ct-spinquant", "stablelm", "error",
            "StableLM's parallel block (one shared LayerNorm before attention and MLP, no "
            "post_attention_layernorm): the fallback's {post_attention_layernorm, up_proj, gate_proj} set is "
            "incomplete and match_modules_set raises (found by benchmarks.peer_campaign)",
            dims=dict(use_parallel_residual=True), options={"center": False}),
    Finding("ct-spinquant", "stablelm", "diverged",
            "LayerNorm (StableLM, sequential residual): R1 is fused through a LayerNorm, whose mean subtraction "
            "does not commute with a Hadamard rotation (it maps the all-ones direction to a basis vector); "
            "llm-compressor keeps the module a LayerNorm (QuaRot/SliceGPT turn it into an RMSNorm over a mean-free "
            "stream) and leaves its bias: a silent break without the centring too; zeroing the LN biases and "
            "centring the residual writers does not rescue it (measured; found by benchmarks.peer_campaign)",
            options={"center": False}),
    Finding("ct-spinquant-b8", "llama", "error",
            "transform_block_size that does not divide hidden (found at 20, reduced to 4): compressed-tensors "
            "raises '8 must divide <hidden>' at the embedding (found by benchmarks.peer_campaign)",
            dims=dict(hidden=20, n_heads=2, n_kv_heads=1, head_dim=8), options={"center": False}),
    Finding("ct-quip", "llama", "error",
            "QuIP's online random-hadamard on a Linear width with no known Hadamard order (found at intermediate "
            "26, reduced to 6): 'Cannot construct random hadamard matrix of size <n>' (non-power-of-two widths, "
            "SpinQuant issue 33 / QuaRot 41, 44, for QuIP)",
            dims=dict(intermediate=26)),
    Finding("ct-quip-hadamard", "llama", "error",
            "QuIP with transform_type='hadamard' on a non-power-of-two Linear width (found at intermediate 24, "
            "reduced to 6): 'Cannot construct deterministic hadamard of size != 2^n'",
            dims=dict(intermediate=24)),
    Finding("ct-spinquant", "llama", "invariant",
            "SpinQuant issue 13 (a tied lm_head breaks the rotations: R1 applied to the shared weight twice) is "
            "fixed here: SpinQuantModifier unties the embeddings first (untie_word_embeddings), so on a tied "
            "Llama the untie + norm fusion + R1/R2 are exact (compressed-tensors 0.20.1, llm-compressor "
            "ab1ba3e as reproduced by quant.ct_peers); the centring finding is separate",
            dims=dict(tie_embeddings=True), options={"center": False}, status="fixed"),
    Finding("ct-spinquant-random-hadamard", "llama", "invariant",
            "non-power-of-two widths (SpinQuant issue 33, QuaRot issues 41/44) are fixed for widths that are a "
            "known Hadamard order times a power of two: random-hadamard on hidden 24 (12 x 2) and head_dim 12 is "
            "exact (compressed-tensors 0.20.1)",
            dims=dict(hidden=24, n_heads=2, n_kv_heads=1, head_dim=12, intermediate=48), options={"center": False},
            status="fixed"),
    Finding("ct-spinquant", "qwen2", "invariant",
            "q/k/v bias (which breaks auto-round's hadamard peers): compressed-tensors rotates a weight_output "
            "transform's bias too, so R2 on v_proj keeps Qwen2's v bias consistent: exact without the centring",
            options={"center": False}, status="fixed"),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=str(DEFAULT_ROOT))
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--no-reduce", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    bad = 0
    for f in FINDINGS:
        layout = f.layout()
        t = resolve(f"ct-peers:{f.peer}", precision="float64", **f.options)
        v = verify(t, layout, dtype=torch.float64, seed=0)
        ok = v.status == f.expect
        bad += not ok
        line = f"{f.peer:30s} {f.family:10s} {str(f.options):18s} {v.status:10s} {v.max_rel_err} {v.message[:120]}"
        if not ok or args.dry_run:
            print(("" if ok else f"UNEXPECTED (want {f.expect}) ") + line)
            continue
        if v.status in FAILING and not args.no_reduce:
            key = _group_key(v)

            def same(candidate, t=t, key=key) -> bool:
                try:
                    w = verify(t, candidate, dtype=torch.float64, seed=0)
                except BadInput:
                    return False
                return w.status in FAILING and _group_key(w) == key
            layout, _ = reduce_layout(layout, same)
            v = verify(t, layout, dtype=torch.float64, seed=0)
            line += f" -> reduced: hidden {layout.meta['spec']['hidden']}, {', '.join(layout.features())}"
        path, created = record_failure(v, layout, t, root=args.root, stage=_stage(v), status=f.status,
                                       note=f.note)
        if created and f.status == "fixed":
            import json
            meta = json.loads((path / "meta.json").read_text())
            meta["fixed_in"] = versions()
            (path / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
        print(f"{'new ' if created else 'have'} {path.name} {line}")
    return bad


if __name__ == "__main__":
    raise SystemExit(main())
