"""Known-buggy transforms (the ``mutants`` registry): each is a real failure mode of rotation/scaling
quantizers (most from the seed paper's code), kept so the tests can show the oracle has teeth.  Never use
them for anything else.

A mutant is a correct transform, named by its registry name, run inside :func:`verifier._faults.inject`
with one fault: the production signatures carry no test-only switch.  The layer that owns the correct
transform registers its mutants (:func:`register_mutant`): the two below bend verifier's reference
transforms; ``quant.mutants`` registers those of the transform library (norm absorption, pair and
spectral PCA) when the registries load (:func:`verifier.registry.load_plugins`).

=====================  ==========================================================  ==========================
name                   bug                                                         applies when
=====================  ==========================================================  ==========================
forget_writer_bias     residual permutation that leaves writer biases unpermuted   o / down biases
cross_group_heads      query heads permuted across GQA groups                      n_kv_heads > 1
alibi_unpermuted       heads permuted, ALiBi slopes left in place                  ALiBi, n_heads > 1
sinks_unpermuted       heads permuted, sink logits left in place                   sinks, n_heads > 1
softcap_scale_outside  the folded score scale also rescales the soft-cap: a         an attention soft-cap
                       factor moved from inside tanh to outside
position_unpermuted    residual permutation of the token embedding, not of the     learned positions
                       learned position table
diff_pairs_broken      heads permuted with the pairs of a differential attention   differential attention,
                       (i, i + h/2) broken (DiffLlama)                               n_heads >= 4
=====================  ==========================================================  ==========================

Interaction mutants (:func:`interaction_mutant`, named ``interaction:<tag>&<tag>[&<tag>]``) are the identity
except on a layout whose feature tags (:func:`fuzz.covering.tags`) hold all of theirs: there they nudge the
output head by 1e-6 relative.  One per pair of feature values: they measure how soon the search reaches a
combination (``benchmarks/interaction_teeth.py``); :func:`names` does not list them, :func:`get` builds them.

``MUTANTS`` (name -> (registry module of the correct transform, its name, the options the mutant fixes)),
``FAULTS`` (name -> (fault, its parameters)) and ``APPLIES`` (name -> layout constraints under which the
bug always shows, for :func:`fuzz.strategies.layouts`) are read-only views over every registered mutant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from fuzz.errors import BadInput

from ._faults import FAULTS as _KNOWN_FAULTS, inject
from .transform import NamedTransform


@dataclass(frozen=True)
class Mutant:
    """A correct transform ``base`` (``registry:name``) with ``fixed`` options, run under ``fault``."""

    name: str
    base: str
    fault: str
    params: Mapping[str, Any] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    applies: Mapping[str, Any] = field(default_factory=dict)


_MUTANTS: dict[str, Mutant] = {}


def register_mutant(name: str, base: str, fault: str, *, params: Mapping | None = None,
                    fixed: Mapping | None = None, applies: Mapping | None = None) -> None:
    """Register the mutant ``name``: ``base`` (``registry:name``) run with ``fixed`` options under ``fault``
    injected with ``params``; ``applies``: the layout constraints under which its bug always shows."""
    if fault not in _KNOWN_FAULTS:
        raise ValueError(f"mutant {name!r}: unknown fault {fault!r}; faults: {sorted(_KNOWN_FAULTS)}")
    if ":" not in base:
        raise ValueError(f"mutant {name!r}: base must be a registry name (registry:name), got {base!r}")
    mutant = Mutant(name, base, fault, MappingProxyType(dict(params or {})), MappingProxyType(dict(fixed or {})),
                    MappingProxyType(dict(applies or {})))
    if _MUTANTS.get(name, mutant) != mutant:
        raise ValueError(f"mutant {name!r} registered twice")
    _MUTANTS[name] = mutant


def _all() -> dict[str, Mutant]:
    from .registry import load_plugins
    load_plugins()
    return _MUTANTS


def mutant(name: str) -> Mutant:
    if name not in _all():
        raise BadInput(f"unknown mutant {name!r}; available: {names()}")
    return _MUTANTS[name]


def names() -> list[str]:
    return sorted(_all())


INTERACTION = "interaction:"
NUDGE = 1e-6  # relative nudge of an interaction mutant


def nudge_head(model) -> None:
    """Nudge the output head's weight (the tied embedding where tied) by :data:`NUDGE` relative, in a
    +/- pattern over its elements (a uniform scale could hide behind a norm or a soft-cap's slope)."""
    import torch
    head = model.nodes[model.layout.of_op("lm_head")[0]].weight
    with torch.no_grad():
        sign = torch.ones(head.numel(), dtype=head.dtype)
        sign[1::2] = -1
        head.mul_(1 + NUDGE * sign.reshape(head.shape))


def interaction_mutant(*tags: str) -> NamedTransform:
    """The identity, except that where the layout carries every one of ``tags`` the head is nudged
    (:func:`nudge_head`): a bug that only a combination of feature values shows."""
    from fuzz.covering import tags as layout_tags
    want = frozenset(tags)
    if not want or any("&" in t for t in want):
        raise BadInput(f"interaction mutant: give feature tags without '&', got {tags!r}")

    def run(model, calib):
        if want <= layout_tags(model.layout):
            nudge_head(model)
        return model
    return NamedTransform(INTERACTION + "&".join(tags), run, {}, registry=__name__)


def get(name: str, **options) -> NamedTransform:
    """The mutant ``name``; ``options`` (e.g. ``seed``) are passed to the underlying transform."""
    from .registry import resolve
    if name.startswith(INTERACTION) and not options:
        return interaction_mutant(*name.removeprefix(INTERACTION).split("&"))
    m = mutant(name)
    correct = resolve(m.base)

    def run(model, calib, **kw):
        with inject(m.fault, **m.params):
            return correct.fn(model, calib, **{**kw, **m.fixed})
    return NamedTransform(name, run, options, registry=__name__)


def __getattr__(attr: str):
    """``MUTANTS``, ``FAULTS`` and ``APPLIES``: views over every registered mutant (plugins loaded)."""
    from .registry import _registry
    views = {
        "MUTANTS": lambda m: (_registry(m.base.partition(":")[0]).module, m.base.partition(":")[2], dict(m.fixed)),
        "FAULTS": lambda m: (m.fault, dict(m.params)),
        "APPLIES": lambda m: dict(m.applies),
    }
    if attr not in views:
        raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
    return MappingProxyType({name: views[attr](m) for name, m in sorted(_all().items())})


# mutants of verifier's reference transforms
register_mutant("forget_writer_bias", "reference:permute_hidden", "writer_bias_unpermuted",
                applies={"o_bias": True})
register_mutant("position_unpermuted", "reference:permute_hidden", "position_table_unpermuted",
                applies={"position_embedding": True})
register_mutant("cross_group_heads", "reference:permute_heads", "heads_across_groups",
                applies={"mla": "none", "max_kv_heads": 3, "fused_qkv": False, "attn_differential": False})  # and n_kv_heads > 1 (checked on the spec)
register_mutant("alibi_unpermuted", "reference:permute_heads", "alibi_unpermuted",
                applies={"mla": "none", "alibi": True, "fused_qkv": False})  # and n_heads > 1 (checked on the spec)
register_mutant("sinks_unpermuted", "reference:permute_heads", "sinks_unpermuted",
                applies={"mla": "none", "attn_sinks": True, "fused_qkv": False})  # and n_heads > 1 (checked on the spec)
register_mutant("softcap_scale_outside", "reference:fold_attn_scale", "softcap_scale_outside",
                applies={"mla": "none", "attn_softcap": 2.0, "fused_qkv": False, "norm_weightless": False})
register_mutant("diff_pairs_broken", "reference:permute_heads", "differential_pairs_broken",
                applies={"attn_differential": True, "fused_qkv": False})  # and n_heads >= 4 (checked on the spec)
