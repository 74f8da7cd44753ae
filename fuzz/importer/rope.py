"""RoPE ``theta`` and scaling of an imported model, measured rather than assumed.

Scaled RoPE (``linear``, ``dynamic``, ``yarn``, ``llama3``, ``longrope``, ``proportional``): :func:`rope_params`.
``proportional`` (Gemma4's full-attention layers) is a static table with zeros past the rotated proportion; the
table kept is the module's own buffer (per layer type: the one whose table the recorded cos/sin rows show).

The rotary module is found by ownership (the module holding an ``inv_freq`` buffer
nearest to the attention that applies the rotation); its ``rope_type`` must be ``default``; ``theta``
comes from its config (``rope_parameters["rope_theta"]`` or ``rope_theta``), else from ``inv_freq``
itself, and ``inv_freq`` must equal the default table of that theta.

Measured from the recording (:func:`measured_table`: the cos/sin rows of positions 0, 1, 2 that the rotation
multiplied by): which per-layer-type table a layer reads (Olmo3 and kin, whose layers name no type), and the
theta of a precomputed sin/cos table no ``inv_freq`` buffer holds (GPT-J, CodeGen).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import BadInput
from ..materialize import Rope

if TYPE_CHECKING:
    from .converter import Converter


SCALED = ("linear", "dynamic", "yarn", "llama3", "longrope", "proportional")
STATIC = ("linear", "yarn", "llama3", "proportional")  # a fixed table: the per-layer-type tables may be these


def rope_params(conv: Converter, node: str, rotary_dim: int) -> dict:
    """The rope node's theta and scaling (:mod:`fuzz.rope_scaling`) measured from the rotary module: the
    default RoPE as :func:`rope_theta`; a scaled one (``rope_type`` in :data:`SCALED`) keeps the module's own
    ``inv_freq`` buffer (the table its forward reads) and ``attention_scaling``; ``dynamic`` its theta, factor
    and ``max_position_embeddings``; ``longrope`` the long table transformers' own recipe builds.  The import
    check decides whether that is the model's function; any other ``rope_type`` is refused by name."""
    path = conv.g.nodes[node]["module_path"]
    module = conv.modules.get(path)
    if isinstance(module, Rope):  # a GraphModel source: the node's own parameters (the direction is measured)
        return {k: v for k, v in module.p.items()
                if k not in ("n_heads", "head_dim", "rotary_dim", "style", "reversed")}
    found = _rotary_module(conv, path)
    if found is None:
        typed = _layer_type_rope(conv, node, path, rotary_dim)
        if typed is not None:
            return typed
    rope_type = getattr(found[1], "rope_type", None) if found is not None else None
    if rope_type not in SCALED:
        return {"theta": rope_theta(conv, node, rotary_dim)}
    where, rotary = found
    config = getattr(rotary, "config", None) or getattr(conv.model, "config", None)
    params = getattr(config, "rope_parameters", None)
    if not isinstance(params, dict) or "rope_theta" not in params:
        raise BadInput(f"cannot import {where} (rope_type {rope_type!r} without rope_parameters['rope_theta'])")
    theta = float(params["rope_theta"])
    inv_freq = rotary.inv_freq.detach().to("cpu", torch.float64)
    if len(inv_freq) != rotary_dim // 2:
        raise BadInput(f"cannot import {where} (inv_freq has {len(inv_freq)} frequencies, the rotation at "
                       f"{path} uses rotary_dim {rotary_dim})")
    scaling = float(getattr(rotary, "attention_scaling", 1.0))
    out = {"theta": theta, "scaling": rope_type, "attention_factor": scaling}
    if rope_type == "dynamic":
        if scaling != 1.0:
            raise BadInput(f"cannot import {where} (dynamic RoPE with attention_scaling {scaling})")
        if not torch.equal(_default_inv_freq(theta, rotary_dim), inv_freq):
            raise BadInput(f"cannot import {where} (its dynamic RoPE inv_freq is not the table of theta {theta}: "
                           f"a forward past max_position_embeddings left it grown)")
        return {**out, "factor": float(params["factor"]), "max_positions": int(rotary.original_max_seq_len)}
    out["inv_freq"] = tuple(inv_freq.tolist())
    if rope_type == "longrope":
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        limit = int(params["original_max_position_embeddings"])
        original = getattr(rotary, "original_inv_freq", None)
        if original is None or not torch.equal(original.detach().to("cpu", torch.float64), inv_freq):
            raise BadInput(f"cannot import {where} (its longrope inv_freq is not its short table: a forward past "
                           f"original_max_position_embeddings {limit} left the long one in place)")
        long = getattr(rotary, "long_inv_freq", None)
        if long is None:  # what the model's first long forward computes
            long, _ = ROPE_INIT_FUNCTIONS["longrope"](rotary.config, "cpu", seq_len=limit + 1)
        out.update(long_inv_freq=tuple(long.detach().to("cpu", torch.float64).tolist()), max_positions=limit)
    return out


def _layer_type_rope(conv: Converter, node: str, path: str, rotary_dim: int) -> dict | None:
    """Per-layer RoPE (Gemma3 and kin: one rotary module holding ``{layer_type}_inv_freq`` per layer type,
    e.g. local layers at ``rope_local_base_freq``): the table of the ``layer_type`` of the nearest module
    above ``path`` that names one; ``None`` when the model has no such rotary module."""
    rotaries = [(p, m) for p, m in conv.modules.items() if isinstance(getattr(m, "layer_types", None), (list, tuple))
                and any(isinstance(m._buffers.get(f"{t}_inv_freq"), torch.Tensor) for t in m.layer_types)]
    if not rotaries:
        return None
    if len(rotaries) > 1:
        raise BadInput(f"cannot import {path} (per-layer-type RoPE in {[p for p, _ in rotaries]}: which one applies "
                       f"is not known)")
    where, rotary = rotaries[0]
    measured = measured_table(conv.g.nodes[node], rotary_dim)
    if measured is not None:  # the layer type whose table the rotation read in the recording
        inv_freq, amplitude = measured
        layer_type = next((t for t in rotary.layer_types if _reads_table(rotary, t, inv_freq, amplitude)), None)
        if layer_type is None:
            raise conv.refuse(node, f"per-layer RoPE of {where}: the table the rotation at {path} reads (frequencies "
                              f"{_short(inv_freq)}, amplitude {amplitude:.6g}) is none of its layer types' tables "
                              f"{list(rotary.layer_types)}")
    else:  # no table in the recording (a source without one): the layer_type the layer names
        parts = path.split(".") if path else []
        layer_type = next((getattr(conv.modules.get(".".join(parts[:k])), "layer_type", None)
                           for k in range(len(parts), 0, -1)
                           if isinstance(getattr(conv.modules.get(".".join(parts[:k])), "layer_type", None), str)),
                          None)
    if layer_type is None or not isinstance(rotary._buffers.get(f"{layer_type}_inv_freq"), torch.Tensor):
        raise conv.refuse(node, f"per-layer RoPE of {where}: the layer type of {path} is not known "
                          f"(no table recorded and no layer_type attribute naming one of {list(rotary.layer_types)})")
    rope_type = rotary.rope_type.get(layer_type) if isinstance(rotary.rope_type, dict) else rotary.rope_type
    params = getattr(getattr(rotary, "config", None) or conv.model.config, "rope_parameters", None)
    params = params.get(layer_type) if isinstance(params, dict) else None
    if not isinstance(params, dict) or "rope_theta" not in params:
        raise BadInput(f"cannot import {where} (no rope_parameters[{layer_type!r}]['rope_theta'])")
    theta = float(params["rope_theta"])
    inv_freq = rotary._buffers[f"{layer_type}_inv_freq"].detach().to("cpu", torch.float64)
    scaling = float(getattr(rotary, f"{layer_type}_attention_scaling", 1.0))
    if len(inv_freq) != rotary_dim // 2:
        raise BadInput(f"cannot import {where} ({layer_type}_inv_freq has {len(inv_freq)} frequencies, the rotation "
                       f"at {path} uses rotary_dim {rotary_dim})")
    if rope_type in (None, "default"):
        if scaling != 1.0 or not torch.allclose(_default_inv_freq(theta, rotary_dim), inv_freq, rtol=1e-6, atol=0):
            raise BadInput(f"cannot import {where} (its {layer_type}_inv_freq is not the default RoPE table of "
                           f"theta {theta})")
        return {"theta": theta}
    if rope_type not in STATIC:  # the length-dependent ones keep per-type caches
        raise BadInput(f"cannot import {where} (rope_type {rope_type!r} for layer type {layer_type!r}; per-layer "
                       f"RoPE takes the default and the static scaled types {', '.join(STATIC)})")
    return {"theta": theta, "scaling": rope_type, "attention_factor": scaling, "inv_freq": tuple(inv_freq.tolist())}


def rope_theta(conv: Converter, node: str, rotary_dim: int) -> float:
    """The ``theta`` of the default RoPE that recorded node ``node`` applies with ``rotary_dim`` (see the module
    docstring); :class:`BadInput` for any other RoPE."""
    path = conv.g.nodes[node]["module_path"]
    module = conv.modules.get(path)
    if isinstance(module, Rope):  # a GraphModel source: the node's own parameter
        return float(module.p["theta"])
    found = _rotary_module(conv, path)
    if found is None:
        rope_type, theta = _config_rope(getattr(conv.model, "config", None))
        where = type(conv.model).__name__ + ".config"
        inv_freq = None
    else:
        where, rotary = found
        config = getattr(rotary, "config", None)
        rope_type, theta = _config_rope(config if config is not None else getattr(conv.model, "config", None))
        rope_type = getattr(rotary, "rope_type", None) or rope_type
        inv_freq = rotary.inv_freq.detach().to("cpu", torch.float64)
        scaling = getattr(rotary, "attention_scaling", 1.0)
        if scaling != 1.0:
            raise BadInput(f"cannot import {where} (RoPE attention_scaling {scaling}; only the default "
                           f"RoPE has a layout op)")
    if rope_type not in (None, "default"):
        raise BadInput(f"cannot import {where} (rope_type {rope_type!r}; only the default RoPE and the scaled "
                       f"types {SCALED} have a layout op)")
    if inv_freq is None:
        if theta is None:
            return _theta_of_table(conv, node, rotary_dim)
        return theta
    if len(inv_freq) != rotary_dim // 2:
        raise BadInput(f"cannot import {where} (inv_freq has {len(inv_freq)} frequencies, the rotation at "
                       f"{path} uses rotary_dim {rotary_dim})")
    if theta is None:  # recover from the table itself: inv_freq[1] = theta ** (-2 / rotary_dim)
        theta = float(f"{inv_freq[1].item() ** (-rotary_dim / 2):.6g}") if len(inv_freq) > 1 else 10000.0
    if not torch.allclose(_default_inv_freq(theta, rotary_dim), inv_freq, rtol=1e-6, atol=0):
        raise BadInput(f"cannot import {where} (its inv_freq is not the default RoPE table of theta {theta})")
    return theta


# a measured frequency / amplitude equals the model's own within float32 table rounding
_TABLE_RTOL = 1e-5
_THETA_RTOL = 1e-6  # a theta read off a table: its default table within float32 rounding of the measured one


def measured_table(d: dict, rotary_dim: int) -> tuple[torch.Tensor, float] | None:
    """``(inv_freq, amplitude)`` of the cos/sin tables a recorded ``rope`` node read (its ``tables``: rows of
    positions 0, 1, 2 of each ``x * table`` product, :func:`fuzz.record.recorder._position_rows`): the angle
    of channel ``c`` at position 1 is ``atan2(sin[1, c], cos[1, c])``; a table as wide as the rotation holds
    each frequency twice (``cat(f, f)`` for the half pairing, ``repeat_interleave`` for the interleaved one),
    one half as wide once (GPT-OSS' halves form).  ``None`` when the node holds no tables, or they are not
    ``a * cos(p * f)`` / ``a * sin(p * f)`` at positions 0, 1, 2 with one amplitude ``a`` (then nothing is
    measured and the callers fall back to what the modules say)."""
    tables = [torch.tensor(rows, dtype=torch.float64) for rows in d.get("tables", ())]
    tables = [t for t in tables if t.dim() == 2 and t.shape[0] >= 3]
    cos = [t for t in tables if t[0].abs().min() > 0]
    sin = [t for t in tables if t[0].abs().max() == 0]
    pairs = [(c, s) for c in cos for s in sin if c.shape == s.shape]
    if not pairs:
        return None
    c, s = pairs[0]
    amplitude = float(c[0, 0])
    if amplitude <= 0 or not torch.allclose(c[0], torch.full_like(c[0], amplitude), rtol=_TABLE_RTOL, atol=0):
        return None
    angle = torch.atan2(s[1].abs(), c[1])
    tol = _TABLE_RTOL * amplitude
    if not (torch.allclose(c[2], amplitude * torch.cos(2 * angle), rtol=0, atol=tol)
            and torch.allclose(s[2].abs(), amplitude * torch.sin(2 * angle).abs(), rtol=0, atol=tol)):
        return None
    width, half = angle.numel(), rotary_dim // 2
    if width == half:
        return angle, amplitude
    if width == rotary_dim:
        for freqs, twin in ((angle[:half], angle[half:]), (angle[0::2], angle[1::2])):
            if torch.allclose(freqs, twin, rtol=_TABLE_RTOL, atol=0):
                return freqs, amplitude
    return None


def sin_sign(d: dict) -> int | None:
    """The sign of the sin table a recorded ``rope`` node multiplied by (its ``tables``, rows of positions 0, 1,
    2: the sin row is 0 at position 0, ``a sin(f)`` at position 1 with every ``f`` in ``(0, pi)``): ``+1`` (the
    rotation by ``+theta`` for Llama's ``rotate_half``), ``-1`` (a negated table, a rotation by ``-theta``), None
    when no sin table was recorded or its position-1 row has mixed signs."""
    tables = [torch.tensor(rows, dtype=torch.float64) for rows in d.get("tables", ())]
    rows = [t[1] for t in tables if t.dim() == 2 and t.shape[0] >= 2 and t[0].abs().max() == 0]
    if not rows:
        return None
    if all(bool((r > 0).all()) for r in rows):
        return 1
    if all(bool((r < 0).all()) for r in rows):
        return -1
    return None


def _reads_table(rotary: nn.Module, layer_type: str, inv_freq: torch.Tensor, amplitude: float) -> bool:
    """Whether the per-layer-type rotary module's table of ``layer_type`` is the measured one."""
    table = rotary._buffers.get(f"{layer_type}_inv_freq")
    if not isinstance(table, torch.Tensor) or table.numel() != inv_freq.numel():
        return False
    scaling = float(getattr(rotary, f"{layer_type}_attention_scaling", 1.0))
    return (abs(scaling - amplitude) <= _TABLE_RTOL * abs(scaling)
            and torch.allclose(table.detach().to("cpu", torch.float64), inv_freq, rtol=_TABLE_RTOL, atol=0))


def _theta_of_table(conv: Converter, node: str, rotary_dim: int) -> float:
    """The ``theta`` of a default RoPE whose table no ``inv_freq`` buffer holds (GPT-J and CodeGen keep
    precomputed sin/cos rows): measured from the recorded tables (:func:`measured_table`), the least-squares
    fit of ``log f_i = -(2 i / rotary_dim) log theta``, kept when the default table of it is the measured one."""
    path = conv.g.nodes[node]["module_path"]
    measured = measured_table(conv.g.nodes[node], rotary_dim)
    if measured is None:
        raise conv.refuse(node, "RoPE theta is unknown: no module holds an inv_freq buffer, the config has no "
                          "rope_theta and the rotation's cos/sin tables were not recorded as a rotation by position")
    inv_freq, amplitude = measured
    if abs(amplitude - 1.0) > _TABLE_RTOL:
        raise conv.refuse(node, f"RoPE at {path}: its cos/sin tables are scaled by {amplitude:.6g} and no module "
                          f"holds their inv_freq (a scaled RoPE of unknown type)")
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim
    if len(inv_freq) < 2 or not bool((inv_freq > 0).all()):
        raise conv.refuse(node, f"RoPE at {path}: its table (frequencies {_short(inv_freq)}) has no theta")
    fit = math.exp(float(-(exponent * inv_freq.log()).sum() / (exponent * exponent).sum()))
    for theta in (float(f"{fit:.6g}"), fit):  # the round number the config held, else the fit itself
        if torch.allclose(_default_inv_freq(theta, rotary_dim), inv_freq, rtol=_THETA_RTOL, atol=0):
            return theta
    raise conv.refuse(node, f"RoPE at {path}: its table (frequencies {_short(inv_freq)}) is not the default "
                      f"RoPE table of any theta (nearest {fit:.6g})")


def _short(values: torch.Tensor) -> str:
    shown = ", ".join(f"{v:.4g}" for v in values[:4].tolist())
    return f"[{shown}{', ...' if len(values) > 4 else ''}]"


def _rotary_module(conv: Converter, path: str) -> tuple[str, nn.Module] | None:
    """The module holding ``inv_freq`` nearest to ``path``: searched in the subtree of ``path``, then of
    each ancestor in turn (transformers keeps it beside the layers, e.g. ``model.rotary_emb``)."""
    parts = path.split(".") if path else []
    for k in range(len(parts), -1, -1):
        prefix = ".".join(parts[:k])
        found = [(p, m) for p, m in conv.rotaries if not prefix or p == prefix or p.startswith(prefix + ".")]
        if not found:
            continue
        tables = {tuple(m.inv_freq.tolist()) for _, m in found}
        types = {getattr(m, "rope_type", None) for _, m in found}
        if len(tables) > 1 or len(types) > 1:
            raise BadInput(f"cannot import {path} (RoPE tables of {[p for p, _ in found]} differ and none is "
                           f"nearer to it)")
        return found[0]
    return None


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
