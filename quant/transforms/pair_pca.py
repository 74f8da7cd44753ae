"""T4: pair-PCA, one SO(2) rotation per RoPE pair (q/k without a q/k norm).

RoPE rotates each channel pair of a head by a position-dependent angle ``R_t``; pairs are ``(i, i + r/2)``
(half-split, Llama ``rotate_half``) or ``(2i, 2i + 1)`` (interleaved, GPT-J), over the first ``r`` rotary
channels (the rest pass through).  2-D rotations commute, so for ``U`` in SO(2) per (kv head, pair):

    q' = U^T q,  k' = U^T k   =>   <R_t q', R_s k'> = <U^T R_t q, U^T R_s k> = <R_t q, R_s k>.

``U`` must be shared by the kv head and every query head of its GQA group, and must have ``det U = +1``:
a reflection (what ``eigh`` may return) does not commute with ``R_t``.  It is applied to the pair's rows
of ``W_k`` and ``W_q`` and to their biases.  Calibrated ``U``: eigenvectors of the pooled 2x2 second
moment of the pair over the kv head and its query heads.  On a layer without RoPE any pairing works.

Refusals: a q/k norm between projection and RoPE (feature ``qk-norm``; a pair-non-uniform ``g`` breaks
the commutation, use spectral-pca), q and k rotated by different RoPE (``rope-mismatch``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fuzz.dataflow import HeadChain, head_chain
from fuzz.errors import Refusal
from fuzz.layout import Layout
from fuzz.materialize import GraphModel
from verifier.transform import Calibration

from . import register
from .calibration import collect
from .graph_edit import require_graph_model

NAME = "pair-pca"


def rope_pairs(layout: Layout, rope: str | None, head_dim: int) -> list[tuple[int, int]]:
    """The ``(lo, hi)`` channel pairs RoPE rotates together (any pairing on a layer without RoPE)."""
    if rope is None:
        return [(2 * i, 2 * i + 1) for i in range(head_dim // 2)]
    p = layout.params(rope)
    r = p["rotary_dim"]
    if p["style"] == "half":
        return [(i, i + r // 2) for i in range(r // 2)]
    return [(2 * i, 2 * i + 1) for i in range(r // 2)]


def qk_chains(layout: Layout, attention: str, transform: str = NAME) -> tuple[HeadChain, HeadChain]:
    """The q and k chains of an attention node, checked for what a per-pair rotation needs."""
    q, k = head_chain(layout, attention, 0, transform), head_chain(layout, attention, 1, transform)
    for chain in (q, k):
        if chain.norm is not None:
            raise Refusal(transform, "a q/k norm sits between the projection and RoPE", op="norm", path=chain.norm,
                          feature="qk-norm")
    if (q.rope is None) != (k.rope is None):
        raise Refusal(transform, "RoPE on only one of q and k", op="attention", path=attention, feature="rope-mismatch")
    if q.rope is not None:
        pq, pk = layout.params(q.rope), layout.params(k.rope)
        if any(pq[key] != pk[key] for key in ("head_dim", "rotary_dim", "style", "theta")):
            raise Refusal(transform, "q and k are rotated by different RoPE", op="attention", path=attention,
                          feature="rope-mismatch")
    return q, k


def so2(c: torch.Tensor, *, force_det: bool = True) -> torch.Tensor:
    """Eigenvectors of a 2x2 second moment as a rotation (``det = +1`` unless ``force_det`` is off)."""
    _, u = torch.linalg.eigh(c)
    if force_det and torch.det(u) < 0:
        u = u * torch.tensor([1.0, -1.0], dtype=u.dtype)
    return u


def random_so2(gen: torch.Generator, angle_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    theta = torch.rand((), generator=gen, dtype=torch.float64) * 2 * math.pi
    angle = theta.to(angle_dtype)
    c, s = angle.cos().double(), angle.sin().double()
    return torch.stack((torch.stack((c, -s)), torch.stack((s, c))))


def rotate_pair_rows(mod: nn.Module, rows: tuple[int, int], u: torch.Tensor, *, bias: bool = True) -> None:
    """``[w_lo; w_hi] <- U^T [w_lo; w_hi]`` on two output rows (and the bias entries)."""
    a, b = rows
    ut = u.T.to(mod.weight.dtype)
    new = ut @ torch.stack((mod.weight[a], mod.weight[b]))
    mod.weight[a], mod.weight[b] = new[0], new[1]
    if bias and mod.p["bias"]:
        nb = ut @ torch.stack((mod.bias[a], mod.bias[b]))
        mod.bias[a], mod.bias[b] = nb[0], nb[1]


@register(NAME)
def pair_pca(model: nn.Module, calib: Calibration, rotation: str = "pca", seed: int = 0,
             attentions: list[str] | None = None, force_det: bool = True, rotate_bias: bool = True,
             angle_dtype: str = "float64") -> GraphModel:
    """Rotate every RoPE pair of q and k by its (kv head, pair) ``U``; see the module docstring.

    ``force_det=False`` (a reflection kept), ``rotate_bias=False`` and ``angle_dtype="float32"`` exist only
    for the known-buggy variants in verifier.mutants.
    """
    m = require_graph_model(NAME, model)
    layout = m.layout
    targets = attentions if attentions is not None else layout.of_op("attention")
    chains = {a: qk_chains(layout, a) for a in targets}
    cov = {}
    if rotation == "pca":
        requests = {(c.projection, layout.params(a)["n_heads"] if c.port == "q" else layout.params(a)["n_kv_heads"])
                    for a, (q, k) in chains.items() for c in (q, k)}
        cov = collect(m, calib, head_cov=sorted(requests))["head_cov"]
    gen = torch.Generator().manual_seed(seed)
    log = []
    with torch.no_grad():
        for attn, (q, k) in chains.items():
            p = layout.params(attn)
            group, d = p["n_heads"] // p["n_kv_heads"], p["head_dim"]
            pairs = rope_pairs(layout, k.rope, d)
            for j in range(p["n_kv_heads"]):
                q_heads = range(j * group, (j + 1) * group)
                for lo, hi in pairs:
                    if rotation == "pca":
                        kdx = [k.offset + lo, k.offset + hi]
                        c = cov[k.projection][j][kdx][:, kdx]
                        for h in q_heads:
                            idx = [q.offset + lo, q.offset + hi]
                            c = c + cov[q.projection][h][idx][:, idx]
                        u = so2(c, force_det=force_det)
                        if not force_det and torch.det(u) > 0:  # the mutant always reflects
                            u = u * torch.tensor([1.0, -1.0], dtype=u.dtype)
                    else:
                        u = random_so2(gen, getattr(torch, angle_dtype))
                        if not force_det:
                            u = u * torch.tensor([1.0, -1.0], dtype=u.dtype)
                    rotate_pair_rows(m.nodes[k.projection], (j * k.head_block + k.offset + lo,
                                                             j * k.head_block + k.offset + hi), u, bias=rotate_bias)
                    for h in q_heads:
                        rotate_pair_rows(m.nodes[q.projection], (h * q.head_block + q.offset + lo,
                                                                 h * q.head_block + q.offset + hi), u, bias=rotate_bias)
            log.append({"transform": NAME, "node": attn, "pairs": len(pairs), "rope": k.rope is not None})
    m.transform_log = getattr(m, "transform_log", []) + log
    return m
