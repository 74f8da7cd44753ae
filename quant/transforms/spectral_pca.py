"""T5: spectral-PCA, a per-head orthogonal basis absorbed by a matrix-Gamma q/k norm (Qwen3 style).

A q/k norm computes, per group of its channels, ``z = g * y / rms(y)`` of the projection output ``y``
(``g = w`` or ``g = 1 + w``).  Per head ``h`` let ``y_h`` be the head's ``d`` channels and ``U_h`` orthogonal
(``d x d``).  Rotating the head's projection rows (and bias)

    W[h] <- U_h^T W[h],   b[h] <- U_h^T b[h]          so the norm now reads  y'_h = U_h^T y_h,

and replacing the norm by a ``gamma_norm`` with ``Gamma = diag(g) B``, ``B = blockdiag(U_h)`` over the heads
of the group, gives back exactly the original post-norm vector, because ``rms`` (and ``rms + eps``) is
invariant under the orthogonal ``B``:

    Gamma (B^T y) / rms(B^T y) = diag(g) B B^T y / rms(y) = g * y / rms(y).

RoPE and attention therefore see identical inputs, so q and k heads may use different ``U_h`` (no GQA
collapse).  Per-head norms (``groups = heads``, one ``g`` shared) become ``gamma_norm`` with
``groups = heads``; a full-width norm (OLMo2, ``groups = 1``) one ``(h d) x (h d)`` block-diagonal
``Gamma``.  For a fused ``[q | gate]`` projection only the q part of each head block is rotated.  An
existing ``gamma_norm`` composes: ``Gamma' = Gamma B``.

``U_h``: eigenvectors of ``C_h = E[y_h y_h^T]`` (uncentred, float64, calibration tokens), largest
eigenvalue first by default (``order="ascending"`` is ``eigh``'s own order; both are exact), or a seeded
random orthogonal matrix per head (``rotation="random"``, for fuzzing).

Refusals: a LayerNorm q/k norm (mean subtraction does not commute with ``U``; ``layernorm-qk-norm``), a
norm with a bias (``qk-norm-bias``), norm groups that split a head (``qk-norm-splits-heads``), a norm not
fed by exactly the per-head activation (``qk-norm-layout``), projection rows read elsewhere
(``shared-qk-projection``), no q/k norm anywhere (``no-qk-norm``, so recipes can pick another transform),
plus :func:`fuzz.dataflow.head_chain`'s own refusals.

Mutant (tests only, never a feature): the ``symmetric_gamma`` fault (verifier._faults, injected by
verifier.mutants) uses ``Gamma = B^T diag(g) B``, the seed
code's stale docstring.  Its norm outputs ``B^T (g * y / rms(y))``, which RoPE does not commute with and
which differs between q and k heads (paper: PPL 18,886 instead of 89).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fuzz.dataflow import HeadChain, head_chain
from fuzz.errors import BadInput, Refusal
from fuzz.layout import Layout
from fuzz.materialize import GraphModel
from verifier._faults import fault
from verifier.transform import Calibration

from . import register
from .calibration import collect
from .graph_edit import LayoutEdit, rebuild, require_graph_model

NAME = "spectral-pca"
ROTATIONS = ("pca", "random")
ORDERS = ("descending", "ascending")


@dataclass(frozen=True)
class Site:
    """One q/k path to rotate: ``heads`` heads of ``head_dim`` channels at ``offset`` in ``head_block`` rows
    of ``projection``, normalised by ``norm``."""

    attention: str
    chain: HeadChain
    heads: int
    head_dim: int

    def rows(self, h: int) -> slice:
        start = h * self.chain.head_block + self.chain.offset
        return slice(start, start + self.head_dim)


def _between(layout: Layout, attention: str, port: int, projection: str) -> set[str]:
    """The nodes on the chain from ``projection`` (exclusive) to the attention port."""
    out, node = set(), layout.inputs(attention)[port]
    while node != projection:
        out.add(node)
        node = layout.inputs(node)[0]
    return out


def _check_site(layout: Layout, site: Site, port: int) -> None:
    """Preconditions on the norm and on the projection rows of one q/k path (refuses otherwise)."""
    norm, chain, d = site.chain.norm, site.chain, site.head_dim
    p = layout.params(norm)
    if layout.op(norm) == "norm":
        if p["kind"] == "layer":
            raise Refusal(NAME, "LayerNorm's mean subtraction does not commute with a per-head rotation", op="norm",
                          path=norm, feature="layernorm-qk-norm")
        if p["bias"]:
            raise Refusal(NAME, "a q/k norm with a bias", op="norm", path=norm, feature="qk-norm-bias")
    if p["dim"] % d:
        raise Refusal(NAME, f"norm groups of {p['dim']} channels split heads of {d}", op=layout.op(norm), path=norm,
                      feature="qk-norm-splits-heads")
    if layout.widths[norm] != site.heads * d:
        raise Refusal(NAME, f"the norm reads {layout.widths[norm]} channels, not the {site.heads} heads of {d}",
                      op=layout.op(norm), path=norm, feature="qk-norm-layout")
    chain_nodes = _between(layout, site.attention, port, chain.projection)
    for reader, _ in layout.consumers(chain.projection):
        if reader in chain_nodes:
            continue
        r = layout.params(reader)
        disjoint = (layout.op(reader) == "head_slice" and r["n_heads"] == site.heads
                    and r["head_dim"] == chain.head_block
                    and (r["start"] >= chain.offset + d or r["start"] + r["length"] <= chain.offset))
        if not disjoint:
            raise Refusal(NAME, f"{reader!r} also reads the rotated rows of the projection", op="linear",
                          path=chain.projection, feature="shared-qk-projection")


def sites(layout: Layout) -> list[Site]:
    """Every q/k path with a q/k norm, checked; refuses ``no-qk-norm`` when there is none."""
    out: list[Site] = []
    seen: set[str] = set()
    for attn in layout.of_op("attention"):
        p = layout.params(attn)
        for port, heads in ((0, p["n_heads"]), (1, p["n_kv_heads"])):
            chain = head_chain(layout, attn, port, NAME)
            if chain.norm is None:
                continue
            site = Site(attn, chain, heads, p["head_dim"])
            _check_site(layout, site, port)
            if chain.projection in seen:
                raise Refusal(NAME, "one projection feeds two normed q/k paths", op="linear", path=chain.projection,
                              feature="shared-qk-projection")
            seen.add(chain.projection)
            out.append(site)
    if not out:
        raise Refusal(NAME, "no attention has a q/k norm to absorb the rotation (try pair-pca)", op="attention",
                      path=next(iter(layout.of_op("attention")), None), feature="no-qk-norm")
    return out


def pca_basis(cov: torch.Tensor, order: str = "descending") -> torch.Tensor:
    """Orthogonal eigenvectors (columns) of symmetric ``cov`` ``(..., d, d)``, in float64."""
    c = cov.double()
    _, u = torch.linalg.eigh(0.5 * (c + c.transpose(-1, -2)))
    return u.flip(-1) if order == "descending" else u


def random_orthogonal(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` Haar-random ``d x d`` orthogonal matrices (QR of a Gaussian, signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(n, d, d, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]


def block_diag(u: torch.Tensor, groups: int) -> torch.Tensor:
    """``(heads, d, d)`` -> ``(groups, dim, dim)``: blockdiag of the heads of each group."""
    per = u.shape[0] // groups
    return torch.stack([torch.block_diag(*u[g * per:(g + 1) * per]) for g in range(groups)])


def gamma_matrices(g: torch.Tensor, u: torch.Tensor, groups: int) -> torch.Tensor:
    """``Gamma_grp = G B_grp`` with ``B_grp = blockdiag(U_h)`` over the group's heads; ``g`` is a vector
    (``G = diag(g)``) or the ``(groups, dim, dim)`` Gamma of an existing gamma_norm.
    Under the ``symmetric_gamma`` fault (the mutant), ``B^T G B``."""
    b = block_diag(u, groups)
    gm = torch.diag_embed(g).expand(groups, -1, -1) if g.dim() == 1 else g
    if fault("symmetric_gamma") is not None:
        return b.transpose(-1, -2) @ gm @ b
    return gm @ b


def _norm_gamma(module: nn.Module) -> torch.Tensor:
    """The norm's ``g`` (vector) or a gamma_norm's ``(groups, dim, dim)`` Gamma, in float64."""
    if hasattr(module, "gamma"):
        return module.gamma.detach().double()
    if module.p["weight_form"] == "none":  # a weight-free norm: g = 1
        return torch.ones(module.p["dim"], dtype=torch.float64)
    w = module.weight.detach().double()
    w = w if module.p["weight_form"] == "w" else 1.0 + w
    if w.dim() == 2:  # group_weights: each head its own g, Gamma_h = diag(g_h) U_h
        if fault("shared_head_gamma") is not None:  # the mutant: head 0's g taken for every head
            w = w[:1].expand_as(w)
        return torch.diag_embed(w)
    return w


@register(NAME)
def spectral_pca(model: nn.Module, calib: Calibration, rotation: Literal[ROTATIONS] = "pca",
                 order: Literal[ORDERS] = "descending", seed: int = 0) -> GraphModel:
    """Rotate every normed q/k head by ``U_h`` and turn its norm into ``gamma_norm``; see the module docstring."""
    for name, value, allowed in (("rotation", rotation, ROTATIONS), ("order", order, ORDERS)):
        if value not in allowed:
            raise BadInput(f"{NAME}: {name}={value!r} is not one of {allowed}")
    m = require_graph_model(NAME, model)
    layout = m.layout
    plan = sites(layout)
    cov = {}
    if rotation == "pca":
        requests = sorted({(s.chain.projection, s.heads) for s in plan})
        cov = collect(m, calib, head_cov=requests)["head_cov"]
    gen = torch.Generator().manual_seed(seed)
    edit, log = LayoutEdit(), []
    with torch.no_grad():
        for s in plan:
            d, off = s.head_dim, s.chain.offset
            if rotation == "pca":
                u = pca_basis(cov[s.chain.projection][:, off:off + d, off:off + d], order)
            else:
                u = random_orthogonal(s.heads, d, gen)
            proj = m.nodes[s.chain.projection]
            for pname in ("weight", "bias") if proj.p["bias"] else ("weight",):
                new = getattr(proj, pname).detach().double().clone()
                for h in range(s.heads):
                    new[s.rows(h)] = u[h].T @ new[s.rows(h)]
                edit.tensors[(s.chain.projection, pname)] = new.to(m.dtype)
            norm = m.nodes[s.chain.norm]
            groups, dim = norm.p["groups"], norm.p["dim"]
            gamma = gamma_matrices(_norm_gamma(norm), u, groups)
            edit.replace[s.chain.norm] = ("gamma_norm", {"dim": dim, "groups": groups, "eps": norm.p["eps"]})
            edit.tensors[(s.chain.norm, "gamma")] = gamma.to(m.dtype)
            log.append({"transform": NAME, "node": s.chain.norm, "projection": s.chain.projection,
                        "port": s.chain.port, "heads": s.heads, "groups": groups, "rotation": rotation})
    out = rebuild(m, edit)
    out.transform_log = getattr(m, "transform_log", []) + log
    return out
