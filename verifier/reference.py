"""Reference transforms: exactly function-preserving, cheap, derived from the layout's dataflow.

They exercise the oracle on every layout the synthesizer draws (``pytest fuzz/``) and serve as the
correct baselines that the known-buggy variants in the tests are measured against.

* ``permute_hidden``  -- a permutation ``P`` of the residual-stream channels.  The residual basis is
  the set of nodes reached from the embedding through basis-preserving ops (scale, add, full-width norm,
  per-token gates); RMSNorm and LayerNorm commute with any permutation (rms and mean are invariant).
  Readers of that basis get ``W[:, P]``, writers ``W[P, :]`` and ``b[P]``, norms ``g[P]``, ``b[P]``,
  the embedding ``E[:, P]``; fused experts ``gate_up_proj[:, :, P]`` and ``down_proj[:, P, :]``.
* ``permute_heads``   -- a permutation of the kv heads, and of the query heads inside each GQA group,
  carried through everything per-head between the projections and ``o_proj`` (RoPE and per-head norms
  are uniform across heads; a full-width q/k norm gets its weight blocks permuted; per-head gates and
  the fused ``[q | gate]`` rows of ``q_proj`` follow the query heads).
* ``identity``        -- returns the model unchanged (the oracle's own zero).

Each refuses (:class:`~fuzz.errors.Refusal`) with the node and op when the dataflow is not what its
derivation assumes.
"""

from __future__ import annotations

import torch
from torch import nn

from fuzz.errors import BadInput, Refusal
from fuzz.layout import Layout
from fuzz.materialize import GraphModel

from .transform import Calibration, NamedTransform


def _graph_model(name: str, model: nn.Module) -> GraphModel:
    if not isinstance(model, GraphModel):
        raise Refusal(name, f"works on archfuzz GraphModels, got {type(model).__name__}",
                      feature="module-without-layout")
    return model


def _perm(n: int, gen: torch.Generator) -> torch.Tensor:
    p = torch.randperm(n, generator=gen)
    if n > 1 and torch.equal(p, torch.arange(n)):  # never the identity: a no-op proves nothing
        p = torch.roll(p, 1)
    return p


# ------------------------------------------------------------------------------------ permute_hidden
_BASIS_OPS = {"scale", "add", "norm", "gate"}  # ops whose output stays in their input's channel basis


def residual_basis(layout: Layout, transform: str = "permute_hidden") -> set[str]:
    """Nodes whose output lives in the residual-stream basis (fixpoint over the dataflow)."""
    basis = set(layout.of_op("embedding"))
    hidden = {layout.widths[n] for n in basis}
    changed = True
    while changed:
        changed = False
        for node in layout.order:
            op, ins = layout.op(node), layout.inputs(node)
            if node in basis:
                if op in _BASIS_OPS:  # its basis inputs must be permuted too
                    need = ins[:1] if op == "gate" and layout.widths[ins[1]] != layout.widths[node] else ins
                    for i in need:
                        if i not in basis:
                            basis.add(i)
                            changed = True
                continue
            x_inputs = ins[:1] if op == "gate" else ins
            if op in _BASIS_OPS and any(i in basis for i in x_inputs):
                if op == "norm" and layout.params(node)["groups"] != 1:
                    raise Refusal(transform, "a grouped norm reads the residual stream", op=op, path=node,
                                  feature="grouped-norm-on-residual")
                basis.add(node)
                changed = True
    for node in basis:
        op = layout.op(node)
        if op not in _BASIS_OPS | {"embedding", "linear", "experts"}:
            raise Refusal(transform, f"{op} output would have to be in the residual basis", op=op, path=node,
                          feature="unsupported-residual-writer")
        if layout.widths[node] not in hidden:
            raise Refusal(transform, f"width {layout.widths[node]} is not the residual width", op=op, path=node)
    return basis


def permute_hidden(model: nn.Module, calib: Calibration, seed: int = 0, permute_bias: bool = True) -> nn.Module:
    m = _graph_model("permute_hidden", model)
    layout = m.layout
    basis = residual_basis(layout)
    hidden = layout.widths[next(iter(layout.of_op("embedding")))]
    p = _perm(hidden, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for node in layout.order:
            op, mod, ins = layout.op(node), m.nodes[node], layout.inputs(node)
            reads = [i in basis for i in ins]
            if op == "embedding":
                mod.weight.copy_(mod.weight[:, p])
            elif op == "norm" and node in basis:
                mod.weight.copy_(mod.weight[p])
                if mod.p["bias"]:
                    mod.bias.copy_(mod.bias[p])
            elif op == "linear":
                if reads[0]:
                    mod.weight.copy_(mod.weight[:, p])
                if node in basis:
                    mod.weight.copy_(mod.weight[p, :])
                    if mod.p["bias"] and permute_bias:
                        mod.bias.copy_(mod.bias[p])
            elif op == "experts":
                if reads[0]:
                    mod.gate_up_proj.copy_(mod.gate_up_proj[:, :, p])
                if node in basis:
                    mod.down_proj.copy_(mod.down_proj[:, p, :])
                elif not reads[0]:
                    continue
            elif op == "lm_head":
                if mod.p["tied_to"] is None:
                    mod.weight.copy_(mod.weight[:, p])
            elif any(reads) and node not in basis:
                raise Refusal("permute_hidden", f"{op} reads the residual stream and is not linear in it",
                              op=op, path=node, feature="nonlinear-residual-reader")
    return m


# ------------------------------------------------------------------------------------ permute_heads
def _rows_by_blocks(t: torch.Tensor, order: torch.Tensor, block: int, dim: int = 0) -> torch.Tensor:
    idx = (order[:, None] * block + torch.arange(block)[None, :]).flatten()
    return t.index_select(dim, idx)


def _permute_producer(m: GraphModel, node: str, order: torch.Tensor, done: set, attn: str) -> None:
    """Walk back from a per-head activation to the linear that makes it, permuting heads on the way."""
    layout = m.layout
    op, mod = layout.op(node), m.nodes[node]
    n = len(order)
    if node in done:
        return
    done.add(node)
    if op == "linear":
        out = mod.p["out_features"]
        if out % n:
            raise Refusal("permute_heads", f"{out} rows are not {n} head blocks", op=op, path=node)
        mod.weight.copy_(_rows_by_blocks(mod.weight, order, out // n))
        if mod.p["bias"]:
            mod.bias.copy_(_rows_by_blocks(mod.bias, order, out // n))
        return
    if op == "norm" and mod.p["groups"] == 1:  # a full-width q/k norm: its weight has per-head blocks
        block = mod.p["dim"] // n
        mod.weight.copy_(_rows_by_blocks(mod.weight, order, block))
        if mod.p["bias"]:
            mod.bias.copy_(_rows_by_blocks(mod.bias, order, block))
    elif op not in ("rope", "norm", "head_slice"):
        raise Refusal("permute_heads", f"{op} between a projection and {attn} is not per-head uniform",
                      op=op, path=node, feature="non-per-head-op")
    elif op in ("rope", "head_slice") and mod.p["n_heads"] != n:
        raise Refusal("permute_heads", f"{op} has {mod.p['n_heads']} heads, expected {n}", op=op, path=node)
    _permute_producer(m, layout.inputs(node)[0], order, done, attn)


def permute_heads(model: nn.Module, calib: Calibration, seed: int = 0, respect_groups: bool = True) -> nn.Module:
    m = _graph_model("permute_heads", model)
    layout = m.layout
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for attn in layout.of_op("attention"):
            p = layout.params(attn)
            h, kv = p["n_heads"], p["n_kv_heads"]
            g = h // kv
            kv_order = _perm(kv, gen)
            q_order = torch.cat([kv_order[j] * g + _perm(g, gen) for j in range(kv)])
            if not respect_groups:  # the bug: query heads move across groups, kv heads stay
                kv_order, q_order = torch.arange(kv), _perm(h, gen)
            q_src, k_src, v_src = layout.inputs(attn)
            done: set[str] = set()
            _permute_producer(m, q_src, q_order, done, attn)
            _permute_producer(m, k_src, kv_order, done, attn)
            _permute_producer(m, v_src, kv_order, done, attn)
            _permute_consumers(m, attn, q_order, done)
    return m


def _permute_consumers(m: GraphModel, node: str, order: torch.Tensor, done: set) -> None:
    """Walk forward from the attention output: per-head gates follow, ``o_proj`` columns are permuted."""
    layout = m.layout
    n = len(order)
    for consumer, port in layout.consumers(node):
        op, mod = layout.op(consumer), m.nodes[consumer]
        if op == "linear" and port == 0:
            block = mod.p["in_features"] // n
            mod.weight.copy_(_rows_by_blocks(mod.weight, order, block, dim=1))
        elif op == "gate" and port == 0:
            g_src = layout.inputs(consumer)[1]
            if layout.widths[g_src] != 1:
                _permute_producer(m, g_src, order, done, node)
            _permute_consumers(m, consumer, order, done)
        else:
            raise Refusal("permute_heads", f"{op} reads the attention output (port {port})", op=op,
                          path=consumer, feature="unsupported-attention-consumer")


# ------------------------------------------------------------------------------------ absorb_norm_scale
def norm_absorb_plan(layout: Layout, node: str, transform: str = "absorb_norm_scale") -> list[str]:
    """Consumers of a full-width norm that take a column scaling; refuse what cannot.

    ``x = g * n(u)`` is read by the set ``C`` of the dataflow.  ``g' = g / s`` with ``W' = W diag(s)`` for
    every ``W`` in ``C`` is exact iff every consumer is linear in ``x`` (linear, fused experts) and ``x``
    does not also feed the residual stream.
    """
    consumers = layout.consumers(node)
    for c, port in consumers:
        op = layout.op(c)
        if op == "add":
            raise Refusal(transform, f"the normed output feeds the residual add {c!r} (post-norm)", op="norm",
                          path=node, feature="norm-feeds-residual")
        if op not in ("linear", "experts", "lm_head") or (op == "experts" and port != 0):
            raise Refusal(transform, f"consumer {c!r} ({op}) is not linear in the normed input", op="norm",
                          path=node, feature="nonlinear-consumer")
        if op == "lm_head" and layout.params(c)["tied_to"] is not None:
            raise Refusal(transform, "the final norm feeds a tied lm_head (scaling it rescales the embedding)",
                          op="norm", path=node, feature="tied-embeddings")
    return [c for c, _ in consumers]


def absorb_norm_scale(model: nn.Module, calib: Calibration, seed: int = 0, skip_consumer: bool = False) -> nn.Module:
    """T2 in its simplest form: random ``s > 0`` per norm, ``g' = g / s`` (``1 + w' = (1 + w) / s``),
    ``b' = b / s``, consumer columns ``W diag(s)``.  ``skip_consumer`` is the seed-code bug (one consumer
    of the set left unscaled) and exists only so the tests can show the oracle catches it."""
    name = "absorb_norm_scale"
    m = _graph_model(name, model)
    layout = m.layout
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for node in layout.of_op("norm"):
            mod = m.nodes[node]
            if mod.p["groups"] != 1:
                continue  # per-head q/k norms: their consumers are RoPE / attention (T5's business)
            try:
                consumers = norm_absorb_plan(layout, node, name)
            except Refusal:
                if skip_consumer:
                    continue
                raise
            s = torch.exp(0.5 * torch.randn(mod.p["dim"], generator=gen, dtype=torch.float64)).to(mod.weight.dtype)
            if mod.p["weight_form"] == "w":
                mod.weight.copy_(mod.weight / s)
            else:
                mod.weight.copy_((1.0 + mod.weight) / s - 1.0)
            if mod.p["bias"]:
                mod.bias.copy_(mod.bias / s)
            for c in consumers[:-1] if skip_consumer and len(consumers) > 1 else consumers:
                cm = m.nodes[c]
                if layout.op(c) == "experts":
                    cm.gate_up_proj.copy_(cm.gate_up_proj * s)
                else:
                    cm.weight.copy_(cm.weight * s)
    return m


# ------------------------------------------------------------------------------------ rope_pair_rotation
def rope_pairs(rope_params: dict | None, head_dim: int) -> list[tuple[int, int]]:
    """The ``(lo, hi)`` channel pairs RoPE rotates together (none if the layer has no RoPE)."""
    if rope_params is None:
        return [(2 * i, 2 * i + 1) for i in range(head_dim // 2)]  # no RoPE: any pairing is fine
    r = rope_params["rotary_dim"]
    if rope_params["style"] == "half":
        return [(i, i + r // 2) for i in range(r // 2)]
    return [(2 * i, 2 * i + 1) for i in range(r // 2)]


def _rotate_rows(mod: nn.Module, head: int, head_dim: int, lo: int, hi: int, u: torch.Tensor, bias: bool) -> None:
    a, b = head * head_dim + lo, head * head_dim + hi
    rows = torch.stack((mod.weight[a], mod.weight[b]))
    new = u.T @ rows
    mod.weight[a], mod.weight[b] = new[0], new[1]
    if bias and mod.p["bias"]:
        vb = u.T @ torch.stack((mod.bias[a], mod.bias[b]))
        mod.bias[a], mod.bias[b] = vb[0], vb[1]


def _qk_source(layout: Layout, node: str, transform: str) -> tuple[str, dict | None]:
    """The projection feeding an attention port and the RoPE node on the way (refuse anything else)."""
    rope = None
    while layout.op(node) != "linear":
        op = layout.op(node)
        if op != "rope":
            raise Refusal(transform, f"{op} between the projection and attention (a q/k norm or a fused gate "
                          "does not commute with a per-pair rotation of the projection rows)", op=op, path=node,
                          feature=f"qk-{op}")
        rope = layout.params(node)
        node = layout.inputs(node)[0]
    return node, rope


def rope_pair_rotation(model: nn.Module, calib: Calibration, seed: int = 0, reflect: bool = False,
                       rotate_bias: bool = True, angle_dtype: str = "float64") -> nn.Module:
    """T4's algebra with random angles: per (kv head, RoPE pair) one ``U`` in SO(2) applied as ``U^T`` to
    the pair's rows of ``W_k`` and of every ``W_q`` head of the group (and their biases).
    ``<R_t U^T q, R_s U^T k> = <R_t q, R_s k>`` because 2-D rotations commute.  ``reflect`` (det -1, the
    eigh pitfall), ``rotate_bias=False`` (the forgotten bias) and ``angle_dtype="float32"`` (a matrix
    built from float32 values: orthogonal only to ~1e-8) are the known bugs, kept for the tests."""
    name = "rope_pair_rotation"
    m = _graph_model(name, model)
    layout = m.layout
    gen = torch.Generator().manual_seed(seed)
    dtype = next(m.parameters()).dtype
    with torch.no_grad():
        for attn in layout.of_op("attention"):
            p = layout.params(attn)
            h, kv, d = p["n_heads"], p["n_kv_heads"], p["head_dim"]
            q_in, k_in, _ = layout.inputs(attn)
            q_proj, q_rope = _qk_source(layout, q_in, name)
            k_proj, k_rope = _qk_source(layout, k_in, name)
            if q_rope != (None if k_rope is None else {**k_rope, "n_heads": p["n_heads"]}):
                raise Refusal(name, "q and k are not rotated by the same RoPE", op="attention", path=attn,
                              feature="rope-mismatch")
            for j in range(kv):
                for lo, hi in rope_pairs(k_rope, d):
                    theta = float(torch.rand((), generator=gen, dtype=torch.float64)) * 2 * torch.pi
                    angle = torch.tensor(theta, dtype=getattr(torch, angle_dtype))
                    c, s = angle.cos().double(), angle.sin().double()
                    u = torch.stack((torch.stack((c, -s)), torch.stack((s, c))))
                    if reflect:
                        u = u @ torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
                    u = u.to(dtype)
                    _rotate_rows(m.nodes[k_proj], j, d, lo, hi, u, rotate_bias)
                    for i in range(h // kv):
                        _rotate_rows(m.nodes[q_proj], j * (h // kv) + i, d, lo, hi, u, rotate_bias)
    return m


# ------------------------------------------------------------------------------------ registry
def identity(model: nn.Module, calib: Calibration) -> nn.Module:
    return model


REFERENCE = {"identity": identity, "permute_hidden": permute_hidden, "permute_heads": permute_heads,
             "absorb_norm_scale": absorb_norm_scale, "rope_pair_rotation": rope_pair_rotation}


def names() -> list[str]:
    return sorted(REFERENCE)


def get(name: str, **options) -> NamedTransform:
    """A reference transform by name; unknown names list what is available."""
    if name not in REFERENCE:
        raise BadInput(f"unknown reference transform {name!r}; available: {names()}")
    return NamedTransform(name, REFERENCE[name], options, registry="verifier.reference")
