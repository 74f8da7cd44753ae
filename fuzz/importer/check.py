"""The import check (:func:`check_import`): does the GraphModel compute what the source model computes?

The recording ids, then batch-2 ids at several lengths (:func:`check_lengths`): 24 and 64 tokens and ``2 W + 8`` for the largest span ``W`` any window / chunk /
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
(their count and the torch calls), ``spans`` (the config fields read), ``padded`` (:func:`check_padding`: one
left-padded batch through the source's own ``attention_mask`` handling, compared at the non-padded positions
within the same bound; ``source_nonfinite`` when the source's NaN padded rows had to be set aside).
A refusal (:class:`BadInput`) names the length at which the logits part and where the graph parts from the source
(:mod:`fuzz.importer.divergence`).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import BadInput
from ..materialize import GraphModel
from ..record import _tensors, device_of, evaluating
from .divergence import first_divergent, limited_span
from .logits import checked_source_logits, graph_logits, numerics_policy, relative_error

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}
FLOAT32_EPS = torch.finfo(torch.float32).eps  # 2^-23 = 1.19e-7
FLOAT32_FACTOR = 16.0  # the float32 floor is FLOAT32_FACTOR * FLOAT32_EPS * sqrt(attention nodes); see the docstring
CHECK_LENGTHS = (24, 64)
CHECK_BATCH = 2
SPAN_MARGIN = 8
_SPAN_FIELD = re.compile(r"window|chunk|local|span", re.IGNORECASE)
_MAX_POSITIONS = ("max_position_embeddings", "n_positions", "max_seq_len", "max_sequence_length", "seq_length")


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
        wants = [checked_source_logits(model, x) for x in batches]
    downcasts = sum(counter.downcasts.values())
    computes_float32 = dtype == torch.float64 and downcasts + counter.float32_ops > 0
    # the policy the source's own numerics suggest first; the other only if the first is not exact
    policies = ("transformers", "exact") if downcasts + counter.float32_ops else ("exact", "transformers")
    rows: list[dict[str, float]] = [{} for _ in batches]
    for policy in policies:
        for row, x, want in zip(rows, batches, wants):
            row[policy] = relative_error(graph_logits(graph_model, x, policy), want)
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
        return {**record_, "floor": "exact", "bound": tol,
                "padded": check_padding(model, graph_model, best, tol, lengths[0], vocab)}
    if computes_float32 and worst[best] <= floor_bound:
        return {**record_, "floor": "float32", "bound": floor_bound,
                "padded": check_padding(model, graph_model, best, floor_bound, lengths[0], vocab)}
    refuse_import(model, graph_model, batches, rows, best, bound, computes_float32)


PAD = 7  # left-padding tokens of the second row of the padded batch


def check_padding(model: nn.Module, graph_model: GraphModel, policy: str, bound: float, length: int,
                  vocab: int) -> dict | None:
    """One left-padded batch (2 rows of ``length`` ids, the second padded by ``PAD``) through the source's own
    ``attention_mask`` handling and ``GraphModel.forward(ids, attention_mask)``: the logits must agree at every
    non-padded position within ``bound`` (else :class:`BadInput`).  ``None`` when the source takes no
    ``attention_mask`` (not a transformers model) or the batch is too short to pad.

    A padded query of a left-padded row sees padded keys only: a fully masked softmax row.  Some sources make
    it NaN (transformers' eager attention of a float64 model, Gemma2's among them: the mask's float64 minimum
    overflows to ``-inf`` in the float32 softmax), and the NaN reaches the row's real tokens through their
    zero attention weights on the padded keys (``0 * NaN``).  Then (:func:`padded_source_logits`) the source
    runs again with the non-finite values of its padded positions set to 0 at every module output: the real
    tokens read them with weight 0 only, so their logits are the source's own unless the source's mask lets
    them read padded keys, which the comparison then shows.  Recorded as ``source_nonfinite``; a source that
    stays non-finite at a real token is refused as such."""
    batch = padded_batch(graph_model, length, vocab)
    if batch is None:
        return None
    ids, mask = batch
    keep = mask.bool()
    name = type(model).__name__
    try:
        want = masked_source_logits(model, ids, mask)
    except TypeError:
        return None
    except (RuntimeError, ValueError, IndexError) as exc:  # the source's own attention_mask path fails
        raise BadInput(f"{name}: the source itself fails on a padded batch (its own attention_mask handling of left "
                       f"padding by {PAD} tokens raises {type(exc).__name__}: {str(exc)[:200]}); its padding "
                       f"cannot be checked") from exc
    batch = f"left padding of {PAD} tokens in a {tuple(ids.shape)} batch"
    record_ = {"shape": list(ids.shape), "left_padding": PAD}
    if not bool(torch.isfinite(want[keep]).all()):
        want, zeroed = padded_source_logits(model, ids, mask)
        record_["source_nonfinite"] = {"modules": zeroed[:4], "count": len(zeroed)}
        bad = int((~torch.isfinite(want[keep])).any(-1).sum()) if want.dim() == 3 else None
        if bad is None or bad:
            raise BadInput(f"{name}: the source itself is not finite on a padded batch: its own attention_mask "
                           f"handling ({batch}) yields non-finite logits at {bad if bad else 'some'} of "
                           f"{int(keep.sum())} non-padded positions, even with the non-finite values of its "
                           f"padded positions set to 0 at every module output ({', '.join(zeroed[:4]) or 'none'}"
                           f"{', ...' if len(zeroed) > 4 else ''}); its padding cannot be checked")
    with numerics_policy(graph_model, policy), torch.no_grad():
        got = graph_model(ids, attention_mask=mask)
    err = relative_error(got[keep], want[keep])
    record_["max_rel_err"] = err
    if not err <= bound:
        graph = "" if bool(torch.isfinite(got[keep]).all()) else "; the graph's logits are not finite there"
        why = "(a padding mask the layout's attention cannot express)"
        raise BadInput(f"{name}: the import is not exact on a padded batch: the source's own "
                       f"attention_mask handling ({batch}) and the graph's padding mask differ by {err:.3g} > "
                       f"{bound:.3g} at the non-padded positions{graph} {why}")
    return record_


def padded_batch(graph_model: GraphModel, length: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(ids, attention_mask)``: ``CHECK_BATCH`` rows of ``length`` fixed ids, the second left-padded by
    ``PAD`` (mask 0), on the graph's device; ``None`` when ``length`` leaves no room to pad."""
    if length <= PAD + 1:
        return None
    ids = torch.randint(0, vocab, (CHECK_BATCH, length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :PAD] = 0
    device = device_of(graph_model)
    return ids.to(device), mask.to(device)


def padded_source_logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list]:
    """The source's logits on the padded batch with every non-finite value at a padded position of a module's
    ``(batch, seq, ...)`` output set to 0, and the names of the modules whose outputs had one (their order
    of completion: the first is where the padded positions turn non-finite)."""
    padded = ~mask.bool()
    zeroed: list[str] = []

    def clean(t, name):
        if not (torch.is_tensor(t) and t.is_floating_point() and t.dim() >= 3 and t.shape[:2] == padded.shape):
            return t
        bad = ~torch.isfinite(t) & padded.reshape(*padded.shape, *(1,) * (t.dim() - 2))
        if not bool(bad.any()):
            return t
        if name not in zeroed:
            zeroed.append(name)
        return t.masked_fill(bad, 0)

    def hook(module, args, out, name):
        if not isinstance(out, (tuple, list)):
            return clean(out, name)
        items = [clean(t, name) for t in out]
        if all(a is b for a, b in zip(items, out)):
            return None
        return type(out)(*items) if hasattr(out, "_fields") else type(out)(items)

    handles = [m.register_forward_hook(lambda mod, a, o, n=n: hook(mod, a, o, n))
               for n, m in model.named_modules() if m is not model]
    try:
        want = masked_source_logits(model, ids, mask)
    finally:
        for h in handles:
            h.remove()
    return want, zeroed


def masked_source_logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The source's logits on a padded batch (transformers' ``attention_mask``; a GraphModel source takes it
    too); TypeError if it takes none."""
    with evaluating(model):
        out = model(ids, attention_mask=mask) if isinstance(model, GraphModel) else \
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    return out.logits if hasattr(out, "logits") else out[0] if isinstance(out, (tuple, list)) else out


def refuse_import(model, graph_model, batches, rows, best, bound, computes_float32) -> None:
    """The refusal: where the logits part, the first divergent node, and a limited span if measured."""
    name = type(model).__name__
    k = next(i for i, row in enumerate(rows) if row[best] > bound)
    x = batches[k]
    found = ", ".join(f"{err:.3g} (numerics={policy!r})" for policy, err in rows[k].items())
    floor = (f"the float32 floor {FLOAT32_FACTOR:g} eps32 sqrt(layers): the source computes parts in float32"
             if computes_float32 else "the exact bound for this dtype")
    where = first_divergent(model, graph_model, x, best, bound)
    span = "" if "sliding window" in where else limited_span(model, graph_model, batches[-1], best)
    raise BadInput(f"{name}: the import is not exact: max|a-b|/max|b| = {found} > {bound:.3g} "
                   f"({graph_model.dtype}, {floor}) at {tuple(x.shape)} token ids; the recorded graph does not "
                   f"compute what the model computes: {where}{span}")
