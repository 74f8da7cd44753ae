"""Layout -> torch module: a causal LM that executes the op graph node by node.

Every node is its own ``nn.Module`` under ``model.nodes[<node id>]``, so forward hooks see every
intermediate activation (the oracle names the first divergent node this way) and transforms edit
parameters by node id.  Each op's module registers against the op with ``@torch_impl(op)``
(:data:`MODULES`).  Weights are drawn per node from ``(seed, node id)`` by the op's own initialisers
(:class:`~fuzz.ops.OpSpec`), so a node keeps its weights when the shrinker removes other nodes; they are
never trivial (norm weights, biases and gates random), or scaling bugs would hide behind ones and zeros.

``numerics="exact"`` computes everything in the model dtype (the oracle's float64 ground truth).
``numerics="transformers"`` reproduces transformers' own precision policy (RMSNorm and the router
softmax upcast to float32, RoPE tables built in float32; a ``1 + w`` RMSNorm also applies its weight
in float32, as Gemma does) so that the materializer can be compared bit-for-bit-ish against the real
transformers classes; it is a test mode, not an oracle mode.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os

import torch
import torch.nn.functional as F
from torch import nn

from .errors import BadInput
from .hadamard import online_input
from .layout import Layout
from .ops import DIFF_LAMBDAS, parameter_shapes, registrar, spec, wht_in_form
from .rope_scaling import inv_freq_at

NUMERICS = ("exact", "transformers")

# The size guard: materialize refuses a layout whose parameters would take more than this many bytes
# (4 GiB, a float64 model of ~537M parameters) before allocating anything.  ARCHFUZZ_MAX_PARAM_BYTES
# overrides it for this process and its children (``archfuzz ... --max-param-bytes`` sets it).
DEFAULT_MAX_PARAM_BYTES = 4 * 2**30
MAX_PARAM_BYTES_ENV = "ARCHFUZZ_MAX_PARAM_BYTES"


def max_param_bytes_default() -> int:
    """The limit in force: ``$ARCHFUZZ_MAX_PARAM_BYTES`` if set (a positive integer), else 4 GiB."""
    raw = os.environ.get(MAX_PARAM_BYTES_ENV)
    if raw is None:
        return DEFAULT_MAX_PARAM_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise BadInput(f"{MAX_PARAM_BYTES_ENV}={raw!r}: expected a positive integer number of bytes")
    return value


def check_size(layout: Layout, dtype: torch.dtype = torch.float64, max_param_bytes: int | None = None) -> int:
    """The parameter bytes of ``layout`` in ``dtype``; :class:`BadInput` naming bytes, limit and the
    largest node when they exceed ``max_param_bytes`` (default :func:`max_param_bytes_default`)."""
    limit = max_param_bytes_default() if max_param_bytes is None else max_param_bytes
    counts = layout.parameter_counts()
    total = sum(counts.values()) * dtype.itemsize
    if total > limit:
        node = max(counts, key=counts.get)
        raise BadInput(f"layout parameters take {total:,} bytes in {str(dtype).replace('torch.', '')}, over the "
                       f"limit of {limit:,} bytes (--max-param-bytes / {MAX_PARAM_BYTES_ENV}); largest node "
                       f"{node!r} ({layout.op(node)}): {counts[node] * dtype.itemsize:,} bytes")
    return total


def _generator(seed: int, node: str, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}/{node}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def draw_parameter(seed: int, node: str, op: str, params: dict, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The float64 initial value of one parameter: ``init[name](z, params)`` of the op's
    :class:`~fuzz.ops.OpSpec`, ``z`` the standard-normal draw of ``shape`` from ``(seed, node, name)``."""
    initialiser = spec(op).init.get(name)
    if initialiser is None:
        raise ValueError(f"op {op!r} declares no initialiser for a parameter {name!r} (node {node!r}); "
                       f"it has {sorted(spec(op).init)}")
    z = torch.randn(shape, generator=_generator(seed, node, name), dtype=torch.float64)
    return initialiser(z, params)


ACT = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu,
       # transformers' ReLUSquaredActivation, QuickGELUActivation and FastGELUActivation, as they write them
       "relu2": lambda x: torch.square(F.relu(x)),
       "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
       "fast_gelu": lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
       # BLOOM's bloom_gelu_forward, as it writes it (its own truncated sqrt(2 / pi))
       "bloom_gelu": lambda x: x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))}


MODULES: dict[str, type["Node"]] = {}  # op name -> its torch module, filled by @torch_impl
_register_module = registrar(MODULES, "a torch implementation")


def torch_impl(op: str):
    """``@torch_impl("norm") class Norm(Node)``: registers the torch module of an op of :data:`fuzz.ops.SPECS`
    (an unknown op or a second module for the same op is an error)."""
    return _register_module(op)


class Node(nn.Module):
    """Base of the per-op modules; ``params`` are the node's layout parameters.

    :meth:`export_forward` is the form ``torch.export`` traces: ``forward`` unless the op's forward has
    data-dependent shapes (the experts), then the same math without them.
    """

    def __init__(self, node: str, params: dict, numerics: str):
        super().__init__()
        self.node_id, self.p, self.numerics = node, params, numerics

    def export_forward(self, *args: torch.Tensor) -> torch.Tensor:
        """The exportable form of :meth:`forward` (the same function); by default the module's own call."""
        return self(*args)

    def extra_repr(self) -> str:
        return f"{self.node_id}: " + ", ".join(f"{k}={v}" for k, v in self.p.items())


@torch_impl("tokens")
class Tokens(Node):
    def forward(self, ids):
        return ids


@torch_impl("embedding")
class Embedding(Node):
    def forward(self, ids):
        return F.embedding(ids, self.weight)


@torch_impl("per_layer_embedding")
class PerLayerEmbedding(Node):  # Gemma4's per-layer input table: the ids' rows, every layer's slice side by side
    def forward(self, ids):
        return F.embedding(ids, self.weight)


@torch_impl("scale")
class Scale(Node):
    def forward(self, x):
        return x * self.p["factor"]


@torch_impl("norm")
class Norm(Node):
    """RMSNorm / LayerNorm over groups of ``dim`` channels, ``g = w``, ``1 + w`` or none (``g = 1``)."""

    def forward(self, x):
        p = self.p
        shape = x.shape
        u = x.reshape(*shape[:-1], p["groups"], p["dim"])
        dtype = u.dtype
        if self.numerics == "transformers" and p["kind"] == "rms" and not p.get("keep_dtype"):
            u = u.to(torch.float32)
        if p["kind"] == "layer":
            u = u - u.mean(-1, keepdim=True)
        u = u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + p["eps"])
        if self.numerics == "transformers" and p["kind"] == "rms" and p["weight_form"] == "1+w":
            # Gemma / Qwen3-Next: (u * (1 + w)) in float32, cast after the weight (Llama casts before)
            return (u * (1.0 + self.weight.float())).to(dtype).reshape(shape)
        u = u.to(dtype)
        if p["weight_form"] == "none":  # non-parametric: g = 1
            return u.reshape(shape)
        g = self.weight if p["weight_form"] == "w" else 1.0 + self.weight
        out = g * u
        if p["bias"]:
            out = out + self.bias
        return out.reshape(shape)


@torch_impl("xielu")
class XIELU(Node):
    """xIELU: ``a_p x^2 + beta x`` (``x > 0``), ``(expm1(min(x, eps)) - x) a_n + beta x`` otherwise."""

    def forward(self, x):
        beta, eps = self.p["beta"], self.p["eps"]
        a_p = F.softplus(self.alpha_p)
        a_n = beta + F.softplus(self.alpha_n)
        return torch.where(x > 0, a_p * x * x + beta * x, (torch.expm1(torch.clamp(x, max=eps)) - x) * a_n + beta * x)


@torch_impl("position_embedding")
class PositionEmbedding(Node):
    """``x + P[start : start + seq]``: learned absolute positions (rows from ``start``, OPT's offset 2).
    ``from_mask`` and a ``padding`` mask: each row's positions count its tokens (OPT's
    ``cumsum(mask) * mask - 1 + start``), so a left-padded row reads row ``start`` at its first token; a padded
    position reads row ``max(start - 1, 0)`` (OPT's ``-1 + 2``)."""

    def forward(self, x, padding: torch.Tensor | None = None):
        seq, start = x.shape[-2], self.p["start"]
        if start + seq > self.p["max_pos"]:
            raise ValueError(f"{self.node_id}: {seq} positions from row {start} exceed the {self.p['max_pos']}-row "
                             "position table")
        if padding is not None and self.p["from_mask"]:
            mask = padding.to(torch.long)
            positions = (torch.cumsum(mask, dim=1) * mask - 1 + start).clamp_min(0)  # (batch, seq)
            return x + F.embedding(positions, self.weight)
        positions = torch.arange(start, start + seq, device=x.device)  # a lookup, as transformers writes it
        return x + F.embedding(positions, self.weight)


@torch_impl("linear")
class Linear(Node):
    def forward(self, x):
        return F.linear(x, self.weight, getattr(self, "bias", None))


def rope_tables(p: dict, seq: int, dtype: torch.dtype, numerics: str) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape ``(seq, rotary_dim)`` laid out for the node's pairing style (sin negated for a rotation
    by ``-theta``, ``reversed``)."""
    table_dtype = torch.float32 if numerics == "transformers" else torch.float64
    inv_freq = inv_freq_at(p, seq, table_dtype)  # the default table of theta unless the node is scaled
    freqs = torch.arange(seq, dtype=table_dtype)[:, None] * inv_freq[None, :]
    if p["style"] == "half":
        emb = torch.cat((freqs, freqs), dim=-1)
    else:
        emb = freqs.repeat_interleave(2, dim=-1)
    cos, sin = emb.cos(), emb.sin()
    factor = p.get("attention_factor", 1.0)
    if factor != 1.0:  # YaRN / LongRoPE: cos and sin scaled in the table's dtype, as transformers does
        cos, sin = cos * factor, sin * factor
    if p.get("reversed"):  # the rotation by -theta: R(-t) = cos + sin * rotate^T (NanoChat)
        sin = -sin
    return cos.to(dtype), sin.to(dtype)


_ROPE_TABLES: dict = {}  # (the node's params, seq, dtype, numerics) -> rope_tables(...), built once each


def cached_rope_tables(p: dict, seq: int, dtype: torch.dtype, numerics: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rope_tables`, built once per distinct parameters and length (a query's and a key's rope read the
    same, every forward): constants, never written.  Built outside ``torch.inference_mode`` (an inference tensor
    cannot be saved for a later backward); ``Rope.export_forward`` builds its own inside the trace."""
    key = (repr(sorted(p.items())), seq, dtype, numerics)
    tables = _ROPE_TABLES.get(key)
    if tables is None:
        if len(_ROPE_TABLES) >= 256:
            _ROPE_TABLES.clear()
        with torch.inference_mode(False):
            tables = _ROPE_TABLES[key] = rope_tables(p, seq, dtype, numerics)
    return tables


def rotate_pairs(x: torch.Tensor, style: str) -> torch.Tensor:
    """The 90-degree rotation of every RoPE pair: ``(a, b) -> (-b, a)``."""
    if style == "half":
        h = x.shape[-1] // 2
        return torch.cat((-x[..., h:], x[..., :h]), dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


@torch_impl("rope")
class Rope(Node):
    def forward(self, x):
        return self._rotate(x, cached_rope_tables(self.p, x.shape[1], x.dtype, self.numerics))

    def export_forward(self, x):
        """:meth:`forward` with the tables built inside the traced graph (the cached ones belong to no trace)."""
        return self._rotate(x, rope_tables(self.p, x.shape[1], x.dtype, self.numerics))

    def _rotate(self, x, tables):
        p = self.p
        b, t, _ = x.shape
        xh = x.reshape(b, t, p["n_heads"], p["head_dim"])
        r = p["rotary_dim"]
        cos, sin = tables
        cos, sin = cos.view(1, t, 1, r), sin.view(1, t, 1, r)
        if r == p["head_dim"]:  # every channel rotates (the values of the general form, fewer ops)
            return (xh * cos + rotate_pairs(xh, p["style"]) * sin).reshape(b, t, -1)
        rot, rest = xh[..., :r], xh[..., r:]
        rot = rot * cos + rotate_pairs(rot, p["style"]) * sin
        return torch.cat((rot, rest), dim=-1).reshape(b, t, -1)


@functools.lru_cache(maxsize=64)
def attention_mask(t: int, window: int | None, device: str = "cpu", chunk: int | None = None) -> torch.Tensor:
    """``(t, t)`` bool, True where query ``i`` may read key ``j``: ``j <= i`` and, with a ``window``,
    ``i - j < window`` (transformers' ``kv_idx > q_idx - sliding_window``); with a ``chunk`` ``C``,
    ``floor(i / C) == floor(j / C)`` (transformers' ``chunked_overlay`` on an unpadded row).  Built once per
    length, outside ``torch.inference_mode`` (kept for every later forward, autograd's included)."""
    if torch.is_inference_mode_enabled():
        with torch.inference_mode(False):
            return attention_mask.__wrapped__(t, window, device, chunk)
    i = torch.arange(t, device=device)
    dist = i[:, None] - i[None, :]
    keep = dist >= 0
    if window is not None:
        keep = keep & (dist < window)
    if chunk is not None:
        keep = keep & (torch.div(i[:, None], chunk, rounding_mode="floor")
                       == torch.div(i[None, :], chunk, rounding_mode="floor"))
    return keep


def chunk_mask(padding: torch.Tensor, chunk: int) -> torch.Tensor:
    """``(batch, t, t)`` bool: the chunks of each row counted from its first non-padded token (transformers'
    ``chunked_overlay``: ``(j - left_padding) // C == (i - left_padding) // C``), ``padding`` ``(batch, t)``
    False at padded positions."""
    t = padding.shape[-1]
    left = (padding.long().cumsum(-1) == 0).sum(-1)  # leading padded tokens per row
    pos = torch.arange(t, device=padding.device)[None, :] - left[:, None]
    block = torch.div(pos, chunk, rounding_mode="floor")
    return block[:, :, None] == block[:, None, :]


def temperature_table(p: dict, seq: int, dtype: torch.dtype, numerics: str, device=None) -> torch.Tensor:
    """Attention temperature tuning, ``(seq,)``: ``1 + beta log(1 + floor((pos + offset) / L))`` at positions
    ``0 .. seq-1`` (transformers' default ``position_ids``), computed as Ministral3 / Mistral4 write it (integer
    positions divided in the default float32 under ``"transformers"`` numerics, float64 otherwise);
    ``temperature_form="power"``: ``(1 + (pos + offset) / L) ** beta`` as Beam writes it, ``exp(beta log1p((pos +
    offset) / L))``.  One number per position on every query channel: it commutes with any map of a head's
    channels (a rotation, a scale), so the recipes never need to see it."""
    table_dtype = torch.float32 if numerics == "transformers" else torch.float64
    pos = torch.arange(seq, device=device, dtype=table_dtype) + p["temperature_offset"]
    if p.get("temperature_form", "log_floor") == "power":
        return torch.exp(p["temperature_beta"] * torch.log1p(pos / p["temperature_length"])).to(dtype)
    steps = torch.floor(pos / p["temperature_length"])
    return (1 + p["temperature_beta"] * torch.log(1 + steps)).to(dtype)


@torch_impl("attention")
class Attention(Node):
    """Causal softmax attention, ``scaling = head_dim ** -0.5`` unless ``scale`` says otherwise, K/V repeated
    across GQA groups; a ``window`` masks the keys at distance ``>= window`` (sliding-window attention);
    optional soft-cap, ALiBi bias and sinks (:meth:`modify_scores`, :meth:`sink_softmax`)."""

    def forward(self, q, k, v, select: torch.Tensor | None = None, padding: torch.Tensor | None = None):
        """``padding``: ``(batch, seq)`` bool, False at padded positions (their keys are masked; a query
        that sees no key attends to itself, so padded positions stay finite).  ``select``: an ``index_topk``
        node's ``(batch, seq, seq)`` selection (DeepSeek Sparse Attention), True at the keys a query reads."""
        mask = attention_mask(q.shape[1], self.p["window"], str(q.device), self.p.get("chunk"))
        if padding is not None and self.p.get("chunk") is not None:  # chunks start at each row's first token
            mask = attention_mask(q.shape[1], None, str(q.device))[None] & chunk_mask(padding, self.p["chunk"])
        return self._attend(q, k, v, mask, padding, select)

    def export_forward(self, q, k, v, select: torch.Tensor | None = None):
        """:meth:`forward` with the mask built inside the traced graph (the cached one belongs to no trace)."""
        return self._attend(q, k, v, attention_mask.__wrapped__(q.shape[1], self.p["window"], q.device,
                                                                 self.p.get("chunk")), select=select)

    def _attend(self, q, k, v, mask: torch.Tensor, padding: torch.Tensor | None = None,
                select: torch.Tensor | None = None):
        p = self.p
        b, t, _ = q.shape
        h, kv, d = p["n_heads"], p["n_kv_heads"], p["head_dim"]
        if p.get("temperature_beta") is not None:  # before the scores: the query of position i times t_i
            q = q * temperature_table(p, t, q.dtype, self.numerics, q.device)[None, :, None]
        q = q.reshape(b, t, h, d).transpose(1, 2)
        k = k.reshape(b, t, kv, d).transpose(1, 2)
        v = v.reshape(b, t, kv, -1).transpose(1, 2)  # MLA: v head != d
        if h != kv:  # GQA: each K/V head read by h / kv query heads
            k, v = k.repeat_interleave(h // kv, dim=1), v.repeat_interleave(h // kv, dim=1)
        scores = (q @ k.transpose(-1, -2)) * (d ** -0.5 if p.get("scale") is None else p["scale"])
        if p.get("softcap") is not None or p.get("alibi"):
            scores = self.modify_scores(scores)
        if select is not None or padding is not None:  # a query that sees no key attends to itself (finite)
            mask = mask[:, None] if mask.dim() == 3 else mask[None, None]  # 3-D: chunks under padding
            if select is not None:  # the indexer's keys only
                mask = mask & select[:, None]
            if padding is not None:
                mask = mask & padding[:, None, None, :]
            mask = mask | (~mask.any(-1, keepdim=True) & torch.eye(t, dtype=torch.bool, device=q.device))
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = self.sink_softmax(scores) if p.get("sinks") else torch.softmax(scores, dim=-1)
        if p.get("differential"):
            return self.differential(probs, v).transpose(1, 2).reshape(b, t, -1)
        out = probs @ v
        return out.transpose(1, 2).reshape(b, t, -1)

    def differential_lambda(self, dtype: torch.dtype) -> torch.Tensor:
        """``lam = exp(q1 . k1) - exp(q2 . k2) + lambda_init``; the sums and exps in float32 under
        ``transformers`` numerics (DiffLlama's ``torch.sum(..., dtype=torch.float32)``), else in ``dtype``."""
        acc = torch.float32 if self.numerics == "transformers" else dtype
        q1, k1, q2, k2 = (getattr(self, name).to(dtype) for name in DIFF_LAMBDAS)
        l1 = torch.exp(torch.sum(q1 * k1, dim=-1, dtype=acc)).to(dtype)
        l2 = torch.exp(torch.sum(q2 * k2, dim=-1, dtype=acc)).to(dtype)
        return l1 - l2 + self.p["lambda_init"]

    def differential(self, probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Differential attention (DiffLlama): ``probs (b, h, t, t)``, ``v`` repeated per query head
        ``(b, h, t, dv)``; query heads ``i`` and ``i + h/2`` read ``[V_j; V_{j + kv/2}]`` (``j = i // (h/kv)``), group
        ``i`` is ``P_i Vc - lam P_{i + h/2} Vc``: ``(b, h/2, t, 2 dv)``."""
        h, kv = self.p["n_heads"], self.p["n_kv_heads"]
        g = h // kv
        vk = v[:, ::g]  # (b, kv, t, dv): one per kv head
        vc = torch.cat((vk[:, :kv // 2], vk[:, kv // 2:]), dim=-1).repeat_interleave(g, dim=1)  # (b, h/2, t, 2dv)
        lam = self.differential_lambda(probs.dtype)
        return probs[:, :h // 2] @ vc - lam * (probs[:, h // 2:] @ vc)

    def modify_scores(self, scores):
        """Soft-cap ``cap * tanh(s / cap)`` (Gemma2), then the ALiBi bias ``slope_h * (j - i)`` (BLOOM, MPT)."""
        p = self.p
        if p.get("softcap") is not None:
            scores = torch.tanh(scores / p["softcap"]) * p["softcap"]
        if p.get("alibi"):
            t = scores.shape[-1]
            pos = torch.arange(t, device=scores.device)
            rel = (pos[None, :] - pos[:, None]).to(scores.dtype)  # j - i, one table per forward
            scores = scores + self.alibi_slopes.to(scores.dtype)[:, None, None] * rel
        return scores

    def sink_softmax(self, scores):
        """GPT-OSS sinks: a per-head logit joins each row's softmax and is dropped after it (it takes mass,
        adds no value)."""
        b, h, t, _ = scores.shape
        sink = self.sinks.to(scores.dtype).reshape(1, h, 1, 1).expand(b, h, t, 1)
        combined = torch.cat([scores, sink], dim=-1)
        combined = combined - combined.max(dim=-1, keepdim=True).values
        return torch.softmax(combined, dim=-1)[..., :-1]


@torch_impl("index_topk")
class IndexTopk(Node):
    """DeepSeek Sparse Attention's lightning indexer (see :mod:`fuzz.ops`): index scores
    ``I[i, j] = sum_h weight_scale w[i, h] relu(scale q[i, h] . k[j])`` over the keys query ``i`` may read
    (causal, not padded), the ``topk`` largest selected (every readable key when there are fewer).  Returns the
    ``(batch, seq, seq)`` bool selection.  Ties: ``torch.topk`` picks any of equal scores, so a tie at the
    ``topk``-th place is resolved arbitrarily (as in transformers); random float64 weights make it improbable,
    and keys past the causal / padding mask all score ``-inf`` and are masked again by the attention."""

    last_margin: torch.Tensor | None = None
    exact_ties: torch.Tensor | None = None  # per query: its topk-th and next readable scores are equal

    def forward(self, q, k, w, padding: torch.Tensor | None = None):
        """``last_margin`` keeps, per query, the relative gap between its ``topk``-th and next readable score (a
        near-tie there can flip which key is read under a rounding change; an exact tie, as relu's zeros or a
        repeated token without RoPE give, is the same tie in any basis; but torch.topk's pick among the tied keys
        follows the comparisons of the whole row, so such a query's margin is the row's smallest gap between
        distinct readable scores), read by the oracle
        like a router's margin (:func:`verifier.oracle.comparable_positions`).  ``exact_ties`` marks the
        queries whose choice is torch's tie-break (another implementation, OpenVINO's TopK, may pick another
        tied key: device parity leaves those positions out, ``quant.parity.comparison._reference``)."""
        index, k_eff = self._scores(q, k, w, padding)
        top = index.topk(min(k_eff + 1, index.shape[-1]), dim=-1)
        if k_eff < index.shape[-1]:
            kth, nxt = top.values[..., k_eff - 1], top.values[..., k_eff]
            gap = (kth - nxt) / torch.maximum(kth.abs(), nxt.abs()).clamp_min(torch.finfo(kth.dtype).tiny)
            self.exact_ties = (torch.isfinite(nxt) & (kth == nxt)).detach()
            gap = torch.where(torch.isfinite(nxt) & (gap > 0), gap, torch.full_like(gap, float("inf")))
            # an exact tie at the topk-th place: which tied key torch.topk takes follows the order of the whole row
            # (a comparison flipped anywhere in it by round-off can move the pick), so its margin is the row's
            # smallest relative gap between distinct readable scores
            if bool(self.exact_ties.any()):
                gap = torch.where(self.exact_ties, self._row_gap(index), gap)
            self.last_margin = gap.detach()
        else:
            self.last_margin = self.exact_ties = None
        chosen = top.indices[..., :k_eff]
        return torch.zeros(index.shape, dtype=torch.bool, device=q.device).scatter(-1, chosen, True)

    @staticmethod
    def _row_gap(index: torch.Tensor) -> torch.Tensor:
        """Per query, the smallest relative gap between two adjacent distinct finite scores (``inf`` if none)."""
        ordered = index.sort(dim=-1, descending=True).values
        hi, lo = ordered[..., :-1], ordered[..., 1:]
        rel = (hi - lo) / torch.maximum(hi.abs(), lo.abs()).clamp_min(torch.finfo(index.dtype).tiny)
        return torch.where(torch.isfinite(lo) & (hi != lo), rel, torch.full_like(rel, float("inf"))).amin(dim=-1)

    def export_forward(self, q, k, w):
        """The same top-k selection, written for ``torch.export`` (no margin kept)."""
        index, k_eff = self._scores(q, k, w, None)
        chosen = index.topk(k_eff, dim=-1).indices
        return torch.zeros(index.shape, dtype=torch.bool, device=q.device).scatter(-1, chosen, True)

    def _scores(self, q, k, w, padding: torch.Tensor | None):
        p = self.p
        b, t, _ = q.shape
        h, d = p["n_heads"], p["head_dim"]
        scale = d ** -0.5 if p["scale"] is None else p["scale"]
        weight_scale = h ** -0.5 if p["weight_scale"] is None else p["weight_scale"]
        qh = q.reshape(b, t, h, d)
        scores = torch.relu(torch.einsum("bihd,bjd->bihj", qh, k) * scale)  # (b, i, h, j)
        index = torch.einsum("bih,bihj->bij", w * weight_scale, scores)
        readable = attention_mask.__wrapped__(t, None, q.device)[None]
        if padding is not None:
            readable = readable & padding[:, None, :]
        return index.masked_fill(~readable, float("-inf")), min(p["topk"], t)


@torch_impl("softcap")
class Softcap(Node):
    """``cap * tanh(x / cap)`` (Gemma2's final-logit soft-cap)."""

    def forward(self, x):
        return torch.tanh(x / self.p["cap"]) * self.p["cap"]


@torch_impl("head_slice")
class HeadSlice(Node):
    def forward(self, x):
        p = self.p
        xh = x.reshape(*x.shape[:-1], p["n_heads"], p["head_dim"])
        return xh[..., p["start"]:p["start"] + p["length"]].reshape(*x.shape[:-1], -1)


@torch_impl("head_concat")
class HeadConcat(Node):
    """Per head ``[a_h, b_h]``; ``shared_b``: the one ``b`` head is read by every head (MLA's ``k_pe``)."""

    def forward(self, a, b):
        p = self.p
        h = p["n_heads"]
        ah = a.reshape(*a.shape[:-1], h, p["a_dim"])
        bh = b.reshape(*b.shape[:-1], 1 if p["shared_b"] else h, p["b_dim"])
        if p["shared_b"]:
            bh = bh.expand(*bh.shape[:-2], h, p["b_dim"])
        return torch.cat((ah, bh), dim=-1).reshape(*a.shape[:-1], -1)


@torch_impl("gate")
class Gate(Node):
    """``x * act(g)`` with ``g`` elementwise, per head or per token."""

    def forward(self, x, g):
        act = torch.sigmoid if self.p["act"] == "sigmoid" else F.softplus
        a = act(g)
        if g.shape[-1] == x.shape[-1]:
            return x * a
        if g.shape[-1] == 1:
            return x * a
        n = self.p["n_heads"]
        return (x.reshape(*x.shape[:-1], n, -1) * a[..., None]).reshape(x.shape)


@torch_impl("act")
class Act(Node):
    def forward(self, x):
        return ACT[self.p["fn"]](x)


@torch_impl("mul")
class Mul(Node):
    def forward(self, a, b):
        return a * b


@torch_impl("clamped_glu")
class ClampedGlu(Node):
    """``(clamp(up, -limit, limit) + 1) * g * sigmoid(alpha g)``, ``g = clamp(gate, max=limit)`` (transformers'
    order of operations: the same rounding as the source)."""

    def forward(self, gate, up):
        limit = self.p["limit"]
        gate = gate.clamp(max=limit)
        up = up.clamp(min=-limit, max=limit)
        return (up + 1.0) * (gate * torch.sigmoid(gate * self.p["alpha"]))


@torch_impl("add")
class Add(Node):
    def forward(self, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


@torch_impl("residual_gate")
class ResidualGate(Node):
    """Ergo's residual gate: ``sigmoid(w) * branch + sqrt(1 + sigmoid(w)) exp(-softplus(w) / 2) * residual``
    (the factors in float32 under transformers numerics, as ``ErgoResidualGate`` computes them)."""

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(branch factor, residual factor)``, each ``(dim,)``."""
        w = self.weight.float() if self.numerics == "transformers" else self.weight
        a = torch.sigmoid(w)
        return a, torch.sqrt(1.0 + a) * torch.exp(-0.5 * F.softplus(w))

    def forward(self, branch, residual):
        a, c = self.factors()
        return a * branch + c * residual


@torch_impl("router")
class Router(Node):
    """softmax -> top-k -> optional renormalisation, scattered back to a dense ``(.., E)`` tensor.

    Sigmoid routers (``score="sigmoid"``) choose on ``sigmoid(logits) + e_score_correction_bias`` (when
    ``correction_bias``), restricted to the best ``topk_group`` of ``n_group`` groups (a group scored by
    the sum of its top-2 choice scores), and weigh by the uncorrected scores; ``scaling`` multiplies the
    (renormalised) weights.  Every shape is static (``topk`` / ``scatter``), so the module exports as is.

    ``last_margin`` keeps, per token, the gap between the k-th and (k+1)-th probability of the last
    forward: the oracle sets aside inputs whose margin is below its tolerance (a near-tie may flip).  With
    groups it is the smaller of that gap and the gap between the kept and the best dropped group.
    """

    last_margin: torch.Tensor | None = None

    def forward(self, logits):
        p = self.p
        if p["score"] == "sparsemixer":
            return self._sparsemixer(logits)
        if p["score"] != "softmax" or p["correction_bias"] or p["n_group"] > 1 or p["scaling"] != 1.0:
            return self._general(logits)
        dtype = logits.dtype
        probs = torch.softmax(logits.to(torch.float32) if self.numerics == "transformers" else logits, dim=-1)
        k = p["top_k"]
        top, idx = torch.topk(probs, min(k + 1, p["n_experts"]), dim=-1)
        self.last_margin = (top[..., k - 1] - top[..., k]).detach() if k < p["n_experts"] else None
        top, idx = top[..., :k], idx[..., :k]
        if p["renormalize"]:
            top = top / top.sum(dim=-1, keepdim=True)
        return torch.zeros_like(probs).scatter(-1, idx, top).to(dtype)

    def _sparsemixer(self, logits):
        """Phimoe's sparsemixer in eval (transformers' order of operations): the max expert, weighed by the
        softmax over the scores within ``2 jitter_eps`` (relative) of the max; then the same with the first
        choice masked out.  ``last_margin``: the smallest of the two choices' gaps and of each score's distance
        to a threshold (a score on it may flip in or out of a softmax)."""
        eps2 = 2 * self.p["jitter_eps"]
        margins = []

        def pick(masked):
            top, idx = masked.max(dim=-1, keepdim=True)
            rel = (top - logits) / logits.abs().clamp(min=top)
            gate = torch.softmax(masked.masked_fill(rel > eps2, float("-inf")), dim=-1).gather(-1, idx)
            near = (rel - eps2).abs().masked_fill(~torch.isfinite(masked), float("inf"))
            second = masked.scatter(-1, idx, float("-inf")).amax(dim=-1)
            gap = top[..., 0] - second
            margins.extend([near.amin(dim=-1), torch.where(torch.isfinite(gap), gap, torch.full_like(gap, float("inf")))])
            return idx, gate

        idx1, w1 = pick(logits)
        idx2, w2 = pick(logits.scatter(-1, idx1, float("-inf")))
        self.last_margin = torch.stack(margins).amin(dim=0).detach()
        dense = torch.zeros_like(logits).scatter(-1, idx1, w1).scatter(-1, idx2, w2)
        return dense * self.p["scaling"] if self.p["scaling"] != 1.0 else dense

    def _general(self, logits):
        p = self.p
        dtype = logits.dtype
        x = logits.to(torch.float32) if self.numerics == "transformers" else logits
        scores = torch.softmax(x, dim=-1) if p["score"] == "softmax" else torch.sigmoid(x)
        choice = scores + self.e_score_correction_bias.to(scores.dtype) if p["correction_bias"] else scores
        e, k, g, tg = p["n_experts"], p["top_k"], p["n_group"], p["topk_group"]
        margins = []
        if g > 1:
            grouped = choice.unflatten(-1, (g, e // g))
            group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)
            gtop, gidx = torch.topk(group_scores, min(tg + 1, g), dim=-1)
            if tg < g:
                margins.append(gtop[..., tg - 1] - gtop[..., tg])
            keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter(-1, gidx[..., :tg], True)
            keep = keep[..., None].expand(*keep.shape, e // g).reshape(choice.shape)  # per expert
            choice = choice.masked_fill(~keep, float("-inf"))
        ctop, idx = torch.topk(choice, min(k + 1, e), dim=-1)
        if k < e:
            gap = ctop[..., k - 1] - ctop[..., k]
            margins.append(torch.where(torch.isfinite(gap), gap, torch.full_like(gap, float("inf"))))
        self.last_margin = torch.stack(margins).amin(dim=0).detach() if margins else None
        idx = idx[..., :k]
        top = scores.gather(-1, idx)
        if p["renormalize"]:
            top = top / top.sum(dim=-1, keepdim=True)
        top = top * p["scaling"]
        return torch.zeros_like(scores).scatter(-1, idx, top).to(dtype)


@torch_impl("experts")
class Experts(Node):
    """Fused experts: ``sum_e w_e * down_e(act(gate_e x) * up_e x)``, gate rows first in gate_up_proj.

    The variants (``transposed``, ``interleaved``, ``bias``, ``act="clamped_swiglu"``) run through
    :meth:`intermediate` / :meth:`output`; transforms reach the weights through the canonical views
    :meth:`w_in` ``(E, 2I, H)``, :meth:`w_out` ``(E, H, I)`` and :meth:`up_rows`, whatever the storage.
    """

    def w_in(self) -> torch.Tensor:
        """``gate_up_proj`` as ``(E, 2I, H)`` (a view: in-place edits reach the parameter)."""
        return self.gate_up_proj.transpose(1, 2) if self.p["transposed"] else self.gate_up_proj

    def w_out(self) -> torch.Tensor:
        """``down_proj`` as ``(E, H, I)`` (a view)."""
        return self.down_proj.transpose(1, 2) if self.p["transposed"] else self.down_proj

    def up_rows(self, e: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``up`` rows ``(I, H)`` of expert ``e`` and their bias ``(I,)`` (views; bias None without)."""
        i = self.p["intermediate"]
        rows = slice(1, None, 2) if self.p["interleaved"] else slice(i, None)
        bias = self.gate_up_proj_bias[e, rows] if self.p["bias"] else None
        return self.w_in()[e, rows], bias

    def intermediate(self, x: torch.Tensor, e, per_expert: bool = False) -> torch.Tensor:
        """``down_e``'s input for the rows ``x`` (expert ``e``; ``e`` may be a slice over experts with
        ``x (..., H)`` broadcast by einsum, or with ``per_expert`` ``x (..., E, H)``, one input per expert)."""
        p = self.p
        w = self.w_in()[e]
        gu = F.linear(x, w) if w.dim() == 2 else torch.einsum("...ed,efd->...ef" if per_expert else "...d,efd->...ef",
                                                                 x, w)
        if p["bias"]:
            gu = gu + self.gate_up_proj_bias[e]
        if p["interleaved"]:
            gate, up = gu[..., 0::2], gu[..., 1::2]
        else:
            gate, up = gu.chunk(2, dim=-1)
        if p["act"] == "clamped_swiglu":
            gate = gate.clamp(max=p["limit"])
            up = up.clamp(-p["limit"], p["limit"])
            return (up + 1) * (gate * torch.sigmoid(gate * p["alpha"]))
        return ACT[p["act"]](gate) * up

    def output(self, mid: torch.Tensor, e) -> torch.Tensor:
        """``down_e(mid)`` (+ its bias)."""
        w = self.w_out()[e]
        y = F.linear(mid, w) if w.dim() == 2 else torch.einsum("...ei,edi->...ed", mid, w)
        return y + self.down_proj_bias[e] if self.p["bias"] else y

    def forward(self, x, weights):
        out = torch.zeros_like(x)
        flat_x = x.reshape(-1, x.shape[-1])
        flat_w = weights.reshape(-1, weights.shape[-1])
        flat_out = out.view(-1, x.shape[-1])
        routed = torch.nonzero(flat_w.t())  # (expert, row) pairs, by expert then row
        counts = torch.bincount(routed[:, 0], minlength=self.p["n_experts"]).tolist()
        for e, rows in enumerate(torch.split(routed[:, 1], counts)):  # each expert's rows, ascending
            if rows.numel() == 0:
                continue
            if self.p["scale_input"]:  # Llama 4: the weight scales the expert's input
                y = self.output(self.intermediate(flat_x[rows] * flat_w[rows, e, None], e), e)
            else:
                y = self.output(self.intermediate(flat_x[rows], e), e) * flat_w[rows, e, None]
            flat_out.index_add_(0, rows, y)
        return out

    def export_forward(self, x, weights):
        """Every expert on every token, no data-dependent shapes: ``sum_e w_e * down_e(act(gate_e x) * up_e x)``
        with ``w_e = 0`` for the experts not routed to (the same sum as :meth:`forward`); ``scale_input``:
        ``sum_e [w_e != 0] down_e(act(gate_e w_e x) * up_e w_e x)``."""
        if self.p["scale_input"]:
            y = self.output(self.intermediate(x[..., None, :] * weights[..., None], slice(None), per_expert=True),
                            slice(None))
            return (y * (weights != 0).to(y.dtype)[..., None]).sum(dim=-2)
        y = self.output(self.intermediate(x, slice(None)), slice(None))
        return (y * weights[..., None]).sum(dim=-2)


@torch_impl("wht_in")
class WhtIn(Node):
    """``[x, 0] Q / scale`` with ``Q`` the node's T1 form (:func:`fuzz.hadamard.rotation`): a T1 linear's online
    input."""

    def forward(self, x):
        return online_input(x, self.scale, self.p["d_pad"], wht_in_form(self.p))


@torch_impl("gamma_norm")
class GammaNorm(Node):
    """Per group: ``Gamma_g (u / rms(u))`` with a full ``dim x dim`` matrix per group (T5)."""

    def forward(self, x):
        p = self.p
        u = x.reshape(*x.shape[:-1], p["groups"], p["dim"])
        u = u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + p["eps"])
        return torch.einsum("...gd,ged->...ge", u, self.gamma).reshape(x.shape)


@torch_impl("lm_head")
class LMHead(Node):
    def forward(self, x):
        return F.linear(x, self.weight, self.bias if self.p["bias"] else None)


def padding_mask(attention_mask: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """``(batch, seq)`` bool (True = a token) of a transformers-style ``attention_mask`` of 0 / 1 (or bool)."""
    if not torch.is_tensor(attention_mask) or tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise BadInput(f"attention_mask must be a (batch, seq) tensor of the input_ids' shape "
                       f"{tuple(input_ids.shape)}, got {tuple(getattr(attention_mask, 'shape', ()))}")
    if attention_mask.dtype != torch.bool and attention_mask.numel() and \
            not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise BadInput("attention_mask holds 1 (token) and 0 (padding) only")
    return attention_mask.to(device=input_ids.device, dtype=torch.bool)


def _module_template() -> dict | None:
    """The instance state ``nn.Module.__init__`` gives (empty containers, flags), or None where it holds
    anything else or torch has global registration hooks: then modules are built by their constructors."""
    from torch.nn.modules import module as torch_module
    state = nn.Module().__dict__
    plain = all(isinstance(v, (bool, type(None))) or (isinstance(v, (dict, set, list)) and not v)
                for v in state.values())
    hooks = (torch_module._global_parameter_registration_hooks, torch_module._global_module_registration_hooks,
             torch_module._global_buffer_registration_hooks)
    return dict(state) if plain and not any(hooks) else None


_TEMPLATE = _module_template()
_FLAGS = {k: v for k, v in (_TEMPLATE or {}).items() if not isinstance(v, (dict, set, list))}
_CONTAINERS = [(k, type(v)) for k, v in (_TEMPLATE or {}).items() if isinstance(v, (dict, set, list))]


def _module_state(training: bool) -> dict:
    """A fresh copy of :data:`_TEMPLATE` (new empty containers) with ``training``."""
    state = dict(_FLAGS)
    for key, container in _CONTAINERS:
        state[key] = container()
    state["training"] = training
    return state


def _new_module(cls: type, training: bool) -> nn.Module:
    """``cls()`` of a module class whose ``__init__`` is ``nn.Module``'s, without the call."""
    if _TEMPLATE is None:
        return cls().train(training)
    module = object.__new__(cls)
    module.__dict__.update(_module_state(training))
    return module


def _new_node(cls: type, node: str, params: dict, numerics: str, training: bool) -> Node:
    """``cls(node, params, numerics)`` (no parameters yet), built the way :func:`_new_module` builds a module:
    ``nn.Module.__init__`` and its attribute checks per node were most of the cost of building a model."""
    if _TEMPLATE is None or cls.__init__ is not Node.__init__:
        return cls(node, params, numerics).train(training)
    module = object.__new__(cls)
    module.__dict__.update(_module_state(training), node_id=node, p=params, numerics=numerics)
    return module


class GraphModel(nn.Module):
    """A causal LM executing a :class:`Layout`: ``(batch, seq)`` token ids in, ``(batch, seq, vocab)`` logits out."""

    def __init__(self, layout: Layout, *, dtype: torch.dtype = torch.float64, numerics: str = "exact"):
        super().__init__()
        if numerics not in NUMERICS:
            raise BadInput(f"numerics must be one of {NUMERICS}, got {numerics!r}")
        self.layout = layout
        self.numerics = numerics
        self.nodes = nn.ModuleDict()
        self._fill(lambda node, name, shape: nn.Parameter(torch.empty(shape, dtype=dtype)), self.training)
        inputs = {n: layout.inputs(n) for n in layout.order}
        last_use = {src: i for i, n in enumerate(layout.order) for src in inputs[n]}
        # (node, its inputs, the inputs whose last reader it is: freed right after it runs)
        self._plan = [(n, inputs[n], [s for s in inputs[n] if last_use[s] == i]) for i, n in enumerate(layout.order)]
        # the nodes an attention_mask reaches: every attention, and learned positions that follow the mask
        self._attention = frozenset(layout.of_op("attention", "index_topk")) | frozenset(
            n for n in layout.of_op("position_embedding") if layout.params(n)["from_mask"])
        self._classes = {n: MODULES[layout.op(n)] for n in layout.order}  # each node's module class (reusable)

    def _matches_layout(self) -> bool:
        """True while every node module is exactly what the layout says (class, parameter names, shapes)."""
        if set(self._modules) != {"nodes"} or list(self.nodes) != self.layout.order:
            return False
        for node, module in self.nodes.items():
            op, params = self.layout.op(node), self.layout.params(node)
            if type(module) is not MODULES[op] or module._modules or module._buffers or module.p != params:
                return False
            own = {k: tuple(v.shape) for k, v in module._parameters.items() if v is not None}
            expected = parameter_shapes(op, params)
            if op == "lm_head" and params["tied_to"] is not None:
                expected = {"weight": (params["vocab"], params["dim"]), **expected}
            if own != expected:
                return False
            if op == "lm_head" and params["tied_to"] is not None and \
                    module._parameters["weight"] is not self.nodes[params["tied_to"]]._parameters.get("weight"):
                return False  # a transform untied the head: the generic copy keeps it untied
        return True

    def __deepcopy__(self, memo):
        """Copy parameters and hooks but share the (immutable) layout: much faster than a generic deepcopy.
        Falls back to the generic deepcopy once a transform has replaced modules or reshaped parameters."""
        if not self._matches_layout():
            clone = object.__new__(type(self))
            memo[id(self)] = clone
            for key, value in self.__dict__.items():
                clone.__dict__[key] = value if key == "layout" else copy.deepcopy(value, memo)
            return clone
        training = self.training
        clone = object.__new__(GraphModel)
        memo[id(self)] = clone
        clone.__dict__.update(_module_state(training), layout=self.layout, numerics=self.numerics,
                              _plan=self._plan, _attention=self._attention,  # the plan: of the shared layout
                              _classes=self._classes)
        nodes = clone._modules["nodes"] = _new_module(nn.ModuleDict, training)
        copies: dict[int, nn.Parameter] = {}  # a tied tensor (the head's weight) copied once, shared again
        with torch.no_grad():
            for node, module in self.nodes.items():  # each node as the layout says (checked above)
                target = _new_node(type(module), node, dict(module.p), self.numerics, training)
                for name, src in module._parameters.items():
                    if id(src) not in copies:
                        copies[id(src)] = nn.Parameter(src.clone(), requires_grad=src.requires_grad)
                    target._parameters[name] = copies[id(src)]
                target._forward_hooks.update(module._forward_hooks)
                target._forward_pre_hooks.update(module._forward_pre_hooks)
                nodes._modules[node] = target
        return clone

    def _fill(self, parameter, training: bool) -> None:
        """One module per layout node into the empty ``self.nodes``, each parameter ``parameter(node, name,
        shape)`` in the order of :func:`~fuzz.ops.parameter_shapes`, a tied head's weight its embedding's."""
        layout, numerics, nodes = self.layout, self.numerics, self.nodes._modules
        for node in layout.order:
            op, params = layout.op(node), layout.params(node)
            module = _new_node(MODULES[op], node, params, numerics, training)
            for name, shape in parameter_shapes(op, params).items():
                module._parameters[name] = parameter(node, name, shape)
            nodes[node] = module
        for node in layout.of_op("lm_head"):
            tied = layout.params(node)["tied_to"]
            if tied is not None:
                nodes[node]._parameters["weight"] = nodes[tied]._parameters["weight"]

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def init_weights(self, seed: int = 0) -> "GraphModel":
        with torch.no_grad():
            for node, module in self.nodes.items():
                for name, param in module.named_parameters(recurse=False):
                    if module.p.get("tied_to") is not None and name == "weight":  # the embedding's table
                        continue
                    value = draw_parameter(seed, node, self.layout.op(node), module.p, name, tuple(param.shape))
                    param.copy_(value.to(param.dtype))
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                keep: dict | None = None, given: dict | None = None) -> torch.Tensor:
        """Logits ``(batch, seq, vocab)``.  ``attention_mask`` (``(batch, seq)``, 1 = token, 0 = padding, as
        transformers takes it; ``None`` = no padding): the keys at padded positions are masked in every
        attention; positions stay ``0 .. seq-1`` (transformers' default ``position_ids`` without a cache) except
        in a ``position_embedding`` with ``from_mask`` (counted from each row's first token, OPT), and
        the logits at padded positions are meaningless (finite).

        For a caller that runs one model many times on the same ids (the oracle's positive control steps one
        node's parameters at a time): ``keep``, a dict filled with every node's output (none freed);
        ``given``, ``{node: output}`` used as those nodes' outputs (recorded by ``keep`` on the same ids, with
        the same parameters upstream): only the nodes the logits need past them run."""
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise BadInput(f"input_ids must be a (batch, seq) integer tensor, got {tuple(input_ids.shape)} "
                           f"{input_ids.dtype}")
        vocab = self.layout.params(self.layout.source)["vocab"]
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab):
            raise BadInput(f"token ids must lie in [0, {vocab})")
        pad = None if attention_mask is None else padding_mask(attention_mask, input_ids)
        values: dict[str, torch.Tensor] = {}
        plan = self._plan
        if given:
            values.update(given)
            needed = self._needed(given)
            plan = [step for step in plan if step[0] in needed]
        for node, inputs, done in plan:
            args = [values[i] for i in inputs] if inputs else [input_ids]
            if pad is not None and node in self._attention:
                values[node] = self.nodes[node](*args, padding=pad)
            else:
                values[node] = self.nodes[node](*args)
            if keep is not None:
                keep[node] = values[node]
            elif not given:
                for i in done:  # keep only live activations: memory grows with the width, not the depth
                    del values[i]
        return values[self.layout.sink]

    def reusable(self) -> bool:
        """True when :meth:`forward` with ``given`` computes what a full forward computes: the class's own
        forward, every node the layout op's own module (no child modules, no hooks: a node's output depends on
        its inputs and its own parameters only), and no global module hooks."""
        from torch.nn.modules import module as torch_module
        if type(self).forward is not GraphModel.forward or self._forward_hooks or self._forward_pre_hooks or \
                torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
            return False
        classes = self.__dict__.get("_classes") or {n: MODULES[self.layout.op(n)] for n in self.layout.order}
        return all(type(module) is classes.get(node) and not module._modules
                   and not module._forward_hooks and not module._forward_pre_hooks
                   for node, module in self.nodes._modules.items())

    def _needed(self, given: dict) -> set[str]:
        """The nodes the logits need when the outputs of ``given`` are known: the sink's ancestors, the walk
        stopping at ``given``."""
        inputs = {node: ins for node, ins, _ in self._plan}
        needed: set[str] = set()
        stack = [self.layout.sink]
        while stack:
            node = stack.pop()
            if node not in needed and node not in given:
                needed.add(node)
                stack.extend(inputs[node])
        return needed


def materialize(layout: Layout, *, dtype: torch.dtype = torch.float64, seed: int = 0,
                numerics: str = "exact", max_param_bytes: int | None = None) -> GraphModel:
    """Build the causal LM of ``layout`` with weights drawn from ``seed``, in ``dtype``.  A layout whose
    parameters exceed ``max_param_bytes`` (default 4 GiB, see :func:`check_size`) is refused first."""
    if not isinstance(layout, Layout):
        raise BadInput(f"materialize expects a fuzz.Layout, got {type(layout).__name__}")
    check_size(layout, dtype, max_param_bytes)
    return GraphModel(layout, dtype=dtype, numerics=numerics).init_weights(seed).eval()
