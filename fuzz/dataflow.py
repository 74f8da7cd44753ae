"""Structure derived from a layout's dataflow (never from node names): the residual basis, the chain
from a q/k/v projection to attention, the GLU chains of MLPs and experts.  Transforms and reference
transforms share these analyses; each raises :class:`~fuzz.errors.Refusal` naming the node when the
dataflow is not what the caller's derivation assumes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import Refusal
from .layout import Layout

# ops whose output stays in their input's basis (a position_embedding: when its table is rotated with the stream)
BASIS_OPS = frozenset({"scale", "add", "norm", "gate", "position_embedding"})


def residual_basis(layout: Layout, transform: str, extra: frozenset[str] = frozenset()) -> set[str]:
    """Nodes whose output lives in the residual-stream basis: a fixpoint from the embeddings through
    basis-preserving ops (forward, and ``extra`` ops taken as such), and back from them to the writers that feed
    them."""
    basis_ops = BASIS_OPS | extra
    basis = set(layout.of_op("embedding"))
    hidden = {layout.widths[n] for n in basis}
    nodes = [(node, layout.op(node), layout.inputs(node)) for node in layout.order]
    changed = True
    while changed:
        changed = False
        for node, op, ins in nodes:
            if node in basis:
                if op in basis_ops:  # its basis inputs must be in the basis too
                    need = ins[:1] if op == "gate" and layout.widths[ins[1]] != layout.widths[node] else ins
                    for i in need:
                        if i not in basis:
                            basis.add(i)
                            changed = True
                continue
            x_inputs = ins[:1] if op == "gate" else ins
            if op in basis_ops and any(i in basis for i in x_inputs):
                if op == "norm" and layout.params(node)["groups"] != 1:
                    raise Refusal(transform, "a grouped norm reads the residual stream", op=op, path=node,
                                  feature="grouped-norm-on-residual")
                basis.add(node)
                changed = True
    for node in basis:
        op = layout.op(node)
        if op not in basis_ops | {"embedding", "linear", "experts"}:
            raise Refusal(transform, f"{op} output would have to be in the residual basis", op=op, path=node,
                          feature="unsupported-residual-writer")
        if layout.widths[node] not in hidden:
            raise Refusal(transform, f"width {layout.widths[node]} is not the residual width", op=op, path=node)
    return basis


def per_layer_projections(layout: Layout) -> set[str]:
    """The linears projecting the token embedding into Gemma4's per-layer inputs (PLE): back from each add that
    reads a ``per_layer_embedding`` (through scales), along scales and norms, to a linear."""
    tables = set(layout.of_op("per_layer_embedding"))

    def back(node: str, through: tuple[str, ...]) -> str:
        while layout.op(node) in through:
            node = layout.inputs(node)[0]
        return node

    out = set()
    for add in layout.of_op("add"):
        ins = layout.inputs(add)
        if any(back(i, ("scale",)) in tables for i in ins):
            out |= {src for src in (back(i, ("scale", "norm")) for i in ins) if layout.op(src) == "linear"}
    return out


MLA_REFUSAL = ("multi-head latent attention (MLA, DeepSeek-V2/V3): each q/k head is concatenated from a per-head "
               "part and a decoupled RoPE part (the key's k_pe is one head shared by every head), so no per-head "
               "basis of one projection's rows reaches the scores")


@dataclass(frozen=True)
class HeadChain:
    """How a per-head activation reaching an attention port was made.

    ``projection`` is the linear whose rows hold the heads; ``head_block`` its rows per head (``head_dim``,
    or ``2 * head_dim`` for a fused ``[q | gate]`` projection); ``offset`` where this activation's channels
    start inside a head block; ``norm`` / ``rope`` the nodes on the way (None when absent).
    """

    port: str
    projection: str
    head_block: int
    offset: int
    norm: str | None
    rope: str | None


def head_chain(layout: Layout, attention: str, port: int, transform: str) -> HeadChain:
    """Walk back from attention input ``port`` (0 q, 1 k, 2 v) through RoPE / q-k norm / head slice."""
    p = layout.params(attention)
    n_heads = p["n_heads"] if port == 0 else p["n_kv_heads"]
    node = layout.inputs(attention)[port]
    norm = rope = None
    offset = 0
    sliced = False
    head_block = p["head_dim"]
    while True:
        op = layout.op(node)
        if op == "linear":
            break
        if len(layout.consumers(node)) != 1:
            raise Refusal(transform, f"{op} between the projection and attention has other readers", op=op,
                          path=node, feature="shared-qk-activation")
        if op == "rope" and rope is None and norm is None:
            rope = node
        elif op in ("norm", "gamma_norm") and norm is None:
            norm = node
        elif op == "head_slice" and sliced:  # a slice of a slice (a fused gate inside fused qkv rows)
            raise Refusal(transform, "q/k/v are row slices of one fused qkv projection", op=op, path=node,
                          feature="fused-qkv")
        elif op == "head_slice" and layout.params(node)["n_heads"] == n_heads:
            sliced = True
            offset = layout.params(node)["start"]
            head_block = layout.params(node)["head_dim"]
        elif op == "head_slice" and layout.params(node)["n_heads"] == 1:  # a slice of one fused qkv linear
            raise Refusal(transform, "q/k/v are row slices of one fused qkv projection", op=op, path=node,
                          feature="fused-qkv")
        elif op == "head_concat":
            raise Refusal(transform, MLA_REFUSAL, op=op, path=node, feature="mla")
        else:
            raise Refusal(transform, f"unexpected {op} between the projection and attention", op=op, path=node,
                          feature=f"qk-{op}")
        node = layout.inputs(node)[0]
    out = layout.params(node)["out_features"]
    if out != n_heads * head_block:
        raise Refusal(transform, f"{out} projection rows are not {n_heads} heads of {head_block}", op="linear",
                      path=node, feature="head-layout")
    return HeadChain(("q", "k", "v")[port], node, head_block, offset, norm, rope)


@dataclass(frozen=True)
class GLU:
    """``down(act(gate x) * up x)`` (or ``down(act(up x))`` when ``gate`` is None), found by dataflow."""

    up: str
    gate: str | None
    mul: str | None
    down: str


def glu_chains(layout: Layout) -> list[GLU]:
    """Dense (and shared-expert) MLPs in which ``down`` is linear in the ``up`` projection's output."""
    out = []
    for mul in layout.of_op("mul"):
        a, b = layout.inputs(mul)
        for act, up in ((a, b), (b, a)):
            if layout.op(act) != "act" or layout.op(up) != "linear":
                continue
            gate = layout.inputs(act)[0]
            readers = layout.consumers(mul)
            if (layout.op(gate) == "linear" and len(layout.consumers(up)) == 1 and len(readers) == 1
                    and layout.op(readers[0][0]) == "linear"):
                out.append(GLU(up=up, gate=gate, mul=mul, down=readers[0][0]))
                break
    return out


def clamped_glu_chains(layout: Layout) -> list[GLU]:
    """Dense ``down(clamped_glu(gate x, up x))`` (MiniMax-M3): not linear in ``up x`` (``clamp(up) + 1``), so
    no scale moves from up to down; listed for the transforms that must leave them alone (and say so)."""
    out = []
    for node in layout.of_op("clamped_glu"):
        gate, up = layout.inputs(node)
        readers = layout.consumers(node)
        if (layout.op(gate) == "linear" and layout.op(up) == "linear" and len(layout.consumers(up)) == 1
                and len(readers) == 1 and layout.op(readers[0][0]) == "linear"):
            out.append(GLU(up=up, gate=gate, mul=node, down=readers[0][0]))
    return out


@dataclass(frozen=True)
class PlainMLP:
    """``down(act(up x))`` with ``act`` positively homogeneous of degree ``degree`` (relu: 1, relu2: 2)."""

    up: str
    act: str
    down: str
    degree: int


def homogeneous_mlp_chains(layout: Layout, degrees: dict[str, int] | None = None) -> list[PlainMLP]:
    """Plain (non-GLU) MLPs whose activation is positively homogeneous (:data:`fuzz.ops.HOMOGENEOUS_DEGREE`):
    ``down(act(up x / s))`` = ``down(act(up x)) / s^k`` per channel, so a scale moves from up to down."""
    from .ops import HOMOGENEOUS_DEGREE

    degrees = HOMOGENEOUS_DEGREE if degrees is None else degrees
    out = []
    for act in layout.of_op("act") + layout.of_op("xielu"):  # xIELU: never homogeneous (a_p x^2 + beta x)
        degree = degrees.get(layout.params(act)["fn"] if layout.op(act) == "act" else "xielu")
        up = layout.inputs(act)[0]
        readers = layout.consumers(act)
        if (degree is None or layout.op(up) != "linear" or len(layout.consumers(up)) != 1 or len(readers) != 1
                or layout.op(readers[0][0]) != "linear"):
            continue
        out.append(PlainMLP(up=up, act=act, down=readers[0][0], degree=degree))
    return out
