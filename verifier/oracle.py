"""The invariance oracle: does ``transform`` preserve the function of ``subject``?

Walk: build the subject in the oracle dtype (a :class:`~fuzz.Layout` is materialized; a module already in
that dtype and in eval mode is used read-only, any other is deep-copied, cast and put in eval mode) ->
draw calibration ids and, separately, test ids, plus one causality probe row per probed position ->
one forward of the subject: finite, and causal at every probed position (else BadInput) -> run the
transform on a deep copy (``timeout`` bounds the whole call) -> the transformed model must return
floating logits of the subject's shape and vocabulary (else ``error``), finite (``non-finite``), causal
at every probed position (``non-causal``) -> compare logits on the test ids, positions after a MoE
near-tie set aside -> within the bound, the subject's positive control decides between ``invariant``
and ``degenerate``; beyond it (``diverged``), every intermediate activation is recorded on the same
inputs to name the first divergent node -> :class:`Verdict`.

Causality.  For ``t`` in ``{1, 2, seq // 2, seq - 1}`` a test row with token ``t`` replaced rides in the
same batch; every position before ``t`` must keep its logits (within the bound, relative to the largest
logit).  This catches a prefix-LM (the first positions see each other) and a look-ahead model (position
``i`` reads token ``i + 2``) that perturbing only the last token cannot; probe rows cost one batch row each.

Positive control (:func:`positive_control`).  A match within the bound proves something only if the
comparison can see a change of the size it calls a failure: the logits must vary across positions and
across the vocabulary, and every parameter unit changed by ``tolerance.control_rel`` of its norm must move
the logits past the bound.  A subject that fails (an infinite ``eps`` or a zero multiplier that kills a
branch, a zero embedding or ``lm_head``: a comparison of zeros) gets ``degenerate`` with the reason and
the figures, never ``invariant``.

First divergent node.  Intermediate activations may legitimately change under a transform (a scaled
norm output, a rotated residual stream), so two activations *match* when they agree up to an
orthogonal change of basis of the feature axis (equal token Gram matrices ``X X^T``, which also covers
zero-padding).  The blamed node is the first one, in execution order, that does not match and from
which a chain of non-matching nodes reaches the logits; its non-matching consumers are listed too.
For a layout the chain follows the layout's dataflow; for an arbitrary module (no graph) the first
non-matching leaf module in execution order is reported.
"""

from __future__ import annotations

import copy
import json
import math
import signal
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable

import networkx as nx
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from fuzz.errors import BadInput, Refusal
from fuzz.layout import Layout
from fuzz.materialize import GraphModel, IndexTopk, Router, materialize

from .outcomes import FAILING, Status  # noqa: F401  (FAILING: re-exported, verifier.FAILING)
from .tolerance import Tolerance, default_tolerance, relative_error
from .transform import Calibration, describe

#: Every verdict status (:class:`~verifier.outcomes.Status`, string-valued); ``invariant`` is the only passing one.
STATUSES = tuple(Status)
# FAILING (the statuses that mean the transform broke something) is defined once, in verifier.outcomes.


@dataclass
class Verdict:
    """The oracle's answer.  ``ok`` is True only for ``status == "invariant"``."""

    status: str
    transform: str
    subject: str
    dtype: str
    max_rel_err: float | None = None
    max_abs_err: float | None = None
    tolerance: dict = field(default_factory=dict)
    first_divergent: dict | None = None  # {"node", "op", "rel", "diverging_consumers"}
    near_ties_set_aside: int = 0  # positions set aside after a MoE top-k near-tie
    precision_note: str = ""  # e.g. the subject downcasts inside its forward, bounding a float64 verdict
    positions_compared: int = 0
    control: dict | None = None  # the positive control's figures (positive_control), run when the logits match
    causality: dict | None = None  # tokens perturbed, largest change before each, subject and transformed
    message: str = ""
    seed: int = 0
    layout_json: str | None = None
    transform_expr: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == Status.INVARIANT

    @property
    def refused(self) -> bool:
        return self.status == Status.REFUSED

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("layout_json")
        return d

    def repro(self) -> str:
        """A self-contained script that rebuilds the subject and the transform and re-runs the check."""
        if self.layout_json is None:
            return f"# subject {self.subject} is a module: rebuild it, then\n# verifier.verify({self.transform}, model)"
        transform = self.transform_expr or f"None  # replace with the transform: {self.transform}"
        dtype = "torch.float64" if self.dtype == "float64" else "torch.float32"
        return (f"import torch\nfrom fuzz import Layout\nfrom verifier import verify\n\n"
                f"layout = Layout.from_json({json.dumps(json.loads(self.layout_json), sort_keys=True)!r})\n"
                f"transform = {transform}\n"
                f"verdict = verify(transform, layout, dtype={dtype}, seed={self.seed})\n"
                f"print(verdict)\nassert verdict.ok, verdict.message\n")

    def __str__(self) -> str:
        err = "" if self.max_rel_err is None else f" rel={self.max_rel_err:.3e} abs={self.max_abs_err:.3e}"
        tol = f" (tol {self.tolerance.get('rel'):.0e} {self.dtype})" if self.tolerance else ""
        where = ""
        if self.first_divergent:
            fd = self.first_divergent
            where = f"; first divergent node {fd['node']!r} ({fd['op']})"
            if fd.get("diverging_consumers"):
                where += f" -> {', '.join(fd['diverging_consumers'])}"
        ties = f"; {self.near_ties_set_aside} near-tie positions set aside" if self.near_ties_set_aside else ""
        ties += f"; note: {self.precision_note}" if self.precision_note else ""
        msg = f": {self.message}" if self.message and self.status != Status.INVARIANT else ""
        return f"[{self.status}] {self.transform} on {self.subject}{err}{tol}{where}{ties}{msg}"


# ---------------------------------------------------------------------------------------------- subject
def _logits(model: nn.Module, ids: torch.Tensor, what: str, grad: bool = False,
            params: dict | None = None, kwargs: dict | None = None, inference: bool = False) -> torch.Tensor:
    """``model(ids)``'s logits (an output's ``.logits``, or the first tensor of a tuple); BadInput naming
    ``what`` when the forward fails or the result is not ``(batch, seq, vocab)``.  ``grad``: keep the
    autograd graph; ``params``: ``{name: tensor}`` used in place of those parameters (functional_call, the
    module itself untouched): the positive control differentiates and steps the subject this way;
    ``kwargs``: passed to the forward (a GraphModel's ``keep`` / ``given``); ``inference`` (without ``grad``):
    under ``torch.inference_mode`` (less dispatch per op; for a reusable GraphModel, whose modules keep no
    tensor of the forward but the routers' margins)."""
    kwargs = kwargs or {}
    try:
        with torch.inference_mode() if inference and not grad else torch.set_grad_enabled(grad):
            out = model(ids, **kwargs) if params is None else \
                torch.func.functional_call(model, params, (ids,), kwargs)
            logits = getattr(out, "logits", out)
    except Exception as exc:  # a forward that crashes is bad input, with context
        raise BadInput(f"{what}: forward on token ids {tuple(ids.shape)} failed: "
                       f"{type(exc).__name__}: {exc}") from exc
    if isinstance(logits, (tuple, list)) and logits and torch.is_tensor(logits[0]):
        logits = logits[0]
    if not torch.is_tensor(logits) or logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(ids.shape):
        shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise BadInput(f"{what} is not a causal LM: token ids {tuple(ids.shape)} gave {shape}, "
                       f"expected logits (batch, seq, vocab)")
    return logits


def _vocab(model: nn.Module) -> int:
    if isinstance(model, GraphModel):
        return model.layout.params(model.layout.source)["vocab"]
    cfg = getattr(model, "config", None)
    vocab = getattr(cfg, "vocab_size", None)
    if vocab is None:
        emb = getattr(model, "get_input_embeddings", lambda: None)()
        vocab = getattr(emb, "num_embeddings", None)
    if vocab is None:
        raise BadInput(f"cannot tell the vocabulary size of {type(model).__name__}: "
                       f"give it a config.vocab_size or get_input_embeddings()")
    return int(vocab)


def _read_unpredicted(test_ids: torch.Tensor, layout: Layout | None, vocab: int) -> None:
    """Put every id the subject reads but never predicts (a layout whose tokens outnumber its logits:
    ``extra_input_id``, Moshi's initial token) into the first test row, in place: a uniform draw over a tiny
    vocabulary may miss them, and what a transform does to their embedding rows shows only where they are read."""
    if layout is None:
        return
    extra = torch.arange(layout.widths[layout.sink], vocab)[: test_ids.shape[1]]
    test_ids[0, : len(extra)] = extra.to(test_ids.device)


def _modules(model: nn.Module) -> list[nn.Module]:
    """``list(model.modules())``, read off the node dict for a GraphModel whose nodes hold no modules (the walk
    of ``nn.Module.modules`` costs more than the forward's smallest ops)."""
    if isinstance(model, GraphModel) and model._modules.keys() == {"nodes"} and isinstance(model.nodes, nn.ModuleDict) \
            and not any(m._modules for m in model.nodes._modules.values()):
        return list(dict.fromkeys([model, model.nodes, *model.nodes._modules.values()]))
    return list(model.modules())


def _tensors(model: nn.Module, buffers: bool = False) -> list[torch.Tensor]:
    """``list(model.parameters())`` (``buffers``: and then ``model.buffers()``), each tensor once, by :func:`_modules`."""
    seen: dict[int, torch.Tensor] = {}
    for kind in ("_parameters", "_buffers") if buffers else ("_parameters",):
        for module in _modules(model):
            for t in getattr(module, kind).values():
                if t is not None:
                    seen.setdefault(id(t), t)
    return list(seen.values())


def _subject(subject, dtype: torch.dtype, seed: int) -> tuple[nn.Module, Layout | None, str]:
    if isinstance(subject, Layout):
        return materialize(subject, dtype=dtype, seed=seed), subject, \
            f"{subject.meta.get('name', 'layout')}:{subject.hash()}"
    if isinstance(subject, nn.Module):
        tensors = [t for t in _tensors(subject, buffers=True) if t.is_floating_point()]
        if all(t.dtype == dtype for t in tensors) and not any(m.training for m in _modules(subject)):
            model = subject  # already what the oracle needs: used read-only, its parameters are never written
        else:
            model = copy.deepcopy(subject).to(dtype).eval()
        layout = subject.layout if isinstance(subject, GraphModel) else None
        return model, layout, type(subject).__name__
    raise BadInput(f"verify() takes a fuzz.Layout or a torch.nn.Module as subject, got {type(subject).__name__}")


WINDOW_MARGIN = 9  # verify at > 2 W + 8 tokens, W the largest sliding window: past W a dropped window shows


def window_length(model: nn.Module, layout: Layout | None, seq: int) -> int:
    """The test length for a subject with sliding windows or chunks: ``max(seq, 2 W + 9)``, ``W`` the largest
    ``window`` / ``chunk`` of the layout's attention nodes, or of a module's config ``sliding_window`` /
    ``attention_chunk_size`` (capped by its
    ``max_position_embeddings``).  Below ``W`` tokens a window masks nothing, so a transform that drops
    or changes it would be invisible at the default length."""
    windows = [layout.params(n)[key] for n in layout.of_op("attention") for key in ("window", "chunk")
               ] if layout is not None else []  # a chunk C (chunked attention) only shows past C tokens too
    config = getattr(model, "config", None)
    for span in (getattr(config, "sliding_window", None), getattr(config, "attention_chunk_size", None)):
        if isinstance(span, int) and not isinstance(span, bool) and span > 0:
            cap = getattr(config, "max_position_embeddings", None)
            windows.append(min(span, max((cap - WINDOW_MARGIN) // 2, 1)) if isinstance(cap, int) else span)
    largest = max((w for w in windows if w is not None), default=None)
    return seq if largest is None else max(seq, 2 * largest + WINDOW_MARGIN)


def _probes(test_ids: torch.Tensor, vocab: int, gen: torch.Generator) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Causality probes: for each ``t`` in ``{1, 2, seq // 2, seq - 1}``, a copy of test row ``i mod batch``
    with token ``t`` replaced by another token.  Returns the test rows followed by the probe rows, and
    ``(row, t)`` per probe.  Position ``t = 0`` has nothing before it; ``seq < 2`` gets no probe."""
    b, s = test_ids.shape
    ts = sorted({t for t in (1, 2, s // 2, s - 1) if 1 <= t < s})
    rows, where = [test_ids], []
    for i, t in enumerate(ts):
        row = test_ids[i % b].clone()
        shift = 1 + int(torch.randint(0, max(vocab - 1, 1), (1,), generator=gen)) if vocab > 1 else 0
        row[t] = (row[t] + shift) % max(vocab, 1)
        rows.append(row[None])
        where.append((i % b, t))
    return torch.cat(rows), where


def _causality(logits: torch.Tensor, batch: int, where: list[tuple[int, int]], mask: torch.Tensor,
               tol: float) -> dict:
    """How much replacing token ``t`` changed the logits at positions before ``t``: the largest change
    relative to ``max|logits|`` of the test rows (positions after a MoE near-tie in either row set aside),
    and ``violation``, the first probe and position where it exceeds ``tol`` (None when causal)."""
    out = {"tokens_perturbed": sorted({t for _, t in where}), "max_rel": 0.0, "violation": None}
    if not where:
        return out
    rows = torch.tensor([r for r, _ in where])
    ts = torch.tensor([t for _, t in where])
    y = logits.detach()
    diff = (y[batch:batch + len(where)].double() - y[rows].double()).abs().amax(-1)  # (probes, seq)
    before = torch.arange(y.shape[1])[None, :] < ts[:, None]
    keep = before & mask[rows] & mask[batch:batch + len(where)]
    scale = y[:batch].double().abs().max().item()
    rel = diff / scale if scale > 0 else torch.where(diff == 0, 0.0, float("inf")).double()
    rel = torch.where(keep, rel, torch.zeros_like(rel))
    out["max_rel"] = rel.max().item()
    bad = torch.nonzero(rel > tol)
    if bad.numel():
        i, p = (int(x) for x in bad[0])
        out["violation"] = {"token": where[i][1], "row": where[i][0], "position": p, "rel": rel[i, p].item()}
    return out


# ---------------------------------------------------------------------------------------------- capture
def _watched(model: nn.Module) -> dict[str, nn.Module]:
    if isinstance(model, GraphModel):
        return dict(model.nodes.items())
    return {n: m for n, m in model.named_modules() if n and not list(m.children())}


@contextmanager
def capture(model: nn.Module):
    """Record ``{name: first tensor output}`` of every watched module, in execution order."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in _watched(model).items():
        def hook(mod, args, out, name=name):
            t = out if torch.is_tensor(out) else next((o for o in out if torch.is_tensor(o)), None) \
                if isinstance(out, (tuple, list)) else getattr(out, "logits", None)
            if torch.is_tensor(t) and t.is_floating_point():
                seen[name] = t.detach()
        handles.append(module.register_forward_hook(hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


class TopkMargins(TorchFunctionMode):
    """Watches a foreign module's forward.  Records, for every ``torch.topk`` (MoE routing), the per-row
    margin between the k-th and (k+1)-th largest value, so a module without a layout still gets near-tie
    detection; and counts casts from float64 down to a lower precision (transformers' RMSNorm computes
    in float32 whatever the model dtype), which bound what a float64 verdict on that module can see."""

    def __init__(self):
        super().__init__()
        self.margins: list[torch.Tensor] = []
        self.downcasts = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.to, torch.Tensor.float, torch.Tensor.type) and args and torch.is_tensor(args[0]) \
                and args[0].dtype == torch.float64:
            out = func(*args, **kwargs)
            if torch.is_tensor(out) and out.is_floating_point() and out.dtype != torch.float64:
                self.downcasts += 1
            return out
        if func in (torch.topk, torch.Tensor.topk) and torch.is_tensor(args[0]) and args[0].is_floating_point():
            x = args[0]
            k = args[1] if len(args) > 1 else kwargs.get("k")
            dim = kwargs.get("dim", args[2] if len(args) > 2 else -1)
            if isinstance(k, int) and k < x.shape[dim]:
                top = torch.sort(x.detach(), dim=dim, descending=True).values
                self.margins.append((top.narrow(dim, k - 1, 1) - top.narrow(dim, k, 1)).squeeze(dim))
        return func(*args, **kwargs)


class _NoRecorder:
    margins: list = []
    downcasts = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def topk_recorder(model: nn.Module):
    """A context manager that collects the MoE routing margins of ``model``'s forward passes (public).

    GraphModels report their router margins themselves (a no-op recorder); foreign modules get their
    ``torch.topk`` calls recorded.  Pass its ``.margins`` to :func:`comparable_positions`.
    """
    return _NoRecorder() if isinstance(model, GraphModel) else TopkMargins()


def _tie_mask(margins: list[torch.Tensor], ids: torch.Tensor, tie_margin: float) -> torch.Tensor:
    """``(batch, seq)`` mask: False from the first near-tie of a row onward (attention carries it forward)."""
    ok = torch.ones(ids.shape, dtype=torch.bool)
    for margin in margins:
        if margin.numel() != ids.numel():
            continue  # a topk that is not per token (not routing)
        tie = (margin.reshape(ids.shape) < tie_margin).cpu()
        ok &= ~(tie.cumsum(dim=1) > 0)
    return ok


def comparable_positions(model: nn.Module, ids: torch.Tensor, tie_margin: float,
                         recorded: list[torch.Tensor]) -> torch.Tensor:
    """``(batch, seq)`` mask of positions that no MoE near-tie can have flipped (public).

    Margins come from a GraphModel's routers (after its last forward) and from ``recorded``, the margins a
    :func:`topk_recorder` collected; a position is dropped from the first margin below ``tie_margin`` in its
    row onward.  The oracle and device parity (``quant.parity``) compare logits only on these positions.
    """
    margins = [m.last_margin for m in _modules(model) if isinstance(m, (Router, IndexTopk))
               and m.last_margin is not None]
    return _tie_mask(margins + recorded, ids, tie_margin)


def _rows(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if t.dim() >= 2 and tuple(t.shape[:2]) == tuple(mask.shape):
        t = t[mask]
    return t.reshape(-1, t.shape[-1]).double() if t.dim() else t.reshape(1, 1).double()


def activation_mismatch(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Relative mismatch of two activations up to an orthogonal change of basis (token Gram matrices)."""
    x, y = _rows(a, mask), _rows(b, mask)
    if x.shape[0] != y.shape[0]:
        return float("inf")
    if x.shape == y.shape:
        direct, _ = relative_error(y, x)
        if direct == 0.0:
            return 0.0
    else:
        direct = float("inf")
    gram, _ = relative_error(y @ y.T, x @ x.T)
    return min(direct, gram)


def _first_divergent(layout: Layout | None, order: list[str], mismatch: dict[str, float], tol: float,
                     ops: dict[str, str]) -> dict | None:
    bad = {n for n, r in mismatch.items() if not r <= tol}
    if not bad:
        return None
    if layout is not None:
        g = layout.graph
        unknown = set(g) - set(mismatch)  # nodes the transformed model no longer has: assume diverged
        sub = g.subgraph(bad | unknown)
        reach = nx.ancestors(sub, layout.sink) | {layout.sink} if layout.sink in sub else set()
        for node in layout.order:
            if node in bad and node in reach:
                consumers = [c for c, _ in layout.consumers(node) if c in reach]
                return {"node": node, "op": layout.op(node), "rel": mismatch[node],
                        "diverging_consumers": consumers}
    node = next(n for n in order if n in bad)
    return {"node": node, "op": ops.get(node, "module"), "rel": mismatch[node], "diverging_consumers": []}


# ---------------------------------------------------------------------------------------------- control
class _Invisible(Exception):
    """A parameter unit whose change the control's forward cannot see (its message says which)."""


CONTROL_MARGIN = 10.0  # a first-order prediction this many times above the bound needs no forward of its own
LINEARITY_BAND = (0.5, 2.0)  # measured / predicted change of the aggregate step: the gradient is trusted
AGGREGATE_CHANGE = 1e-3  # predicted relative change of y_e when a foreign module's units step together
LINEAR_MAX = 1e-2  # the weakest unit's gradient is checked at a step of at most this (float32's 0.5 is not linear)


@dataclass
class _Unit:
    name: str
    params: list
    exempt: str
    size: float = 0.0  # N_j: ||P_j||, or sqrt(numel) for an all-zero unit
    grads: list | None = None  # d y_e / d P_j per tensor
    gnorm: float = 0.0
    first: float | None = None  # first-order relative change of y_e for the full step


def _units(model: nn.Module) -> list[_Unit]:
    """One unit per parameterised node of a GraphModel, per module with parameters of its own otherwise
    (floating parameters only).  A shared (tied) tensor belongs to the first unit that owns it.  A
    GraphModel linear read only by routers that choose (``top_k < n_experts``) is exempt, with the reason
    (with ``top_k = n_experts`` nothing is chosen and the router is checked like any unit)."""
    graph = isinstance(model, GraphModel)
    items = model.nodes.items() if graph else ((n or type(model).__name__, m) for n, m in model.named_modules())
    layout = model.layout if graph else None
    # a router choosing among its experts; a sparsemixer chooses even at top_k = n_experts (each weight a softmax
    # over the scores within its threshold: often exactly 1, the projection acting only through that mask)
    choosing = [r for r in layout.of_op("router") if layout.params(r)["top_k"] < layout.params(r)["n_experts"]
                or layout.params(r).get("score") == "sparsemixer"] if graph else []
    routed = {i for r in choosing for i in layout.inputs(r)}
    # what reaches the logits only through a sparse-attention indexer's top-k (its projections and key norm)
    selecting: set[str] = set()
    if graph and layout.of_op("index_topk"):
        cut = layout.graph.copy()
        cut.remove_nodes_from(layout.of_op("index_topk"))
        feeding = {n for t in layout.of_op("index_topk") for n in nx.ancestors(layout.graph, t)}
        selecting = feeding - nx.ancestors(cut, layout.sink)
    seen: set[int] = set()
    units = []
    for name, module in items:
        params = [p for p in module.parameters(recurse=False) if p.is_floating_point() and id(p) not in seen]
        seen.update(id(p) for p in params)
        if not params:
            continue
        exempt = ""
        if name in routed and layout.op(name) == "linear":
            readers = layout.consumers(name)
            if readers and all(c in choosing for c, _ in readers):
                exempt = ("router projection: it acts through the discrete top-k choice (and weights that "
                          "top-1 renormalisation or a saturated softmax make constant); a dead router makes "
                          "every position a near-tie, which is set aside (inconclusive), never invariant")
        if name in selecting:
            exempt = ("sparse-attention indexer: it acts only through the discrete top-k choice of the keys each "
                      "query reads (index_topk); a step that flips no choice leaves the function unchanged")
        if graph and layout.op(name) == "router":  # its own parameter (a correction bias) acts only on the choice
            exempt = ("router correction bias: it only moves the discrete top-k choice, never the weights; a "
                      "step that flips no choice (or any step, when top_k = n_experts) leaves the function "
                      "unchanged")
        units.append(_Unit(name, params, exempt))
    return units


def _norms(tensors: list[torch.Tensor]) -> list[float]:
    """Euclidean norm of each tensor, in float64, with one conversion to Python (one foreach call where the
    tensors allow it: the same per-tensor kernel)."""
    if not tensors:
        return []
    detached = [t.detach() for t in tensors]
    try:
        norms = torch._foreach_norm(detached, 2, dtype=torch.float64)
    except (RuntimeError, TypeError):  # a mix this torch's foreach does not take
        norms = [torch.linalg.vector_norm(t, dtype=torch.float64) for t in detached]
    return torch.stack(norms).tolist()


def positive_control(model: nn.Module, ids: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor,
                     tol: Tolerance, seed: int = 0, attached: torch.Tensor | None = None,
                     recorded: dict | None = None) -> dict:
    """Show that the comparison can see a change of the size it calls a failure: ``passed`` and ``reason``,
    with the figures (spreads, the entry differentiated, the weakest unit, every measured change).

    ``logits`` are ``model(ids)`` (from the verdict's forward; ``attached``: that forward's output, rows of
    ``ids`` first, still on the autograd graph of the parameters when it could keep it), ``mask`` the
    compared positions,
    ``rho = tol.control_rel``, ``scale = max|y|`` over the compared logits.  The subject passes when

    1. the logits differ across the compared positions, and across the vocabulary at every compared
       position, by more than ``tol.rel / rho`` of ``scale``; otherwise an error of relative size ``rho``
       in whatever depends on the tokens (or on the vocabulary entry) could stay below the bound;
    2. every parameter unit ``P_j`` (:func:`_units`; exempt ones are listed with their reason), stepped by
       ``rho`` of its norm ``N_j``, moves the compared logits by more than ``tol.rel * scale``.

    For 2, one backward pass (through the verdict's own forward, or a forward of row ``b`` up to ``t``)
    gives every unit's first-order change: with ``e = (b, t, v)`` the compared logit of largest magnitude
    at the latest compared position ``t`` and ``g_j = d y_e / d P_j``, the step
    ``rho N_j g_j / ||g_j||`` moves ``y_e`` by ``d_j = rho N_j ||g_j||`` to first order, and
    ``max|dy| >= |dy_e|``.  Real forwards (of that row) then confirm it: the weakest unit (smallest
    ``d_j``) is stepped alone by ``min(rho, LINEAR_MAX)`` with measured / predicted ``dy_e`` inside
    ``LINEARITY_BAND`` (its gradient is right), and by the full step must move the logits past the bound
    (one forward when ``rho <= LINEAR_MAX``, as in float64); a foreign module (which may carry custom
    autograd) also steps all units together along their ``g_j``, sized so the predicted ``dy_e`` is
    ``AGGREGATE_CHANGE * scale``, measured / predicted inside the band.  Every unit whose ``d_j`` is below ``CONTROL_MARGIN * tol.rel * scale`` -- every unit
    when the gradient is unavailable or not confirmed -- is stepped alone by the full step (along ``g_j``,
    or a seeded random direction when ``g_j = 0``) and must move the logits past the bound.

    ``model`` is never written: ``autograd.grad`` (no ``.grad`` accumulated; frozen parameters get
    differentiable aliases) and steps through ``torch.func.functional_call``.  ``recorded``: every node's
    output of that forward (a GraphModel's ``keep``, rows of ``ids`` first); then a stepped forward reruns only
    the stepped nodes and what reads them (``given``: the other nodes' outputs depend on no stepped parameter),
    the weakest unit on row ``b`` whole, its logits up to ``t`` compared as before.
    """
    rho, bound = tol.control_rel, tol.rel
    y = logits.detach().double()
    fig: dict = {"control_rel": rho, "bound": bound, "passed": False, "reason": ""}
    compared = y[mask]
    scale = compared.abs().max().item() if compared.numel() else 0.0

    def fail(reason: str) -> dict:
        fig["reason"] = reason
        return fig

    if not scale > 0:
        return fail("every compared logit is 0: no change can be measured relative to them")
    need = bound / rho
    fig["position_spread"] = (compared - compared[:1]).abs().max().item() / scale
    fig["vocab_spread"] = (compared.max(-1).values - compared.min(-1).values).min().item() / scale
    if compared.shape[0] < 2:
        return fail("a single compared position: nothing shows that positions differ")
    if not fig["position_spread"] > need:
        return fail(f"the logits are the same at every compared position (largest difference "
                    f"{fig['position_spread']:.1e} of max|logit|, need > {need:.0e}): the output does not depend "
                    "on the tokens, so an error in anything that does would not show")
    if not fig["vocab_spread"] > need:
        return fail(f"at some compared position every vocabulary entry has the same logit (spread "
                    f"{fig['vocab_spread']:.1e} of max|logit|, need > {need:.0e})")

    t = int(torch.nonzero(mask.any(0)).flatten().max())
    magnitude = torch.where(mask[:, t, None], y[:, t].abs(), torch.full_like(y[:, t], -1.0))
    b, v = divmod(int(magnitude.argmax()), y.shape[-1])
    fig["entry"] = [b, t, v]
    units = _units(model)
    fig["units"] = len(units)
    fig["exempt"] = {u.name: u.exempt for u in units if u.exempt}
    flat = [p for u in units for p in u.params]
    names = {id(p): n for n, p in model.named_parameters()}  # a tied tensor under its first name
    row = ids[b:b + 1, :t + 1]
    grads, base = None, None
    try:
        if attached is not None and attached.requires_grad:  # the verdict's own forward kept its graph
            grads = torch.autograd.grad(attached[b, t, v], flat, allow_unused=True)
            out = attached[b:b + 1, :t + 1]
        elif all(p.requires_grad for p in flat):  # autograd.grad leaves .grad alone: nothing is written
            out = _logits(model, row, "subject (positive control)", grad=True)
            grads = torch.autograd.grad(out[0, t, v], flat, allow_unused=True)
        else:  # frozen parameters: differentiable aliases in their place
            leaves = {names[id(p)]: p.detach().requires_grad_(True) for p in flat}
            out = _logits(model, row, "subject (positive control)", grad=True, params=leaves)
            grads = torch.autograd.grad(out[0, t, v], list(leaves.values()), allow_unused=True)
        base = out.detach().double()
    except Exception as exc:  # no gradient (a forward that needs no_grad, ...): every unit stepped in a real forward
        grads = None
        fig["gradient_error"] = f"{type(exc).__name__}: {exc}"
    fig["gradient"] = grads is not None
    sizes = _norms(flat)
    gsizes = [0.0] * len(flat) if grads is None else _norms([torch.zeros(()) if g is None else g for g in grads])
    i = 0
    for u in units:
        n = len(u.params)
        u.size = math.sqrt(sum(x * x for x in sizes[i:i + n])) or math.sqrt(sum(p.numel() for p in u.params))
        if grads is not None:
            u.grads = [torch.zeros_like(p) if g is None else g for p, g in zip(u.params, grads[i:i + n])]
            u.gnorm = math.sqrt(sum(x * x for x in gsizes[i:i + n]))
            u.first = rho * u.size * u.gnorm / scale
        i += n
    gen = torch.Generator().manual_seed(seed)

    def step(u: _Unit, fraction: float) -> list[tuple[list, list]]:
        """``fraction * N_j`` along ``g_j`` (or a seeded random direction)."""
        if u.gnorm > 0:
            return [(u.params, [(fraction * u.size / u.gnorm) * g.detach() for g in u.grads])]
        r = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in u.params]
        k = fraction * u.size / math.sqrt(sum(x * x for x in _norms(r)))
        return [(u.params, [(k * x).to(p.dtype) for p, x in zip(u.params, r)])]

    slots: dict[int, list[tuple[str, nn.Module, str]]] = {}  # with ``recorded``: where each parameter sits
    if recorded is not None:
        for node, module in model.nodes.items():
            for key, p in module._parameters.items():
                if p is not None:
                    slots.setdefault(id(p), []).append((node, module, key))  # a tied tensor sits twice

    def given(steps: list[tuple[list, list]], rows: slice) -> dict | None:
        """The recorded outputs (rows ``rows``) that the stepped nodes and their descendants read."""
        changed = {n for params, _ in steps for p in params for n, _, _ in slots.get(id(p), ())}
        if not changed:
            return None
        graph, layout = model.layout.graph, model.layout
        rerun = changed.union(*(nx.descendants(graph, n) for n in changed))
        front = {i for n in rerun for i in layout.inputs(n)} - rerun
        return {"given": {i: recorded[i][rows] for i in front}}

    @torch.no_grad()
    def stepped(steps: list[tuple[list, list]], inputs: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """The logits with ``P + delta`` in place of each stepped parameter (the module is not written: with
        ``recorded``, the node modules' own slots hold ``P + delta`` for the call and ``P`` again after it, as
        ``functional_call`` does); ``rows``: ``inputs`` are ``ids[rows]``, read from ``recorded`` where no step
        reaches."""
        what = "subject (positive control)"
        try:
            if recorded is None or rows is None or any(id(p) not in slots for params, _ in steps for p in params):
                moved = {names[id(p)]: p.detach() + d for params, deltas in steps for p, d in zip(params, deltas)}
                return _logits(model, inputs, what, params=moved).double()
            moved = {id(p): p.detach() + d for params, deltas in steps for p, d in zip(params, deltas)}
            swapped = [(module, key, module._parameters[key]) for i in moved for _, module, key in slots.get(i, ())]
            try:
                for module, key, old in swapped:
                    module._parameters[key] = moved[id(old)]
                return _logits(model, inputs, what, kwargs=given(steps, rows), inference=True).double()
            finally:
                for module, key, old in swapped:
                    module._parameters[key] = old
        except BadInput as exc:
            raise _Invisible(f"the subject cannot be run with a parameter stepped ({exc}), so the control "
                             "cannot show that a change is visible") from exc

    fig["measured"] = {}

    def visible(u: _Unit, out: torch.Tensor, ref: torch.Tensor, keep: torch.Tensor) -> None:
        change = (out - ref).abs()[keep].max().item() / scale
        fig["measured"][u.name] = change
        if not change > bound:
            node = isinstance(model, GraphModel) and u.name in model.layout.graph
            what = f"{u.name} ({model.layout.op(u.name)})" if node else u.name
            raise _Invisible(f"changing {what} by {rho:.0e} of its norm moves the logits by {change:.1e} of "
                             f"max|logit| (bound {bound:.0e}): the test inputs cannot see that parameter, so an "
                             "invariant verdict would say nothing about it")

    scored = [u for u in units if not u.exempt and u.first is not None and u.first > 0]
    trusted, weakest = False, None
    try:
        if scored:  # the weakest unit alone, on the entry's row: its gradient confirmed, then the full step
            weakest = min(scored, key=lambda u: u.first)
            lin = min(rho, LINEAR_MAX)

            def on_row(steps):  # row b up to t; with ``recorded``, row b whole (causal: the same logits up to t)
                if recorded is None:
                    return stepped(steps, row)
                return stepped(steps, ids[b:b + 1], slice(b, b + 1))[:, :t + 1]

            out = on_row(step(weakest, lin))
            ratio = (out[0, t, v] - base[0, t, v]).item() / (weakest.first * lin / rho * scale)
            fig["weakest"] = {"unit": weakest.name, "first_order": weakest.first, "linearity": ratio}
            if lin < rho:
                out = on_row(step(weakest, rho))
            visible(weakest, out, base, mask[b:b + 1, :t + 1])
            fig["weakest"]["measured"] = fig["measured"][weakest.name]
            trusted = LINEARITY_BAND[0] <= ratio <= LINEARITY_BAND[1]
        if trusted and not isinstance(model, GraphModel) and len(scored) > 1:
            # every unit along its g_j at once, sized so that the predicted change of y_e is
            # AGGREGATE_CHANGE * scale: far above float32 rounding, far below any curvature
            small = AGGREGATE_CHANGE * scale / sum(u.size * u.gnorm for u in scored)
            predicted = AGGREGATE_CHANGE * scale
            out = stepped([s for u in scored for s in step(u, small)], row)
            fig["linearity"] = (out[0, t, v] - base[0, t, v]).item() / predicted
            trusted = LINEARITY_BAND[0] <= fig["linearity"] <= LINEARITY_BAND[1]
        fig["gradient_confirmed"] = trusted
        for u in units:  # one unit at a time wherever the first order is not enough
            if u.exempt or u is weakest or (trusted and u.first >= CONTROL_MARGIN * bound):
                continue
            visible(u, stepped(step(u, rho), ids, slice(0, ids.shape[0])), y, mask)
    except _Invisible as exc:
        return fail(str(exc))
    fig["passed"] = True
    return fig


# ---------------------------------------------------------------------------------------------- timeout
class _TimedOut(BaseException):
    """Raised by the deadline (a BaseException: a transform's ``except Exception`` does not swallow it)."""


class _Deadline:
    """``verify``'s time limit.  In the main thread (where ``signal.setitimer`` works) SIGALRM interrupts
    the running Python code after ``seconds``; it cannot interrupt one long C/C++ call (a huge matmul, a
    lock held in native code): it fires when control returns to Python.  A caller's SIGALRM handler and
    running timer are restored (the timer minus the time spent).  Off the main thread no signal can be
    used: the limit is checked between phases, so a phase that ends late still gives ``timeout`` when the
    next one would start, but a hang is not interrupted (run ``verify`` in the main thread or a child
    process for that).  In the main thread, a transform that swallows BaseException (a bare ``except:``)
    is caught by the same check between phases."""

    def __init__(self, seconds: float | None):
        self.seconds, self.phase = seconds, "setup"
        self.hard = (seconds is not None and hasattr(signal, "setitimer")
                     and threading.current_thread() is threading.main_thread())
        self.start = time.monotonic()

    def _fire(self, signum, frame):
        raise _TimedOut(self.phase)

    def __enter__(self):
        self.start = time.monotonic()
        if self.hard:
            self.old_handler = signal.signal(signal.SIGALRM, self._fire)
            self.old_timer = signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        if self.hard:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old_handler)
            left, interval = self.old_timer
            if left > 0:
                signal.setitimer(signal.ITIMER_REAL, max(left - (time.monotonic() - self.start), 1e-3), interval)
        return False

    def enter(self, phase: str) -> None:
        """Start ``phase`` (named in the verdict); off the main thread, check the limit first."""
        if self.seconds is not None and time.monotonic() - self.start > self.seconds:
            raise _TimedOut(self.phase)
        self.phase = phase


# ---------------------------------------------------------------------------------------------- verify
def _left_padding_mask(ids: torch.Tensor, padding: int) -> torch.Tensor:
    """The oracle's padded batch: ``attention_mask`` 0 on the first ``padding`` tokens of every other row (1, 3,
    ...), 1 elsewhere (transformers' left-padding convention)."""
    mask = torch.ones_like(ids)
    mask[1::2, :padding] = 0
    return mask


def _padded_batch(model: nn.Module, out: nn.Module, ids: torch.Tensor, padding: int, tol: Tolerance,
                  ran: tuple = (None, None)) -> dict:
    """The test ids with every other row (1, 3, ...) left-padded by ``padding`` tokens (``attention_mask`` 0):
    subject and transformed model, each called ``model(ids, attention_mask=mask)``, compared at the non-padded
    positions that no MoE near-tie can have flipped.  ``problem``: why it could not run (else ``""``).
    ``ran``: per model, its ``(logits, comparable positions)`` on these rows where the verdict's forward gave
    them already (else None)."""
    seq = ids.shape[1]
    if padding >= seq:
        return {"problem": f"padding={padding} leaves no token in a row of {seq}", "max_rel_err": None}
    mask = _left_padding_mask(ids, padding)
    got = []
    for (module, what), done in zip(((model, "the subject"), (out, "the transformed model")), ran):
        if done is not None:
            got.append(done)
            continue
        try:
            with topk_recorder(module) as tops, torch.no_grad():
                y = module(ids.clone(), attention_mask=mask)
            y = getattr(y, "logits", y)
            y = y[0] if isinstance(y, (tuple, list)) else y
        except Exception as exc:
            return {"problem": f"{what} does not run on a padded batch (attention_mask): {type(exc).__name__}: {exc}",
                    "max_rel_err": None}
        if not torch.is_tensor(y) or tuple(y.shape[:2]) != tuple(ids.shape):
            return {"problem": f"{what} gives no (batch, seq, vocab) logits on a padded batch", "max_rel_err": None}
        got.append((y.detach(), comparable_positions(module, ids, tol.tie_margin, tops.margins)))
    (ref, ok_ref), (new, ok_new) = got
    keep = mask.bool() & ok_ref & ok_new
    rel, _ = relative_error(new[keep], ref[keep]) if keep.any() else (0.0, 0.0)
    return {"problem": "", "padding": padding, "rows_padded": int((mask == 0).any(1).sum()),
            "positions_compared": int(keep.sum()), "max_rel_err": rel}


def mask_padding(layout: Layout | None, seq: int) -> int:
    """The left padding the oracle runs by itself (``0``: none): a third of the test rows' length where the
    subject has learned positions that follow the ``attention_mask`` (``position_embedding`` with
    ``from_mask``, OPT), which equal plain positions on every unpadded batch; so a transform that lost the
    mode shows on a padded batch only."""
    if layout is None or not any(layout.params(n).get("from_mask") for n in layout.of_op("position_embedding")):
        return 0
    return max(1, seq // 3)


def _padded_first_divergent(model: nn.Module, out: nn.Module, ids: torch.Tensor, padding: int,
                            layout: Layout | None, tol: Tolerance) -> dict | None:
    """The first divergent node on :func:`_padded_batch`'s padded batch (activations compared at the
    non-padded positions); ``None`` when the activations cannot be recorded there."""
    mask = _left_padding_mask(ids, padding)
    try:
        with capture(model) as ref_acts, torch.no_grad():
            model(ids.clone(), attention_mask=mask)
        with capture(out) as new_acts, torch.no_grad():
            out(ids.clone(), attention_mask=mask)
    except Exception:  # noqa: BLE001  (the divergence stands, unlocated)
        return None
    keep = mask.bool()
    mismatch = {n: activation_mismatch(ref_acts[n], new_acts[n], keep) for n in ref_acts if n in new_acts}
    ops = {n: layout.op(n) for n in layout.order} if layout is not None else {}
    return _first_divergent(layout, list(ref_acts), mismatch, tol.node_rel, ops)


def _check_logits(logits: torch.Tensor, ids: torch.Tensor, vocab: int) -> str:
    """Why ``logits`` (of the transformed model) cannot be compared with the subject's, or ''."""
    want = (*ids.shape, vocab)
    if not logits.is_floating_point():
        return f"the transformed model gives {logits.dtype} logits, expected floating point"
    if logits.device != ids.device:
        return f"the transformed model gives logits on device {logits.device}, the subject's are on {ids.device}"
    if tuple(logits.shape) != want:
        other = (f" (vocabulary {logits.shape[-1]} instead of {vocab})"
                 if logits.dim() == 3 and tuple(logits.shape[:2]) == tuple(ids.shape) else "")
        return f"the transformed model gives logits of shape {tuple(logits.shape)}, expected {want}{other}"
    return ""


def verify(transform: Callable[[nn.Module, Calibration], nn.Module], subject, *,
           dtype: torch.dtype = torch.float64, seed: int = 0, batch: int = 4, seq: int = 12,
           calib_batch: int = 4, tolerance: Tolerance | None = None, timeout: float | None = None,
           padding: int = 0) -> Verdict:
    """Decide whether ``transform`` preserves the function of ``subject`` (a Layout or a causal-LM module).

    Bad input (a malformed subject, a module that is not a causal LM: non-causal at any probed position,
    prefix-LM and look-ahead models included) raises :class:`~fuzz.errors.BadInput`; everything about the
    transform is reported in the verdict (see ``STATUSES``).  ``invariant`` needs the subject's positive
    control (:func:`positive_control`) to pass, ``degenerate`` otherwise.  ``timeout`` (seconds) bounds the
    whole call (see :class:`_Deadline` for what it can interrupt); running out gives status ``timeout``
    naming the phase.  ``padding > 0``: once the logits match, the test rows run again with every other row
    left-padded by ``padding`` tokens (an ``attention_mask``, transformers' convention) through the subject
    and the transformed model, compared at the non-padded positions only (:func:`_padded_batch`).
    ``padding=0`` on a subject whose learned positions follow the mask runs one anyway (:func:`mask_padding`).
    """
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise BadInput(f"verify(padding=...) must be an integer >= 0, got {padding!r}")
    for key, value in (("batch", batch), ("seq", seq), ("calib_batch", calib_batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInput(f"verify({key}=...) must be an integer >= 1, got {value!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not 0 < timeout < float("inf")):
        raise BadInput(f"verify(timeout=...) must be a finite number of seconds > 0 or None, got {timeout!r}")
    tol = tolerance or default_tolerance(dtype)
    tname, texpr = describe(transform)
    state: dict = {"verdict": Verdict(status=Status.TIMEOUT, transform=tname, subject=type(subject).__name__,
                                      dtype=str(dtype).removeprefix("torch."), tolerance=tol.to_dict(),
                                      seed=seed, transform_expr=texpr)}
    deadline = _Deadline(timeout)
    try:
        with deadline:
            return _verify(transform, subject, dtype, seed, batch, seq, calib_batch, tol, deadline, state, padding)
    except _TimedOut as exc:
        verdict = state["verdict"]
        verdict.status = Status.TIMEOUT
        verdict.max_rel_err = verdict.max_abs_err = None
        verdict.message = f"verify ran out of its {timeout:g} s limit during the {exc.args[0]}"
        return verdict


def _verify(transform, subject, dtype, seed, batch, seq, calib_batch, tol, deadline, state, padding=0) -> Verdict:
    deadline.enter("subject materialization")
    model, layout, subject_name = _subject(subject, dtype, seed)
    seq = window_length(model, layout, seq)  # longer than every sliding window, or a dropped one hides
    padding = padding or mask_padding(layout, seq)  # positions that follow the mask show on padding only
    vocab = _vocab(model)
    gen = torch.Generator().manual_seed(seed)
    calib_ids = torch.randint(0, vocab, (calib_batch, seq), generator=gen)
    test_ids = torch.randint(0, vocab, (batch, seq), generator=gen)  # disjoint draw from calibration
    _read_unpredicted(test_ids, layout, vocab)
    all_ids, where = _probes(test_ids, vocab, gen)  # test rows, then one causality probe row per position
    verdict = Verdict(status=Status.ERROR, transform=state["verdict"].transform, subject=subject_name,
                      dtype=str(dtype).removeprefix("torch."), tolerance=tol.to_dict(), seed=seed,
                      layout_json=layout.to_json(indent=None) if layout is not None else None,
                      transform_expr=state["verdict"].transform_expr)
    state["verdict"] = verdict
    work = copy.deepcopy(model)  # the transform's copy

    deadline.enter("subject forward")
    trainable = all(p.requires_grad for p in _tensors(model) if p.is_floating_point())
    # a GraphModel keeps every node's output: the positive control's stepped forwards rerun only what a step changes
    recorded = {} if isinstance(model, GraphModel) and model.reusable() else None
    # such a subject (and a transformed model that is one too) runs the padded batch's rows in the verdict's own
    # forward, after the test and probe rows with an attention_mask of ones there (the same function: a GraphModel's
    # masks change nothing on an unpadded row); they are compared only where the padded batch would be
    merged = bool(padding) and padding < seq and recorded is not None
    n_all = all_ids.shape[0]
    run_ids = torch.cat([all_ids, test_ids]) if merged else all_ids
    run_mask = torch.cat([torch.ones_like(all_ids), _left_padding_mask(test_ids, padding)]) if merged else None

    def subject_forward(grad: bool, padded: bool) -> torch.Tensor:
        kwargs = {} if recorded is None else {"keep": recorded}
        if padded:
            kwargs["attention_mask"] = run_mask
        return _logits(model, (run_ids if padded else all_ids).clone(), f"subject {subject_name}", grad=grad,
                       kwargs=kwargs)

    # with the autograd graph when it costs nothing to ask: the positive control differentiates it
    attempts = list(dict.fromkeys([(trainable, merged), (False, merged), (trainable, False), (False, False)]))
    with topk_recorder(model) as ref_topk:  # activations are captured only if the logits diverge
        for i, (grad, padded) in enumerate(attempts):
            if recorded is not None:
                recorded.clear()
            try:
                attached = subject_forward(grad, padded)
                merged = padded
                break
            except BadInput:
                if i == len(attempts) - 1:
                    raise
    ref_pad = None  # the padded batch's subject rows (logits, comparable positions) when merged
    if merged:
        ok_run = comparable_positions(model, run_ids, tol.tie_margin, ref_topk.margins)
        ref_pad = (attached[n_all:].detach(), ok_run[n_all:])
        attached = attached[:n_all]
    ref_all = attached.detach()
    ref = ref_all[:batch]
    if not torch.isfinite(ref_all).all():
        raise BadInput(f"subject {subject_name} gives non-finite logits before any transform")
    mask_all = ok_run[:n_all] if merged else comparable_positions(model, all_ids, tol.tie_margin, ref_topk.margins)
    causal = _causality(ref_all, batch, where, mask_all, tol.rel)
    verdict.causality = {"tokens_perturbed": causal["tokens_perturbed"], "subject_max_rel": causal["max_rel"]}
    if causal["violation"] is not None:
        c = causal["violation"]
        raise BadInput(f"subject {subject_name} is not causal: replacing token {c['token']} of a test row changed "
                       f"the logits at position {c['position']} by {c['rel']:.2e} relative (bound {tol.rel:.0e}); "
                       "the oracle proves causal LMs only (prefix-LM and look-ahead models are refused)")
    if dtype == torch.float64 and ref_topk.downcasts:
        verdict.precision_note = (f"the subject casts float64 activations to a lower precision {ref_topk.downcasts} "
                                  "times per forward (e.g. transformers' float32 RMSNorm): differences below that "
                                  "precision are invisible to this verdict; verify the imported GraphModel "
                                  "(fuzz.importer.import_model) for a float64 proof")

    deadline.enter("transform")
    try:
        out = transform(work, Calibration(calib_ids, seed))
    except Refusal as exc:
        verdict.status, verdict.message = Status.REFUSED, str(exc)
        return verdict
    except Exception as exc:
        verdict.status = Status.ERROR
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        verdict.message = (f"transform raised {type(exc).__name__}: {exc} "
                           f"(at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} in {frame.name})")
        return verdict
    if not isinstance(out, nn.Module):
        verdict.message = f"transform returned {type(out).__name__}, expected the transformed nn.Module"
        return verdict

    deadline.enter("transformed forward")
    new_pad = None  # the padded batch's transformed rows, when they ride this forward
    plain = isinstance(out, GraphModel) and out.reusable()
    if merged and plain:
        try:
            new_run = _logits(out, run_ids.clone(), "transformed model", kwargs={"attention_mask": run_mask},
                              inference=True)
            if not _check_logits(new_run, run_ids, ref_all.shape[-1]):
                ok_new = comparable_positions(out, run_ids, tol.tie_margin, [])
                new_pad = (new_run[n_all:].detach(), ok_new[n_all:])
                new_run, ok_new = new_run[:n_all].detach(), ok_new[:n_all]
        except Exception:  # noqa: BLE001  (the unpadded forward below decides what the model does)
            new_pad = None
    try:
        with topk_recorder(out) as new_topk:
            new_all = _logits(out, all_ids.clone(), "transformed model", inference=plain) if new_pad is None \
                else new_run
        problem = _check_logits(new_all, all_ids, ref_all.shape[-1])  # the subject's logits' vocabulary
        if not problem:
            new_all = new_all.detach()
            finite = bool(torch.isfinite(new_all).all())
            mask_all = mask_all & (comparable_positions(out, all_ids, tol.tie_margin, new_topk.margins)
                                   if new_pad is None else ok_new)
    except BadInput as exc:
        problem = str(exc)
    except Exception as exc:  # the transformed model's own machinery (hooks, routers) failed
        problem = f"the transformed model failed: {type(exc).__name__}: {exc}"
    if problem:
        verdict.message = problem
        return verdict
    if not finite:
        verdict.status, verdict.message = Status.NON_FINITE, "the transformed model gives NaN or Inf logits"
        return verdict
    new = new_all[:batch]
    mask = mask_all[:batch]
    verdict.near_ties_set_aside = int((~mask).sum())
    verdict.positions_compared = int(mask.sum())
    after = _causality(new_all, batch, where, mask_all, tol.rel)
    verdict.causality["transformed_max_rel"] = after["max_rel"]
    if after["violation"] is not None:
        c = after["violation"]
        verdict.status = Status.NON_CAUSAL
        verdict.message = (f"the transformed model is not causal: replacing token {c['token']} changed its logits "
                           f"at position {c['position']} by {c['rel']:.2e} relative (bound {tol.rel:.0e}); "
                           "the subject is causal")
        return verdict
    if verdict.positions_compared == 0:
        verdict.status = Status.INCONCLUSIVE
        verdict.message = "every test position follows a MoE top-k near-tie; nothing left to compare"
        return verdict
    rel, abs_ = relative_error(new[mask], ref[mask])
    verdict.max_rel_err, verdict.max_abs_err = rel, abs_
    if rel <= tol.rel:
        deadline.enter("positive control")
        verdict.control = positive_control(model, test_ids, ref, mask, tol, seed, attached, recorded)
        if verdict.control["passed"] and padding:
            deadline.enter("padded batch")
            padded = _padded_batch(model, out, test_ids, padding, tol, (ref_pad, new_pad))
            verdict.control["padded"] = padded
            if padded["problem"]:
                verdict.status, verdict.message = Status.ERROR, padded["problem"]
                return verdict
            if not padded["max_rel_err"] <= tol.rel:
                verdict.status = Status.DIVERGED
                verdict.max_rel_err = padded["max_rel_err"]
                verdict.message = (f"on a left-padded batch (attention_mask, {padding} padding tokens in every other "
                                   f"row) the logits at the non-padded positions differ by "
                                   f"{padded['max_rel_err']:.3e} relative (bound {tol.rel:.0e})")
                deadline.enter("first divergent node")
                verdict.first_divergent = _padded_first_divergent(model, out, test_ids, padding, layout, tol)
                return verdict
        if verdict.control["passed"]:
            verdict.status = Status.INVARIANT
        else:
            verdict.status = Status.DEGENERATE
            verdict.message = ("the logits match, but the subject fails its positive control, so the match proves "
                               f"nothing: {verdict.control['reason']}")
        return verdict
    verdict.status = Status.DIVERGED
    verdict.message = f"logits differ by {rel:.3e} relative (bound {tol.rel:.0e})"
    deadline.enter("first divergent node")
    with capture(model) as ref_acts:  # the same inputs again, now recording every activation
        _logits(model, all_ids, f"subject {subject_name}")
    try:
        with capture(out) as new_acts:
            _logits(out, all_ids.clone(), "transformed model")
    except BadInput as exc:  # a forward that worked once and fails now: the divergence stands, unlocated
        verdict.message += f"; activations could not be recorded: {exc}"
        return verdict
    mismatch = {n: activation_mismatch(ref_acts[n], new_acts[n], mask_all) for n in ref_acts if n in new_acts}
    ops = {n: layout.op(n) for n in layout.order} if layout is not None else {}
    verdict.first_divergent = _first_divergent(layout, list(ref_acts), mismatch, tol.node_rel, ops)
    return verdict
