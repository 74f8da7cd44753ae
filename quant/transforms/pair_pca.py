"""T4: pair-PCA, one SO(2) rotation per RoPE pair (q/k without a q/k norm).

RoPE rotates each channel pair of a head by a position-dependent angle ``R_t``; pairs are ``(i, i + r/2)``
(half-split, Llama ``rotate_half``) or ``(2i, 2i + 1)`` (interleaved, GPT-J), over the first ``r`` rotary
channels (the rest pass through).  2-D rotations commute, so for ``U`` in SO(2) per (kv head, pair):

    q' = U^T q,  k' = U^T k   =>   <R_t q', R_s k'> = <U^T R_t q, U^T R_s k> = <R_t q, R_s k>.

``U`` must be shared by the kv head and every query head of its GQA group, and must have ``det U = +1``:
a reflection (what ``eigh`` may return) does not commute with ``R_t``.  It is applied to the pair's rows
of ``W_k`` and ``W_q`` and to their biases.  Calibrated ``U``: eigenvectors of the pooled 2x2 second
moment of the pair over the kv head and its query heads.  On a layer without RoPE any pairing works.

Any frequencies: scaled RoPE (linear, llama3, yarn, dynamic, longrope, proportional tables (0: an unrotated pair), ``attention_factor`` on cos/sin)
rotates each pair by ``attention_factor * R_t`` with its own angle, which still commutes with ``U``; equal
frequencies (two pairs with the same angle) do not matter because ``U`` never mixes pairs.

Multi-head latent attention (MLA, DeepSeek-V2/V3): the scores are ``q_nope . k_nope + q_pe . k_pe`` with one
``k_pe`` (rows of ``kv_a_proj_with_mqa``) read by every query head, so ``U`` is one per RoPE pair, shared by the
key's single RoPE head and by every query head's ``q_pe`` rows (``q_b_proj`` / ``q_proj``); calibrated from the
pooled moments of ``k_pe`` and of every head's ``q_pe``.  The ``nope`` part is left as it is.

Refusals: a q/k norm between projection and RoPE (feature ``qk-norm``; a pair-non-uniform ``g`` breaks
the commutation, use spectral-pca), q and k rotated by different RoPE (``rope-mismatch``), an MLA whose RoPE
parts are not row slices of one projection each (``mla``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from fuzz.dataflow import HeadChain, head_chain
from fuzz.errors import Refusal
from fuzz.layout import Layout
from fuzz.materialize import GraphModel
from verifier._faults import fault
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
        if any(pq[key] != pk[key] for key in pq if key != "n_heads"):  # theta, scaling, tables, factors
            raise Refusal(transform, "q and k are rotated by different RoPE", op="attention", path=attention,
                          feature="rope-mismatch")
    return q, k


def mla_chains(layout: Layout, attention: str, transform: str = NAME) -> tuple[HeadChain, HeadChain] | None:
    """The RoPE parts of an MLA attention (q and k both ``head_concat(nope, rope(head_slice(projection)))``, the
    key's RoPE part one shared head): ``HeadChain`` s whose ``head_block`` / ``offset`` locate the RoPE rows in
    their projection; None for an attention that is no MLA."""
    ins = layout.inputs(attention)
    if layout.op(ins[0]) != "head_concat" and layout.op(ins[1]) != "head_concat":
        return None
    p = layout.params(attention)
    out = []
    for port, heads in ((0, p["n_heads"]), (1, 1)):
        cat = ins[port]
        ok = layout.op(cat) == "head_concat" and layout.params(cat)["shared_b"] == (port == 1)
        node, rope = (layout.inputs(cat)[1] if ok else cat), None
        if ok and layout.op(node) == "rope" and len(layout.consumers(node)) == 1:
            rope, node = node, layout.inputs(node)[0]
        sl = layout.params(node) if ok and layout.op(node) == "head_slice" else None
        proj = layout.inputs(node)[0] if sl else None
        if not (sl and sl["n_heads"] == heads and len(layout.consumers(node)) == 1 and layout.op(proj) == "linear"
                and layout.params(proj)["out_features"] == heads * sl["head_dim"]
                and (rope is None or layout.params(rope)["rotary_dim"] == sl["length"] == layout.params(rope)["head_dim"])
                and sl["length"] == layout.params(cat)["b_dim"]):
            raise Refusal(transform, "multi-head latent attention (MLA) whose RoPE parts are not a slice of one "
                          "projection each (q per head, k one shared head)", op="attention", path=attention,
                          feature="mla")
        out.append(HeadChain(("q", "k")[port], proj, sl["head_dim"], sl["start"], None, rope))
    q, k = out
    if (q.rope is None) != (k.rope is None) or q.rope is not None and any(
            layout.params(q.rope)[key] != layout.params(k.rope)[key] for key in layout.params(q.rope) if key != "n_heads"):
        raise Refusal(transform, "q and k are rotated by different RoPE", op="attention", path=attention,
                      feature="rope-mismatch")
    return q, k


def _mla_rotation(m: GraphModel, layout: Layout, attn: str, q: HeadChain, k: HeadChain, cov: dict, rotation: str,
                  gen: torch.Generator) -> int:
    """One ``U`` per RoPE pair for the shared ``k_pe`` and every head's ``q_pe`` (see the module docstring); under
    the mutants' ``kpe_per_head`` fault (verifier._faults), each query head gets its own ``U`` as if ``k_pe`` were
    per head, and the shared key takes head 0's."""
    h, r = layout.params(attn)["n_heads"], layout.params(layout.inputs(attn)[0])["b_dim"]
    pairs = rope_pairs(layout, k.rope, r)
    lo = torch.tensor([a for a, _ in pairs])
    hi = torch.tensor([b for _, b in pairs])
    per_head = fault("kpe_per_head") is not None
    if rotation == "pca":
        cq = pair_moments(cov[q.projection], q.offset, lo, hi)  # (h, pairs, 2, 2)
        ck = pair_moments(cov[k.projection], k.offset, lo, hi)  # (1, pairs, 2, 2)
        u = proper(torch.linalg.eigh(cq + ck if per_head else cq.sum(0, keepdim=True) + ck).eigenvectors)
    else:
        u = proper(random_so2((h if per_head else 1, len(pairs)), gen))
    rotate_pair_rows(m.nodes[k.projection], 1, k.head_block, k.offset, lo, hi, u[:1])
    rotate_pair_rows(m.nodes[q.projection], h, q.head_block, q.offset, lo, hi, u if per_head else u.expand(h, -1, -1, -1))
    return len(pairs)


def proper(u: torch.Tensor) -> torch.Tensor:
    """Batched 2x2 orthogonal matrices made rotations (``det = +1``: the second column's sign flipped
    where needed); under the mutants' ``pair_reflection`` fault (verifier._faults), made reflections."""
    flip = (torch.det(u) > 0) if fault("pair_reflection") is not None else (torch.det(u) < 0)
    sign = torch.ones_like(u[..., 0, :])
    sign[..., 1] = torch.where(flip, -1.0, 1.0)
    return u * sign[..., None, :]


def random_so2(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Seeded rotations ``[[c, -s], [s, c]]``; the mutants' ``float32_angles`` fault (verifier._faults) rounds
    the angles to float32, the known precision bug."""
    angle_dtype = torch.float32 if fault("float32_angles") is not None else torch.float64
    theta = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 * math.pi).to(angle_dtype)
    c, s = theta.cos().double(), theta.sin().double()
    return torch.stack((torch.stack((c, -s), -1), torch.stack((s, c), -1)), -2)


def pair_moments(cov: torch.Tensor, offset: int, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``(heads, pairs, 2, 2)`` second moments of each pair, from per-head ``(heads, block, block)``."""
    a, b = offset + lo, offset + hi
    return torch.stack((torch.stack((cov[:, a, a], cov[:, a, b]), -1),
                        torch.stack((cov[:, b, a], cov[:, b, b]), -1)), -2)


def rotate_pair_rows(mod: nn.Module, heads: int, block: int, offset: int, lo: torch.Tensor, hi: torch.Tensor,
                     u: torch.Tensor) -> None:
    """Per head and pair, ``[w_lo; w_hi] <- U^T [w_lo; w_hi]`` on the output rows and bias entries (the
    mutants' ``pair_bias_unrotated`` fault, verifier._faults, leaves the biases); ``u`` is ``(heads, pairs, 2, 2)``."""
    base = torch.arange(heads)[:, None] * block + offset
    rows_lo, rows_hi = (base + lo[None, :]).flatten(), (base + hi[None, :]).flatten()
    u = u.reshape(-1, 2, 2).to(mod.weight.dtype)
    bias = mod.p["bias"] and fault("pair_bias_unrotated") is None
    tensors = [mod.weight] + ([mod.bias] if bias else [])
    for t in tensors:
        x_lo, x_hi = t[rows_lo], t[rows_hi]
        shape = (-1,) + (1,) * (x_lo.dim() - 1)
        t[rows_lo] = u[:, 0, 0].reshape(shape) * x_lo + u[:, 1, 0].reshape(shape) * x_hi
        t[rows_hi] = u[:, 0, 1].reshape(shape) * x_lo + u[:, 1, 1].reshape(shape) * x_hi


@register(NAME)
def pair_pca(model: nn.Module, calib: Calibration, rotation: Literal["pca", "random"] = "pca", seed: int = 0,
             attentions: list[str] | None = None) -> GraphModel:
    """Rotate every RoPE pair of q and k by its (kv head, pair) ``U``; see the module docstring."""
    m = require_graph_model(NAME, model)
    layout = m.layout
    targets = attentions if attentions is not None else layout.of_op("attention")
    mla = {a: c for a in targets if (c := mla_chains(layout, a)) is not None}
    chains = {a: qk_chains(layout, a) for a in targets if a not in mla}
    cov = {}
    if rotation == "pca":
        requests = {(c.projection, layout.params(a)["n_heads"] if c.port == "q" else layout.params(a)["n_kv_heads"])
                    for a, (q, k) in chains.items() for c in (q, k)}
        requests |= {(c.projection, layout.params(a)["n_heads"] if c.port == "q" else 1)
                     for a, (q, k) in mla.items() for c in (q, k)}
        cov = collect(m, calib, head_cov=sorted(requests))["head_cov"]
    gen = torch.Generator().manual_seed(seed)
    log = []
    with torch.no_grad():
        for attn, (q, k) in mla.items():
            n = _mla_rotation(m, layout, attn, q, k, cov, rotation, gen)
            log.append({"transform": NAME, "node": attn, "pairs": n, "rope": k.rope is not None, "mla": True})
        for attn, (q, k) in chains.items():
            p = layout.params(attn)
            kv, group = p["n_kv_heads"], p["n_heads"] // p["n_kv_heads"]
            pairs = rope_pairs(layout, k.rope, p["head_dim"])
            lo = torch.tensor([a for a, _ in pairs])
            hi = torch.tensor([b for _, b in pairs])
            if rotation == "pca":
                c = pair_moments(cov[k.projection], k.offset, lo, hi)
                c = c + pair_moments(cov[q.projection], q.offset, lo, hi).reshape(kv, group, len(pairs), 2, 2).sum(1)
                u = proper(torch.linalg.eigh(c).eigenvectors)
            else:
                u = proper(random_so2((kv, len(pairs)), gen))  # already proper: a no-op outside the mutant
            rotate_pair_rows(m.nodes[k.projection], kv, k.head_block, k.offset, lo, hi, u)
            rotate_pair_rows(m.nodes[q.projection], kv * group, q.head_block, q.offset, lo, hi,
                             u.repeat_interleave(group, dim=0))
            log.append({"transform": NAME, "node": attn, "pairs": len(pairs), "rope": k.rope is not None})
    m.transform_log = getattr(m, "transform_log", []) + log
    return m
