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

Each mutant is the real transform run inside :func:`verifier._faults.inject` with one fault (``FAULTS``
below): the production signatures carry no test-only switch.
"""

from __future__ import annotations

import importlib

from fuzz.errors import BadInput
from fuzz.layout import Layout

from ._faults import inject
from .transform import NamedTransform


def _feeds(op: str, port: int | None = None):
    """A consumer predicate: the linear's output is read by an ``op`` node (at ``port``)."""
    def pred(layout: Layout, consumer: str) -> bool:
        return any(layout.op(c) == op and (port is None or p == port) for c, p in layout.consumers(consumer))
    return pred


def _last_reader(layout: Layout, consumer: str) -> bool:
    return any(readers and readers[-1][0] == consumer
               for readers in (layout.consumers(n) for n, _ in layout.graph.in_edges(consumer)))


_SKIP = {"on_unsupported": "skip"}

# name -> (registry module, transform name, the transform's options the mutant fixes)
MUTANTS = {
    "gproj_omission": ("quant.transforms", "norm-absorb", _SKIP),
    "skip_norm_consumer": ("quant.transforms", "norm-absorb", _SKIP),
    "router_unscaled": ("quant.transforms", "norm-absorb", _SKIP),
    "expert_wrong_axis": ("quant.transforms", "norm-absorb", _SKIP),
    "pair_reflection": ("quant.transforms", "pair-pca", {}),
    "forget_pair_bias": ("quant.transforms", "pair-pca", {}),
    "float32_rotation": ("quant.transforms", "pair-pca", {"rotation": "random"}),
    "forget_writer_bias": ("verifier.reference", "permute_hidden", {}),
    "cross_group_heads": ("verifier.reference", "permute_heads", {}),
    "symmetric_gamma": ("quant.transforms", "spectral-pca", {}),
}

# name -> (fault injected while the transform runs, its parameters): verifier._faults.FAULTS
FAULTS = {
    "gproj_omission": ("unscaled_consumer", {"where": _feeds("gate", 1)}),
    "skip_norm_consumer": ("unscaled_consumer", {"where": _last_reader}),
    "router_unscaled": ("unscaled_consumer", {"where": _feeds("router")}),
    "expert_wrong_axis": ("expert_output_axis", {}),
    "pair_reflection": ("pair_reflection", {}),
    "forget_pair_bias": ("pair_bias_unrotated", {}),
    "float32_rotation": ("float32_angles", {}),
    "forget_writer_bias": ("writer_bias_unpermuted", {}),
    "cross_group_heads": ("heads_across_groups", {}),
    "symmetric_gamma": ("symmetric_gamma", {}),
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
    registry, base, fixed = MUTANTS[name]
    fault, params = FAULTS[name]
    correct = importlib.import_module(registry).get(base)

    def run(model, calib, **kw):
        with inject(fault, **params):
            return correct.fn(model, calib, **{**kw, **fixed})
    return NamedTransform(name, run, options, registry="verifier.mutants")
