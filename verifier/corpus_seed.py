"""Seed the corpus with the real failure modes of the method (as mutants the oracle must keep catching)
and with the refusals the transform library must keep making.

    archfuzz corpus seed [--root corpus/]

Each mutant's minimal failing layout is found by hypothesis (``find`` shrinks it) under the mutant's
applicability constraints, reduced further by :func:`verifier.reduce.reduce_layout`, and recorded with
``kind = "mutant"``, only when it ran and the oracle caught it (``verifier.outcomes.CAUGHT``).  Each
expected refusal is a small layout on which a real transform must refuse (status ``expected-refusal``):
silently transforming it later would be a regression.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, find, settings

from fuzz import DecoderSpec, build, strategies as S

from . import mutants
from .corpus import DEFAULT_ROOT, record_failure
from .oracle import verify
from .outcomes import CAUGHT, Stage, Status
from .reduce import reduce_layout
from .registry import resolve

EXPECTED_REFUSALS = [
    ("quant:norm-absorb", DecoderSpec(tie_embeddings=True), "the final norm under tied embeddings"),
    ("quant:norm-absorb", DecoderSpec(placement="post"), "a post-norm output feeds the residual"),
    ("quant:residual-rotation", DecoderSpec(norm="layer"), "LayerNorm on the residual stream"),
    ("quant:pair-pca", DecoderSpec(qk_norm="per_head"), "a q/k norm before RoPE"),
    ("quant:spectral-pca", DecoderSpec(qk_norm="per_head", norm="layer"), "a LayerNorm q/k norm"),
    ("quant:moe-absorb", DecoderSpec(), "no MoE"),
]


def seed_mutants(root: Path, names: list[str] | None = None) -> list[tuple[str, Path, bool]]:
    out = []
    for name in names or mutants.names():
        transform = mutants.get(name)
        constraints = mutants.APPLIES.get(name, {})

        def fails(layout, transform=transform):
            return verify(transform, layout).status == Status.DIVERGED

        layout = find(S.layouts(**constraints), fails,
                      settings=settings(max_examples=200, database=None, derandomize=True, deadline=None,
                                        suppress_health_check=list(HealthCheck)))
        first = verify(transform, layout)
        op = (first.first_divergent or {}).get("op")
        layout, _ = reduce_layout(layout, lambda c: (v := verify(transform, c)).status == Status.DIVERGED
                                  and (v.first_divergent or {}).get("op") == op)
        verdict = verify(transform, layout)
        if verdict.status not in CAUGHT:  # never record a mutant that did not run and break the function
            raise AssertionError(f"mutant {name} is not caught on its reduced layout: {verdict}")
        path, created = record_failure(verdict, layout, transform, root=root, kind="mutant",
                                       note=f"known-buggy transform {name} (verifier/mutants.py)")
        out.append((name, path, created))
    return out


def seed_refusals(root: Path) -> list[tuple[str, Path, bool]]:
    out = []
    for name, spec, why in EXPECTED_REFUSALS:
        transform = resolve(name)
        layout = build(spec)
        verdict = verify(transform, layout)
        if not verdict.refused:
            raise AssertionError(f"{name} was expected to refuse on {why}: {verdict}")
        path, created = record_failure(verdict, layout, transform, root=root, stage=Stage.TRANSFORM,
                                       status="expected-refusal", note=why)
        out.append((name, path, created))
    return out


# third-party findings (auto-round 0.16.1 apply_rotation, see quant/peers.py): (peer, family, dims, why)
_POW2 = dict(vocab=64, hidden=32, n_heads=4, n_kv_heads=2, head_dim=8, intermediate=64, n_layers=1)
PEER_FINDINGS = [
    ("peers:autoround-hadamard", "qwen2", _POW2, "q/k/v bias: v_proj rows rotated per head, its bias not"),
    ("peers:autoround-quarot", "qwen2", _POW2, "q/k/v bias left unrotated by the quarot preset"),
    ("peers:autoround-hadamard", "qwen3_moe", _POW2, "fused 3D experts: AttributeError 'up_proj'"),
    ("peers:autoround-hadamard", "llama", {**_POW2, "n_heads": 3, "n_kv_heads": 1, "hidden": 24},
     "non-power-of-two head count: get_hadK assertion"),
]


def seed_peers(root: Path) -> list[tuple[str, Path, bool]]:
    """Open findings in auto-round's rotations, checked in float32 (transformers' own precision)."""
    import torch

    from fuzz.families import family_spec
    out = []
    for name, family, dims, why in PEER_FINDINGS:
        transform = resolve(name)
        layout = build(family_spec(family, **dims))
        verdict = verify(transform, layout, dtype=torch.float32)
        if verdict.status not in (Status.DIVERGED, Status.ERROR):
            continue  # fixed upstream: nothing to record
        stage = Stage.TRANSFORM if verdict.status == Status.ERROR else Stage.VERIFY
        path, created = record_failure(verdict, layout, transform, root=root, stage=stage, note=why)
        out.append((name, path, created))
    return out


def seed(root: str | Path = DEFAULT_ROOT) -> list[tuple[str, Path, bool]]:
    root = Path(root)
    return seed_mutants(root) + seed_refusals(root) + seed_peers(root)
