"""Known-buggy transforms: each is a real failure mode of rotation/scaling quantizers, kept so the
tests can show the oracle has teeth.  Never use them for anything else.

=====================  ===========================================================  ======================
name                   bug                                                          applies when
=====================  ===========================================================  ======================
skip_norm_consumer     one consumer of a norm left unscaled (the seed code's g_proj) a norm has >= 2 readers
pair_reflection        RoPE pair "rotation" with det -1 (an eigh reflection)         RoPE on q/k
forget_pair_bias       pair rotation applied to weight rows, not to the biases       RoPE and q/k biases
forget_writer_bias     residual permutation that leaves writer biases unpermuted     o / down biases
cross_group_heads      query heads permuted across GQA groups                        n_kv_heads > 1
float32_rotation       rotation angles built in float32 inside a float64 model      RoPE on q/k
=====================  ===========================================================  ======================
"""

from __future__ import annotations

from fuzz.errors import BadInput

from .reference import absorb_norm_scale, permute_heads, permute_hidden, rope_pair_rotation
from .transform import NamedTransform

MUTANTS = {
    "skip_norm_consumer": (absorb_norm_scale, {"skip_consumer": True}),
    "pair_reflection": (rope_pair_rotation, {"reflect": True}),
    "forget_pair_bias": (rope_pair_rotation, {"rotate_bias": False}),
    "forget_writer_bias": (permute_hidden, {"permute_bias": False}),
    "cross_group_heads": (permute_heads, {"respect_groups": False}),
    "float32_rotation": (rope_pair_rotation, {"angle_dtype": "float32"}),
}


def names() -> list[str]:
    return sorted(MUTANTS)


def get(name: str, **options) -> NamedTransform:
    if name not in MUTANTS:
        raise BadInput(f"unknown mutant {name!r}; available: {names()}")
    fn, bug = MUTANTS[name]
    t = NamedTransform(name, lambda model, calib, **kw: fn(model, calib, **{**kw, **bug}), options,
                       registry="verifier.mutants")
    return t
