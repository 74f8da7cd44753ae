"""The recorder: one forward pass under a :class:`~torch.overrides.TorchFunctionMode` that grows the
op-level graph (every torch call seen, views passed through, module calls kept on a stack)."""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import BadInput
from .calls import (_ACTS, _NORM_FNS, _RESHAPE, _SELECT, _arg, _canon, _key_repr, _numel, _scalar, _storage_key,
                    _strided, _tensors)
from .contract import _finish
from .graph import RecordedGraph

_BROADCASTS = frozenset({"expand", "expand_as", "broadcast_to", "repeat", "repeat_interleave", "tile"})  # no selection
_TEMPLATED = frozenset({"expand_as", "view_as", "reshape_as", "type_as"})  # the second tensor is a template
_ADDED_MAX = 1 << 20  # elements of an added constant kept for the score-bias measurement

DEFAULT_SEQ_LEN = 8


def record(model: nn.Module, input_ids: torch.Tensor | None = None) -> RecordedGraph:
    """Run ``model`` once on ``input_ids`` (default: 8 fixed ids) and return its recorded dataflow.

    ``model`` must be a causal LM: called as ``model(input_ids=...)`` (or positionally) it returns an
    object with ``.logits`` (or a mapping with ``"logits"``, or the logits tensor itself) of shape
    ``(*input_ids.shape, vocab)`` that depends on the ids.  Otherwise :class:`BadInput` is raised.
    The model runs in eval mode under ``torch.no_grad()``; its training flags are restored afterwards.
    """
    if not isinstance(model, nn.Module):
        raise BadInput(f"record expects a torch.nn.Module, got {type(model).__name__}")
    ids = _input_ids(model, input_ids)
    name = type(model).__name__
    with evaluating(model):
        rec, out = _run(model, ids)
    logits = _logits(out, ids, name)
    producer = rec.producer(logits)
    if producer is None:
        raise BadInput(f"{name}: the logits do not depend on the input ids (not a causal LM)")
    return _finish(rec, producer, ids, name, logits.shape[-1])


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """``model`` in eval mode under ``torch.no_grad()`` for the block; every module's training flag restored."""
    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for m, flag in training.items():
            m.training = flag


def device_of(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _input_ids(model: nn.Module, input_ids) -> torch.Tensor:
    if input_ids is None:
        vocab = 2
        get = getattr(model, "get_input_embeddings", None)
        emb = get() if callable(get) else None
        weight = getattr(emb, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            vocab = weight.shape[0]
        ids = (torch.arange(DEFAULT_SEQ_LEN) * 7919 + 11) % vocab
        return ids.unsqueeze(0).to(device_of(model))
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32) \
            or input_ids.dim() not in (1, 2) or input_ids.numel() == 0:
        got = f"{tuple(input_ids.shape)} {input_ids.dtype}" if isinstance(input_ids, torch.Tensor) \
            else type(input_ids).__name__
        raise BadInput(f"input_ids must be a non-empty (batch, seq) or (seq,) integer tensor, got {got}")
    return input_ids.unsqueeze(0) if input_ids.dim() == 1 else input_ids


def _run(model: nn.Module, ids: torch.Tensor):
    """Call the model on ``ids`` under a fresh recorder per calling convention; BadInput if none runs."""
    name = type(model).__name__
    attempts = [((), {"input_ids": ids, "use_cache": False}), ((), {"input_ids": ids}), ((ids,), {})]
    error: BaseException | None = None
    for args, kwargs in attempts:
        rec = _Recorder(model, ids)
        try:
            with torch.no_grad(), rec.hooks(), rec:
                out = model(*args, **kwargs)
            return rec, out
        except _RecorderBug:
            raise
        except TypeError as exc:  # the calling convention does not fit: try the next one
            error = exc
        except (ValueError, RuntimeError, IndexError, KeyError, AttributeError) as exc:
            raise BadInput(f"{name} does not run as a causal LM on integer token ids "
                           f"{tuple(ids.shape)}: {type(exc).__name__}: {exc}") from exc
    raise BadInput(f"{name} takes no integer token ids (tried model(input_ids=...) and model(ids)): {error}")


def _logits(out, ids: torch.Tensor, name: str) -> torch.Tensor:
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, dict):
        logits = out.get("logits")
    if logits is None and isinstance(out, torch.Tensor):
        logits = out
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise BadInput(f"{name} output has no logits (got {type(out).__name__}): not a causal LM")
    if logits.dim() != ids.dim() + 1 or tuple(logits.shape[:-1]) != tuple(ids.shape):
        dropped = (logits.dim() == ids.dim() + 1 and tuple(logits.shape[:-2]) == tuple(ids.shape[:-1])
                   and logits.shape[-2] < ids.shape[-1])
        why = (f" (the logits drop {ids.shape[-1] - logits.shape[-2]} position(s): not one logit row per token, "
               f"like CSM's depth decoder, a position-specific head per codebook after its backbone-state position)"
               if dropped else "")
        raise BadInput(f"{name} logits have shape {tuple(logits.shape)}, expected (*{tuple(ids.shape)}, vocab){why}")
    return logits


class _RecorderBug(Exception):
    """An internal error of the recorder's bookkeeping (never turned into BadInput)."""


@dataclass
class _Frame:
    """One module call on the stack; ``leaf`` frames are the parametric-leaf regions."""

    module: nn.Module
    path: str
    leaf: bool
    call: int
    inputs: list[str] = field(default_factory=list)  # producer of each tensor passed in, in order
    in_shapes: list[list[int]] = field(default_factory=list)
    param_ops: list[tuple[str, float | None]] = field(default_factory=list)  # ops on parameters alone
    outputs: list[str] = field(default_factory=list)
    call_args: list | None = None  # the call's positional arguments (:func:`_call_template`)
    activation: bool = False  # a parameter-free leaf module outside any region: maybe an activation module


class _Recorder(TorchFunctionMode):
    """Sees every torch call of one forward pass and grows the op-level graph."""

    def __init__(self, model: nn.Module, ids: torch.Tensor):
        super().__init__()
        self.model = model
        self.n_tokens = ids.numel()
        self.seq = int(ids.shape[-1]) if ids.dim() else 1
        self.graph = nx.DiGraph()
        self._act: dict[int, tuple[torch.Tensor, str]] = {}  # id -> (tensor, producer node)
        self._par: dict[int, tuple[torch.Tensor, frozenset[str]]] = {}  # id -> (tensor, parameter names)
        self._lookups: dict[int, tuple[torch.Tensor, Any]] = {}  # id -> (table rows looked up, the constant ids)
        self._storage: dict[int, set[int]] = defaultdict(set)  # storage pointer -> ids of activations on it
        self.frames: list[_Frame] = []
        self.regions: dict[int, _Frame] = {}
        # node -> the constant an opaque ``x + c`` added (an attention score bias: ALiBi, a mask), measured by
        # contract._score_bias and never stored in the graph
        self.added: dict[str, torch.Tensor] = {}
        self._count = 0
        self._calls = 0
        self.paths = {}
        for path, m in model.named_modules(remove_duplicate=False):
            self.paths.setdefault(id(m), path)
        self.canonical: dict[int, str] = {id(p): n for n, p in model.named_parameters()}
        self.aliases = {n: self.canonical[id(p)] for n, p in model.named_parameters(remove_duplicate=False)
                        if n != self.canonical[id(p)]}
        self.owners: dict[str, list[str]] = defaultdict(list)
        self.own: dict[int, dict[str, tuple[int, ...]]] = {}  # module id -> own parameters (canonical -> shape)
        for m in model.modules():
            own = {self.canonical[id(p)]: tuple(p.shape) for p in m._parameters.values() if p is not None}
            self.own[id(m)] = own
            for pname in own:
                self.owners[pname].append(self.paths[id(m)])
        self.leaves = {id(m) for m in model.modules() if self.own[id(m)]
                       and not any(self.own[id(c)] for c in m.modules() if c is not m)}
        # parameter-free leaf modules (transformers' ACT2FN activations among them): regions that
        # contract.py identifies by probing the module against the act op's functions
        self.free_leaves = {id(m) for m in model.modules() if not any(True for _ in m.parameters())
                            and not any(True for _ in m.children())}
        for p in model.parameters():
            self._par[id(p)] = (p, frozenset({self.canonical[id(p)]}))
        self.buffer_names = {id(b): n for n, b in model.named_buffers()}
        self.call_args: dict[str, list | None] = {}  # module path -> its first call's arguments
        self.graph.add_node("tokens", op="tokens", module_path="", params=[], index=0, shape=list(ids.shape))
        self._set_act(ids, "tokens")

    # ------------------------------------------------------------------ tensor bookkeeping
    def producer(self, t: torch.Tensor) -> str | None:
        entry = self._act.get(id(t))
        return entry[1] if entry is not None and entry[0] is t else None

    def _params_of(self, t: torch.Tensor) -> frozenset[str]:
        entry = self._par.get(id(t))
        return entry[1] if entry is not None and entry[0] is t else frozenset()

    def _set_act(self, t: torch.Tensor, node: str) -> None:
        self._act[id(t)] = (t, node)
        key = _storage_key(t)
        if key is not None:
            self._storage[key].add(id(t))

    def _mutated(self, t: torch.Tensor, node: str) -> None:
        """An in-place op wrote ``t``: it and every activation sharing its storage now come from ``node``."""
        key = _storage_key(t)
        for other in list(self._storage.get(key, ())) if key is not None else ():
            entry = self._act.get(other)
            if entry is not None:
                self._act[other] = (entry[0], node)
        self._set_act(t, node)

    # ------------------------------------------------------------------ module stack
    def hooks(self):
        """Context manager registering the pre/post hooks that keep the module call stack."""
        recorder = self

        class _Hooks:
            def __enter__(self):
                self.handles = []
                for m in recorder.model.modules():
                    self.handles.append(m.register_forward_pre_hook(recorder._enter, with_kwargs=True))
                    self.handles.append(m.register_forward_hook(recorder._leave, always_call=True))
                return self

            def __exit__(self, *exc):
                for h in self.handles:
                    h.remove()
                recorder.frames.clear()
                return False

        return _Hooks()

    def _enter(self, module, args, kwargs):
        self._calls += 1
        frame = _Frame(module, self.paths.get(id(module), ""), id(module) in self.leaves, self._calls)
        for t in _tensors((args, kwargs)):
            node = self.producer(t)
            if node is not None:
                frame.in_shapes.append(list(t.shape))
                frame.inputs.append(node)
        frame.call_args = self._call_template(args, kwargs)
        self.call_args.setdefault(frame.path, frame.call_args)
        if not frame.leaf and id(module) in self.free_leaves and self._region() is None:
            frame.leaf = frame.activation = True
        if frame.leaf:
            self.regions[frame.call] = frame
        self.frames.append(frame)

    def _call_template(self, args, kwargs) -> list | None:
        """How the module was called, JSON-able, to call it again on probe inputs: one entry per positional
        argument, ``{"act": i}`` for the i-th activation passed, ``{"param": name}`` / ``{"buffer": name}``
        for a parameter / buffer of the model passed as an argument (a correction bias held by the parent),
        ``{"value": v}`` for a number, string or None; None when an argument is none of these or a keyword
        argument is a tensor."""
        if any(isinstance(v, torch.Tensor) for v in _tensors(kwargs)):
            return None
        out, n_act = [], 0
        for a in args:
            if isinstance(a, torch.Tensor):
                if self.producer(a) is not None:
                    out.append({"act": n_act})
                    n_act += 1
                elif self._params_of(a) and len(self._params_of(a)) == 1 and id(a) in self.canonical:
                    out.append({"param": self.canonical[id(a)]})
                elif id(a) in self.buffer_names:
                    out.append({"buffer": self.buffer_names[id(a)]})
                else:
                    return None
            elif a is None or isinstance(a, (bool, int, float, str)):
                out.append({"value": a})
            else:
                return None
        return out

    def _leave(self, module, args, output):
        while self.frames:
            frame = self.frames.pop()
            if frame.module is module:
                frame.outputs = [n for n in (self.producer(t) for t in _tensors(output)) if n is not None]
                break

    def _region(self) -> _Frame | None:
        for frame in reversed(self.frames):
            if frame.leaf:
                return frame
        return None

    def _module_path(self, params: frozenset[str]) -> str:
        """The executing module, or the module owning the parameters read when it runs inside it."""
        here = self.frames[-1].path if self.frames else ""
        owners = {o for p in params for o in self.owners[p]}
        if not owners or here in owners:
            return here
        inside = sorted(o for o in owners if here == "" or o.startswith(here + "."))
        return inside[0] if len(inside) == 1 else here

    # ------------------------------------------------------------------ the mode
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            self._on_op(func, args, kwargs, out)
        except Exception as exc:  # our bookkeeping, not the model: never reported as BadInput
            raise _RecorderBug(f"recorder failed on {func}: {type(exc).__name__}: {exc}") from exc
        return out

    def _on_op(self, func, args, kwargs, out) -> None:
        name, inplace, reflected = _canon(func)
        if name == "__get__" and not isinstance(out, torch.Tensor):
            return
        acts: list[tuple[torch.Tensor, str]] = []
        params: set[str] = set()
        consts: list[torch.Tensor] = []
        derived: list[torch.Tensor] = []  # tensors computed from parameters alone (DiffLlama's lambda)
        # x.expand_as(y) / view_as / reshape_as / type_as: y only lends its shape or dtype, the values are x's
        # (GPT-NeoX-Japanese's bias.expand_as(residual) is the bias, not the residual)
        read = (args[:1] if name in _TEMPLATED and args and isinstance(args[0], torch.Tensor) else (args, kwargs))
        for t in _tensors(read):
            node = self.producer(t)
            if node is not None:
                acts.append((t, node))
            elif p := self._params_of(t):
                params |= p
                derived.append(t)
            else:
                consts.append(t)
        first = args[0] if args else None
        outs = [first] if inplace and isinstance(first, torch.Tensor) else list(_tensors(out))
        if not outs:
            return
        if not acts:
            if params:
                for t in outs:
                    self._par[id(t)] = (t, frozenset(params))
                if name == "embedding" and len(outs) == 1:  # a lookup by constant ids: positions (GPT-2 wpe)
                    self._lookups[id(outs[0])] = (outs[0], _arg(args, kwargs, 0, "input"))
                region = self._region()
                if region is not None:
                    region.param_ops.append((name, _scalar(name, args, kwargs)))
            return
        selected = self._token_selection(func, name, args, kwargs, acts, outs)
        if selected is None and len(acts) == 1 and self._passes_through(name, args, kwargs, acts[0][0], outs):
            for t in outs:
                if inplace:
                    self._mutated(t, acts[0][1])
                else:
                    self._set_act(t, acts[0][1])
            return
        op, attrs = ("opaque", {}) if selected is not None else \
            self._classify(name, args, kwargs, acts, params, consts, outs, reflected)
        frozen = frozenset(params)
        path = self._module_path(frozen)
        if op == "position_embedding":  # the add runs in the model, not in the table's module (whose output is P)
            path = self.frames[-1].path if self.frames else ""
        region = self._region()
        for i, t in enumerate(outs):
            self._count += 1
            node = f"n{self._count}"
            extra = {"output": i} if len(outs) > 1 else {}
            if selected is not None:
                extra["flat_slice"] = selected[i]
                if name == "getitem" and len(args) > 1:
                    extra["key"] = _key_repr(args[1])
            self.graph.add_node(node, op=op, call=name, module_path=path, params=sorted(params), index=self._count,
                                shape=list(t.shape), region=region.call if region else None, **attrs, **extra)
            for port, (src_t, src) in enumerate(acts):
                if self.graph.has_edge(src, node):
                    self.graph.edges[src, node].setdefault("ports", [self.graph.edges[src, node]["port"]])
                    self.graph.edges[src, node]["ports"].append(port)
                else:
                    self.graph.add_edge(src, node, port=port, shape=list(src_t.shape))
            if inplace:
                self._mutated(t, node)
            else:
                self._set_act(t, node)
            if op == "mul" and len(acts) == 1 and len(derived) == 1 and derived[0].numel() == 1:
                # one number computed from parameters times the activation (DiffLlama's lambda): its value
                self.graph.nodes[node]["param_scalar"] = float(derived[0].detach().reshape(()).double())
            if op == "opaque" and name == "add" and len(acts) == 1 and len(consts) == 1 and not params \
                    and "alpha" not in kwargs and consts[0].numel() <= _ADDED_MAX:
                self.added[node] = consts[0].detach()
            if op == "opaque" and name == "baddbmm" and len(acts) == 2 and len(consts) == 1 and not params \
                    and consts[0] is _arg(args, kwargs, 0, "input") and consts[0].numel() <= _ADDED_MAX:
                self.added[node] = consts[0].detach() * attrs["beta"]

    def _token_selection(self, func, name, args, kwargs, acts, outs) -> list | None:
        """A selection that keeps the token axes ``(batch, seq)`` and takes part of each token's values (a head
        axis of a fused projection's view: Falcon's ``split([h, 1, 1], dim=-2)``, BLOOM's ``[..., 0, :]`` of
        ``(b, s, h, 3, d)``): per output, the ``[n_heads, head_dim, start, length]`` of the slice
        ``x.view(.., n_heads, head_dim)[..., start:start + length]`` it takes, measured by running the call on a
        tensor holding each value's index within its token, or None when it is no such slice.  None when
        the call is no per-token selection (a last-axis slice is recorded as before)."""
        if name not in _SELECT or name in _BROADCASTS or len(acts) != 1:
            return None
        x = acts[0][0]
        if x.dim() < 4 or x.shape[0] * x.shape[1] != self.n_tokens:
            return None
        width = x.numel() // self.n_tokens
        if x.stride(1) != width or x.stride(0) != x.shape[1] * width:  # (batch, seq) outermost: a per-token view
            return None
        if any(t.dim() < 3 or t.shape[:2] != x.shape[:2] or t.numel() // self.n_tokens > width for t in outs) \
                or all(t.numel() // self.n_tokens == width for t in outs) or x.shape[-1] != outs[0].shape[-1]:
            return None
        probe = torch.arange(width, device=x.device).expand(*x.shape[:2], width).reshape(x.shape)
        swap = lambda v: probe if v is x else v  # noqa: E731
        try:
            got = func(*[swap(a) for a in args], **{k: swap(v) for k, v in kwargs.items()})
        except Exception:  # noqa: BLE001 - not a pure selection: recorded as before
            return None
        got = list(_tensors(got))
        if len(got) != len(outs):
            return None
        return [_flat_slice(g.reshape(self.n_tokens, -1), width) for g in got]

    def _passes_through(self, name, args, kwargs, x: torch.Tensor, outs) -> bool:
        if name in _RESHAPE:
            return True
        if name == "dropout":
            p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
            training = args[2] if len(args) > 2 else kwargs.get("training", True)
            return p == 0 or not training
        if name in _SELECT:
            width = x.shape[-1] if x.dim() else None
            return all(t.dim() and t.shape[-1] == width for t in outs)
        return False

    def _classify(self, name, args, kwargs, acts, params, consts, outs, reflected) -> tuple[str, dict]:
        x, out = acts[0][0], outs[0]
        scalar = _scalar(name, args, kwargs)
        if name == "embedding" and params and len(acts) == 1:
            w = _arg(args, kwargs, 1, "weight")
            return "embedding", {"vocab": int(w.shape[0]), "dim": int(w.shape[1])}
        if name == "linear" and params and len(acts) == 1:
            bias = _arg(args, kwargs, 2, "bias")
            return "linear", {"in_features": int(x.shape[-1]), "out_features": int(out.shape[-1]),
                              "bias": bias is not None}
        if name in ("matmul", "mm") and params and len(acts) == 1 and acts[0][0] is args[0]:
            return "linear", {"in_features": int(x.shape[-1]), "out_features": int(out.shape[-1]), "bias": False,
                              **({"weight_transposed": True} if self._reads_transposed(args[1], params) else {})}
        if name == "addmm" and params and len(acts) == 1 and len(args) > 1 and acts[0][0] is args[1]:
            return "linear", {"in_features": int(x.shape[-1]), "out_features": int(out.shape[-1]), "bias": True}
        if name == "scaled_dot_product_attention" and len(acts) >= 3:
            (q, _), (_, k_node), _ = acts[:3]
            head_dim = int(q.shape[-1])
            mask = _arg(args, kwargs, 3, "attn_mask")
            return "attention", {"n_heads": int(q.shape[-3]), "n_kv_heads": self._heads(k_node, head_dim),
                                 "head_dim": head_dim, "masked": mask is not None,
                                 "causal": bool(_arg(args, kwargs, 5, "is_causal") or False),
                                 "sdpa_scale": _sdpa_scale(_arg(args, kwargs, 6, "scale"))}
        if name in _NORM_FNS:
            shape = _arg(args, kwargs, 1, "normalized_shape")
            eps = _arg(args, kwargs, 4 if name == "layer_norm" else 3, "eps")
            return "norm", {"kind": "layer" if name == "layer_norm" else "rms",
                            "dim": int(shape[-1]) if shape else int(x.shape[-1]),
                            "eps": float(eps) if eps is not None else None}
        if name in _ACTS and len(acts) == 1:
            fn = _ACTS[name]
            if fn == "gelu" and kwargs.get("approximate", args[1] if len(args) > 1 else "none") == "tanh":
                fn = "gelu_tanh"
            return "act", {"fn": fn}
        if name == "add" and len(acts) == 1 and params and not consts and scalar is None:
            found = self._position_lookup(args, kwargs, x)
            if found is not None:
                return "position_embedding", found
        if name == "add" and (len(acts) >= 2 or params) and not consts and scalar is None:
            return "add", {}
        if name == "mul" and not consts and scalar is None and (len(acts) >= 2 or params):
            return "mul", {}
        if name in ("mul", "div") and len(acts) == 1 and not params and not (reflected and name == "div"):
            factor = scalar
            if factor is None and len(consts) == 1 and consts[0].numel() == 1:
                factor = float(consts[0].item())
            elif factor is None and consts:
                return "opaque", {"const_shape": list(consts[0].shape), **_position_rows(consts[0], self.seq)}
            if factor is not None and (name == "mul" or factor != 0):
                return "scale", {"factor": factor if name == "mul" else 1.0 / factor}
        attrs: dict[str, Any] = {}
        if scalar is not None:
            attrs["scalar"] = scalar if math.isfinite(scalar) else str(scalar)
        if reflected:
            attrs["reflected"] = True
        if name == "topk":
            attrs["k"] = int(_arg(args, kwargs, 1, "k"))
        if name in ("clamp", "clip"):  # numeric bounds (None where open): the clamped SwiGLU reads them
            bounds = [_arg(args, kwargs, 1, "min"), _arg(args, kwargs, 2, "max")]
            if all(b is None or isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds):
                attrs["bounds"] = [None if b is None else float(b) for b in bounds]
        if name in ("cat", "concat", "concatenate"):  # the axis, counted from the end (-1: the last)
            dim = _arg(args, kwargs, 1, "dim")
            dim = 0 if dim is None else int(dim)
            attrs["dim"] = dim - out.dim() if dim >= 0 else dim
        if name == "baddbmm":  # beta * input + alpha * (batch1 @ batch2): BLOOM's ALiBi scores
            attrs.update(alpha=float(kwargs.get("alpha", 1.0)), beta=float(kwargs.get("beta", 1.0)))
        if name == "getitem" and len(args) > 1:
            attrs["key"] = _key_repr(args[1])
            attrs["strided"] = _strided(args[1])
        return "opaque", attrs

    def _reads_transposed(self, w: torch.Tensor, params: set[str]) -> bool:
        """Whether the matrix ``x @ w`` multiplies by is, value for value, the transpose of the one stored 2-D
        parameter read (Falcon's ``x @ W.T``: F.linear with the stored ``(out, in)`` weight)."""
        if len(params) != 1 or not isinstance(w, torch.Tensor) or w.dim() != 2:
            return False
        stored = next((p for p in self.model.parameters() if self.canonical[id(p)] in params), None)
        if stored is None or stored.dim() != 2 or tuple(stored.shape) != tuple(w.shape)[::-1]:
            return False
        with torch.no_grad():
            return bool(torch.equal(w.mT, stored)) and not (w.shape[0] == w.shape[1] and torch.equal(w, stored))

    def _position_lookup(self, args, kwargs, x: torch.Tensor) -> dict | None:
        """``x + P[ids]`` with constant ids ``start + arange(seq)`` in every row: a learned position table."""
        for t in _tensors((args, kwargs)):
            entry = self._lookups.get(id(t))
            if entry is None or entry[0] is not t or not isinstance(entry[1], torch.Tensor):
                continue
            ids, table = entry[1], self._params_of(t)
            if len(table) != 1 or ids.dtype not in (torch.int64, torch.int32) or ids.dim() == 0:
                return None
            seq = x.shape[-2] if x.dim() >= 2 else 0
            rows = ids.reshape(-1, ids.shape[-1])
            if ids.shape[-1] != seq or t.shape[-2:] != x.shape[-2:]:
                return None
            start = int(rows[0, 0])
            if not bool((rows == start + torch.arange(seq, device=rows.device)).all()):
                return None
            weight = next(p for p in self.model.parameters() if self.canonical[id(p)] in table)
            return {"max_pos": int(weight.shape[0]), "dim": int(weight.shape[1]), "start": start}
        return None

    def _heads(self, node: str, head_dim: int) -> int:
        """How many heads of ``head_dim`` the output of ``node`` holds per token."""
        return _numel(self.graph.nodes[node]["shape"]) // (self.n_tokens * head_dim)


def _flat_slice(rows: torch.Tensor, width: int) -> list[int] | None:
    """``[n_heads, head_dim, start, length]`` when every row of per-token indices ``rows`` is
    ``x.view(n_heads, head_dim)[:, start:start + length]`` of a row ``x = arange(width)``, else None."""
    if rows.numel() == 0 or not bool((rows == rows[:1]).all()):
        return None
    idx = rows[0].tolist()
    start, length = idx[0], 1
    while length < len(idx) and idx[length] == start + length:
        length += 1
    n_heads = len(idx) // length
    head_dim = width if n_heads == 1 else idx[length] - start
    if head_dim <= 0 or width % head_dim or width // head_dim != n_heads or start + length > head_dim:
        return None
    want = [h * head_dim + start + i for h in range(n_heads) for i in range(length)]
    return [n_heads, head_dim, start, length] if idx == want else None


def _sdpa_scale(value) -> float | None:
    """The ``scale`` sdpa was called with (None: its default ``head_dim ** -0.5``); a tensor is read as a float."""
    if value is None:
        return None
    return float(value.item() if isinstance(value, torch.Tensor) else value)


_TABLE_ROWS = 3  # positions 0, 1, 2 of a constant table: enough to measure a rotation's frequencies and amplitude


def _position_rows(const: torch.Tensor, seq: int) -> dict:
    """``{"const_rows": [[...], ...]}``: the first :data:`_TABLE_ROWS` rows (every row of a one-number-per-position
    constant: attention temperature tuning, :mod:`fuzz.importer.temperature`) along the position axis (the last
    axis but one of size ``seq``, every other leading axis at index 0) of a floating constant a node multiplies
    by (RoPE's cos/sin tables: the importer measures their frequencies and amplitude, :mod:`fuzz.importer.rope`);
    ``{}`` when the constant has no such axis or the sequence is shorter than that."""
    if not (const.is_floating_point() or const.is_complex()) or const.dim() < 2 or seq < _TABLE_ROWS:
        return {}
    axes = [a for a in range(const.dim() - 1) if const.shape[a] == seq]
    if not axes:
        return {}
    axis = axes[-1]
    # one number per position (last axis 1: attention temperature tuning): every position, to measure its steps
    n_rows = seq if const.shape[-1] == 1 else _TABLE_ROWS
    index = tuple(slice(0, n_rows) if a == axis else 0 for a in range(const.dim() - 1))
    rows = const[index].detach().to("cpu")
    if rows.is_complex():  # a complex RoPE table (Llama 4's freqs_cis): cos and sin as its two parts
        return {"const_rows": rows.real.double().tolist(), "const_rows_imag": rows.imag.double().tolist()}
    return {"const_rows": rows.double().tolist()}
