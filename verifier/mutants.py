"""Known-buggy transforms: each is a real failure mode of rotation/scaling quantizers (most from the
seed paper's code), kept so the tests can show the oracle has teeth.  Never use them for anything else.

=====================  ==========================================================  ==========================
name                   bug                                                         applies when
=====================  ==========================================================  ==========================
gproj_omission         norm absorption misses the linear that feeds a gate's       a gate logit projection
                       logits (the seed code's ``g_proj``: softplus(Wx/s) !=        reads a norm (head gate,
                       softplus(Wx)/s)                                             shared-expert gate)
skip_norm_consumer     norm absorption leaves one reader of each norm unscaled     a norm has >= 2 readers
router_unscaled        norm absorption leaves the MoE router unscaled              MoE
expert_wrong_axis      fused experts scaled on the output H axis (down_proj)       MoE
                       instead of gate_up_proj's input axis
pair_reflection        RoPE pair "rotation" with det -1 (an eigh reflection)        RoPE on plain q/k
forget_pair_bias       pair rotation applied to weight rows, not to the biases     RoPE and q/k biases
float32_rotation       rotation angles built in float32 inside a float64 model     plain q/k
forget_writer_bias     residual permutation that leaves writer biases unpermuted   o / down biases
cross_group_heads      query heads permuted across GQA groups                      n_kv_heads > 1
symmetric_gamma        spectral-PCA with Gamma = U^T diag(g) U (the seed code's     an RMS q/k norm
                       stale form) instead of diag(g) U
=====================  ==========================================================  ==========================
"""

from __future__ import annotations

import importlib

from fuzz.errors import BadInput
from fuzz.layout import Layout

from .transform import NamedTransform


def _feeds(op: str, port: int | None = None):
    """A consumer predicate: the linear's output is read by an ``op`` node (at ``port``)."""
    def pred(layout: Layout, consumer: str) -> bool:
        return any(layout.op(c) == op and (port is None or p == port) for c, p in layout.consumers(consumer))
    return pred


def _last_reader(layout: Layout, consumer: str) -> bool:
    return any(readers and readers[-1][0] == consumer
               for readers in (layout.consumers(n) for n, _ in layout.graph.in_edges(consumer)))


# name -> (registry module, transform name, the bug's options)
MUTANTS = {
    "gproj_omission": ("quant.transforms", "norm-absorb", {"on_unsupported": "skip", "skip": _feeds("gate", 1)}),
    "skip_norm_consumer": ("quant.transforms", "norm-absorb", {"on_unsupported": "skip", "skip": _last_reader}),
    "router_unscaled": ("quant.transforms", "norm-absorb", {"on_unsupported": "skip", "skip": _feeds("router")}),
    "expert_wrong_axis": ("quant.transforms", "norm-absorb", {"on_unsupported": "skip", "wrong_expert_axis": True}),
    "pair_reflection": ("quant.transforms", "pair-pca", {"force_det": False}),
    "forget_pair_bias": ("quant.transforms", "pair-pca", {"rotate_bias": False}),
    "float32_rotation": ("quant.transforms", "pair-pca", {"rotation": "random", "angle_dtype": "float32"}),
    "forget_writer_bias": ("verifier.reference", "permute_hidden", {"permute_bias": False}),
    "cross_group_heads": ("verifier.reference", "permute_heads", {"respect_groups": False}),
    "symmetric_gamma": ("quant.transforms", "spectral-pca", {"gamma_form": "symmetric"}),
}


# mutant -> layout constraints (fuzz.strategies.layouts) under which its bug always shows
_PLAIN_QK = {"qk_norm": "none", "rope": True}
APPLIES = {
    "gproj_omission": {"attn_gate": "head_softplus", "placement": ("pre", "sandwich")},
    "skip_norm_consumer": {"placement": "pre", "residual": "sequential"},
    "router_unscaled": {"moe": True, "placement": ("pre", "sandwich")},
    "expert_wrong_axis": {"moe": True, "placement": ("pre", "sandwich")},
    "pair_reflection": _PLAIN_QK,
    "forget_pair_bias": {**_PLAIN_QK, "qkv_bias": True},
    "float32_rotation": {**_PLAIN_QK, "max_head_dim": 12},
    "forget_writer_bias": {"o_bias": True},
    "cross_group_heads": {"max_kv_heads": 3},  # and n_kv_heads > 1 (checked on the spec)
    "symmetric_gamma": {"qk_norm": ("per_head", "full"), "norm": "rms"},
}


def names() -> list[str]:
    return sorted(MUTANTS)


def get(name: str, **options) -> NamedTransform:
    """The mutant ``name``; ``options`` (e.g. ``seed``) are passed to the underlying transform."""
    if name not in MUTANTS:
        raise BadInput(f"unknown mutant {name!r}; available: {names()}")
    registry, base, bug = MUTANTS[name]
    correct = importlib.import_module(registry).get(base)

    def run(model, calib, **kw):
        return correct.fn(model, calib, **{**kw, **bug})
    return NamedTransform(name, run, options, registry="verifier.mutants")
