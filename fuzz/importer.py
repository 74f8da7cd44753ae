"""Import a real causal LM as a :class:`~fuzz.materialize.GraphModel` that shares its parameters.

:func:`import_model` records the model's dataflow (:func:`fuzz.record.record`), converts the
:class:`~fuzz.record.RecordedGraph` into a valid :class:`~fuzz.layout.Layout` and builds a
:class:`GraphModel` whose node modules hold *the same* ``nn.Parameter`` objects as the source model:
an in-place edit of a GraphModel weight edits the source model too.  With ``check=True`` (the default;
every path that proves or ships anything uses it) both models run on the same token ids and the import is
refused unless the logits agree: the conversion is checked, not assumed (:func:`check_import`).

The check (:func:`check_import`).  The recording ids, then batch-2 ids at several lengths
(:func:`check_lengths`): 24 and 64 tokens and ``2 W + 8`` for the largest span ``W`` any window / chunk /
local-span field of the config names (the recorder sees no mask, so a window only shows past ``W``
tokens), capped by ``max_position_embeddings``.  The source runs in its own precision policy; the
GraphModel under the policy that matches it (``"transformers"`` when the source computes in float32),
and under the other one too unless the first is exact; the better one is kept.  The error is
``e = max|a - b| / max|b|`` on the logits, the max over every checked length.  Bound:

* ``exact`` floor: ``e <= 1e-10`` in float64 (1e-4 in float32);
* ``float32`` floor: a float64 source that computes parts in float32 (counted by measurement: the torch
  calls of its forward that turn a float64 tensor into a float32 one) is accepted within
  ``FLOAT32_FACTOR * eps32 * sqrt(L)`` (``eps32 = 2^-23``, ``L`` attention nodes).  Independent float32
  roundings (RMSNorm, RoPE tables) add in quadrature over the residual stream: measured on Cohere, Helium
  and Ernie-4.5 (hidden 64..1024, 2..24 layers; and hidden 32, 2 layers over 10 weight seeds; batch 2 x
  24/64 tokens) the better policy's error is 1.4..4.6 eps32, at most 3.1 eps32 sqrt(L) (Ernie-4.5,
  hidden 32; median 1.6), not growing with the width; the factor 16 leaves 5x for other weights and
  inputs and is 1.0e-5 at 30 layers, two orders under the smallest structural divergence measured (a
  dropped 8-token window in Starcoder2: 0.11 relative on the logits).

The GraphModel's ``layout.meta["import_check"]`` records it: ``lengths``, ``batch``, ``max_rel_err`` per
policy run, ``numerics`` (the better one), ``bound``, ``floor`` (``"exact"`` | ``"float32"``), ``downcasts``
(their count and the torch calls), ``spans`` (the config fields read).  A refusal (:class:`BadInput`)
names the length at which the logits part, the first divergent node in execution order with its source
module and error (node outputs against the outputs / inputs of the source modules, by hooks on both), and
``sliding window`` when that node is an attention that agrees at the first positions only, or when the
source's logits at late positions do not depend on the first token while the graph's do (a limited
attention span, measured, whatever the config or module calls it).

Conversion rules (recorded op -> layout op):

* ``embedding``, ``lm_head`` (``tied_to`` kept), ``linear`` (``F.linear`` only: ``x @ W`` and
  ``addmm`` read ``W`` as ``(in, out)``), ``attention``, ``add``, ``mul``, ``act``, ``scale``: direct;
  parameter roles by shape (the 2-D one is the weight, the 1-D one the bias);
* ``norm``: kind / dim / groups / eps / weight_form / bias; a LayerNorm's weight and bias are told
  apart by feeding the norm module a constant row (it normalises to zero, so the output is the bias);
* ``rope``: ``theta`` is recovered from the model (below); any RoPE but the default one is refused;
* ``attention``: must be causal with ``head_dim ** -0.5`` scaling and no soft-cap (the recorder sees
  neither, so the attention module's ``scaling`` / ``attn_logit_softcapping`` / ``is_causal`` attributes
  are consulted); a sliding window or chunked attention is found by the check, by measurement;
* ``router`` (it reads its own weight): split into a ``linear`` ``<router id>_proj`` and a ``router``;
* ``experts``: ``gate_up_proj (E, 2I, H)`` and ``down_proj (E, H, I)`` told apart by shape; the
  transposed ``(E, in, out)`` layout is refused;
* ``x * sigmoid(g)`` / ``x * softplus(g)`` -> ``gate``; a last-axis slice (``x[..., a:b]``, ``chunk``,
  ``split``) of a fused projection -> ``head_slice``;
* exact rewrites: ``scale`` by 1.0 is dropped, ``(a + b) + c`` becomes one three-input ``add``.

Anything else (an ``opaque`` node, a parameter read by an op that owns none) raises
:class:`~fuzz.errors.BadInput` naming the module path, the torch call and the recorded node.

RoPE ``theta``: the rotary module is found by ownership (the module holding an ``inv_freq`` buffer
nearest to the attention that applies the rotation); its ``rope_type`` must be ``default``; ``theta``
comes from its config (``rope_parameters["rope_theta"]`` or ``rope_theta``), else from ``inv_freq``
itself, and ``inv_freq`` must equal the default table of that theta.

:func:`export_weights` is the way back: qualified parameter name -> tensor of an imported (possibly
transformed) GraphModel, ready for ``load_state_dict`` on a fresh model of the source class.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections import defaultdict

import networkx as nx
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import BadInput
from .layout import Layout
from .materialize import NUMERICS, GraphModel, Rope
from .ops import ACTIVATIONS, GATE_ACTS
from .record import RecordedGraph, _input_ids, _logits, _tensors, record

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}
FLOAT32_EPS = torch.finfo(torch.float32).eps  # 2^-23 = 1.19e-7
FLOAT32_FACTOR = 16.0  # the float32 floor is FLOAT32_FACTOR * FLOAT32_EPS * sqrt(attention nodes); see the docstring
CHECK_LENGTHS = (24, 64)
CHECK_BATCH = 2
SPAN_MARGIN = 8
_SPAN_FIELD = re.compile(r"window|chunk|local|span", re.IGNORECASE)
_MAX_POSITIONS = ("max_position_embeddings", "n_positions", "max_seq_len", "max_sequence_length", "seq_length")
_SLICES = frozenset({"getitem", "chunk", "split", "split_with_sizes", "tensor_split"})


def import_model(model: nn.Module, input_ids: torch.Tensor | None = None, *, check: bool = True,
                 numerics: str = "exact") -> GraphModel:
    """The :class:`GraphModel` of ``model``, sharing its parameters; see the module docstring.

    ``input_ids`` (default: 8 fixed ids) drive the recording and the check.  ``numerics`` is the
    returned model's precision policy (``"exact"``: everything in the model dtype; ``"transformers"``:
    transformers' float32 RMSNorm / RoPE tables / router softmax); the check passes when the GraphModel
    reproduces the source under either policy.  The layout meta holds ``name`` (the source class),
    ``source="import"``, ``param_map`` (node -> role -> qualified parameter name, every source parameter
    once), ``aliases`` and ``tied`` (further names, for :func:`export_weights`), ``module_paths`` (node ->
    the source module it ran in) and ``import_check`` (what :func:`check_import` measured; ``None`` when
    ``check=False``: only for tests and for inspecting a refused model, never for a proof).
    """
    if numerics not in NUMERICS:
        raise BadInput(f"numerics must be one of {NUMERICS}, got {numerics!r}")
    if not isinstance(model, nn.Module):
        raise BadInput(f"import_model expects a torch.nn.Module, got {type(model).__name__}")
    ids = _input_ids(model, input_ids)
    rec = record(model, ids)
    converter = _Converter(model, rec)
    layout = converter.layout()
    graph_model = _build(layout, converter.parameters, numerics)
    layout.meta["import_check"] = check_import(model, graph_model, ids) if check else None
    return graph_model.eval()


def export_weights(graph_model: GraphModel) -> dict[str, torch.Tensor]:
    """Qualified source parameter name -> tensor of an imported (possibly transformed) GraphModel.

    Names come from the layout meta: ``param_map`` (node -> role -> name), ``aliases`` (further names of
    a parameter) and ``tied`` (the name under which a tied lm_head reads the embedding table).  A tied
    lm_head exports the table under its own name too, so ``fresh.load_state_dict(export_weights(gm),
    strict=True)`` passes on a fresh model of the source class; once a transform has untied it, its own
    weight is exported under that name (load it into a model built with ``tie_word_embeddings=False``).
    A node that a transform replaced or re-parametrised is refused.  Tensors are detached and share
    the GraphModel's storage.
    """
    layout = getattr(graph_model, "layout", None)
    param_map = layout.meta.get("param_map") if isinstance(layout, Layout) else None
    if not isinstance(graph_model, GraphModel) or not isinstance(param_map, dict):
        raise BadInput(f"export_weights needs a GraphModel made by import_model (its layout meta has a "
                       f"'param_map'), got {type(graph_model).__name__}")

    def tensor(node: str, role: str, name: str) -> torch.Tensor:
        param = graph_model.nodes[node]._parameters.get(role) if node in graph_model.nodes else None
        if param is None:
            raise BadInput(f"cannot export {name}: the GraphModel has no parameter {role!r} at node {node!r} "
                           f"(a transform replaced or removed it)")
        return param.detach()

    out = {name: tensor(node, role, name) for node, roles in param_map.items() for role, name in roles.items()}
    for alias, canonical in layout.meta.get("aliases", {}).items():
        out[alias] = out[canonical]
    for node, roles in layout.meta.get("tied", {}).items():
        out.update({name: tensor(node, role, name) for role, name in roles.items()})
    return out


# ====================================================================== building and checking
def _build(layout: Layout, parameters: dict[str, dict[str, nn.Parameter]], numerics: str) -> GraphModel:
    """A GraphModel of ``layout`` whose parameters are the given source Parameter objects (no copies)."""
    dtype = next(p for roles in parameters.values() for p in roles.values()).dtype
    with torch.device("meta"):  # placeholders only: every one is replaced below
        model = GraphModel(layout, dtype=dtype, numerics=numerics)
    for node, roles in parameters.items():
        for role, param in roles.items():
            model.nodes[node].register_parameter(role, param)
    for node in layout.of_op("lm_head"):
        tied = layout.params(node)["tied_to"]
        if tied is not None:
            model.nodes[node].register_parameter("weight", model.nodes[tied].weight)
    left = [n for n, p in model.named_parameters(remove_duplicate=False) if p.is_meta]
    if left:
        raise RuntimeError(f"import left placeholder parameters {left}")  # a bug here, not bad input
    return model


@contextlib.contextmanager
def _numerics(model: GraphModel, numerics: str):
    """Run ``model`` under another precision policy for the duration of the block."""
    before = model.numerics
    for module in (model, *model.nodes.values()):
        module.numerics = numerics
    try:
        yield model
    finally:
        for module in (model, *model.nodes.values()):
            module.numerics = before


def _source_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The source model's logits on ``ids`` (eval mode, no grad; training flags restored)."""
    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            try:
                out = model(input_ids=ids, use_cache=False)
            except TypeError:  # not a transformers model: the calling conventions record() accepts
                try:
                    out = model(input_ids=ids)
                except TypeError:
                    out = model(ids)
    finally:
        for m, flag in training.items():
            m.training = flag
    return _logits(out, ids, type(model).__name__)


def check_lengths(model: nn.Module) -> tuple[list[int], dict[str, int], int | None]:
    """``(lengths, spans, cap)``: the sequence lengths the check runs at.

    ``spans``: every positive int (or the largest of a list of ints) under a config field whose name says
    window / chunk / local / span (``sliding_window``, ``attention_chunk_size``, ... also harmless ones
    such as ``num_local_experts``: a longer check costs time, never soundness), nested configs included.
    A window ``W`` only shows past ``W`` tokens, so the lengths are ``CHECK_LENGTHS`` plus ``2 W + 8``;
    each is capped by the config's position limit ``cap`` (``max_position_embeddings`` and kin).
    """
    spans: dict[str, int] = {}
    caps: list[int] = []

    def walk(prefix: str, d: dict) -> None:
        for key, value in d.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value)
                continue
            ints = [value] if not isinstance(value, (list, tuple)) else list(value)
            ints = [v for v in ints if isinstance(v, int) and not isinstance(v, bool) and v > 0]
            if ints and _SPAN_FIELD.search(str(key)):
                spans[f"{prefix}{key}"] = max(ints)
            if ints and key in _MAX_POSITIONS and not isinstance(value, (list, tuple)):
                caps.append(ints[0])

    config = getattr(model, "config", None)
    if config is not None:
        try:
            as_dict = config.to_dict() if callable(getattr(config, "to_dict", None)) else dict(vars(config))
        except (TypeError, ValueError):
            as_dict = {}
        walk("", as_dict if isinstance(as_dict, dict) else {})
    cap = min(caps) if caps else None
    longest = max(spans.values(), default=0)
    wanted = set(CHECK_LENGTHS) | ({2 * longest + SPAN_MARGIN} if longest else set())
    return sorted({min(n, cap) if cap else n for n in wanted}), spans, cap


class _Float32Calls(TorchFunctionMode):
    """Counts, during a forward, the torch calls that compute in float32: ``downcasts`` (a float64 tensor
    in, a float32 tensor out: ``x.float()``, ``x.to(torch.float32)``) and ``float32_ops`` (float32 in and
    out).  A float64 model that makes any has transformers' float32 floor."""

    def __init__(self):
        super().__init__()
        self.downcasts: dict[str, int] = defaultdict(int)
        self.float32_ops = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        ins = {t.dtype for t in _tensors((args, kwargs)) if t.is_floating_point()}
        if ins and any(t.dtype == torch.float32 for t in _tensors(out)):
            name = getattr(func, "__name__", str(func))
            if torch.float64 in ins:
                self.downcasts[name] += 1
            elif ins == {torch.float32}:
                self.float32_ops += 1
        return out


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    """``max|got - want| / max|want|`` in float64; ``inf`` when not finite or the shapes differ."""
    if got.shape != want.shape:
        return math.inf
    got, want = got.detach().double(), want.detach().double()
    scale = want.abs().max().item()
    err = (got - want).abs().max().item()
    value = err / scale if scale > 0 else (0.0 if err == 0 else math.inf)
    return value if math.isfinite(value) else math.inf


def _graph_logits(graph_model: GraphModel, ids: torch.Tensor, policy: str) -> torch.Tensor:
    name = graph_model.layout.meta.get("name", "model")
    try:
        with _numerics(graph_model, policy), torch.no_grad():
            return graph_model(ids)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        raise BadInput(f"{name}: the imported graph does not run on {tuple(ids.shape)} token ids "
                       f"(numerics={policy!r}): {type(exc).__name__}: {exc}") from exc


def _checked_source_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    try:
        return _source_logits(model, ids)
    except BadInput:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        raise BadInput(f"{type(model).__name__} does not run on {tuple(ids.shape)} token ids, so the import "
                       f"cannot be checked at that length: {type(exc).__name__}: {exc}") from exc


def check_import(model: nn.Module, graph_model: GraphModel, ids: torch.Tensor) -> dict:
    """Refuse (:class:`BadInput`) unless ``graph_model`` computes what ``model`` computes; see the module
    docstring.  Returns the record stored as ``layout.meta["import_check"]``."""
    name = type(model).__name__
    dtype = graph_model.dtype
    tol = TOLERANCE.get(dtype)
    if tol is None:
        raise BadInput(f"{name}: check=True compares float32 or float64 models, this one is "
                       f"{dtype} (pass check=False to import it unchecked)")
    lengths, spans, cap = check_lengths(model)
    vocab = graph_model.layout.params(graph_model.layout.source)["vocab"]
    gen = torch.Generator().manual_seed(0)
    batches = [ids] + [torch.randint(0, vocab, (CHECK_BATCH, n), generator=gen).to(ids.device) for n in lengths]
    counter = _Float32Calls()
    with counter:  # every source run: a float32 path may show at some lengths only
        wants = [_checked_source_logits(model, x) for x in batches]
    downcasts = sum(counter.downcasts.values())
    computes_float32 = dtype == torch.float64 and downcasts + counter.float32_ops > 0
    # the policy the source's own numerics suggest first; the other only if the first is not exact
    policies = ("transformers", "exact") if downcasts + counter.float32_ops else ("exact", "transformers")
    rows: list[dict[str, float]] = [{} for _ in batches]
    for policy in policies:
        for row, x, want in zip(rows, batches, wants):
            row[policy] = _rel(_graph_logits(graph_model, x, policy), want)
        if max(row[policy] for row in rows) <= tol:
            break
    worst = {policy: max(row[policy] for row in rows) for policy in rows[0]}
    best = min(worst, key=worst.get)
    n_attention = max(len(graph_model.layout.of_op("attention")), 1)
    floor_bound = FLOAT32_FACTOR * FLOAT32_EPS * math.sqrt(n_attention)
    bound = floor_bound if computes_float32 else tol
    record_ = {"lengths": [list(x.shape) for x in batches], "batch": CHECK_BATCH, "max_rel_err": worst,
               "numerics": best, "exact_bound": tol, "float32_bound": floor_bound if computes_float32 else None,
               "dtype": str(dtype).removeprefix("torch."), "downcasts": downcasts,
               "downcast_calls": dict(sorted(counter.downcasts.items())), "float32_ops": counter.float32_ops,
               "spans": spans, "max_positions": cap}
    if worst[best] <= tol:
        return {**record_, "floor": "exact", "bound": tol}
    if computes_float32 and worst[best] <= floor_bound:
        return {**record_, "floor": "float32", "bound": floor_bound}
    _refuse_import(model, graph_model, batches, rows, best, bound, computes_float32)


def _refuse_import(model, graph_model, batches, rows, best, bound, computes_float32) -> None:
    """The refusal: where the logits part, the first divergent node, and a limited span if measured."""
    name = type(model).__name__
    k = next(i for i, row in enumerate(rows) if row[best] > bound)
    x = batches[k]
    found = ", ".join(f"{err:.3g} (numerics={policy!r})" for policy, err in rows[k].items())
    floor = (f"the float32 floor {FLOAT32_FACTOR:g} eps32 sqrt(layers): the source computes parts in float32"
             if computes_float32 else "the exact bound for this dtype")
    where = _first_divergent(model, graph_model, x, best, bound)
    span = "" if "sliding window" in where else _limited_span(model, graph_model, batches[-1], best)
    raise BadInput(f"{name}: the import is not exact: max|a-b|/max|b| = {found} > {bound:.3g} "
                   f"({graph_model.dtype}, {floor}) at {tuple(x.shape)} token ids; the recorded graph does not "
                   f"compute what the model computes: {where}{span}")


def _inside(path: str, module: str) -> bool:
    return module == "" or path == module or path.startswith(module + ".")


def _ancestors(path: str) -> list[str]:
    """``path`` and every enclosing module path, deepest first (``""`` is the root)."""
    parts = path.split(".") if path else []
    return [".".join(parts[:k]) for k in range(len(parts), -1, -1)]


def _first_divergent(model: nn.Module, graph_model: GraphModel, x: torch.Tensor, policy: str, bound: float) -> str:
    """The first node, in execution order, whose output differs from its source counterpart beyond ``bound``.

    Counterparts come from the module each node ran in (``meta["module_paths"]``): a node's output is the
    output of the deepest module in which it is the last node to run, or else the input of the deepest
    module in which one of its readers is the first node to run (the attention core feeds ``o_proj``).
    Compared as ``(tokens, features)`` when the sizes agree; routers are skipped (a router module's output
    format is its own).  Hooks on both models, one forward each.
    """
    layout = graph_model.layout
    paths = layout.meta.get("module_paths", {})
    order = [n for n in layout.order if n in paths]
    first_in: dict[str, str] = {}
    last_in: dict[str, str] = {}
    for n in order:
        for module in _ancestors(paths[n]):
            first_in.setdefault(module, n)
            last_in[module] = n
    wanted = set(first_in)
    seen_in: dict[str, torch.Tensor | None] = {}
    seen_out: dict[str, torch.Tensor | None] = {}

    def floating(obj):
        return next((t for t in _tensors(obj) if t.is_floating_point()), None)

    def source_hook(path):
        def hook(module, args, kwargs, out):
            twice = path in seen_out  # a module run more than once has no single counterpart
            t_in = floating(args) if floating(args) is not None else floating(kwargs)
            t_out = floating(out)
            seen_in[path] = None if twice or t_in is None else t_in.detach().clone()
            seen_out[path] = None if twice or t_out is None else t_out.detach().clone()
        return hook

    got: dict[str, torch.Tensor] = {}

    def graph_hook(node):
        def hook(module, args, out):
            if isinstance(out, torch.Tensor):
                got[node] = out.detach().clone()
        return hook

    handles = [m.register_forward_hook(source_hook(p), with_kwargs=True)
               for p, m in model.named_modules() if p in wanted]
    handles += [graph_model.nodes[n].register_forward_hook(graph_hook(n)) for n in order]
    try:
        want = _checked_source_logits(model, x)
        logits = _graph_logits(graph_model, x, policy)
    finally:
        for h in handles:
            h.remove()
    tokens = x.numel()

    def compare(node: str, ref: torch.Tensor | None) -> float | None:
        out = got.get(node)
        if ref is None or out is None or out.numel() != ref.numel() or out.numel() % tokens:
            return None
        return _rel(out.reshape(tokens, -1), ref.reshape(tokens, -1))

    for n in order:
        if layout.op(n) in ("tokens", "router"):
            continue
        refs = [(f"the output of {m or 'the model'}", seen_out.get(m)) for m in _ancestors(paths[n])
                if last_in.get(m) == n]
        for reader, _ in layout.consumers(n):
            if reader in paths:
                refs += [(f"the input of {m}", seen_in.get(m)) for m in _ancestors(paths[reader])
                         if first_in.get(m) == reader and not _inside(paths[n], m)]
        for what, ref in refs:
            err = compare(n, ref)
            if err is None:
                continue
            if err > bound:
                routers = [r for r in layout.inputs(n) if layout.op(r) == "router"]
                routed = (f" (it reads router {routers[0]!r} of module {paths.get(routers[0])}, whose output is not "
                          f"compared directly: a routing difference shows here)") if routers else ""
                span = _span_at(got[n], ref, x.shape, bound) if layout.op(n) == "attention" else ""
                return (f"first divergent node {n!r} ({layout.op(n)}) in module {paths[n] or type(model).__name__}: "
                        f"{err:.3g} relative against {what}{routed}{span}")
            break  # the deepest counterpart decides
    return (f"no node output differs beyond {bound:.3g} before the logits ({_rel(logits, want):.3g} at the "
            f"lm_head)")


def _span_at(out: torch.Tensor, ref: torch.Tensor, shape: torch.Size, bound: float) -> str:
    """``"; sliding window ..."`` when an attention node whose inputs agree (it is the first divergent node)
    agrees with its source at positions ``0 .. S-1`` and not at ``S``, ``S >= 2``: the source attends over
    fewer keys from position ``S`` on.  (A different score -- scaling, ALiBi, soft-cap, sinks -- already
    shows at position 1, where two keys are mixed; position 0 has one key whatever the scores.)"""
    b, t = shape
    out, ref = out.detach().double().reshape(b, t, -1), ref.detach().double().reshape(b, t, -1)
    per_position = (out - ref).abs().amax(dim=(0, 2)) / ref.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    over = [i for i in range(t) if not per_position[i] <= bound]
    if not over or over[0] < 2:
        return ""
    return (f"; sliding window: measured, this attention agrees with its source at positions 0..{over[0] - 1} "
            f"and differs from position {over[0]} on ({len(over)} of {t} positions): the source attends over "
            f"a limited span (sliding-window or chunked), which the layout's attention cannot express")


def _limited_span(model: nn.Module, graph_model: GraphModel, x: torch.Tensor, policy: str) -> str:
    """``"; sliding window ..."`` when the source's logits at late positions ignore the first token while the
    graph's do not (measured: the first token's id is changed), else ``""``."""
    vocab = graph_model.layout.params(graph_model.layout.source)["vocab"]
    a = x[:1]
    b = a.clone()
    b[0, 0] = (b[0, 0] + 1) % vocab
    src = (_checked_source_logits(model, a) - _checked_source_logits(model, b)).abs().amax(-1)[0]
    gm = (_graph_logits(graph_model, a, policy) - _graph_logits(graph_model, b, policy)).abs().amax(-1)[0]
    blind = [t for t in range(a.shape[1]) if src[t] == 0 and gm[t] != 0]
    if not blind:
        return ""
    return (f"; sliding window: measured, the source's logits at positions {blind[0]}.. ({len(blind)} of "
            f"{a.shape[1]}) do not depend on the first token while the imported graph's do (a limited "
            f"attention span, sliding-window or chunked, which the layout's attention cannot express)")


# ====================================================================== recorded graph -> layout
class _Converter:
    """Rewrites a RecordedGraph into layout nodes; ``parameters`` maps node -> role -> source Parameter."""

    def __init__(self, model: nn.Module, rec: RecordedGraph):
        self.model, self.rec = model, rec
        self.g = rec.graph.copy()
        self.n_tokens = math.prod(rec.meta["input_shape"])
        self.named = dict(model.named_parameters())
        self.modules = dict(model.named_modules())
        self.rotaries = [(p, m) for p, m in self.modules.items()
                         if isinstance(m._buffers.get("inv_freq"), torch.Tensor)]
        self.parameters: dict[str, dict[str, nn.Parameter]] = {}
        self.param_map: dict[str, dict[str, str]] = {}
        self.tied: dict[str, dict[str, str]] = {}  # tied lm_head -> {"weight": the name it reads the table by}
        self.thetas: dict[tuple[str, int], float] = {}  # (module path, rotary_dim) -> theta

    # ------------------------------------------------------------------ helpers
    def _refuse(self, node: str, why: str) -> BadInput:
        d = self.g.nodes[node]
        return BadInput(f"cannot import {d['module_path'] or type(self.model).__name__} ({why}; "
                        f"recorded node {node!r})")

    def _inputs(self, node: str) -> list[str]:
        return [s for s, _, _ in sorted(self.g.in_edges(node, data="port"), key=lambda e: e[2])]

    def _width(self, node: str) -> int:
        return math.prod(self.g.nodes[node]["shape"]) // self.n_tokens

    def _shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.named[name].shape)

    def _rewire(self, node: str, inputs: list[str]) -> None:
        for src in list(self.g.predecessors(node)):
            self.g.remove_edge(src, node)
        for port, src in enumerate(inputs):
            self.g.add_edge(src, node, port=port)

    # ------------------------------------------------------------------ exact graph rewrites
    def _bypass(self, node: str) -> None:
        """Remove a single-input node whose output equals its input, its readers reading the input instead
        (kept when a reader also reads the input directly: a layout node reads a producer once)."""
        (src,) = self._inputs(node)
        outs = list(self.g.out_edges(node, data=True))
        if any(self.g.has_edge(src, dst) for _, dst, _ in outs):
            return
        for _, dst, data in outs:
            self.g.add_edge(src, dst, **data)
        self.g.remove_node(node)

    def _drop_identity_scales(self) -> None:
        """``x * 1.0`` is ``x`` (transformers multiplies by 1.0 where a multiplier is unset)."""
        for node in [n for n, d in self.g.nodes(data=True) if d["op"] == "scale" and d["factor"] == 1.0]:
            self._bypass(node)

    def _bypass_views(self) -> None:
        """``x[..., None]`` only adds an axis (the recorder keeps it because the last width changes)."""
        for node, d in list(self.g.nodes(data=True)):
            if d["op"] != "opaque" or d.get("call") != "getitem" or d["params"] or self.g.in_degree(node) != 1:
                continue
            parts = {p.strip() for p in d.get("key", "").split(",")}
            if parts <= {"...", ":", "None"} and self._width(node) == self._width(self._inputs(node)[0]):
                self._bypass(node)

    def _fold_gates(self) -> None:
        """``x * sigmoid(g)`` (or softplus) with the activation read only there -> a ``gate`` node."""
        for node in [n for n, d in self.g.nodes(data=True) if d["op"] == "mul" and not d["params"]]:
            ins = self._inputs(node)
            if len(ins) != 2:
                continue
            for k, act in enumerate(ins):
                a, x = self.g.nodes[act], ins[1 - k]
                if not (a["op"] == "act" and a["fn"] in GATE_ACTS and not a["params"]
                        and self.g.out_degree(act) == 1 and self.g.in_degree(act) == 1):
                    continue
                (g,) = self._inputs(act)
                n_heads = self._gate_heads(node, x, act)
                if g == x or n_heads is None:
                    continue
                self.g.nodes[node].update(op="gate", act=a["fn"], n_heads=n_heads)
                self.g.remove_node(act)
                self._rewire(node, [x, g])
                break

    def _gate_heads(self, node: str, x: str, act: str) -> int | None:
        """1 for an elementwise or per-token gate, the head count for a per-head one, None otherwise."""
        xw, gw = self._width(x), self._width(act)
        if gw in (xw, 1):
            return 1
        x_shape, g_shape = self.g.edges[x, node]["shape"], self.g.edges[act, node]["shape"]
        if xw % gw == 0 and g_shape[-1] == 1 and g_shape[-2] == gw and x_shape[-2:] == [gw, xw // gw]:
            return gw
        return None

    def _flatten_adds(self) -> None:
        """``(a + b) + c`` -> ``add(a, b, c)`` when the inner add feeds only the outer one, at port 0
        (the layout's add sums left to right, so this is the same rounding)."""
        changed = True
        while changed:
            changed = False
            for node in sorted(self.g, key=lambda n: self.g.nodes[n]["index"]):
                d = self.g.nodes[node]
                if d["op"] != "add" or d["params"]:
                    continue
                ins = self._inputs(node)
                inner = ins[0]
                e = self.g.nodes[inner]
                if e["op"] != "add" or e["params"] or self.g.out_degree(inner) != 1:
                    continue
                merged = self._inputs(inner) + ins[1:]
                if len(set(merged)) != len(merged):
                    continue
                self.g.remove_node(inner)
                self._rewire(node, merged)
                changed = True
                break

    # ------------------------------------------------------------------ conversion
    def layout(self) -> Layout:
        self._drop_identity_scales()
        self._bypass_views()
        self._fold_gates()
        self._flatten_adds()
        entries = []
        module_paths = {}  # layout node -> the source module it ran in (for the check's localisation)
        for node in nx.lexicographical_topological_sort(self.g, key=lambda n: self.g.nodes[n]["index"]):
            self._check_edges(node)
            path = self.g.nodes[node]["module_path"] or ""
            for entry in self._convert(node):
                entries.append(entry)
                module_paths[entry[0]] = path
        self._check_coverage()
        meta = {"name": type(self.model).__name__, "source": "import", "param_map": self.param_map,
                "aliases": dict(self.rec.meta.get("aliases", {})), "tied": self.tied,
                "module_paths": module_paths}
        return Layout.from_nodes(entries, meta)

    def _check_edges(self, node: str) -> None:
        for src, _, data in self.g.in_edges(node, data=True):
            twice = len(data.get("ports", [data["port"]])) > 1
            if twice and not (self.g.nodes[node]["op"] == "experts" and self.g.nodes[src]["op"] == "router"):
                raise self._refuse(node, f"{self.g.nodes[node]['op']} reads {src!r} twice")

    def _take(self, node: str, roles: dict[str, str]) -> None:
        """Give ``node`` the parameters ``roles`` (role -> qualified name); every one it reads must be used."""
        read = set(self.g.nodes[node]["params"])
        if set(roles.values()) != read:
            raise self._refuse(node, f"reads parameters {sorted(read)} but only {sorted(roles.values())} "
                                     f"have a role in a {self.g.nodes[node]['op']}")
        self.param_map[node] = dict(roles)
        self.parameters[node] = {role: self.named[name] for role, name in roles.items()}

    def _no_params(self, node: str) -> None:
        d = self.g.nodes[node]
        if d["params"]:
            call = f" ({d['call']!r})" if d.get("call") not in (None, d["op"]) else ""
            raise self._refuse(node, f"{d['op']}{call} reads parameters {d['params']}, which the layout's "
                                     f"{d['op']} does not own")

    def _convert(self, node: str) -> list[tuple[str, str, dict, list[str]]]:
        d = self.g.nodes[node]
        op, ins = d["op"], self._inputs(node)
        one = lambda o, p: [(node, o, p, ins)]  # noqa: E731
        if op == "tokens":
            return one("tokens", {"vocab": d["vocab"]})
        if op == "embedding":
            if [self.g.nodes[i]["op"] for i in ins] != ["tokens"]:
                raise self._refuse(node, "embedding does not read the token ids")
            self._by_shape(node, {"weight": (d["vocab"], d["dim"])})
            return one("embedding", {"vocab": d["vocab"], "dim": d["dim"]})
        if op == "linear":
            return one("linear", self._linear(node, d["in_features"], d["out_features"], d["bias"]))
        if op == "lm_head":
            return one("lm_head", self._lm_head(node))
        if op == "norm":
            return one("norm", self._norm(node))
        if op == "rope":
            self._no_params(node)
            p = {k: d[k] for k in ("n_heads", "head_dim", "rotary_dim", "style")}
            key = (d["module_path"], d["rotary_dim"])
            if key not in self.thetas:
                self.thetas[key] = self._rope_theta(node, d["rotary_dim"])
            return one("rope", {**p, "theta": self.thetas[key]})
        if op == "attention":
            self._no_params(node)
            self._check_attention(node)
            return one("attention", {k: d[k] for k in ("n_heads", "n_kv_heads", "head_dim")})
        if op == "router":
            return self._router(node)
        if op == "experts":
            return one("experts", self._experts(node))
        if op == "gate":
            return one("gate", {"act": d["act"], "n_heads": d["n_heads"]})
        if op == "scale":
            self._no_params(node)
            return one("scale", {"factor": float(d["factor"])})
        if op == "act":
            self._no_params(node)
            if d["fn"] not in ACTIVATIONS:
                raise self._refuse(node, f"activation {d['fn']!r} is none of {ACTIVATIONS}")
            return one("act", {"fn": d["fn"]})
        if op in ("add", "mul"):
            self._no_params(node)
            widths = [self._width(i) for i in ins]
            if len(set(widths)) != 1:
                raise self._refuse(node, f"{op} broadcasts inputs of widths {widths}")
            return one(op, {})
        if op == "opaque" and d.get("call") in _SLICES:
            self._no_params(node)
            return one("head_slice", self._head_slice(node, ins))
        if op == "opaque":
            raise self._refuse(node, f"opaque op {d.get('call')!r}")
        raise self._refuse(node, f"recorded op {op!r} has no layout counterpart")

    # ------------------------------------------------------------------ ops with parameters
    def _by_shape(self, node: str, want: dict[str, tuple[int, ...]]) -> None:
        """Assign the node's parameters to roles by shape (the roles wanted differ in rank)."""
        read = list(self.g.nodes[node]["params"])
        roles = {}
        for role, shape in want.items():
            hits = [p for p in read if len(self._shape(p)) == len(shape)]
            if len(hits) != 1 or self._shape(hits[0]) != shape:
                got = {p: self._shape(p) for p in read}
                raise self._refuse(node, f"{self.g.nodes[node]['op']} needs a {role} of shape {shape}, "
                                         f"reads {got}")
            roles[role] = hits[0]
        self._take(node, roles)

    def _linear(self, node: str, fan_in: int, fan_out: int, bias: bool) -> dict:
        call = self.g.nodes[node].get("call")
        if call != "linear":
            raise self._refuse(node, f"linear via {call!r} reads its weight as (in, out); the layout's linear "
                                     f"is F.linear with an (out, in) weight")
        want = {"weight": (fan_out, fan_in), **({"bias": (fan_out,)} if bias else {})}
        self._by_shape(node, want)
        return {"in_features": fan_in, "out_features": fan_out, "bias": bias}

    def _lm_head(self, node: str) -> dict:
        d = self.g.nodes[node]
        if d.get("bias"):
            raise self._refuse(node, "the lm_head has a bias, the layout's lm_head has none")
        if d.get("call") != "linear":
            raise self._refuse(node, f"lm_head via {d.get('call')!r} reads its weight as (in, out)")
        if d["tied_to"] is None:
            self._by_shape(node, {"weight": (d["vocab"], d["dim"])})
        elif set(d["params"]) != set(self.g.nodes[d["tied_to"]]["params"]):
            raise self._refuse(node, f"lm_head is tied to {d['tied_to']!r} but reads {d['params']}")
        else:  # the name the lm_head module holds the shared table under (for export_weights)
            (table,) = d["params"]
            names = [table] + [a for a, c in self.rec.meta.get("aliases", {}).items() if c == table]
            own = [n for n in names if n.rpartition(".")[0] == d["module_path"]]
            if len(own) != 1:
                raise self._refuse(node, f"cannot tell which of {names} names the tied lm_head weight")
            self.tied[node] = {"weight": own[0]}
        return {"dim": d["dim"], "vocab": d["vocab"], "tied_to": d["tied_to"]}

    def _norm(self, node: str) -> dict:
        d = self.g.nodes[node]
        if d["eps"] is None:
            raise self._refuse(node, "norm with no recognisable eps")
        dim, read = d["dim"], d["params"]
        if any(self._shape(p) != (dim,) for p in read) or len(read) != 1 + d["bias"]:
            raise self._refuse(node, f"norm of dim {dim} reads {[(p, self._shape(p)) for p in read]}")
        roles = {"weight": read[0]} if not d["bias"] else self._norm_roles(node, read)
        self._take(node, roles)
        return {k: d[k] for k in ("kind", "dim", "groups", "weight_form", "bias")} | {"eps": float(d["eps"])}

    def _norm_roles(self, node: str, read: list[str]) -> dict[str, str]:
        """Weight vs bias of a LayerNorm.  A constant row normalises to zero, so the norm module maps it
        to its bias: the parameter equal to that output is the bias.  When the probe cannot decide (the
        module does not take one tensor, or weight == bias), fall back to the names the module registered
        its parameters under -- used for this weight/bias role only, never for structure."""
        d = self.g.nodes[node]
        module = self.modules.get(d["module_path"])
        params = [self.named[p] for p in read]
        for shape in ((1, 1, d["groups"] * d["dim"]), (1, 1, d["groups"], d["dim"])):  # flat or per head
            try:
                with torch.no_grad():
                    out = module(torch.zeros(shape, dtype=params[0].dtype, device=params[0].device))
            except (TypeError, RuntimeError, ValueError):
                continue
            if isinstance(out, torch.Tensor) and out.numel() == d["groups"] * d["dim"]:
                row = out.reshape(-1, d["dim"])[0]
                hits = [i for i, p in enumerate(params) if torch.equal(row, p.detach())]
                if len(hits) == 1:
                    return {"bias": read[hits[0]], "weight": read[1 - hits[0]]}
                break
        own = {id(p): role for role, p in getattr(module, "_parameters", {}).items() if p is not None}
        roles = {own.get(id(p)): name for p, name in zip(params, read)}
        if set(roles) != {"weight", "bias"}:
            raise self._refuse(node, f"cannot tell the LayerNorm weight from its bias among {read}")
        return roles

    def _router(self, node: str) -> list[tuple[str, str, dict, list[str]]]:
        """A recorded router reads its own weight: a ``linear`` producing the logits, then the ``router``."""
        d = self.g.nodes[node]
        for dst in self.g.successors(node):
            if self.g.nodes[dst]["op"] != "experts":
                raise self._refuse(node, f"router output read by {self.g.nodes[dst]['op']} {dst!r}, not experts")
        proj = f"{node}_proj"
        while proj in self.g:
            proj += "_"
        want = {"weight": (d["n_experts"], d["in_features"]), **({"bias": (d["n_experts"],)} if d["bias"] else {})}
        self._by_shape(node, want)
        self.param_map[proj] = self.param_map.pop(node)
        self.parameters[proj] = self.parameters.pop(node)
        linear = {"in_features": d["in_features"], "out_features": d["n_experts"], "bias": d["bias"]}
        router = {"n_experts": d["n_experts"], "top_k": d["top_k"], "renormalize": d["renormalize"]}
        return [(proj, "linear", linear, self._inputs(node)), (node, "router", router, [proj])]

    def _experts(self, node: str) -> dict:
        """Roles of the two 3-D parameters from the shapes the dataflow implies: ``x`` (width H) is
        multiplied by ``gate_up_proj[e] (2I, H)``, the product of width I by ``down_proj[e] (H, I)``."""
        d = self.g.nodes[node]
        ins = self._inputs(node)
        if len(ins) != 2 or self.g.nodes[ins[1]]["op"] != "router":
            raise self._refuse(node, f"experts read {ins}; expected the hidden states and a router")
        if d.get("act") not in ACTIVATIONS:
            raise self._refuse(node, f"experts activation {d.get('act')!r} is none of {ACTIVATIONS}")
        read = d["params"]
        shapes = [self._shape(p) for p in read]
        hidden = self._width(ins[0])
        if len(read) != 2 or any(len(s) != 3 for s in shapes):
            raise self._refuse(node, f"experts read {dict(zip(read, shapes))}; expected two 3-D tensors")

        def fits(gu, dn, transposed=False):
            if transposed:
                gu, dn = (gu[0], gu[2], gu[1]), (dn[0], dn[2], dn[1])
            return gu[0] == dn[0] and gu[2] == hidden and dn[1] == hidden and gu[1] == 2 * dn[2]

        for gate_up, down in ((0, 1), (1, 0)):
            if fits(shapes[gate_up], shapes[down]):
                self._take(node, {"gate_up_proj": read[gate_up], "down_proj": read[down]})
                e, _, inter = shapes[down]
                return {"n_experts": e, "hidden": hidden, "intermediate": inter, "act": d["act"]}
        if any(fits(shapes[a], shapes[b], transposed=True) for a, b in ((0, 1), (1, 0))):
            raise self._refuse(node, f"experts store transposed (E, in, out) weights {dict(zip(read, shapes))}; "
                                     f"the layout needs gate_up_proj (E, 2I, H) and down_proj (E, H, I)")
        raise self._refuse(node, f"experts weights {dict(zip(read, shapes))} are not gate_up_proj (E, 2I, {hidden}) "
                                 f"and down_proj (E, {hidden}, I)")

    # ------------------------------------------------------------------ ops without parameters
    def _head_slice(self, node: str, ins: list[str]) -> dict:
        """A slice of the last axis of a ``(.., heads, head_dim)`` view: ``x[..., a:b]``, a chunk or a split."""
        d = self.g.nodes[node]
        (src,) = ins
        in_shape = self.g.edges[src, node]["shape"]
        head_dim = int(in_shape[-1])
        heads = self._width(src) // head_dim
        length = int(d["shape"][-1])
        if d["call"] == "getitem":
            start = self._getitem_start(node, in_shape, length)
        else:
            start = self._split_start(node, src)
        if start is None or heads * length != self._width(node):
            raise self._refuse(node, f"opaque op {d['call']!r} ({d.get('key', 'output %s' % d.get('output', 0))}) "
                                     f"is not a slice of the last axis")
        return {"n_heads": heads, "head_dim": head_dim, "start": start, "length": length}

    def _getitem_start(self, node: str, in_shape: list[int], length: int) -> int | None:
        parts = [p.strip() for p in self.g.nodes[node].get("key", "").split(",")]
        lead, last = parts[:-1], parts[-1]
        if any(p not in ("...", ":") for p in lead) or ("..." not in lead and len(parts) != len(in_shape)):
            return None
        bounds = last.split(":")
        if len(bounds) != 2:
            return None
        try:
            a, b = (int(x) if x else None for x in bounds)
        except ValueError:
            return None
        span = range(int(in_shape[-1]))[slice(a, b)]
        return span.start if len(span) == length else None

    def _split_start(self, node: str, src: str) -> int | None:
        """Output ``i`` of a chunk / split starts where outputs ``0 .. i-1`` (recorded siblings) end."""
        d = self.g.nodes[node]
        i = d.get("output", 0)
        call_id = d["index"] - i
        siblings = {self.g.nodes[s].get("output", 0): s for s in self.g.successors(src)
                    if self.g.nodes[s].get("call") == d["call"]
                    and self.g.nodes[s]["index"] - self.g.nodes[s].get("output", 0) == call_id}
        if any(j not in siblings for j in range(i)):
            return None
        return sum(int(self.g.nodes[siblings[j]]["shape"][-1]) for j in range(i))

    def _check_attention(self, node: str) -> None:
        """Causal softmax attention with ``head_dim ** -0.5`` scaling and no soft-cap (the recorder sees
        neither, so they are read from the attention module).  A sliding window or chunked span is left to
        :func:`check_import`, which measures it: a module attribute need not exist (Mistral's attention has
        none) nor say what the mask does."""
        d = self.g.nodes[node]
        module = self.modules.get(d["module_path"])
        one_query = self.rec.meta["input_shape"][-1] == 1  # sdpa drops is_causal for a single position
        if d.get("causal") is False and d.get("masked") is False and not one_query \
                or getattr(module, "is_causal", True) is False:
            raise self._refuse(node, "attention is neither causal nor masked (bidirectional)")
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, float) and not math.isclose(scaling, d["head_dim"] ** -0.5, rel_tol=1e-12):
            raise self._refuse(node, f"attention scaling {scaling} is not head_dim ** -0.5")
        if getattr(module, "attn_logit_softcapping", None) is not None:
            raise self._refuse(node, "attention logits are soft-capped")

    # ------------------------------------------------------------------ RoPE theta
    def _rope_theta(self, node: str, rotary_dim: int) -> float:
        path = self.g.nodes[node]["module_path"]
        module = self.modules.get(path)
        if isinstance(module, Rope):  # a GraphModel source: the node's own parameter
            return float(module.p["theta"])
        found = self._rotary_module(path)
        if found is None:
            rope_type, theta = _config_rope(getattr(self.model, "config", None))
            where = type(self.model).__name__ + ".config"
            inv_freq = None
        else:
            where, rotary = found
            config = getattr(rotary, "config", None)
            rope_type, theta = _config_rope(config if config is not None else getattr(self.model, "config", None))
            rope_type = getattr(rotary, "rope_type", None) or rope_type
            inv_freq = rotary.inv_freq.detach().to("cpu", torch.float64)
            scaling = getattr(rotary, "attention_scaling", 1.0)
            if scaling != 1.0:
                raise BadInput(f"cannot import {where} (RoPE attention_scaling {scaling}; only the default "
                               f"RoPE has a layout op)")
        if rope_type not in (None, "default"):
            raise BadInput(f"cannot import {where} (rope_type {rope_type!r}; only the default RoPE has a layout op)")
        if inv_freq is None:
            if theta is None:
                raise self._refuse(node, "RoPE theta is unknown: no module holds an inv_freq buffer and the "
                                         "config has no rope_theta")
            return theta
        if len(inv_freq) != rotary_dim // 2:
            raise BadInput(f"cannot import {where} (inv_freq has {len(inv_freq)} frequencies, the rotation at "
                           f"{path} uses rotary_dim {rotary_dim})")
        if theta is None:  # recover from the table itself: inv_freq[1] = theta ** (-2 / rotary_dim)
            theta = float(f"{inv_freq[1].item() ** (-rotary_dim / 2):.6g}") if len(inv_freq) > 1 else 10000.0
        if not torch.allclose(_default_inv_freq(theta, rotary_dim), inv_freq, rtol=1e-6, atol=0):
            raise BadInput(f"cannot import {where} (its inv_freq is not the default RoPE table of theta {theta})")
        return theta

    def _rotary_module(self, path: str) -> tuple[str, nn.Module] | None:
        """The module holding ``inv_freq`` nearest to ``path``: searched in the subtree of ``path``, then of
        each ancestor in turn (transformers keeps it beside the layers, e.g. ``model.rotary_emb``)."""
        parts = path.split(".") if path else []
        for k in range(len(parts), -1, -1):
            prefix = ".".join(parts[:k])
            found = [(p, m) for p, m in self.rotaries if not prefix or p == prefix or p.startswith(prefix + ".")]
            if not found:
                continue
            tables = {tuple(m.inv_freq.tolist()) for _, m in found}
            types = {getattr(m, "rope_type", None) for _, m in found}
            if len(tables) > 1 or len(types) > 1:
                raise BadInput(f"cannot import {path} (RoPE tables of {[p for p, _ in found]} differ and none is "
                               f"nearer to it)")
            return found[0]
        return None

    def _check_coverage(self) -> None:
        owners = defaultdict(list)
        for node, roles in self.param_map.items():
            for name in roles.values():
                owners[name].append(node)
        shared = {n: o for n, o in owners.items() if len(o) > 1}
        if shared:
            raise BadInput(f"cannot import {type(self.model).__name__} (parameters read by more than one op: "
                           f"{shared}; only a tied lm_head may share the embedding table)")
        unused = sorted(set(self.named) - set(owners))
        if unused:
            raise BadInput(f"cannot import {type(self.model).__name__} (parameters the logits do not depend on: "
                           f"{unused}; an imported model would lose them)")


def _config_rope(config) -> tuple[str | None, float | None]:
    """``(rope_type, rope_theta)`` from a transformers config (``rope_parameters`` or the legacy keys)."""
    if config is None:
        return None, None
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return params.get("rope_type"), float(params["rope_theta"])
    theta = getattr(config, "rope_theta", None)
    scaling = getattr(config, "rope_scaling", None)
    rope_type = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else None
    return rope_type, float(theta) if isinstance(theta, (int, float)) else None


def _default_inv_freq(theta: float, rotary_dim: int) -> torch.Tensor:
    """transformers' default RoPE table, computed as it does (float32), returned in float64."""
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.int64).to(torch.float32) / rotary_dim
    return (1.0 / (theta ** exponent)).to(torch.float64)
