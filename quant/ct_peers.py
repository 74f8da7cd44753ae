"""Third-party transforms as oracle subjects: llm-compressor's SpinQuant and QuIP rotations, executed by
compressed-tensors' transform module (``compressed_tensors.transform.apply_transform_config``).

llmcompressor 0.14 pins transformers <= 5.17 and cannot share this environment, so these peers are a
*reproduction* of its two modifiers through compressed-tensors' public API, written from the source of
llm-compressor commit ``ab1ba3effcafc15746cd6d6ca24cba3f7bd7a582`` (``src/llmcompressor/modifiers/transform/
spinquant/{base,mappings,norm_mappings}.py``, ``quip/base.py``, ``modeling/fuse.py``, ``utils/transformers.py``)
-- no llm-compressor code is copied or imported.  What is reproduced is mostly data (the mapping registries and
the ``TransformScheme`` each modifier builds) plus the three weight edits SpinQuant makes before the schemes
are applied.  The executing code, ``apply_transform_config`` and its factories, is compressed-tensors' own.

``SpinQuantModifier.on_calibration_start``, as the ``ct-spinquant*`` peers run it:

1. untie the word embeddings: input and output embedding get separate cloned weights
   (``config.tie_word_embeddings = False``);
2. center the input embedding: every row minus its mean over the hidden dim (in float64, cast back);
3. fuse norms: for each norm mapping, every norm's weight is multiplied into the input columns of the linears
   that follow it (in float64, cast back) and the norm's weight set to ones; the groups are found with
   ``compressed_tensors.match_modules_set(model, (norm, *linears))``;
4. ``apply_transform_config(model, TransformConfig(config_groups={"R1": ..., "R2": ..., ...}))``.

Mappings are looked up by the model's class name; an unknown architecture falls back to the Llama mappings
(llm-compressor logs "Falling back to default mappings"), exactly as here:

=================== ======================================================================================
registry key        SpinQuant mapping (regexes; ``re:`` prefix as compressed-tensors matches them)
=================== ======================================================================================
LlamaForCausalLM    embedding ``.*embed_tokens$``, attn ``.*self_attn$``, q/k/v/o ``.*{q,k,v,o}_proj$``,
(and the fallback)  mlp_in ``.*up_proj$``, ``.*gate_proj$``; mlp_out ``.*down_proj$``; lm_head ``lm_head``.
                    norms: ``.*input_layernorm$`` -> q/k/v; ``.*post_attention_layernorm$`` -> up/gate;
                    ``model.norm`` -> ``lm_head``
Cohere2MoeForCausalLM as Llama, mlp_in adds ``.*mlp\\.gate\\.linear$`` (the router after llm-compressor's
                    ``prepare_cohere2_moe_for_spinquant``, not reproduced); norms: only ``model.norm`` -> lm_head
=================== ======================================================================================

The schemes (``precision`` is llm-compressor's ``get_high_precision()``: float64 on a CPU-only host, which
compressed-tensors uses for online rotations; fused rotations it always builds in float64):

============ ===================================================================================================
scheme       ``TransformArgs`` (``head_dim`` of the scheme in brackets)
============ ===================================================================================================
R1 [block]   ``weight_output`` on embedding, attn_o, mlp_out; ``weight_input`` inverse on q, k, v, mlp_in, lm_head
R2 [hd]      ``weight_output`` on attn_v; ``weight_input`` inverse on attn_o
R3 [hd]      ``q_attn`` and ``k_cache`` on attn (online, through compressed-tensors' hooked attention)
R4 [block]   ``input`` on mlp_out (online); ``weight_input`` inverse on mlp_out
QuIP v       ``input`` on ``Linear`` (online) and ``weight_input`` inverse, both ignoring ``lm_head``
QuIP u       ``weight_output`` on ``Linear`` and ``output`` inverse (online), both ignoring ``lm_head``
============ ===================================================================================================

``hd`` is ``compressed_tensors.utils.get_head_dim(config)``; ``block`` the modifier's ``transform_block_size``
(None: the whole width).  QuIP unties the embeddings only when a scheme targets them (``Linear`` never does).

The peers, by name (modifier, ``rotations``, ``transform_type``, ``transform_block_size``):

============================ ========= ============== ========================= ====================
name                         modifier  rotations      transform_type            transform_block_size
============================ ========= ============== ========================= ====================
ct-spinquant                 SpinQuant R1, R2 (dflt)  hadamard (default)        None (default)
ct-spinquant-random-hadamard SpinQuant R1, R2         random-hadamard           None
ct-spinquant-random-matrix   SpinQuant R1, R2         random-matrix             None
ct-spinquant-r1234           SpinQuant R1, R2, R3, R4 hadamard                  None
ct-spinquant-b<k>            SpinQuant R1, R2         hadamard                  k (listed: b8)
ct-quip                      QuIP      v (default)    random-hadamard (default) None (default)
ct-quip-hadamard             QuIP      v              hadamard                  None
ct-quip-uv                   QuIP      v, u           random-hadamard           None
============================ ========= ============== ========================= ====================

``randomize`` and ``learnable`` stay False (llm-compressor refuses True with NotImplementedError).  The
factories' random draws come from an unseeded ``torch.Generator()`` each (apply_transform_config passes no
seed), i.e. torch's fixed default seed: every call draws the same matrices, so a verdict reproduces.

Option ``center`` (default True) is for diagnosis only: ``center=False`` skips step 2 (not an llm-compressor
setting), which separates the centering from the rotations in a finding.

Subjects and precision are those of :mod:`quant.peers` (``to_transformers`` bridge, ``ExactFloat64``,
``precision="float64"``): compressed-tensors' own arithmetic runs in float64 wherever a scheme allows
(fused rotations always, online ones by ``precision``), so with ``precision="float64"`` a verdict sees its
arithmetic alone; with ``precision="transformers"`` transformers' float32 RMSNorm/RoPE bound a float64
verdict at the ``hf-bridge`` floor (up to 2.0e-7 relative on 22 layouts, ``benchmarks/peer_campaign.py``;
``docs/findings.md``).

What the oracle found (``docs/findings.md``; each break a corpus entry, ``benchmarks/ct_corpus.py``; pinned in
``tests/quant/test_ct_peers.py``): QuIP is exact (~1e-15) wherever it runs.  SpinQuant as llm-compressor runs
it is exact nowhere: the embedding centring moves every RMSNorm model, a LayerNorm does not commute with R1,
``random-matrix`` is not orthogonal, R3 rotates queries but not keys (its key hook is never called under
transformers 5.25), Gemma's ``1 + w`` norm is fused as ``w``; Phi-3's fused qkv, fused-expert MoE, OLMo2's
post-norms and StableLM's parallel block crash the norm fusion; non-power-of-two widths crash ``hadamard``.
Without the centring (``center=False``) R1/R2 are exact on Llama, Mistral, Qwen2 (qkv bias), Qwen3, tied
embeddings and Hadamard-order widths.
"""

from __future__ import annotations

import re
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from fuzz.errors import BadInput
from fuzz.materialize import GraphModel
from verifier import registry as _registries
from verifier.transform import Calibration, NamedTransform

from .peers import ExactFloat64, _check_precision, _forward_float64, _hooks, float64_everywhere, transformers_model

COMMIT = "ab1ba3effcafc15746cd6d6ca24cba3f7bd7a582"  # llm-compressor, the source reproduced here
HIGH_PRECISION = torch.float64  # get_high_precision() on a host without MPS


# ------------------------------------------------------------------------------------------ mappings
@dataclass(frozen=True)
class SpinQuantMapping:
    embedding: str
    attn: str
    attn_q: str
    attn_k: str
    attn_v: str
    attn_o: str
    mlp_in: tuple[str, ...]
    mlp_out: tuple[str, ...]
    lm_head: str


@dataclass(frozen=True)
class NormMapping:
    norm: str
    linears: tuple[str, ...] = field(default=())


_LLAMA = SpinQuantMapping("re:.*embed_tokens$", "re:.*self_attn$", "re:.*q_proj$", "re:.*k_proj$", "re:.*v_proj$",
                          "re:.*o_proj$", ("re:.*up_proj$", "re:.*gate_proj$"), ("re:.*down_proj$",), "lm_head")
_COHERE2_MOE = SpinQuantMapping("re:.*embed_tokens$", "re:.*self_attn$", "re:.*q_proj$", "re:.*k_proj$",
                                "re:.*v_proj$", "re:.*o_proj$",
                                ("re:.*gate_proj$", "re:.*up_proj$", r"re:.*mlp\.gate\.linear$"),
                                ("re:.*down_proj$",), "lm_head")
_LLAMA_NORMS = (NormMapping("re:.*input_layernorm$", ("re:.*q_proj$", "re:.*k_proj$", "re:.*v_proj$")),
                NormMapping("re:.*post_attention_layernorm$", ("re:.*up_proj$", "re:.*gate_proj$")),
                NormMapping("model.norm", ("lm_head",)))
_COHERE2_MOE_NORMS = (NormMapping("model.norm", ("lm_head",)),)

#: llm-compressor's registries (architecture -> mapping); anything else falls back to the Llama entries.
SPINQUANT_MAPPINGS = {"LlamaForCausalLM": _LLAMA, "Cohere2MoeForCausalLM": _COHERE2_MOE}
NORM_MAPPINGS = {"LlamaForCausalLM": _LLAMA_NORMS, "Cohere2MoeForCausalLM": _COHERE2_MOE_NORMS}


def mappings_for(model: nn.Module) -> tuple[SpinQuantMapping, tuple[NormMapping, ...], bool]:
    """``(mapping, norm mappings, fell_back)`` for ``model``'s class, as llm-compressor infers them."""
    arch = type(model).__name__
    return SPINQUANT_MAPPINGS.get(arch, _LLAMA), NORM_MAPPINGS.get(arch, _LLAMA_NORMS), arch not in SPINQUANT_MAPPINGS


# ------------------------------------------------------------------------------------------ schemes
def spinquant_config(mapping: SpinQuantMapping, rotations: tuple[str, ...], transform_type: str,
                     block: int | None, head_dim: int):
    """The ``TransformConfig`` SpinQuantModifier.on_initialize builds."""
    from compressed_tensors.transform import TransformArgs as A, TransformConfig, TransformScheme

    m = mapping

    def scheme(head, *apply):
        return TransformScheme(type=transform_type, randomize=False, requires_grad=False,
                               precision=HIGH_PRECISION, head_dim=head, apply=list(apply))
    make = {
        "R1": lambda: scheme(block,
                             A(targets=[m.embedding, m.attn_o, *m.mlp_out], location="weight_output"),
                             A(targets=[m.attn_q, m.attn_k, m.attn_v, *m.mlp_in, m.lm_head],
                               location="weight_input", inverse=True)),
        "R2": lambda: scheme(head_dim, A(targets=[m.attn_v], location="weight_output"),
                             A(targets=[m.attn_o], location="weight_input", inverse=True)),
        "R3": lambda: scheme(head_dim, A(targets=[m.attn], location="q_attn"),
                             A(targets=[m.attn], location="k_cache")),
        "R4": lambda: scheme(block, A(targets=[*m.mlp_out], location="input"),
                             A(targets=[*m.mlp_out], location="weight_input", inverse=True)),
    }
    return TransformConfig(config_groups={r: make[r]() for r in ("R1", "R2", "R3", "R4") if r in rotations})


def quip_config(rotations: tuple[str, ...], transform_type: str, block: int | None,
                targets: tuple[str, ...] = ("Linear",), ignore: tuple[str, ...] = ("lm_head",)):
    """The ``TransformConfig`` QuIPModifier._create_config builds."""
    from compressed_tensors.transform import TransformArgs as A, TransformConfig, TransformScheme

    def scheme(*apply):
        return TransformScheme(type=transform_type, head_dim=block, apply=list(apply), randomize=False,
                               requires_grad=False, precision=HIGH_PRECISION)
    t, i = list(targets), list(ignore)
    groups = {}
    if "v" in rotations:
        groups["v"] = scheme(A(targets=t, location="input", ignore=i),
                             A(targets=t, location="weight_input", inverse=True, ignore=i))
    if "u" in rotations:
        groups["u"] = scheme(A(targets=t, location="weight_output", ignore=i),
                             A(targets=t, location="output", inverse=True, ignore=i))
    return TransformConfig(config_groups=groups)


# ------------------------------------------------------------------------------------------ SpinQuant's edits
@torch.no_grad()
def untie_word_embeddings(model: nn.Module) -> bool:
    """Give input and output embedding their own cloned weights; False when the model has no pair."""
    pair = (model.get_input_embeddings(), model.get_output_embeddings())
    if any(m is None for m in pair):
        return False
    for module in pair:
        w = module.weight
        del module.weight
        module.register_parameter("weight", nn.Parameter(w.data.clone(), requires_grad=w.requires_grad))
    if hasattr(model.config, "tie_word_embeddings"):
        model.config.tie_word_embeddings = False
    return True


@torch.no_grad()
def center_embedding(embedding: nn.Module) -> None:
    w = embedding.weight
    wide = w.to(HIGH_PRECISION)
    w.copy_((wide - wide.mean(dim=-1, keepdim=True)).to(w.dtype))


@torch.no_grad()
def fuse_norm(norm: nn.Module, linears: list[nn.Module]) -> None:
    """The norm's (stored) weight into the input columns of ``linears``; the norm's weight becomes ones."""
    for lin in linears:
        lin.weight.copy_((lin.weight.to(HIGH_PRECISION) * norm.weight.to(HIGH_PRECISION)).to(lin.weight.dtype))
    norm.weight.copy_(torch.ones_like(norm.weight))


# ------------------------------------------------------------------------------------------ the peers
@dataclass(frozen=True)
class Config:
    modifier: str  # "spinquant" | "quip"
    rotations: tuple[str, ...]
    transform_type: str
    block: int | None = None


_PEERS: dict[str, Config] = {
    "ct-spinquant": Config("spinquant", ("R1", "R2"), "hadamard"),
    "ct-spinquant-random-hadamard": Config("spinquant", ("R1", "R2"), "random-hadamard"),
    "ct-spinquant-random-matrix": Config("spinquant", ("R1", "R2"), "random-matrix"),
    "ct-spinquant-r1234": Config("spinquant", ("R1", "R2", "R3", "R4"), "hadamard"),
    "ct-spinquant-b8": Config("spinquant", ("R1", "R2"), "hadamard", 8),
    "ct-quip": Config("quip", ("v",), "random-hadamard"),
    "ct-quip-hadamard": Config("quip", ("v",), "hadamard"),
    "ct-quip-uv": Config("quip", ("v", "u"), "random-hadamard"),
}
_BLOCK = re.compile(r"^ct-spinquant-b(\d+)$")


class Peer:
    """One SpinQuant / QuIP configuration as an oracle transform; ``last`` reports the last call (mapping
    used, whether it was the Llama fallback, norms fused, weights changed, hooks added)."""

    def __init__(self, name: str, config: Config):
        self.name, self.config = name, config
        self.last: dict = {}

    def __repr__(self) -> str:
        return f"Peer({self.name!r}, {self.config!r})"

    def transform_config(self, model: nn.Module):
        """The exact ``TransformConfig`` handed to ``apply_transform_config`` for ``model``."""
        c = self.config
        if c.modifier == "quip":
            return quip_config(c.rotations, c.transform_type, c.block)
        from compressed_tensors.utils import get_head_dim
        mapping, _, _ = mappings_for(model)
        return spinquant_config(mapping, c.rotations, c.transform_type, c.block, get_head_dim(model.config))

    def _spinquant_edits(self, hf: nn.Module, report: dict, center: bool) -> None:
        from compressed_tensors import match_modules_set, match_named_modules

        mapping, norms, fell_back = mappings_for(hf)
        report["mapping"] = "llama-fallback" if fell_back else type(hf).__name__
        report["untied"] = untie_word_embeddings(hf)
        if center:
            for _, emb in match_named_modules(hf, [mapping.embedding], warn_on_fail=True):
                center_embedding(emb)
        fused = 0
        for nm in norms:
            for norm, *linears in match_modules_set(hf, (nm.norm, *nm.linears)):
                assert len(norm) == 1  # as the modifier asserts
                fuse_norm(norm[0], [lin for group in linears for lin in group])
                fused += 1
        report["norms_fused"] = fused

    def __call__(self, model: nn.Module, calib: Calibration, center: bool = True,
                 precision: str = "transformers") -> nn.Module:
        _check_precision(precision)
        if precision == "float64" and isinstance(model, GraphModel):
            with float64_everywhere():  # RoPE tables built at init in float64 too
                hf = transformers_model(self.name, model, "compressed-tensors transforms")
            rotated = self(ExactFloat64(hf), calib, center)
            return _forward_float64(rotated.model)
        outer = model if isinstance(model, ExactFloat64) else None
        hf = transformers_model(self.name, outer.model if outer is not None else model,
                                "compressed-tensors transforms")
        self.last = report = {"peer": self.name}
        from compressed_tensors.transform import apply_transform_config

        before = {k: v.detach().clone() for k, v in hf.state_dict().items()}
        hooks = _hooks(hf)
        exact = float64_everywhere(outer.default_dtype) if outer is not None else nullcontext()
        with exact, _quiet():
            config = self.transform_config(hf)
            report["config"] = config.model_dump_json(exclude_defaults=True)
            if self.config.modifier == "spinquant":
                self._spinquant_edits(hf, report, center)
            apply_transform_config(hf, config)
        after = hf.state_dict()
        report["weights_changed"] = sum(1 for k, v in after.items()
                                        if k in before and not torch.equal(before[k], v))
        report["hooks_added"] = _hooks(hf) - hooks
        return outer or hf


class _quiet:
    """compressed-tensors' loguru lines off for the call (its tqdm bars follow TQDM_DISABLE, read by tqdm at import)."""

    def __enter__(self):
        from loguru import logger
        logger.disable("compressed_tensors")
        return self

    def __exit__(self, *exc):
        from loguru import logger
        logger.enable("compressed_tensors")


# ------------------------------------------------------------------------------------------ registry
def names() -> list[str]:
    """The listed peers (``ct-spinquant-b<k>`` is accepted for any block size ``k``)."""
    return list(_PEERS)


def peer(name: str) -> Peer:
    m = _BLOCK.match(name)
    if name in _PEERS:
        return Peer(name, _PEERS[name])
    if m and int(m.group(1)) > 0:
        return Peer(name, Config("spinquant", ("R1", "R2"), "hadamard", int(m.group(1))))
    raise BadInput(f"unknown compressed-tensors peer {name!r}; available: {names()} "
                   f"(and ct-spinquant-b<k> for any block size k)")


def get(name: str, **options) -> NamedTransform:
    """The peer called ``name`` with ``options`` (``center``, ``precision``)."""
    _check_precision(options.get("precision", "transformers"))
    return NamedTransform(name, peer(name), options, registry="quant.ct_peers")


_registries.register("ct-peers", sys.modules[__name__], float64_options={"precision": "float64"},
                     precision_option="precision", default_precision="transformers",
                     signature_free_options=("precision",))
