"""Recipes: named compositions that pick, per attention and MLP block, the transform the layout permits.

==========================  ======================================================================================
recipe                      per block
==========================  ======================================================================================
bbt-absorb                  every norm that can absorb (T2, MoE norms included: T6), every GLU's up -> down
                            scaling (dense, shared and fused experts); no online operator (the seed code's
                            ``no_rotation``)
bbt-spectral                T1 on every linear: online padded WHT with activation-energy scaling
bbt-spectral-block          T1's group-aligned block form on every linear: online block-diagonal WHT (blocks of
                            ``min(64, 2^v(d_in))``, each quantization group of 64 input columns its own Hadamard),
                            no padding, activation-energy scaling
bbt-spectral-exact          T1's exact-width full form on every linear: online ``Q_n = (H_m (x) H_{2^k}) / sqrt(n)``
                            (Paley x Sylvester), no padding, activation-energy scaling; a width with no
                            construction is refused (``no-hadamard-order``)
bbt-spectral-alpha-search   T1 on every linear (padded, as bbt-spectral) with alpha chosen per linear from a grid
                            (default ``(0, 0.125, 0.25, 0.375, 0.5)``): the one of least calibration-weighted RTN
                            error of ``W~`` at ``bits`` / ``group_size`` (default W2 g64; ``wht_scale``'s docstring)
bbt-pair-pca                attention with plain q/k: pair-PCA (T4); then bbt-absorb
bbt-spectral-pca            attention with a q/k norm: spectral-PCA (T5); plain q/k: pair-PCA (T4); then bbt-absorb
residual-hadamard           QuaRot-style residual rotation (T3), tied embeddings untied
==========================  ======================================================================================

What was applied where, and why a block was skipped, is appended to ``model.transform_log``.
"""

from __future__ import annotations

from torch import nn

from fuzz.errors import BadInput, Refusal
from fuzz.materialize import GraphModel
from verifier.transform import Calibration

from . import get, register
from .graph_edit import require_graph_model
from .pair_pca import qk_chains
from .wht_scale import ALPHA_GRID, SEARCH_BITS, SEARCH_GROUP

# The recipes, in the table's order: the one list the gate, the benchmarks and the tests read.
RECIPES = ("bbt-absorb", "bbt-spectral", "bbt-spectral-block", "bbt-spectral-exact", "bbt-spectral-alpha-search",
           "bbt-pair-pca", "bbt-spectral-pca", "residual-hadamard")


def _log(m: GraphModel, **entry) -> None:
    m.transform_log = getattr(m, "transform_log", []) + [entry]


def _absorb(m: GraphModel, calib: Calibration, alpha: float) -> GraphModel:
    m = get("norm-absorb", alpha=alpha, on_unsupported="skip")(m, calib)
    return get("up-down", alpha=alpha)(m, calib)


def _plain_qk(m: GraphModel) -> tuple[list[str], list[str]]:
    """Attention nodes split into those pair-PCA accepts and the rest (with the refusal logged)."""
    plain, other = [], []
    for attn in m.layout.of_op("attention"):
        try:
            qk_chains(m.layout, attn, "recipe")
            plain.append(attn)
        except Refusal as exc:
            other.append(attn)
            _log(m, transform="recipe", node=attn, skipped=exc.feature, why=str(exc))
    return plain, other


@register("bbt-absorb")
def bbt_absorb(model: nn.Module, calib: Calibration, alpha: float = 0.5) -> GraphModel:
    return _absorb(require_graph_model("bbt-absorb", model), calib, alpha)


@register("bbt-spectral")
def bbt_spectral(model: nn.Module, calib: Calibration, alpha: float = 0.5) -> GraphModel:
    return get("wht-scale", alpha=alpha)(require_graph_model("bbt-spectral", model), calib)


@register("bbt-spectral-block")
def bbt_spectral_block(model: nn.Module, calib: Calibration, alpha: float = 0.5) -> GraphModel:
    return get("wht-scale-block", alpha=alpha)(require_graph_model("bbt-spectral-block", model), calib)


@register("bbt-spectral-exact")
def bbt_spectral_exact(model: nn.Module, calib: Calibration, alpha: float = 0.5) -> GraphModel:
    return get("wht-scale-exact", alpha=alpha)(require_graph_model("bbt-spectral-exact", model), calib)


@register("bbt-spectral-alpha-search")
def bbt_spectral_alpha_search(model: nn.Module, calib: Calibration, alpha: tuple[float, ...] = ALPHA_GRID,
                              bits: int = SEARCH_BITS, group_size: int = SEARCH_GROUP) -> GraphModel:
    name = "bbt-spectral-alpha-search"
    if not isinstance(alpha, (tuple, list)):
        raise BadInput(f"{name} chooses alpha per linear from a grid: alpha must be a tuple of alphas, got {alpha!r} "
                       f"(a single alpha is bbt-spectral)")
    return get("wht-scale", alpha=tuple(alpha), bits=bits, group_size=group_size)(require_graph_model(name, model),
                                                                                 calib)


@register("bbt-pair-pca")
def bbt_pair_pca(model: nn.Module, calib: Calibration, alpha: float = 0.5) -> GraphModel:
    m = require_graph_model("bbt-pair-pca", model)
    plain, _ = _plain_qk(m)
    if plain:
        m = get("pair-pca", attentions=plain)(m, calib)
    return _absorb(m, calib, alpha)


@register("bbt-spectral-pca")
def bbt_spectral_pca(model: nn.Module, calib: Calibration, alpha: float = 0.5) -> GraphModel:
    m = require_graph_model("bbt-spectral-pca", model)
    plain, other = _plain_qk(m)
    if other:
        try:
            m = get("spectral-pca")(m, calib)
        except Refusal as exc:  # no q/k norm anywhere, or a LayerNorm q/k norm: leave those blocks alone
            _log(m, transform="recipe", skipped=exc.feature, why=str(exc))
    if plain:
        m = get("pair-pca", attentions=plain)(m, calib)
    return _absorb(m, calib, alpha)


@register("residual-hadamard")
def residual_hadamard(model: nn.Module, calib: Calibration, seed: int = 0) -> GraphModel:
    return get("residual-rotation", seed=seed, untie=True)(require_graph_model("residual-hadamard", model), calib)
