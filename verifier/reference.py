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
* ``fold_attn_scale`` -- the attention score scale folded into the query path (``scale`` becomes 1):
  exact through soft-caps, ALiBi and sinks, which read the same scores.
* ``identity``        -- returns the model unchanged (the oracle's own zero).

Each refuses (:class:`~fuzz.errors.Refusal`) with the node and op when the dataflow is not what its
derivation assumes.
"""

from __future__ import annotations

import torch
from torch import nn

from fuzz.dataflow import MLA_REFUSAL, head_chain, residual_basis
from fuzz.errors import BadInput, Refusal
from fuzz.layout import Layout
from fuzz.materialize import GraphModel

from ._faults import fault
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
def permute_hidden(model: nn.Module, calib: Calibration, seed: int = 0) -> nn.Module:
    m = _graph_model("permute_hidden", model)
    layout = m.layout
    # a residual gate (Ergo) keeps the stream's basis under a permutation: P^T diag(c) P = diag(c[p]) is diagonal
    basis = residual_basis(layout, "permute_hidden", frozenset({"residual_gate"}))
    hidden = layout.widths[next(iter(layout.of_op("embedding")))]
    p = _perm(hidden, torch.Generator().manual_seed(seed))
    permute_bias = fault("writer_bias_unpermuted") is None  # the fault: mutants only (verifier._faults)
    with torch.no_grad():
        for node in layout.order:
            op, mod, ins = layout.op(node), m.nodes[node], layout.inputs(node)
            reads = [i in basis for i in ins]
            if op == "embedding" or op == "position_embedding" and fault("position_table_unpermuted") is None:
                mod.weight.copy_(mod.weight[:, p])
            elif op == "residual_gate":  # both per-channel factors are functions of w: permute w
                mod.weight.copy_(mod.weight[p])
            elif op == "norm" and node in basis:
                if mod.p["weight_form"] == "none":  # a weight-free norm: nothing to permute
                    continue
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
                    mod.w_in().copy_(mod.w_in()[:, :, p])
                if node in basis:
                    mod.w_out().copy_(mod.w_out()[:, p, :])
                    if mod.p["bias"] and permute_bias:
                        mod.down_proj_bias.copy_(mod.down_proj_bias[:, p])
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
    if op == "norm" and mod.p["weight_form"] == "none":  # a weight-free q/k norm: nothing moves with the heads
        pass
    elif op == "norm" and mod.p["groups"] == 1:  # a full-width q/k norm: its weight has per-head blocks
        block = mod.p["dim"] // n
        mod.weight.copy_(_rows_by_blocks(mod.weight, order, block))
        if mod.p["bias"]:
            mod.bias.copy_(_rows_by_blocks(mod.bias, order, block))
    elif op == "norm" and mod.p["group_weights"]:  # each head its own weight rows: they move with their head
        if mod.p["groups"] != n:
            raise Refusal("permute_heads", f"norm has {mod.p['groups']} weight groups, expected {n} heads", op=op,
                          path=node, feature="norm-group-weights")
        mod.weight.copy_(mod.weight[order])
        if mod.p["bias"]:
            mod.bias.copy_(mod.bias[order])
    elif op == "head_concat":
        raise Refusal("permute_heads", MLA_REFUSAL, op=op, path=node, feature="mla")
    elif op not in ("rope", "norm", "head_slice"):
        raise Refusal("permute_heads", f"{op} between a projection and {attn} is not per-head uniform",
                      op=op, path=node, feature="non-per-head-op")
    elif op in ("rope", "head_slice") and mod.p["n_heads"] != n:
        raise Refusal("permute_heads", f"{op} has {mod.p['n_heads']} heads, expected {n}", op=op, path=node)
    _permute_producer(m, layout.inputs(node)[0], order, done, attn)


def permute_heads(model: nn.Module, calib: Calibration, seed: int = 0) -> nn.Module:
    m = _graph_model("permute_heads", model)
    layout = m.layout
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for attn in layout.of_op("attention"):
            p = layout.params(attn)
            h, kv = p["n_heads"], p["n_kv_heads"]
            g = h // kv
            if p.get("differential"):  # pairs move together: heads (i, i + h/2), value heads (j, j + kv/2)
                kv_order, q_order = _differential_orders(h, kv, gen)
            else:
                kv_order = _perm(kv, gen)
                q_order = torch.cat([kv_order[j] * g + _perm(g, gen) for j in range(kv)])
            if fault("heads_across_groups") is not None and not p.get("differential"):  # the mutant's bug: query heads cross groups, kv heads stay
                kv_order, q_order = torch.arange(kv), _perm(h, gen)
                if torch.equal(q_order // g, torch.arange(h) // g):  # stayed inside the groups: no bug shown
                    q_order = torch.roll(q_order, g)
            q_src, k_src, v_src = layout.inputs(attn)[:3]  # a 4th port, select, is per position
            done: set[str] = set()
            _permute_producer(m, q_src, q_order, done, attn)
            _permute_producer(m, k_src, kv_order, done, attn)
            _permute_producer(m, v_src, kv_order, done, attn)
            # a differential attention's output is h/2 groups of 2 dv: group i follows query head i of the first half
            _permute_consumers(m, attn, q_order[:h // 2] if p.get("differential") else q_order, done)
            _permute_head_params(m, attn, q_order)
    return m


def _differential_orders(h: int, kv: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A head permutation of a differential attention (DiffLlama): query heads ``i`` and ``i + h/2`` are one pair
    (``P_i - lam P_{i + h/2}``) and value heads ``j`` and ``j + kv/2`` one value ``[V_j; V_{j + kv/2}]``, so the
    first halves are permuted (kv pairs, then query heads inside each GQA group) and the second halves follow.
    The mutant ``diff_pairs_broken`` draws the second halves' partner by another rule (each pair's second head
    one place along its group, or, with one head per group, one kv pair along): GQA groups kept, pairs broken."""
    g, half, kv_half = h // kv, h // 2, kv // 2
    kv_first = _perm(kv_half, gen)
    first = torch.cat([kv_first[j] * g + _perm(g, gen) for j in range(kv_half)])
    second, kv_second = first, kv_first
    if fault("differential_pairs_broken") is not None:
        i = torch.arange(half)
        if g > 1:  # one place along inside the group: the same keys, another partner
            second = first[(i // g) * g + (i % g + 1) % g]
        elif kv_half > 1:  # one head per group: the next kv pair, keys and value half moved with it
            second, kv_second = first.roll(-1), kv_first.roll(-1)
    return torch.cat([kv_first, kv_second + kv_half]), torch.cat([first, second + half])


def _permute_head_params(m: GraphModel, attn: str, q_order: torch.Tensor) -> None:
    """The attention's own per-query-head tensors (ALiBi slopes, sinks) follow the query heads."""
    mod = m.nodes[attn]
    for name, forget in (("alibi_slopes", "alibi_unpermuted"), ("sinks", "sinks_unpermuted")):
        param = mod._parameters.get(name)
        if param is not None and fault(forget) is None:  # the faults: mutants only (verifier._faults)
            param.copy_(param[q_order])


def _permute_consumers(m: GraphModel, node: str, order: torch.Tensor, done: set) -> None:
    """Walk forward from the attention output: per-head gates follow, ``o_proj`` columns are permuted."""
    layout = m.layout
    n = len(order)
    for consumer, port in layout.consumers(node):
        op, mod = layout.op(consumer), m.nodes[consumer]
        if op == "linear" and port == 0:
            block = mod.p["in_features"] // n
            mod.weight.copy_(_rows_by_blocks(mod.weight, order, block, dim=1))
        elif op in ("scale", "norm") and port == 0 and (op == "scale" or mod.p["groups"] == n
                                                        and not mod.p["group_weights"]):
            _permute_consumers(m, consumer, order, done)  # a scale, a per-head norm with one shared weight: uniform
        elif op == "gate" and port == 0:
            g_src = layout.inputs(consumer)[1]
            if layout.widths[g_src] != 1:
                _permute_producer(m, g_src, order, done, node)
            _permute_consumers(m, consumer, order, done)
        else:
            raise Refusal("permute_heads", f"{op} reads the attention output (port {port})", op=op,
                          path=consumer, feature="unsupported-attention-consumer")


# ------------------------------------------------------------------------------------ fold_attn_scale
def fold_attn_scale(model: nn.Module, calib: Calibration, seed: int = 0) -> nn.Module:
    """Fold each attention's score scale ``a`` (``scale``, or ``head_dim ** -0.5``) into its query path and
    set ``scale = 1``: ``s = (a q) . k`` is the same score, so a soft-cap ``c tanh(s / c)``, an ALiBi bias
    and sinks see exactly what they saw.  The factor goes where the query path is last linear in it: the
    q/k norm's weight (and bias; ``1 + w`` becomes ``a (1 + w) - 1``), a matrix-Gamma norm's ``Gamma``, or
    the query rows of the projection (and their bias; only the query rows of a fused ``[q | gate]``).
    Deterministic: ``seed`` is accepted like every reference transform's and unused."""
    m = _graph_model("fold_attn_scale", model)
    layout = m.layout
    scale_cap = fault("softcap_scale_outside") is not None  # the mutant's bug: the cap follows the factor
    changes: dict[str, dict] = {}
    with torch.no_grad():
        for attn in layout.of_op("attention"):
            p = layout.params(attn)
            a = p["head_dim"] ** -0.5 if p["scale"] is None else p["scale"]
            chain = head_chain(layout, attn, 0, "fold_attn_scale")
            if chain.norm is not None:
                mod = m.nodes[chain.norm]
                if layout.op(chain.norm) == "gamma_norm":
                    mod.gamma.mul_(a)
                elif mod.p["weight_form"] == "none":
                    raise Refusal("fold_attn_scale", "a weight-free q/k norm has no weight to take the score scale",
                                  op="norm", path=chain.norm, feature="weightless-qk-norm")
                else:
                    if mod.p["weight_form"] == "1+w":
                        mod.weight.copy_(a * (1.0 + mod.weight) - 1.0)
                    else:
                        mod.weight.mul_(a)
                    if mod.p["bias"]:
                        mod.bias.mul_(a)
            else:
                mod = m.nodes[chain.projection]
                rows = (torch.arange(p["n_heads"])[:, None] * chain.head_block + chain.offset
                        + torch.arange(p["head_dim"])[None, :]).flatten()
                mod.weight[rows] *= a
                if mod.p["bias"]:
                    mod.bias[rows] *= a
            changes[attn] = {"scale": 1.0}
            if scale_cap and p["softcap"] is not None:
                changes[attn]["softcap"] = p["softcap"] * a
    data = layout.to_dict()
    for node in data["nodes"]:
        node.update(changes.get(node["id"], {}))
    data["meta"] = {**{k: v for k, v in layout.meta.items() if k != "spec"}, "derived_from": layout.hash()}
    new = GraphModel(Layout.from_dict(data), dtype=m.dtype, numerics=m.numerics)
    new.load_state_dict(m.state_dict())
    return new.train(m.training)


# ------------------------------------------------------------------------------------ registry
def identity(model: nn.Module, calib: Calibration) -> nn.Module:
    return model


REFERENCE = {"identity": identity, "permute_hidden": permute_hidden, "permute_heads": permute_heads}
# resolvable by name (``reference:fold_attn_scale``, the base of the ``softcap_scale_outside`` mutant) but not
# in :func:`names`: it rebuilds the model, which would slow the campaign rotation and ``bench_verify``; its
# property over the layout space is ``tests/fuzz/test_attention_scores.py``
EXTRA = {"fold_attn_scale": fold_attn_scale}


def names() -> list[str]:
    return sorted(REFERENCE)


def get(name: str, **options) -> NamedTransform:
    """A reference transform by name; unknown names list what is available."""
    if name not in REFERENCE and name not in EXTRA:
        raise BadInput(f"unknown reference transform {name!r}; available: {names() + sorted(EXTRA)}")
    return NamedTransform(name, {**REFERENCE, **EXTRA}[name], options, registry="verifier.reference")
