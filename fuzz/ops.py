"""Op kinds of the layout IR: what each node is and when it is legal, side by side.

Every activation in a layout is a ``(batch, seq, width)`` tensor (token ids are ``(batch, seq)``), so
shape inference only tracks the last-axis ``width``.  Each :class:`OpSpec` declares its parameters
(name -> type and default), its input ports and ``infer(params, in_widths) -> out_width``, which
raises :class:`~fuzz.errors.LayoutError` naming the node when the op is not legal.

Semantics (row vectors, ``linear(x, W) = x W^T + b``):

=============  ==========================================================================================
op             meaning
=============  ==========================================================================================
tokens         the input token ids (the single source)
embedding      ``E[ids]``, ``E: (vocab, dim)``
scale          ``factor * x`` (embedding / residual / logit multipliers)
norm           per group of ``dim`` channels: RMSNorm ``g * u / rms(u)`` or LayerNorm
               ``g * (u - mean) / std + b``; ``g = w`` or ``g = 1 + w`` (``weight_form``); ``groups > 1``
               is a per-head norm (one weight shared by the heads, Qwen3 ``q_norm``)
linear         ``x W^T (+ b)``
rope           rotary embedding per head on the first ``rotary_dim`` channels, pairs ``(i, i + r/2)``
               (``half``, Llama ``rotate_half``) or ``(2i, 2i+1)`` (``interleaved``, GPT-J)
attention      causal softmax attention; ports q, k, v; GQA when ``n_kv_heads < n_heads``
head_slice     per head, channels ``[start, start + length)`` of a ``(heads, head_dim)`` view
gate           ``x * act(g)``; ``g`` elementwise (same width), per head (width ``n_heads``) or per token
               (width 1)
act            silu / gelu / gelu_tanh / relu
mul            ``a * b`` (the GLU product)
add            sum of the inputs (residual adds)
router         softmax over expert logits, top-k, optional renormalisation; dense ``(.., E)`` weights
               with zeros off the top-k
experts        fused experts ``gate_up_proj (E, 2I, H)`` gate first, ``down_proj (E, H, I)``; ports x,
               routing weights; ``sum_e w_e * down_e(act(gate_e x) * up_e x)``
lm_head        ``x W^T`` with ``W: (vocab, dim)``; ``tied_to`` names the embedding whose table it reads
wht_in         the online input of a spectrally transformed linear: ``fwht([x, 0]) / scale`` (zero-pad to
               ``d_pad``, orthonormal Walsh-Hadamard, divide by the per-coordinate scale)
gamma_norm     RMS-normalise each group of ``dim`` channels, then apply its own matrix:
               ``out_g = Gamma_g (u_g / rms(u_g))`` (the matrix-Gamma norm of spectral-PCA)
=============  ==========================================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import LayoutError

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")
GATE_ACTS = ("sigmoid", "softplus")


@dataclass(frozen=True)
class OpSpec:
    """Declaration of one op kind: parameters, ports, shape inference and validity."""

    name: str
    params: dict[str, tuple[type | tuple[type, ...], Any]]  # name -> (type, default); default ... = required
    ports: tuple[str, ...]  # named input ports; ("*",) = two or more inputs
    infer: Callable[[str, dict, list[int | None]], int | None]
    choices: dict[str, tuple] = field(default_factory=dict)

    def normalise(self, node: str, raw: dict) -> dict:
        """Fill defaults, reject unknown or ill-typed parameters (naming the node)."""
        unknown = set(raw) - set(self.params)
        if unknown:
            raise LayoutError(f"{self.name} has no parameter(s) {sorted(unknown)}; "
                              f"known: {sorted(self.params)}", node)
        out = {}
        for key, (typ, default) in self.params.items():
            if key in raw:
                value = raw[key]
            elif default is ...:
                raise LayoutError(f"{self.name} needs parameter {key!r}", node)
            else:
                value = default
            value = _coerce(self.name, node, key, typ, value)
            if key in self.choices and value not in self.choices[key]:
                raise LayoutError(f"{self.name}.{key}={value!r} is not one of {self.choices[key]}", node)
            if typ in (int,) and isinstance(value, int) and value <= 0 and key not in ("start",):
                raise LayoutError(f"{self.name}.{key} must be positive, got {value}", node)
            out[key] = value
        return out


def _coerce(op: str, node: str, key: str, typ, value):
    """Type-check one parameter; ints are accepted for floats, bools never for numbers."""
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and typ in (int, float) or not isinstance(value, typ):
        raise LayoutError(f"{op}.{key} must be {getattr(typ, '__name__', typ)}, got {value!r}", node)
    return value


def _need(cond: bool, node: str, msg: str) -> None:
    if not cond:
        raise LayoutError(msg, node)


# Float parameters that can make the function degenerate (a constant output: a zero multiplier, an
# infinite eps that zeroes a norm) or non-finite (inf / nan, an overflowing multiplier) are bounded here.
EPS_MAX = 0.1  # larger eps than any released model uses (1e-12 .. 1e-5) and still far from flattening a norm
FACTOR_RANGE = (1e-6, 1e6)  # |factor| of a multiplier; released models use ~0.01 (residual) .. ~60 (embedding)


def _finite(node: str, op: str, key: str, value: float, allowed: str, ok: bool) -> None:
    if not (math.isfinite(value) and ok):
        raise LayoutError(f"{op}.{key}={value!r} is not allowed: {key} must be {allowed}", node)


def _eps(node: str, op: str, value: float) -> None:
    _finite(node, op, "eps", value, f"a finite number in (0, {EPS_MAX:g}] (an infinite or huge eps zeroes the "
            "norm's output, a zero or negative one divides by zero)", 0 < value <= EPS_MAX)


def _widths(node: str, op: str, got: list, want: list) -> None:
    for i, (g, w) in enumerate(zip(got, want)):
        _need(g == w, node, f"{op} input {i} has width {g}, expected {w}")


def _tokens(node, p, w):
    return None


def _embedding(node, p, w):
    _need(w == [None], node, "embedding reads the token ids")
    return p["dim"]


def _same(node, p, w):
    _need(w[0] is not None, node, "reads token ids where an activation is expected")
    return w[0]


def _scale(node, p, w):
    lo, hi = FACTOR_RANGE
    f = p["factor"]
    _finite(node, "scale", "factor", f, f"finite with {lo:g} <= |factor| <= {hi:g} (0 makes the output "
            "constant, a tiny one underflows, a huge one overflows)", lo <= abs(f) <= hi)
    return _same(node, p, w)


def _norm(node, p, w):
    _widths(node, "norm", w, [p["dim"] * p["groups"]])
    _need(p["bias"] is False or p["kind"] == "layer", node, "only LayerNorm has a bias")
    _eps(node, "norm", p["eps"])
    return w[0]


def _linear(node, p, w):
    _widths(node, "linear", w, [p["in_features"]])
    return p["out_features"]


def _rope(node, p, w):
    _widths(node, "rope", w, [p["n_heads"] * p["head_dim"]])
    r = p["rotary_dim"]
    _need(r % 2 == 0, node, f"rotary_dim must be even, got {r}")
    _need(r <= p["head_dim"], node, f"rotary_dim {r} exceeds head_dim {p['head_dim']}")
    _finite(node, "rope", "theta", p["theta"], "a finite number > 0 (the base of the rotary frequencies)",
            p["theta"] > 0)
    return w[0]


def _attention(node, p, w):
    h, kv, d = p["n_heads"], p["n_kv_heads"], p["head_dim"]
    _need(h % kv == 0, node, f"n_heads {h} is not a multiple of n_kv_heads {kv}")
    _widths(node, "attention", w, [h * d, kv * d, kv * d])
    return h * d


def _head_slice(node, p, w):
    _widths(node, "head_slice", w, [p["n_heads"] * p["head_dim"]])
    _need(p["start"] >= 0 and p["start"] + p["length"] <= p["head_dim"], node,
          f"slice [{p['start']}, {p['start'] + p['length']}) outside head_dim {p['head_dim']}")
    return p["n_heads"] * p["length"]


def _gate(node, p, w):
    x, g = w
    _need(x is not None and g is not None, node, "gate reads activations")
    _need(g in (x, p["n_heads"], 1), node,
          f"gate width {g} must equal the input width {x}, n_heads {p['n_heads']} or 1")
    _need(x % p["n_heads"] == 0, node, f"input width {x} not divisible by n_heads {p['n_heads']}")
    return x


def _mul(node, p, w):
    _need(w[0] is not None and w[0] == w[1], node, f"mul of widths {w[0]} and {w[1]}")
    return w[0]


def _add(node, p, w):
    _need(len(w) >= 2, node, f"add needs at least two inputs, got {len(w)}")
    _need(len(set(w)) == 1 and w[0] is not None, node, f"add of unequal widths {w}")
    return w[0]


def _router(node, p, w):
    _widths(node, "router", w, [p["n_experts"]])
    _need(p["top_k"] <= p["n_experts"], node, f"top_k {p['top_k']} > n_experts {p['n_experts']}")
    return p["n_experts"]


def _experts(node, p, w):
    _widths(node, "experts", w, [p["hidden"], p["n_experts"]])
    return p["hidden"]


def _wht_in(node, p, w):
    _widths(node, "wht_in", w, [p["in_features"]])
    d = p["d_pad"]
    _need(d & (d - 1) == 0 and d >= p["in_features"], node,
          f"d_pad {d} must be a power of two >= in_features {p['in_features']}")
    return d


def _gamma_norm(node, p, w):
    _widths(node, "gamma_norm", w, [p["dim"] * p["groups"]])
    _eps(node, "gamma_norm", p["eps"])
    return w[0]


def _lm_head(node, p, w):
    _widths(node, "lm_head", w, [p["dim"]])
    return p["vocab"]


SPECS: dict[str, OpSpec] = {s.name: s for s in [
    OpSpec("tokens", {"vocab": (int, ...)}, (), _tokens),
    OpSpec("embedding", {"vocab": (int, ...), "dim": (int, ...)}, ("ids",), _embedding),
    OpSpec("scale", {"factor": (float, ...)}, ("x",), _scale),
    OpSpec("norm", {"kind": (str, "rms"), "dim": (int, ...), "groups": (int, 1), "eps": (float, 1e-6),
                    "weight_form": (str, "w"), "bias": (bool, False)}, ("x",), _norm,
           {"kind": ("rms", "layer"), "weight_form": ("w", "1+w")}),
    OpSpec("linear", {"in_features": (int, ...), "out_features": (int, ...), "bias": (bool, False)},
           ("x",), _linear),
    OpSpec("rope", {"n_heads": (int, ...), "head_dim": (int, ...), "rotary_dim": (int, ...),
                    "style": (str, "half"), "theta": (float, 10000.0)}, ("x",), _rope,
           {"style": ("half", "interleaved")}),
    OpSpec("attention", {"n_heads": (int, ...), "n_kv_heads": (int, ...), "head_dim": (int, ...)},
           ("q", "k", "v"), _attention),
    OpSpec("head_slice", {"n_heads": (int, ...), "head_dim": (int, ...), "start": (int, 0),
                          "length": (int, ...)}, ("x",), _head_slice),
    OpSpec("gate", {"act": (str, "sigmoid"), "n_heads": (int, 1)}, ("x", "g"), _gate,
           {"act": GATE_ACTS}),
    OpSpec("act", {"fn": (str, "silu")}, ("x",), _same, {"fn": ACTIVATIONS}),
    OpSpec("mul", {}, ("a", "b"), _mul),
    OpSpec("add", {}, ("*",), _add),
    OpSpec("router", {"n_experts": (int, ...), "top_k": (int, ...), "renormalize": (bool, True)},
           ("logits",), _router),
    OpSpec("experts", {"n_experts": (int, ...), "hidden": (int, ...), "intermediate": (int, ...),
                       "act": (str, "silu")}, ("x", "weights"), _experts, {"act": ACTIVATIONS}),
    OpSpec("lm_head", {"dim": (int, ...), "vocab": (int, ...), "tied_to": ((str, type(None)), None)},
           ("x",), _lm_head),
    OpSpec("wht_in", {"in_features": (int, ...), "d_pad": (int, ...)}, ("x",), _wht_in),
    OpSpec("gamma_norm", {"dim": (int, ...), "groups": (int, 1), "eps": (float, 1e-6)}, ("x",), _gamma_norm),
]}


def spec(op: str, node: str | None = None) -> OpSpec:
    """The :class:`OpSpec` of ``op``; a clear error listing the known kinds otherwise."""
    try:
        return SPECS[op]
    except KeyError:
        raise LayoutError(f"unknown op kind {op!r}; known: {sorted(SPECS)}", node) from None


def parameter_shapes(op: str, p: dict) -> dict[str, tuple[int, ...]]:
    """Shapes of the trainable tensors a node of kind ``op`` owns (empty for weight-free ops)."""
    if op == "embedding":
        return {"weight": (p["vocab"], p["dim"])}
    if op == "norm":
        shapes = {"weight": (p["dim"],)}
        if p["bias"]:
            shapes["bias"] = (p["dim"],)
        return shapes
    if op == "linear":
        shapes = {"weight": (p["out_features"], p["in_features"])}
        if p["bias"]:
            shapes["bias"] = (p["out_features"],)
        return shapes
    if op == "experts":
        e, h, i = p["n_experts"], p["hidden"], p["intermediate"]
        return {"gate_up_proj": (e, 2 * i, h), "down_proj": (e, h, i)}
    if op == "wht_in":
        return {"scale": (p["d_pad"],)}
    if op == "gamma_norm":
        return {"gamma": (p["groups"], p["dim"], p["dim"])}
    if op == "lm_head" and p["tied_to"] is None:
        return {"weight": (p["vocab"], p["dim"])}
    return {}
