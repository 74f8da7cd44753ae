"""The invariance oracle: does ``transform`` preserve the function of ``subject``?

Walk: build the subject in the oracle dtype (a :class:`~fuzz.Layout` is materialized; a module is
deep-copied and cast) -> check it is a causal LM -> draw calibration ids and, separately, test ids
-> run the transform on a private copy -> compare logits on the test ids, positions after a MoE
near-tie set aside -> on divergence, compare every intermediate activation to name the first divergent
node -> :class:`Verdict`.

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
from fuzz.materialize import GraphModel, Router, materialize

from .tolerance import Tolerance, default_tolerance, relative_error
from .transform import Calibration, describe

#: Every verdict status (plain strings).  ``invariant`` is the only passing one.
#:
#: * ``invariant``    -- same function within the tolerance, and the subject passed its positive control
#: * ``diverged``     -- the transformed logits differ by more than the tolerance
#: * ``refused``      -- the transform raised :class:`~fuzz.errors.Refusal` (honest, not a failure)
#: * ``error``        -- the transform raised, returned something that is not a causal LM of the same
#:                      vocabulary, or the transformed forward raised
#: * ``non-finite``   -- the transformed model gives NaN or Inf logits
#: * ``non-causal``   -- the transformed model lets a position read a later token (the subject does not)
#: * ``timeout``      -- ``verify(..., timeout=s)`` ran out of time (a hang counts against the transform)
#: * ``inconclusive`` -- every test position follows a MoE top-k near-tie: nothing left to compare
#: * ``degenerate``   -- the logits would have matched, but the subject fails its positive control (a
#:                      weight whose change the test inputs cannot see, or logits equal across positions or
#:                      vocabulary): the comparison would prove nothing, so no ``invariant`` is given
STATUSES = ("invariant", "diverged", "refused", "error", "non-finite", "non-causal", "timeout",
            "inconclusive", "degenerate")
#: The statuses that mean the transform broke something (a campaign failure, a corpus finding).
#: ``refused``, ``inconclusive`` and ``degenerate`` are not: they say nothing was proven either way.
FAILING = ("diverged", "error", "non-finite", "non-causal", "timeout")


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
    message: str = ""
    seed: int = 0
    layout_json: str | None = None
    transform_expr: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "invariant"

    @property
    def refused(self) -> bool:
        return self.status == "refused"

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
        msg = f": {self.message}" if self.message and self.status != "invariant" else ""
        return f"[{self.status}] {self.transform} on {self.subject}{err}{tol}{where}{ties}{msg}"


# ---------------------------------------------------------------------------------------------- subject
def _logits(model: nn.Module, ids: torch.Tensor, what: str) -> torch.Tensor:
    try:
        with torch.no_grad():
            out = model(ids)
    except Exception as exc:  # a forward that crashes is bad input, with context
        raise BadInput(f"{what}: forward on token ids {tuple(ids.shape)} failed: "
                       f"{type(exc).__name__}: {exc}") from exc
    logits = getattr(out, "logits", out)
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


def _subject(subject, dtype: torch.dtype, seed: int) -> tuple[nn.Module, Layout | None, str]:
    if isinstance(subject, Layout):
        return materialize(subject, dtype=dtype, seed=seed), subject, \
            f"{subject.meta.get('name', 'layout')}:{subject.hash()}"
    if isinstance(subject, nn.Module):
        model = copy.deepcopy(subject).to(dtype).eval()
        layout = subject.layout if isinstance(subject, GraphModel) else None
        return model, layout, type(subject).__name__
    raise BadInput(f"verify() takes a fuzz.Layout or a torch.nn.Module as subject, got {type(subject).__name__}")


def _check_causal(model: nn.Module, ids: torch.Tensor, logits: torch.Tensor, what: str, tol: float) -> None:
    """Logits at position t must not depend on tokens after t (up to rounding: batch shapes change)."""
    if ids.shape[1] < 2:
        return
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % _vocab(model)
    other = _logits(model, changed, what)
    rel, _ = relative_error(other[:, :-1], logits[:, :-1])
    if rel > tol:
        raise BadInput(f"{what} is not causal: changing the last token changed earlier logits "
                       f"by {rel:.2e} relative")


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


def _topk_recorder(model: nn.Module):
    """GraphModels report their router margins themselves; foreign modules get their topk calls recorded."""
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


def _comparable(model: nn.Module, ids: torch.Tensor, tie_margin: float, recorded: list[torch.Tensor]) -> torch.Tensor:
    """Positions that no MoE near-tie can have flipped, from a GraphModel's routers or recorded topk calls."""
    margins = [m.last_margin for m in model.modules() if isinstance(m, Router) and m.last_margin is not None]
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


# ---------------------------------------------------------------------------------------------- verify
def verify(transform: Callable[[nn.Module, Calibration], nn.Module], subject, *,
           dtype: torch.dtype = torch.float64, seed: int = 0, batch: int = 4, seq: int = 12,
           calib_batch: int = 4, tolerance: Tolerance | None = None) -> Verdict:
    """Decide whether ``transform`` preserves the function of ``subject`` (a Layout or a causal-LM module).

    Bad input (a malformed subject, a module that is not a causal LM) raises
    :class:`~fuzz.errors.BadInput`; everything about the transform is reported in the verdict.
    """
    tol = tolerance or default_tolerance(dtype)
    model, layout, subject_name = _subject(subject, dtype, seed)
    tname, texpr = describe(transform)
    vocab = _vocab(model)
    gen = torch.Generator().manual_seed(seed)
    calib_ids = torch.randint(0, vocab, (calib_batch, seq), generator=gen)
    test_ids = torch.randint(0, vocab, (batch, seq), generator=gen)  # disjoint draw from calibration
    verdict = Verdict(status="error", transform=tname, subject=subject_name,
                      dtype=str(dtype).removeprefix("torch."), tolerance=tol.to_dict(), seed=seed,
                      layout_json=layout.to_json(indent=None) if layout is not None else None,
                      transform_expr=texpr)

    with capture(model) as ref_acts, _topk_recorder(model) as ref_topk:
        ref = _logits(model, test_ids, f"subject {subject_name}")
    if not torch.isfinite(ref).all():
        raise BadInput(f"subject {subject_name} gives non-finite logits before any transform")
    if not isinstance(model, GraphModel):  # a GraphModel is causal by construction (masked attention only)
        _check_causal(model, test_ids, ref, f"subject {subject_name}", tol.rel)
    mask = _comparable(model, test_ids, tol.tie_margin, ref_topk.margins)
    if dtype == torch.float64 and ref_topk.downcasts:
        verdict.precision_note = (f"the subject casts float64 activations to a lower precision {ref_topk.downcasts} "
                                  "times per forward (e.g. transformers' float32 RMSNorm): differences below that "
                                  "precision are invisible to this verdict; verify the imported GraphModel "
                                  "(fuzz.importer.import_model) for a float64 proof")

    work = copy.deepcopy(model)
    try:
        out = transform(work, Calibration(calib_ids, seed))
    except Refusal as exc:
        verdict.status, verdict.message = "refused", str(exc)
        return verdict
    except Exception as exc:
        verdict.status = "error"
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        verdict.message = (f"transform raised {type(exc).__name__}: {exc} "
                           f"(at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} in {frame.name})")
        return verdict
    if not isinstance(out, nn.Module):
        verdict.message = f"transform returned {type(out).__name__}, expected the transformed nn.Module"
        return verdict

    try:
        with capture(out) as new_acts, _topk_recorder(out) as new_topk:
            new = _logits(out, test_ids, "transformed model")
    except BadInput as exc:
        verdict.message = str(exc)
        return verdict
    if not torch.isfinite(new).all():
        verdict.status, verdict.message = "non-finite", "the transformed model gives NaN or Inf logits"
        return verdict
    mask &= _comparable(out, test_ids, tol.tie_margin, new_topk.margins)
    verdict.near_ties_set_aside = int((~mask).sum())
    verdict.positions_compared = int(mask.sum())
    if verdict.positions_compared == 0:
        verdict.status = "inconclusive"
        verdict.message = "every test position follows a MoE top-k near-tie; nothing left to compare"
        return verdict
    rel, abs_ = relative_error(new[mask], ref[mask])
    verdict.max_rel_err, verdict.max_abs_err = rel, abs_
    if rel <= tol.rel:
        verdict.status = "invariant"
        return verdict
    verdict.status = "diverged"
    verdict.message = f"logits differ by {rel:.3e} relative (bound {tol.rel:.0e})"
    mismatch = {n: activation_mismatch(ref_acts[n], new_acts[n], mask) for n in ref_acts if n in new_acts}
    ops = {n: layout.op(n) for n in layout.order} if layout is not None else {}
    verdict.first_divergent = _first_divergent(layout, list(ref_acts), mismatch, tol.node_rel, ops)
    return verdict
