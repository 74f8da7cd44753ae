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
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .rewrites import _bypass

if TYPE_CHECKING:
    from .converter import Converter

TABLE_RTOL = 2.0 ** -22  # a table computed in float32 (transformers divides integer positions in float32)
PARAMS = ("temperature_beta", "temperature_length", "temperature_offset")


def factor(beta: float, length: int, offset: int, p: int) -> float:
    return 1.0 + beta * math.log(1.0 + math.floor((p + offset) / length))


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
        if measured is None:
            d["temperature_refusal"] = why  # named by the refusal of the opaque product
            continue
        a.update(measured)
        _bypass(conv, node)
