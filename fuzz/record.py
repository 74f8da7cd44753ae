"""Record the dataflow of a real causal LM by running it once: structure from dataflow, never from names.

:func:`record` runs one forward pass of ``model`` on a few token ids under a
:class:`torch.overrides.TorchFunctionMode` that sees every torch call, and keeps, for every live
tensor, the recorded node that produced it.  Reshapes, transposes, casts, ``contiguous`` and row
selections (anything that keeps the last axis) pass their producer through, so an edge joins two
computations, not two views.  Tensors derived only from parameters (``w.float()``, ``1 + w``,
``experts[e]``) carry the parameter names instead; tensors derived from neither (buffers, RoPE tables,
masks) are constants and make no node.

Recognition, bottom-up and name-free:

* op level: ``F.embedding`` / ``F.linear`` (or ``x @ W``, ``addmm``) reading a parameter, scaled
  dot-product attention, activations, ``add`` / ``mul`` of two activations, ``scale`` by a number;
  ``opaque`` for everything else (op-level nodes keep the torch function's name in ``call``);
* module level: a *parametric leaf* (a module owning parameters, none of its descendants owning any)
  is one node when its computation is a norm (it normalises and multiplies by its own 1-D
  parameters), fused experts (3-D parameters) or a top-k router (a linear then ``topk``);
* patterns: RoPE (an activation times constant tables plus its rotated copy times constant tables)
  and eager attention (``softmax(Q K^T) V``) are contracted to ``rope`` / ``attention`` nodes;
* the linear producing the logits is the ``lm_head``; it is ``tied_to`` the embedding when both read
  one parameter.

Only ancestors of the logits are kept.  Every node carries ``op``, ``module_path`` (the qualified name
of the executing module, or of the module owning the parameter it reads), ``params`` (canonical
qualified names: a tied parameter has one name, its first in ``named_parameters()``), ``index``
(execution order) and ``shape`` (of its output).  Edges carry ``port`` and the ``shape`` read;
``ports`` lists every port when a node reads one producer twice.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import networkx as nx
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import BadInput
from .layout import atomic_write_text

FORMAT = "archfuzz.recorded/1"
DEFAULT_SEQ_LEN = 8
_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# ops that only re-view or re-type their input: the producer passes through
_RESHAPE = frozenset({
    "view", "view_as", "reshape", "reshape_as", "transpose", "t", "permute", "contiguous", "to", "type",
    "type_as", "float", "double", "half", "bfloat16", "unsqueeze", "squeeze", "flatten", "unflatten",
    "clone", "detach", "alias", "movedim", "moveaxis", "swapaxes", "swapdims", "__get__",
})
# ops that select or replicate: the producer passes through when the last axis is kept whole
_SELECT = frozenset({
    "getitem", "index_select", "narrow", "select", "expand", "expand_as", "broadcast_to", "repeat",
    "repeat_interleave", "tile", "chunk", "split", "split_with_sizes", "tensor_split", "unbind",
})
_ARITH = frozenset({"add", "sub", "mul", "truediv", "div", "floordiv", "matmul", "pow", "mod", "and", "or",
                    "xor", "lshift", "rshift"})
_ACTS = {"silu": "silu", "relu": "relu", "gelu": "gelu", "sigmoid": "sigmoid", "softplus": "softplus",
         "tanh": "tanh", "mish": "mish", "elu": "elu", "selu": "selu", "celu": "celu", "relu6": "relu6",
         "leaky_relu": "leaky_relu", "hardswish": "hardswish", "hardsigmoid": "hardsigmoid"}
_NORM_FNS = frozenset({"layer_norm", "rms_norm", "group_norm"})
_NORMALISING = frozenset({"rsqrt", "sqrt", "norm", "var", "std", "var_mean"}) | _NORM_FNS
# RoPE: rearrangements of one activation, and the combiners of the rotated halves
_REARRANGE = frozenset({"getitem", "neg", "cat", "concat", "concatenate", "stack", "narrow", "select",
                        "index_select", "chunk", "split", "split_with_sizes", "tensor_split", "unbind",
                        "flip", "roll"})
_COMBINE = frozenset({"sub", "cat", "concat", "concatenate", "stack"})
# eager attention: what may sit between Q K^T and the softmax, and between the softmax and P V
_SCORE_OPS = frozenset({"softmax", "masked_fill", "add", "sub", "mul", "div", "where", "tanh", "clamp",
                        "dropout"})


@dataclass(frozen=True)
class Consumer:
    """One reader of a node's output: the reading node, its op, the port, where it runs, what it reads."""

    node: str
    op: str
    port: int
    module_path: str
    params: tuple[str, ...]


class RecordedGraph:
    """The recorded dataflow of one forward pass: a ``networkx.DiGraph`` plus ``meta``.

    Same conventions as :class:`~fuzz.layout.Layout` (identifier node ids, node attr ``op``, edge attr
    ``port``) but not a materializable layout: ``opaque`` nodes stand for unrecognised torch calls.
    """

    def __init__(self, graph: nx.DiGraph, meta: dict | None = None):
        self.graph = graph
        self.meta = dict(meta or {})
        self.order = sorted(graph, key=lambda n: (graph.nodes[n].get("index", 0), n))
        self._rank = {n: i for i, n in enumerate(self.order)}

    # ------------------------------------------------------------------ queries
    def op(self, node: str) -> str:
        return self.graph.nodes[node]["op"]

    def attrs(self, node: str) -> dict:
        """Every attribute of ``node`` (a copy)."""
        return dict(self.graph.nodes[node])

    def inputs(self, node: str) -> list[str]:
        """Producers read by ``node``, in port order."""
        return [src for src, _, _ in sorted(self.graph.in_edges(node, data="port"), key=lambda e: e[2])]

    def consumers(self, node: str) -> list[str]:
        """Nodes reading the output of ``node``, in execution order."""
        return sorted(self.graph.successors(node), key=self._rank.__getitem__)

    def of_op(self, *ops: str) -> list[str]:
        """Nodes of the given op kinds, in execution order."""
        return [n for n in self.order if self.graph.nodes[n]["op"] in ops]

    def readers(self, param: str) -> list[str]:
        """Nodes reading the parameter ``param`` (a canonical name or a tied alias), in execution order."""
        name = self.meta.get("aliases", {}).get(param, param)
        return [n for n in self.order if name in self.graph.nodes[n].get("params", ())]

    @property
    def logits(self) -> str:
        """The node whose output is the logits."""
        return self.meta["logits"]

    def norm_consumers(self) -> dict[str, list[Consumer]]:
        """Every ``norm`` node -> the nodes reading its output (exact dataflow edges), in execution order."""
        out = {}
        for norm in self.of_op("norm"):
            readers = []
            for dst in self.consumers(norm):
                d = self.graph.nodes[dst]
                readers.append(Consumer(dst, d["op"], self.graph.edges[norm, dst]["port"], d["module_path"],
                                        tuple(d.get("params", ()))))
            out[norm] = readers
        return out

    # ------------------------------------------------------------------ text
    def summary(self) -> str:
        """One line per node in execution order: id, op, key attributes, module, inputs, parameters."""
        counts = defaultdict(int)
        for n in self.order:
            counts[self.op(n)] += 1
        head = (f"recorded {self.meta.get('model', 'model')}: {len(self.order)} nodes "
                f"(" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f"), logits <- {self.logits}")
        lines = [head]
        width = max(len(n) for n in self.order)
        skip = {"op", "module_path", "params", "index", "shape"}
        for n in self.order:
            d = self.graph.nodes[n]
            hide = skip if d["op"] == "opaque" else skip | {"call"}
            keys = " ".join(f"{k}={v}" for k, v in sorted(d.items()) if k not in hide)
            ins = ", ".join(self.inputs(n))
            parts = [f"{n:<{width}}", f"{d['op']:<9}", keys, f"[{d['module_path']}]" if d["module_path"] else "",
                     f"<- {ins}" if ins else "", f"reads {', '.join(d['params'])}" if d.get("params") else ""]
            lines.append("  ".join(p for p in parts if p))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<RecordedGraph {self.meta.get('model', 'model')} nodes={len(self.order)}>"

    # ------------------------------------------------------------------ data
    def to_dict(self) -> dict:
        nodes = [{"id": n, **{k: self.graph.nodes[n][k] for k in sorted(self.graph.nodes[n])}} for n in self.order]
        edges = sorted(({"source": u, "target": v, **{k: d[k] for k in sorted(d)}}
                        for u, v, d in self.graph.edges(data=True)),
                       key=lambda e: (self._rank[e["target"]], e["port"]))
        return {"format": FORMAT, "meta": self.meta, "nodes": nodes, "edges": edges}

    def to_json(self, indent: int | None = 1) -> str:
        """Node-link JSON (format ``archfuzz.recorded/1``), nodes in execution order."""
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON atomically."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def from_dict(cls, data: dict) -> "RecordedGraph":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise BadInput(f"not a recorded graph: format {got!r}, expected {FORMAT!r}")
        g = nx.DiGraph()
        for i, n in enumerate(data.get("nodes") or []):
            if not isinstance(n, dict) or not isinstance(n.get("id"), str) or not _ID.match(n["id"]) or "op" not in n:
                raise BadInput(f"recorded graph node #{i} needs an identifier 'id' and an 'op'")
            g.add_node(n["id"], **{k: v for k, v in n.items() if k != "id"})
        for i, e in enumerate(data.get("edges") or []):
            if not isinstance(e, dict) or not {"source", "target", "port"} <= set(e):
                raise BadInput(f"recorded graph edge #{i} needs 'source', 'target' and 'port'")
            if e["source"] not in g or e["target"] not in g:
                raise BadInput(f"recorded graph edge #{i} {e['source']!r} -> {e['target']!r} names an unknown node")
            g.add_edge(e["source"], e["target"], **{k: v for k, v in e.items() if k not in ("source", "target")})
        meta = data.get("meta") or {}
        if meta.get("logits") not in g:
            raise BadInput(f"recorded graph meta 'logits' names no node: {meta.get('logits')!r}")
        return cls(g, meta)

    @classmethod
    def from_json(cls, text: str) -> "RecordedGraph":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInput(f"recorded graph JSON is not valid JSON: {exc}") from None
        return cls.from_dict(data)


# ====================================================================== recording
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
    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        rec, out = _run(model, ids)
    finally:
        for m, flag in training.items():
            m.training = flag
    logits = _logits(out, ids, name)
    producer = rec.producer(logits)
    if producer is None:
        raise BadInput(f"{name}: the logits do not depend on the input ids (not a causal LM)")
    return _finish(rec, producer, ids, name, logits.shape[-1])


def _input_ids(model: nn.Module, input_ids) -> torch.Tensor:
    if input_ids is None:
        vocab = 2
        get = getattr(model, "get_input_embeddings", None)
        emb = get() if callable(get) else None
        weight = getattr(emb, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            vocab = weight.shape[0]
        ids = (torch.arange(DEFAULT_SEQ_LEN) * 7919 + 11) % vocab
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        return ids.unsqueeze(0).to(device)
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
        raise BadInput(f"{name} logits have shape {tuple(logits.shape)}, expected (*{tuple(ids.shape)}, vocab)")
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


class _Recorder(TorchFunctionMode):
    """Sees every torch call of one forward pass and grows the op-level graph."""

    def __init__(self, model: nn.Module, ids: torch.Tensor):
        super().__init__()
        self.model = model
        self.n_tokens = ids.numel()
        self.graph = nx.DiGraph()
        self._act: dict[int, tuple[torch.Tensor, str]] = {}  # id -> (tensor, producer node)
        self._par: dict[int, tuple[torch.Tensor, frozenset[str]]] = {}  # id -> (tensor, parameter names)
        self._storage: dict[int, set[int]] = defaultdict(set)  # storage pointer -> ids of activations on it
        self.frames: list[_Frame] = []
        self.regions: dict[int, _Frame] = {}
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
        for p in model.parameters():
            self._par[id(p)] = (p, frozenset({self.canonical[id(p)]}))
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
        if frame.leaf:
            self.regions[frame.call] = frame
        self.frames.append(frame)

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
        for t in _tensors((args, kwargs)):
            node = self.producer(t)
            if node is not None:
                acts.append((t, node))
            elif p := self._params_of(t):
                params |= p
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
                region = self._region()
                if region is not None:
                    region.param_ops.append((name, _scalar(name, args, kwargs)))
            return
        if len(acts) == 1 and self._passes_through(name, args, kwargs, acts[0][0], outs):
            for t in outs:
                if inplace:
                    self._mutated(t, acts[0][1])
                else:
                    self._set_act(t, acts[0][1])
            return
        op, attrs = self._classify(name, args, kwargs, acts, params, consts, outs, reflected)
        frozen = frozenset(params)
        path = self._module_path(frozen)
        region = self._region()
        for i, t in enumerate(outs):
            self._count += 1
            node = f"n{self._count}"
            extra = {"output": i} if len(outs) > 1 else {}
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
            return "linear", {"in_features": int(x.shape[-1]), "out_features": int(out.shape[-1]), "bias": False}
        if name == "addmm" and params and len(acts) == 1 and len(args) > 1 and acts[0][0] is args[1]:
            return "linear", {"in_features": int(x.shape[-1]), "out_features": int(out.shape[-1]), "bias": True}
        if name == "scaled_dot_product_attention" and len(acts) >= 3:
            (q, _), (_, k_node), _ = acts[:3]
            head_dim = int(q.shape[-1])
            mask = _arg(args, kwargs, 3, "attn_mask")
            return "attention", {"n_heads": int(q.shape[-3]), "n_kv_heads": self._heads(k_node, head_dim),
                                 "head_dim": head_dim, "masked": mask is not None,
                                 "causal": bool(_arg(args, kwargs, 5, "is_causal") or False)}
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
        if name == "add" and (len(acts) >= 2 or params) and not consts and scalar is None:
            return "add", {}
        if name == "mul" and not consts and scalar is None and (len(acts) >= 2 or params):
            return "mul", {}
        if name in ("mul", "div") and len(acts) == 1 and not params and not (reflected and name == "div"):
            factor = scalar
            if factor is None and len(consts) == 1 and consts[0].numel() == 1:
                factor = float(consts[0].item())
            elif factor is None and consts:
                return "opaque", {"const_shape": list(consts[0].shape)}
            if factor is not None and (name == "mul" or factor != 0):
                return "scale", {"factor": factor if name == "mul" else 1.0 / factor}
        attrs: dict[str, Any] = {}
        if scalar is not None:
            attrs["scalar"] = scalar if math.isfinite(scalar) else str(scalar)
        if reflected:
            attrs["reflected"] = True
        if name == "topk":
            attrs["k"] = int(_arg(args, kwargs, 1, "k"))
        if name == "getitem" and len(args) > 1:
            attrs["key"] = _key_repr(args[1])
            attrs["strided"] = _strided(args[1])
        return "opaque", attrs

    def _heads(self, node: str, head_dim: int) -> int:
        """How many heads of ``head_dim`` the output of ``node`` holds per token."""
        return _numel(self.graph.nodes[node]["shape"]) // (self.n_tokens * head_dim)


# ====================================================================== post-processing
def _finish(rec: _Recorder, logits_node: str, ids: torch.Tensor, name: str, vocab: int) -> RecordedGraph:
    g = rec.graph
    keep = nx.ancestors(g, logits_node) | {logits_node}
    pruned = g.number_of_nodes() - len(keep)
    g.remove_nodes_from([n for n in list(g) if n not in keep])
    merged: dict[str, str] = {}
    _contract_regions(g, rec, merged)
    _contract_ropes(g, rec.n_tokens, merged)
    _contract_eager_attention(g, rec.n_tokens, merged)
    logits_node = _resolve(merged, logits_node)
    for n in g:
        g.nodes[n].pop("region", None)
    g.nodes["tokens"]["vocab"] = int(vocab)
    mapping = _readable_ids(g)
    nx.relabel_nodes(g, mapping, copy=False)
    logits_node = mapping[logits_node]
    if not _label_lm_head(g, logits_node):
        raise BadInput(f"{name}: the logits are not computed by a linear head over hidden states "
                       f"(they come from {g.nodes[logits_node]['op']} {logits_node!r}): not a causal LM")
    meta = {"model": name, "input_shape": list(ids.shape), "logits": logits_node, "pruned": pruned,
            "aliases": dict(sorted(rec.aliases.items()))}
    return RecordedGraph(g, meta)


def _resolve(merged: dict[str, str], node: str) -> str:
    while node in merged:
        node = merged[node]
    return node


def _contract(g: nx.DiGraph, nodes: set[str], new: str, attrs: dict, port_order: list[str],
              merged: dict[str, str]) -> None:
    """Replace ``nodes`` by one node ``new``; outputs keep their edges.

    Input ports follow ``port_order`` (the producers of the module's arguments, one entry per argument,
    so a producer passed twice gets two ports), then the other producers read, by first use.
    """
    order = sorted(nodes, key=lambda n: g.nodes[n]["index"])
    shapes: dict[str, list[int]] = {}
    for n in order:
        for src, _, d in sorted(g.in_edges(n, data=True), key=lambda e: e[2]["port"]):
            if src not in nodes:
                shapes.setdefault(src, d["shape"])
    argument_order = [s for s in port_order if s in shapes] + [s for s in shapes if s not in port_order]
    ports: dict[str, list[int]] = defaultdict(list)
    for port, src in enumerate(argument_order):
        ports[src].append(port)
    ext_out: dict[str, dict] = {}
    for n in order:
        for _, dst, d in g.out_edges(n, data=True):
            if dst in nodes:
                continue
            if dst in ext_out:
                both = set(ext_out[dst].get("ports", [ext_out[dst]["port"]])) | set(d.get("ports", [d["port"]]))
                ext_out[dst].update(port=min(both), ports=sorted(both))
            else:
                ext_out[dst] = dict(d)
    g.remove_nodes_from(order)
    g.add_node(new, **attrs)
    for src, numbers in ports.items():
        g.add_edge(src, new, port=numbers[0], shape=shapes[src], **({"ports": numbers} if len(numbers) > 1 else {}))
    for dst, d in ext_out.items():
        g.add_edge(new, dst, **d)
    for n in order:
        if n != new:
            merged[n] = new


def _common_path(paths: list[str]) -> str:
    """The innermost module containing every one of ``paths``."""
    parts = [p.split(".") if p else [] for p in paths]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _base_attrs(g: nx.DiGraph, nodes, op: str, path: str, shape_node: str) -> dict:
    params = sorted({p for n in nodes for p in g.nodes[n]["params"]})
    return {"op": op, "module_path": path, "params": params, "index": min(g.nodes[n]["index"] for n in nodes),
            "shape": g.nodes[shape_node]["shape"]}


def _contract_regions(g: nx.DiGraph, rec: _Recorder, merged: dict[str, str]) -> None:
    """Contract each parametric-leaf module call that computes a norm, fused experts or a router."""
    members: dict[int, list[str]] = defaultdict(list)
    for n, d in g.nodes(data=True):
        if d.get("region") is not None:
            members[d["region"]].append(n)
    for call in sorted(members):
        frame = rec.regions[call]
        nodes = sorted(members[call], key=lambda n: g.nodes[n]["index"])
        found = _classify_region(g, nodes, frame, rec.own[id(frame.module)], rec.n_tokens)
        if found is None:
            continue
        op, attrs = found
        outs = [_resolve(merged, o) for o in frame.outputs]
        shape_node = next((o for o in outs if o in nodes), nodes[-1])
        new = nodes[0]
        full = {**_base_attrs(g, nodes, op, frame.path, shape_node), **attrs}
        _contract(g, set(nodes), new, full, [_resolve(merged, i) for i in frame.inputs], merged)


def _classify_region(g, nodes, frame: _Frame, own: dict, n_tokens: int) -> tuple[str, dict] | None:
    read = {p for n in nodes for p in g.nodes[n]["params"]}
    if not read or not read <= set(own) or not frame.in_shapes:
        return None
    fns = {g.nodes[n].get("call") for n in nodes}
    x_shape = frame.in_shapes[0]
    shapes = {p: own[p] for p in read}
    if any(len(s) == 3 for s in shapes.values()):
        hidden = int(x_shape[-1])
        dims = [d for s in shapes.values() if len(s) == 3 for d in s[1:] if d != hidden]
        acts = [g.nodes[n]["fn"] for n in nodes if g.nodes[n]["op"] == "act"]
        return "experts", {"n_experts": int(next(s[0] for s in shapes.values() if len(s) == 3)), "hidden": hidden,
                           "intermediate": int(min(dims)) if dims else hidden, "act": acts[0] if acts else None}
    if all(len(s) == 1 for s in shapes.values()) and fns & _NORMALISING:
        scaled = any(g.nodes[n]["params"] and g.nodes[n].get("call") in {"mul"} | _NORM_FNS for n in nodes)
        if not scaled:
            return None
        fused = [g.nodes[n] for n in nodes if g.nodes[n]["op"] == "norm"]
        dim = int(next(iter(shapes.values()))[0])
        if fused:
            kind, eps = fused[0]["kind"], fused[0]["eps"]
        else:
            kind = "layer" if "sub" in fns and "mean" in fns or fns & {"var", "std", "var_mean"} else "rms"
            small = [g.nodes[n]["scalar"] for n in nodes if g.nodes[n].get("call") == "add"
                     and isinstance(g.nodes[n].get("scalar"), float) and 0 < g.nodes[n]["scalar"] < 0.1]
            eps = small[0] if small else None
        one_plus = any(fn == "add" and s == 1 for fn, s in frame.param_ops)
        return "norm", {"kind": kind, "dim": dim, "groups": max(1, _numel(x_shape) // (n_tokens * dim)),
                        "eps": eps, "weight_form": "1+w" if one_plus else "w", "bias": len(read) > 1}
    linears = [g.nodes[n] for n in nodes if g.nodes[n]["op"] == "linear"]
    topk = [g.nodes[n] for n in nodes if g.nodes[n].get("call") == "topk"]
    if len(linears) == 1 and topk:
        return "router", {"in_features": linears[0]["in_features"], "n_experts": linears[0]["out_features"],
                          "top_k": topk[0]["k"], "renormalize": "sum" in fns and "div" in fns,
                          "bias": linears[0]["bias"]}
    return None


def _is_rearrange(d: dict) -> bool:
    return d["op"] == "opaque" and d.get("call") in _REARRANGE and not d["params"]


def _contract_ropes(g: nx.DiGraph, n_tokens: int, merged: dict[str, str]) -> None:
    """Contract ``x * cos + rotate(x) * sin`` (any pairing, partial rotary included) into ``rope`` nodes.

    Seeds are products of one activation with a constant table; the rearrangements (slices, negation,
    concatenation) feeding them are pulled in, then the adds / concatenations combining them.  A
    cluster is kept when it reads exactly one producer, holds two or more seeds and has a single exit.
    """
    seeds = {n for n, d in g.nodes(data=True)
             if d["op"] == "opaque" and d.get("call") == "mul" and "const_shape" in d and g.in_degree(n) == 1}
    if not seeds:
        return
    cand = set(seeds)
    sources = set()
    stack = [p for s in seeds for p in g.predecessors(s)]
    while stack:
        p = stack.pop()
        if p in cand:
            continue
        if _is_rearrange(g.nodes[p]):
            cand.add(p)
            stack.extend(g.predecessors(p))
        else:
            sources.add(p)
    changed = True
    while changed:
        changed = False
        for c in sorted({s for n in cand for s in g.successors(n)} - cand, key=lambda n: g.nodes[n]["index"]):
            d = g.nodes[c]
            if not (d["op"] == "add" and not d["params"] or d["op"] == "opaque" and d.get("call") in _COMBINE):
                continue
            extra = set(g.predecessors(c)) - cand
            if all(_is_rearrange(g.nodes[p]) and set(g.predecessors(p)) <= cand | sources for p in extra):
                cand |= extra | {c}
                changed = True
    for comp in sorted(nx.connected_components(g.subgraph(cand).to_undirected()),
                       key=lambda c: min(g.nodes[n]["index"] for n in c)):
        while True:  # a lone entry slice (e.g. q out of a fused projection) is the rotated input, not RoPE
            entries = [n for n in comp if any(p not in comp for p in g.predecessors(n))]
            if len(entries) != 1 or entries[0] in seeds or len(comp) <= 1:
                break
            comp = comp - {entries[0]}
        ext = {p for n in comp for p in g.predecessors(n)} - comp
        exits = [n for n in comp if any(s not in comp for s in g.successors(n))]
        n_seeds = len(comp & seeds)
        if len(ext) != 1 or len(exits) != 1 or n_seeds < 2:
            continue
        exit_ = exits[0]
        d = g.nodes[exit_]
        if not (d["op"] == "add" or d.get("call") in _COMBINE):
            continue
        shape = d["shape"]
        head_dim = int(shape[-1])
        rotary = max(int(g.nodes[s]["const_shape"][-1]) for s in comp & seeds)
        interleaved = any(g.nodes[n].get("call") == "stack" or g.nodes[n].get("strided") for n in comp)
        path = _common_path([g.nodes[n]["module_path"] for n in comp])
        attrs = {**_base_attrs(g, comp, "rope", path, exit_), "n_heads": _numel(shape) // (n_tokens * head_dim),
                 "head_dim": head_dim, "rotary_dim": rotary, "style": "interleaved" if interleaved else "half"}
        first = min(comp, key=lambda n: g.nodes[n]["index"])
        _contract(g, set(comp), first, attrs, list(ext), merged)


def _contract_eager_attention(g: nx.DiGraph, n_tokens: int, merged: dict[str, str]) -> None:
    """Contract ``softmax(Q K^T ...) V`` written with matmuls into ``attention`` nodes (ports q, k, v)."""
    for pv in [n for n in sorted(g, key=lambda n: g.nodes[n]["index"])
               if g.nodes[n].get("call") in ("matmul", "bmm") and g.nodes[n]["op"] == "opaque"]:
        if pv not in g or g.in_degree(pv) != 2:
            continue
        (p_node, v_node) = [s for s, _, _ in sorted(g.in_edges(pv, data="port"), key=lambda e: e[2])]
        chain, cur, softmax = [], p_node, False
        while True:
            d = g.nodes[cur]
            if d["op"] == "opaque" and d.get("call") in ("matmul", "bmm") and g.in_degree(cur) == 2:
                break
            ok = g.in_degree(cur) == 1 and not d["params"] and (
                d["op"] == "scale" or d["op"] == "act" and d["fn"] == "tanh"
                or d["op"] == "opaque" and d.get("call") in _SCORE_OPS)
            if not ok:
                chain = None
                break
            softmax |= d.get("call") == "softmax"
            chain.append(cur)
            cur = next(iter(g.predecessors(cur)))
        if chain is None or not softmax:
            continue
        qk = cur
        cluster = {qk, pv, *chain}
        if any(s not in cluster for n in cluster - {pv} for s in g.successors(n)):
            continue
        (q_node, k_node) = [s for s, _, _ in sorted(g.in_edges(qk, data="port"), key=lambda e: e[2])]
        q_shape = g.edges[q_node, qk]["shape"]
        head_dim = int(q_shape[-1])
        path = _common_path([g.nodes[n]["module_path"] for n in cluster])
        attrs = {**_base_attrs(g, cluster, "attention", path, pv), "n_heads": int(q_shape[-3]),
                 "n_kv_heads": _numel(g.nodes[k_node]["shape"]) // (n_tokens * head_dim), "head_dim": head_dim}
        _contract(g, cluster, qk, attrs, [q_node, k_node, v_node], merged)


def _label_lm_head(g: nx.DiGraph, logits: str) -> bool:
    """The linear producing the logits (through weight-free single-input ops) becomes the ``lm_head``."""
    cur = logits
    while g.nodes[cur]["op"] != "linear":
        if g.in_degree(cur) != 1 or g.nodes[cur]["params"]:
            return False
        cur = next(iter(g.predecessors(cur)))
    d = g.nodes[cur]
    tied = [n for n, e in g.nodes(data=True) if e["op"] == "embedding" and set(e["params"]) & set(d["params"])]
    d.update(op="lm_head", dim=d.pop("in_features"), vocab=d.pop("out_features"), tied_to=tied[0] if tied else None)
    return True


def _readable_ids(g: nx.DiGraph) -> dict[str, str]:
    """Node ids from the module path (alone when the module made one node), plus the op when it made more."""
    order = sorted(g, key=lambda n: g.nodes[n]["index"])
    per_path = defaultdict(int)
    for n in order:
        per_path[g.nodes[n]["module_path"]] += 1
    mapping, used = {"tokens": "tokens"}, {"tokens"}
    for n in order:
        if n == "tokens":
            continue
        d = g.nodes[n]
        base = re.sub(r"\W", "_", d["module_path"])
        kind = d["op"] if d["op"] != "opaque" else re.sub(r"\W", "_", str(d.get("call")))
        name = base if base and per_path[d["module_path"]] == 1 else f"{base}__{kind}" if base else kind
        if not _ID.match(name):
            name = f"m_{name}"
        candidate, k = name, 1
        while candidate in used:
            candidate, k = f"{name}_{k}", k + 1
        mapping[n] = candidate
        used.add(candidate)
    return mapping


# ====================================================================== helpers
def _canon(func) -> tuple[str, bool, bool]:
    """``(base name, in place, reflected)`` of a torch callable: ``__iadd__`` -> ``("add", True, False)``."""
    name = getattr(func, "__name__", None) or str(func)
    if name.startswith("__") and name.endswith("__") and len(name) > 4:
        core = name[2:-2]
        if core == "get":
            return "__get__", False, False
        if core == "setitem":
            return "setitem", True, False
        if core[:1] == "r" and core[1:] in _ARITH:
            base = "div" if core[1:] == "truediv" else core[1:]
            return base, False, True
        if core[:1] == "i" and core[1:] in _ARITH:
            return ("div" if core[1:] == "truediv" else core[1:]), True, False
        return ("div" if core == "truediv" else core), False, False
    if name.endswith("_") and not name.startswith("_") and len(name) > 1:
        return name[:-1], True, False
    return ("div" if name == "true_divide" else name), False, False


def _tensors(obj) -> Iterator[torch.Tensor]:
    """The tensors in nested tuples / lists / dicts, in order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _scalar(name: str, args, kwargs) -> float | None:
    """The single Python number operand of an arithmetic op, if any (``x * 0.5``, ``v + 1e-6``)."""
    if name not in _ARITH:
        return None
    nums = [a for a in list(args) + list(kwargs.values())
            if isinstance(a, (int, float)) and not isinstance(a, bool)]
    return float(nums[0]) if len(nums) == 1 else None


def _arg(args, kwargs, pos: int, name: str):
    return args[pos] if len(args) > pos else kwargs.get(name)


def _storage_key(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


def _numel(shape) -> int:
    return math.prod(int(s) for s in shape)


def _key_repr(key) -> str:
    """``x[..., :32]`` style text of an indexing key."""
    def one(k):
        if k is Ellipsis:
            return "..."
        if k is None:
            return "None"
        if isinstance(k, slice):
            text = ":".join("" if v is None else str(v) for v in (k.start, k.stop, k.step))
            return text[:-1] if text.endswith(":") and k.step is None else text
        if isinstance(k, torch.Tensor):
            return f"<{'x'.join(map(str, k.shape)) or 'scalar'} tensor>"
        return repr(k)
    return ", ".join(one(k) for k in key) if isinstance(key, tuple) else one(key)


def _strided(key) -> bool:
    """Whether the key steps over the last axis (``x[..., ::2]``, the interleaved RoPE pairing)."""
    last = key[-1] if isinstance(key, tuple) and key else key
    return isinstance(last, slice) and last.step not in (None, 1)
