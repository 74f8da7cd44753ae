"""BBT-spectral's rotation online in an exported model: the quantized ``W^`` kept, the FWHT run as explicit ops.

T1 (``quant/transforms/wht_scale.py``) turns a linear ``y = x W^T`` into ``x~ W~^T`` with ``x~ = [x, 0] Q D^-1``
and ``W~ = [W, 0] Q D`` (``in_features = d_pad``).  After auto-round the transformers host model holds the
quantized ``W^`` (codes on the grid, ``in_features = d_pad``) and one forward pre-hook per linear
(:class:`quant.quantize.WHTInput`) computing ``x~``.  Hooks do not survive an export, and the unfold
(``W_eff = fwht(W^ / s)[:, :d_in]``) densifies the weights, so :func:`make_online` instead rewrites the host
model with explicit modules that ``openvino.convert_model`` / ``torch.export`` trace into plain ops:

* linears are grouped by the tensor they read, measured by dataflow (one recorded forward: a prepended
  forward pre-hook on every hooked linear keeps the input tensor object; linears that received the *same*
  object form a group), never by module names.  On a Llama block: ``{q, k, v}`` (the normed input),
  ``{gate, up}``, ``{o}``, ``{down}``;
* each group gets ONE :class:`OnlineRotation` (zero pad to ``d_pad`` and the orthonormal Walsh-Hadamard
  ``Q``), and each linear becomes a :class:`RotatedLinear` ``linear(rotation(x) / s_l)`` around the untouched
  ``nn.Linear`` holding ``W^`` (and auto-round's ``scale``/``zp``, so :func:`quant.lowbit.grid_codes` finds its
  codes).  When every linear of a group has the same ``s`` (bit for bit; the energy scales of linears that read
  one tensor are equal) the ``1 / s`` is applied once by the shared rotation; otherwise per linear (a multiply);
* sharing is by identity of the input: the rotation remembers the last input object and its result until every
  member of its group has read it, so within one forward (and in a trace) the FWHT is computed once per group
  and the three q/k/v matmuls read the same node.  A member called with another tensor simply recomputes:
  sharing can be lost, never correctness.

The FWHT is expressed in one of three forms (``mode``), each plain ops after export, from the group's
:class:`fuzz.hadamard.Rotation` (its Kronecker factors, butterfly or dense matrix; T1's form checked there):

* ``"kron"`` (the default): ``Q_{ab} = Q_a (x) Q_b`` (Sylvester order), so with ``X = [x, 0]`` reshaped to
  ``(a, b)``, ``x Q = vec(Q_a X Q_b)``: pad, reshape, two small matmuls (``a, b ~ sqrt(d_pad)``), reshape.
  Picked by measurement (``docs/data/online_rotation.json``, ``python -m benchmarks.online_rotation``): on
  SmolLM2's widths it was the fastest of the three in OpenVINO on CPU (SmolLM2's 120 rotations per decoded
  token: 3.8 ms kron, 386 ms butterfly, 415 ms dense, measured on a heavily shared 2-core machine; the
  butterfly's ~40 ops per rotation and the dense ``d_in x d_pad`` f32 matmul both lose to two ``sqrt(d_pad)``
  matmuls);
* ``"butterfly"``: ``log2(d_pad)`` stages of reshape / add / sub / concat (:func:`fuzz.hadamard.fwht`);
* ``"dense"``: one matmul with ``Q[:d_in] / s`` (``d_in x d_pad`` float32 constant per group).

The group-aligned block form (``bbt-spectral-block``: ``x~ = x Q_b D^-1``, ``Q_b = I_{d_in/b} (x) H_b / sqrt(b)``,
no padding, ``in_features`` unchanged) is the kron form with ``Q_a = I``: ``x`` reshaped to ``(d_in / b, b)``
times ``Q_b``, one small matmul (``"kron"``); ``"butterfly"`` runs :func:`fuzz.hadamard.block_fwht`,
``"dense"`` one ``d_in x d_in`` block-diagonal matmul.

The exact-width full form (``bbt-spectral-exact``: ``x~ = x Q_n D^-1``, ``Q_n = (H_m (x) H_b) / sqrt(n)`` with
``H_m`` a Paley matrix, ``n = m b = d_in``, no padding; ``block = "exact"`` here) is the kron form with
``Q_a = Q_m^T`` (``x (A (x) B) = vec(A^T X B)``; ``Q_m`` is not symmetric in general): ``x`` reshaped to ``(m, b)``,
``Q_m^T X Q_b``, two small matmuls (SmolLM2: ``36 x 16`` and ``12 x 128``); ``"butterfly"`` runs
:func:`fuzz.hadamard.exact_fwht` (the ``Q_b`` side as butterfly stages), ``"dense"`` one ``d_in x d_in`` matmul.

Nothing here changes a weight: the artifact's weights are ``W^`` as auto-round left them, so the low-bit IR
stores them as u2/u4 codes (:func:`quant.lowbit.compress_model` matches them by content).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from fuzz.errors import BadInput
from fuzz.hadamard import rotation

MODES = ("kron", "butterfly", "dense")
DEFAULT_MODE = "kron"


class OnlineRotation(nn.Module):
    """``x -> [x, 0] Q [/ s]`` for one group of linears reading the same tensor (see the module docstring), ``Q``
    the form ``block``'s rotation (:func:`fuzz.hadamard.rotation`: ``None`` padded to ``d_pad``, a power-of-two
    block or ``"exact"``, both with ``d_pad == d_in``; a form that does not fit is a ``FormError`` naming it).

    ``scale``: the shared ``s`` (applied once), or ``None`` when each reader applies its own."""

    def __init__(self, d_in: int, d_pad: int, members: int, scale: torch.Tensor | None = None, mode: str = DEFAULT_MODE,
                 block: int | str | None = None):
        super().__init__()
        if mode not in MODES:
            raise BadInput(f"online rotation mode must be one of {MODES}, got {mode!r}")
        self.q = rotation(block, d_in, d_pad)
        self.d_in, self.d_pad, self.members, self.mode, self.block = d_in, d_pad, members, mode, block
        inv = None if scale is None else (1.0 / scale.detach().double()).float()
        if mode == "dense":
            m = self.q.matrix()
            if scale is not None:
                m = m / scale.detach().double()[None, :]
            self.register_buffer("matrix", m.float())
            inv = None  # folded into the matrix
        elif mode == "kron":  # vec(A X B), X = [x, 0] reshaped (a, b); A = None: the identity (the block form)
            self.split, qa, qb = self.q.factors()
            self.register_buffer("qa", None if qa is None else qa.float())
            self.register_buffer("qb", qb.float())
        self.register_buffer("inv_scale", inv)
        self._memo: tuple | None = None
        self._reads = 0

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "dense":
            return x @ self.matrix.to(x.dtype)
        if self.mode == "butterfly":
            y = self.q.apply(x)
        else:
            xp = F.pad(x, (0, self.d_pad - self.d_in)) if self.d_pad > self.d_in else x
            y = xp.unflatten(-1, self.split)
            if self.qa is not None:
                y = torch.matmul(self.qa.to(x.dtype), y)
            y = torch.matmul(y, self.qb.to(x.dtype)).flatten(-2)
        return y if self.inv_scale is None else y * self.inv_scale.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._memo is not None and self._memo[0] is x:
            y = self._memo[1]
        else:
            y, self._reads = self.rotate(x), 0
            self._memo = (x, y)
        self._reads += 1
        if self._reads >= self.members:  # every reader of this input has it: forget (no stale reference kept)
            self._memo, self._reads = None, 0
        return y

    def __getstate__(self):  # pickled (torch.save for the export child) without a remembered activation
        state = self.__dict__.copy()
        state["_memo"], state["_reads"] = None, 0
        return state

    def extra_repr(self) -> str:
        return (f"d_in={self.d_in}, d_pad={self.d_pad}, block={self.block}, members={self.members}, mode={self.mode}, "
                f"shared_scale={self.inv_scale is not None or (self.mode == 'dense' and 'matrix' in self._buffers)}")


class RotatedLinear(nn.Module):
    """``linear(rotation(x) * inv_scale)``: a T1 linear whose ``W^`` (``in_features = d_pad``) stays as quantized."""

    def __init__(self, rotation: OnlineRotation, linear: nn.Linear, inv_scale: torch.Tensor | None = None):
        super().__init__()
        self.rotation = rotation
        self.linear = linear
        self.register_buffer("inv_scale", None if inv_scale is None else inv_scale.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.rotation(x)
        if self.inv_scale is not None:
            h = h * self.inv_scale.to(h.dtype)
        return self.linear(h)


def online_hooks(model: nn.Module) -> dict[str, object]:
    """``{module path: WHTInput}`` of every linear carrying T1's pre-hook; any other hook is refused by name."""
    from quant.quantize import WHTInput
    found = {}
    for name, mod in model.named_modules():
        hooks = list(mod._forward_pre_hooks.values())
        if mod._forward_hooks or any(not isinstance(h, WHTInput) for h in hooks) or len(hooks) > 1:
            raise BadInput(f"{name}: carries a forward hook that is not T1's online input transform (WHTInput); "
                           "only that operator can be made explicit for the export")
        if hooks:
            if not isinstance(mod, nn.Linear):
                raise BadInput(f"{name}: a {type(mod).__name__} with T1's online transform; only nn.Linear is supported")
            found[name] = hooks[0]
    return found


@torch.no_grad()
def record_groups(model: nn.Module, paths: list[str], sample_ids: torch.Tensor) -> list[list[str]]:
    """Group ``paths`` by the tensor object each module receives in one forward of ``model`` on ``sample_ids``."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for p in paths:
        def rec(mod, args, p=p):
            seen.setdefault(p, args[0])  # the first call; the reference keeps the object alive (no id reuse)
        handles.append(model.get_submodule(p).register_forward_pre_hook(rec, prepend=True))
    try:
        model.eval()(input_ids=sample_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    missing = [p for p in paths if p not in seen]
    if missing:
        raise BadInput(f"{missing[0]}: its input was not observed in a forward (not reached, e.g. an unrouted "
                       f"expert); the online rotation cannot be grouped by dataflow ({len(missing)} such linears)")
    groups: list[list[str]] = []
    for p in paths:
        for g in groups:
            if seen[g[0]] is seen[p]:
                g.append(p)
                break
        else:
            groups.append([p])
    return groups


def make_online(model: nn.Module, sample_ids: torch.Tensor, mode: str = DEFAULT_MODE) -> tuple[nn.Module, dict]:
    """A copy of the hooked transformers ``model`` (T1 prepared, quantized, not unfolded) with every T1 hook
    replaced by explicit :class:`OnlineRotation` / :class:`RotatedLinear` modules, one rotation per distinct
    input (module docstring).  ``model`` is left as it was.  Returns ``(online model, info)``."""
    if mode not in MODES:
        raise BadInput(f"online rotation mode must be one of {MODES}, got {mode!r}")
    hooks = online_hooks(model)
    if not hooks:
        raise BadInput("no linear carries T1's online input transform: nothing to make online")
    out = copy.deepcopy(model)
    hooks = online_hooks(out)
    groups = record_groups(out, list(hooks), sample_ids)
    info = {"mode": mode, "groups": [], "linears": len(hooks)}
    for g in groups:
        h0 = hooks[g[0]]
        d_in, d_pad, block = h0.d_in, h0.d_pad, getattr(h0, "block", None)
        for p in g:
            if (hooks[p].d_in, hooks[p].d_pad, getattr(hooks[p], "block", None)) != (d_in, d_pad, block):
                raise BadInput(f"{p}: reads the same tensor as {g[0]} but pads {hooks[p].d_in} -> {hooks[p].d_pad} "
                               f"(block {getattr(hooks[p], 'block', None)}), not {d_in} -> {d_pad} (block {block})")
        same = all(torch.equal(hooks[p].scale, h0.scale) for p in g)
        rot = OnlineRotation(d_in, d_pad, len(g), h0.scale if same else None, mode, block=block)
        for p in g:
            lin = out.get_submodule(p)
            lin._forward_pre_hooks.clear()
            inv = None if same else 1.0 / hooks[p].scale.double()
            parent, _, child = p.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, child, RotatedLinear(rot, lin, inv))
        info["groups"].append({"linears": g, "d_in": d_in, "d_pad": d_pad, "block": block, "shared_scale": same})
    info["rotations"] = len(groups)
    return out, info


def count_rotations(model: nn.Module) -> tuple[int, int]:
    """``(distinct OnlineRotation modules, RotatedLinear modules)`` of ``model``."""
    rots = {id(m.rotation) for m in model.modules() if isinstance(m, RotatedLinear)}
    return len(rots), sum(isinstance(m, RotatedLinear) for m in model.modules())
