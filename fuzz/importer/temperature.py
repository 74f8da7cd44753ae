"""Attention temperature tuning, measured from the recording (Ministral3 / Mistral4 ``llama_4_scaling_beta``,
Llama-4 ``attn_temperature_tuning``): the queries times one number per position, ``t_p = 1 + beta log(1 +
floor((p + o) / L))``, right before the attention reads them.

The recorder keeps the whole per-position table of such a product (``const_rows``: one row per recorded
position, :func:`fuzz.record.recorder._position_rows`).  :func:`measure` reads ``L``, ``o`` and ``beta`` off
it: the table is 1 up to its first step at ``p = L - o``, steps again every ``L`` positions, and each level
``k`` is ``1 + beta log(1 + k)``.  One step seen leaves ``o`` open: ``o = 0`` (Ministral3 / Mistral4) is taken
and the import check, at lengths past the next step, tells.  ``beta`` is the shortest decimal that reproduces
every level (the source may compute the table in float32: ``TABLE_RTOL``).  :func:`fold_temperatures` moves a
measured product into the attention node that reads it as its queries (its ``temperature_*`` parameters); any
other per-position product stays opaque and is refused by name (:mod:`fuzz.importer.patterns`).

A smooth table (no steps: Beam's scalable-softmax query scale on its NoPE layers, ``exp(0.1 log1p((p + 1) /
2048))``) is the power form ``(1 + (p + o) / L) ** beta``.  Over the recorded positions it is almost linear, so
``beta`` and ``L`` are not apart there (only ``beta / L`` is): :func:`probe_tables` runs the source again with
``position_ids`` far apart (``0, 7, 63, .., 8 ** 7 - 1``) and reads the same product's table at those positions
(the ``k``-th one-number-per-position factor of the forward, ``k`` the one that equals the recorded table at the
default positions); :func:`measure_power` solves ``beta``, ``L``, ``o`` from the two runs and keeps the shortest
decimal ``beta`` and integer ``L`` that reproduce every value.  A scalar per position on every query channel
commutes with every map of a head's channels (rotations, scales: ``(t_p q) R = t_p (q R)``), so every recipe keeps
it as it is.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch.overrides import TorchFunctionMode

from ..record import evaluating
from .rewrites import _bypass

if TYPE_CHECKING:
    from .converter import Converter

TABLE_RTOL = 2.0 ** -22  # a table computed in float32 (transformers divides integer positions in float32)
PARAMS = ("temperature_beta", "temperature_length", "temperature_offset", "temperature_form")
POWER_RTOL = 2.0 ** -20  # a power table computed in float32 (exp, log1p): a few float32 ulps
MAX_OFFSET = 4  # the offsets o tried for the power form (Beam: 1)


def factor(beta: float, length: int, offset: int, p: int, form: str = "log_floor") -> float:
    if form == "power":
        return math.exp(beta * math.log1p((p + offset) / length))
    return 1.0 + beta * math.log(1.0 + math.floor((p + offset) / length))


def probe_positions(n: int) -> list[int]:
    """``n`` increasing positions far apart, ``0, 7, 63, .., 8 ** (n - 1) - 1``: where a smooth factor bends."""
    return [0] + [8 ** k - 1 for k in range(1, n)]


class _Factors(TorchFunctionMode):
    """Collects, in call order, every one-number-per-position floating factor ``(.., n, 1)`` a product reads."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.found = n, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") in ("mul", "__mul__", "__rmul__", "mul_"):
            for a in args:
                if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dim() >= 2 and a.numel() == self.n \
                        and a.shape[-1] == 1 and a.shape[-2] == self.n:
                    self.found.append(a.detach().double().flatten().tolist())
        return out


def probe_tables(model, table: list[float]) -> tuple[list[int], list[float]] | tuple[None, str]:
    """``(positions, factors)``: the recorded per-position factor ``table`` read again with the source run at
    :func:`probe_positions` (see the module docstring), or ``(None, why)``."""
    n = len(table)
    runs = []
    try:
        device = next(iter(model.parameters())).device
        ids = torch.ones(1, n, dtype=torch.long, device=device)
        for positions in (None, probe_positions(n)):
            mode = _Factors(n)
            kw = {} if positions is None else {"position_ids": torch.tensor([positions], device=device)}
            with evaluating(model), torch.no_grad(), mode:
                model(input_ids=ids, use_cache=False, **kw)
            runs.append(mode.found)
    except Exception as exc:  # noqa: BLE001  (the source takes no position_ids: left to the refusal)
        return None, f"the source does not run at explicit position_ids ({type(exc).__name__}: {str(exc)[:80]})"
    plain, far = runs
    match = [k for k, t in enumerate(plain) if all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(t, table))]
    if not match or len(plain) != len(far):
        return None, "the factor is not found again when the source runs at other position_ids"
    return probe_positions(n), far[match[0]]


def _shortest(x: float, ok) -> float | None:
    for digits in list(range(1, 13)) + [None]:
        v = x if digits is None else round(x, digits)
        if v != 0 and ok(v):
            return v
    return None


def measure_power(table: list[float], positions: list[int], far: list[float]) -> tuple[dict | None, str]:
    """``({"temperature_beta", "temperature_length", "temperature_offset", "temperature_form": "power"}, "")``:
    ``(1 + (p + o) / L) ** beta`` read off the factors ``far`` at ``positions`` (and checked on the recorded
    ``table`` at ``0 .. n-1``), or ``(None, why)``."""
    seen = list(zip(range(len(table)), table)) + list(zip(positions, far))
    logs = [(p, math.log(v)) for p, v in zip(positions, far) if v > 0]
    if len(logs) < 3 or any(v <= 0 for v in far) or logs[-1][1] == 0 or logs[-2][1] == 0:
        return None, "the factor is not positive and growing at far positions"
    (pa, ga), (pb, gb) = logs[-1], logs[-2]
    for offset in range(MAX_OFFSET):
        target = ga / gb  # ln(1 + (pa + o) / L) / ln(1 + (pb + o) / L): increasing in L, from 1 to (pa+o)/(pb+o)
        ratio = lambda log_l: math.log1p((pa + offset) / math.exp(log_l)) / math.log1p((pb + offset) / math.exp(log_l))
        lo, hi = math.log(1e-3), math.log(1e12)
        if not ratio(lo) < target < ratio(hi):
            continue
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if ratio(mid) < target else (lo, mid)
        length = round(math.exp(lo))
        if length < 1:
            continue
        beta_est = ga / math.log1p((pa + offset) / length)
        ok = lambda b: all(math.isclose(factor(b, length, offset, p, "power"), v, rel_tol=POWER_RTOL, abs_tol=0.0)
                           for p, v in seen)
        beta = _shortest(beta_est, ok)
        if beta is not None:
            return {"temperature_beta": beta, "temperature_length": length, "temperature_offset": offset,
                    "temperature_form": "power"}, ""
    return None, (f"the factors {[round(v, 6) for v in far]} at positions {positions} are no (1 + (p + o) / L) ** "
                  f"beta with an integer L and 0 <= o < {MAX_OFFSET}")


def table_of(d: dict) -> list[float] | None:
    """The per-position factors of a recorded ``x * c`` node, ``c`` one number per position, or None."""
    rows = d.get("const_rows")
    if d.get("call") != "mul" or d.get("const_shape", [0])[-1] != 1 or not rows or "const_rows_imag" in d:
        return None
    return [float(r[0]) for r in rows]


def measure(table: list[float]) -> tuple[dict | None, str]:
    """``({"temperature_beta", "temperature_length", "temperature_offset"}, "")`` read from a per-position table,
    or ``(None, why)``."""
    n = len(table)
    if all(v == 1.0 for v in table):
        return None, (f"the factor is 1 at every recorded position 0..{n - 1}: its first step (the original length "
                      f"L) lies past the recording, so beta and L cannot be measured")
    steps = [p for p in range(1, n) if table[p] != table[p - 1]]
    if table[0] != 1.0 or not steps:
        return None, f"the factor at position 0 is {table[0]!r}, not 1"
    first = steps[0]
    length, offset = (steps[1] - first, steps[1] - 2 * first) if len(steps) > 1 else (first, 0)
    if length < 1 or not 0 <= offset < length:
        return None, f"its steps at positions {steps} are no floor((p + o) / L) with 0 <= o < L"
    level = table[first] - 1.0
    beta = level / math.log(2.0)
    for digits in list(range(1, 13)) + [None]:
        b = beta if digits is None else round(beta, digits)
        if b != 0 and all(math.isclose(factor(b, length, offset, p), v, rel_tol=TABLE_RTOL, abs_tol=0.0)
                          for p, v in enumerate(table)):
            return {"temperature_beta": b, "temperature_length": length, "temperature_offset": offset}, ""
    return None, (f"the table {[round(v, 6) for v in table]} is no 1 + beta log(1 + floor((p + o) / L)) "
                  f"(steps at {steps})")


def fold_temperatures(conv: Converter) -> None:
    """``q * t`` (``t`` a measured per-position temperature table) read only by an attention as its queries ->
    the attention's ``temperature_*`` parameters, the product bypassed."""
    for node in sorted((n for n, d in conv.g.nodes(data=True) if d["op"] == "opaque" and not d["params"]),
                       key=lambda n: conv.g.nodes[n]["index"]):
        d = conv.g.nodes[node]
        table = table_of(d)
        if table is None or conv.g.in_degree(node) != 1 or conv.g.out_degree(node) != 1:
            continue
        (attn,) = conv.g.successors(node)
        a = conv.g.nodes[attn]
        if a["op"] != "attention" or conv.inputs(attn)[:1] != [node] or any(k in a for k in PARAMS):
            continue
        measured, why = measure(table)
        if measured is None and len(table) > 1 and len(set(table)) == len(table):
            # no steps, a new value at each position: the smooth power form, measured at far positions
            probed = getattr(conv, "_probed_tables", {})  # one probe per distinct table (every NoPE layer has it)
            if tuple(table) not in probed:
                probed[tuple(table)] = probe_tables(conv.model, table)
                conv._probed_tables = probed
            positions, far = probed[tuple(table)]
            measured, why = (None, why + "; " + far) if positions is None else measure_power(table, positions, far)
        if measured is None:
            d["temperature_refusal"] = why  # named by the refusal of the opaque product
            continue
        a.update(measured)
        _bypass(conv, node)
