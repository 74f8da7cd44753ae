"""Third-party transforms as oracle subjects: auto-round 0.16 ``apply_rotation`` configurations.

Each peer is a transform ``(model, calib) -> model`` that :func:`verifier.verify` checks like ours.
The wrapper only bridges and calls; it never catches what auto-round raises (the oracle records a
crash as status ``"error"``), and whatever auto-round installs (forward pre-hooks, replaced norms)
stays on the returned module, which the oracle simply runs.

Subjects.  A fuzz :class:`~fuzz.materialize.GraphModel` is converted with
:func:`fuzz.families.to_transformers` (same weights, same dtype); a layout that is no transformers
family is refused with ``feature="not-a-transformers-family"`` (an honest "cannot test here").  A
transformers model is rotated as given; an :class:`ExactFloat64` wrapper has its inner model rotated.

The exact calls (``apply_rotation(model, config, data_type=...)``), by peer name:

========================== ======================================================================== =========
name                       config                                                                   data_type
========================== ======================================================================== =========
hf-bridge                  none: the control, conversion to transformers only (no auto-round call)  --
autoround-hadamard         ``{"hadamard_type": "hadamard"}``                                        ``int``
autoround-hadamard-b<k>    ``{"hadamard_type": "hadamard", "block_size": k}`` (listed: b8; any k)   ``int``
autoround-random-hadamard  ``{"hadamard_type": "random_hadamard"}``                                 ``int``
autoround-inplace          ``{"backend": "inplace", "hadamard_type": "inplace_quarot_hadamard"}``   ``int``
autoround-quarot           ``"quarot"`` = ``SpinQuantConfig(trainable_rotation=False,               --
                           trainable_smooth=False)``, passed as that dict plus ``dtype``
autoround-spinquant        ``{"algorithm": "spinquant", "trainable_rotation": True,                 --
                           "trainable_smooth": True, "iters": 2, "dtype": ...}`` + ``dataloader``
autoround-hadamard-mxfp    ``{"hadamard_type": "hadamard"}`` (apply_rotation's own default dtype)   ``mx_fp``
========================== ======================================================================== =========

Facts of auto-round 0.16.1 that shaped the table (read in its source, confirmed by the oracle):

* ``backend="auto"`` resolves to the per-Linear ``transform`` backend for MX/NV-FP data types (the
  default ``data_type="mx_fp"``) and to the QuaRot-style ``inplace`` backend otherwise.  The
  ``transform`` backend with ``location="weight"`` changes *nothing* on the model: it only patches
  auto-round's ``WrapperLinear`` / ``WrapperWALayer`` / ``QuantLinear`` classes process-wide (first
  call wins; later configs are ignored) for a later tuning run.  ``autoround-hadamard-mxfp`` is
  therefore invariant vacuously; the peer reports ``weights_changed == 0`` and restores the classes.
  The other Hadamard peers pass ``data_type="int"`` (this project's W2/W4 integer schemes), which
  selects the ``inplace`` backend: residual rotation fused into the weights plus online pre-hooks.
* ``{"backend": "inplace", "hadamard_type": "hadamard"}`` crashes (``ValueError: Unknown
  rotation_matrix preset ''``): ``resolve_hadamard_backend`` strips ``"inplace_"`` from every
  ``hadamard_type`` under that backend.  The working inplace spelling is ``"inplace_<preset>"``.
* The ``inplace`` backend fuses a residual-stream rotation (QuaRot) only for the model types it has
  a mapping for (llama, qwen2, qwen3, opt); any other model falls back to the Llama mapping in
  *unfused* mode: every linear gets an input Hadamard plus a compensating online pre-hook.
* ``"quarot"`` / ``"spinquant"`` build ``SpinQuantConfig``, whose ``dtype`` (the rotation matrices')
  defaults to float32; the peers pass the model's dtype (``spinquant_dtype="default"`` keeps float32).
  A rotation whose size is not a power of two is disabled with a log warning, so the result can be a
  no-op (``weights_changed == 0``).  ``"spinquant"`` trains (Cayley SGD on the rotations, Adam on
  per-channel ``smooth_values`` that scale the RMSNorm outputs) and needs a ``dataloader``: the
  calibration ids, one sequence per batch, ``SPINQUANT_ITERS`` steps.
* ``random_hadamard`` draws from torch's global RNG and caches per dimension process-wide; the peer
  clears that cache and draws under ``torch.random.fork_rng`` seeded with ``seed`` (default: the
  calibration seed), so a verdict reproduces.

What the oracle found (``benchmarks/peer_campaign.py``; ``tests/quant/test_peers.py`` pins each):
the fused Hadamard rotations crash on non-power-of-two head counts / head dims (assertions), on
fused-expert MoE blocks and on Phi-3's fused ``qkv_proj`` (``AttributeError``); they silently break
models with a ``v_proj`` bias (qkv bias: the per-head Hadamard on ``v_proj``'s rows leaves the bias
unrotated), as does ``quarot``, which also breaks Phi-3; ``spinquant`` moves the function (its smooth
values have no inverse); everything else is exact up to the float32 constant below.

Precision.  transformers runs RMSNorm, RoPE tables and MoE router softmax in float32 whatever the
model dtype, so a converted model agrees with the float64 GraphModel only to ~1e-7 (``hf-bridge``
shows that floor) and a float64 verdict on a peer cannot see below it.  :class:`ExactFloat64` runs a
transformers model (and the peer applied to it) with every float32 request turned into float64 and
torch's default dtype float64: as the subject, it leaves only auto-round's own arithmetic, which is
then exact to ~1e-15.  With ``default_dtype=torch.float32`` one float32 constant remains, auto-round's
Hadamard scale ``1 / torch.tensor(n).sqrt()``: a drift of ~3e-8 to 1e-7.
"""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from fuzz.errors import BadInput, Refusal
from fuzz.materialize import GraphModel
from verifier import registry as _registries
from verifier.transform import Calibration, NamedTransform

FEATURE = "not-a-transformers-family"
#: ``precision`` option: ``transformers`` (its float32 RMSNorm/RoPE/router policy: a float64 verdict is blind
#: below ~1e-7) or ``float64`` (a GraphModel subject converted, rotated and run float64 everywhere, so the
#: bare conversion, ``hf-bridge``, is exact and a float64 verdict sees the peer's own arithmetic; campaigns
#: run peers this way).
PRECISIONS = ("transformers", "float64")
SPINQUANT_ITERS = 2

# name -> (config, data_type); config None = no auto-round call (the control)
_PEERS: dict[str, tuple[Any, str | None]] = {
    "hf-bridge": (None, None),
    "autoround-hadamard": ({"hadamard_type": "hadamard"}, "int"),
    "autoround-hadamard-b8": ({"hadamard_type": "hadamard", "block_size": 8}, "int"),
    "autoround-random-hadamard": ({"hadamard_type": "random_hadamard"}, "int"),
    "autoround-inplace": ({"backend": "inplace", "hadamard_type": "inplace_quarot_hadamard"}, "int"),
    "autoround-quarot": ("quarot", None),
    "autoround-spinquant": ("spinquant", None),
    "autoround-hadamard-mxfp": ({"hadamard_type": "hadamard"}, "mx_fp"),
}
_BLOCK = re.compile(r"^autoround-hadamard-b(\d+)$")


# ---------------------------------------------------------------------------------------- precision
class _Float64Everywhere(TorchFunctionMode):
    """Every request for a lower floating dtype (``.float()``, ``.to(torch.float32)``, ``dtype=``)
    yields float64 instead."""

    _LOW = (torch.float32, torch.float16, torch.bfloat16)
    _METHODS = {torch.Tensor.float: torch.Tensor.double, torch.Tensor.half: torch.Tensor.double,
                torch.Tensor.bfloat16: torch.Tensor.double}

    @classmethod
    def _up(cls, a):
        return torch.float64 if isinstance(a, torch.dtype) and a in cls._LOW else a

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        func = self._METHODS.get(func, func)
        args = tuple(self._up(a) for a in args)
        kwargs = {k: self._up(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


@contextmanager
def float64_everywhere(default_dtype: torch.dtype = torch.float64):
    """Lower-precision dtype requests become float64, and torch's default dtype is ``default_dtype``."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(default_dtype)
    try:
        with _Float64Everywhere():
            yield
    finally:
        torch.set_default_dtype(before)


class ExactFloat64(nn.Module):
    """A transformers causal LM run with float64 everywhere (its float32 policy switched off).

    As the oracle's subject it measures a peer's own arithmetic: reference and rotated model share
    every operator and constant, and the peer itself runs under :func:`float64_everywhere` too.
    ``default_dtype=torch.float32`` keeps torch's default dtype, so constants a peer builds without a
    dtype (``torch.tensor(n).sqrt()``) stay float32: that isolates such constants.
    """

    def __init__(self, model: nn.Module, default_dtype: torch.dtype = torch.float64):
        super().__init__()
        self.model, self.default_dtype = model, default_dtype
        self.config = getattr(model, "config", None)

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def forward(self, input_ids, **kwargs):
        with float64_everywhere(self.default_dtype):
            return self.model(input_ids, **kwargs)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise BadInput(f"peer option precision must be one of {PRECISIONS}, got {precision!r}")


def _forward_float64(model: nn.Module) -> nn.Module:
    """``model`` with its forward run under :func:`float64_everywhere`; module names unchanged, so the
    oracle still matches its nodes (``lm_head``) to the layout's."""
    inner = model.forward

    def forward(*args, **kwargs):
        with float64_everywhere():
            return inner(*args, **kwargs)
    model.forward = forward
    return model


# ---------------------------------------------------------------------------------------- bridge
def transformers_model(name: str, model: nn.Module, library: str = "auto-round rotates") -> nn.Module:
    """The transformers model to rotate: converted from a family GraphModel, or the model itself (``library``
    says who transforms it in a refusal)."""
    from transformers import PreTrainedModel

    from fuzz.families import check_family, family_of, to_transformers

    if isinstance(model, GraphModel):
        if family_of(model.layout) is None:
            try:
                check_family(model.layout)
                why = "no registered family"
            except BadInput as exc:
                why = str(exc).splitlines()[0]
            raise Refusal(name, f"{library} transformers models; {why}", op="model",
                          path=model.layout.meta.get("name", "layout"), feature=FEATURE)
        return to_transformers(model)
    if isinstance(model, PreTrainedModel):
        return model
    raise Refusal(name, f"takes a family GraphModel or a transformers model, got {type(model).__name__}",
                  op="model", path=type(model).__name__, feature="not-a-transformers-model")


_PATCHED = (("auto_round.wrapper", "WrapperLinear", ("_qdq_weight", "_qdq_act", "_hadamard_patched")),
            ("auto_round.wrapper", "WrapperWALayer", ("forward", "_hadamard_forward_patched")),
            ("auto_round.export.export_to_autoround.qlinear_fp", "QuantLinear", ("pack", "_pack_patched")))


@contextmanager
def _class_patches_restored(report: dict):
    """Undo the class-level patches of auto-round's ``transform`` backend (see the module docstring)."""
    import importlib

    saved = []
    for mod_name, cls_name, attrs in _PATCHED:
        cls = getattr(importlib.import_module(mod_name), cls_name)
        saved.append((cls, {a: cls.__dict__[a] for a in attrs if a in cls.__dict__}, attrs))
    try:
        yield
    finally:
        for cls, before, attrs in saved:
            for a in attrs:
                now = cls.__dict__.get(a)
                if now is not before.get(a):
                    report["class_patches"] = report.get("class_patches", 0) + 1
                    if a in before:
                        setattr(cls, a, before[a])
                    else:
                        delattr(cls, a)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


class Peer:
    """One ``apply_rotation`` configuration as an oracle transform; ``last`` reports the last call
    (``backend``-independent facts: weights changed, hooks added, class patches undone)."""

    def __init__(self, name: str, config: Any, data_type: str | None):
        self.name, self.config, self.data_type = name, config, data_type
        self.last: dict = {}

    def __repr__(self) -> str:
        return f"Peer({self.name!r}, {self.config!r}, data_type={self.data_type!r})"

    def call_config(self, dtype: torch.dtype, block_size: int | None = None, spinquant_dtype: str = "model"):
        """The exact ``config`` argument handed to ``apply_rotation`` for a model in ``dtype``."""
        cfg = self.config
        if cfg in ("quarot", "spinquant"):
            train = cfg == "spinquant"
            cfg = {"algorithm": "spinquant", "trainable_rotation": train, "trainable_smooth": train}
            if train:
                cfg["iters"] = SPINQUANT_ITERS
            if spinquant_dtype == "model":
                cfg["dtype"] = dtype
        elif isinstance(cfg, dict):
            cfg = dict(cfg)
            if block_size is not None:
                cfg["block_size"] = block_size
        return cfg

    def __call__(self, model: nn.Module, calib: Calibration, block_size: int | None = None,
                 spinquant_dtype: str = "model", seed: int | None = None,
                 precision: str = "transformers") -> nn.Module:
        _check_precision(precision)
        if precision == "float64" and isinstance(model, GraphModel):
            with float64_everywhere():  # RoPE tables built at init in float64 too
                hf = transformers_model(self.name, model)
            rotated = self(ExactFloat64(hf), calib, block_size, spinquant_dtype, seed)
            return _forward_float64(rotated.model)
        outer = model if isinstance(model, ExactFloat64) else None
        hf = transformers_model(self.name, outer.model if outer is not None else model)
        self.last = report = {"peer": self.name}
        if self.config is None:
            return outer or hf
        from auto_round.algorithms.transforms import apply_rotation
        from auto_round.algorithms.transforms.hadamard.inplace.hooks import clear_random_hadamard_cache

        dtype = next(hf.parameters()).dtype
        config = self.call_config(dtype, block_size, spinquant_dtype)
        kwargs = {} if self.data_type is None else {"data_type": self.data_type}
        if self.config == "spinquant":
            kwargs["dataloader"] = [{"input_ids": ids} for ids in calib.batches(1)]
        report["config"], report["kwargs"] = repr(config), sorted(kwargs)
        before = {k: v.detach().clone() for k, v in hf.state_dict().items()}
        hooks = _hooks(hf)
        clear_random_hadamard_cache()
        exact = float64_everywhere(outer.default_dtype) if outer is not None else nullcontext()
        with _class_patches_restored(report), torch.random.fork_rng(), exact:
            torch.manual_seed(calib.seed if seed is None else seed)
            out = apply_rotation(hf, config, **kwargs)
        after = out.state_dict()
        report["weights_changed"] = sum(1 for k, v in after.items()
                                        if k not in before or not torch.equal(before[k], v))
        report["hooks_added"] = _hooks(out) - hooks
        if outer is not None:
            outer.model = out
            return outer
        return out


# ---------------------------------------------------------------------------------------- registry
def names() -> list[str]:
    """The listed peers (``autoround-hadamard-b<k>`` is accepted for any block size ``k``)."""
    return list(_PEERS)


def peer(name: str) -> Peer:
    """The :class:`Peer` object behind ``name`` (its ``last`` attribute reports the last call)."""
    m = _BLOCK.match(name)
    if name in _PEERS:
        return Peer(name, *_PEERS[name])
    if m and int(m.group(1)) > 0:
        return Peer(name, {"hadamard_type": "hadamard", "block_size": int(m.group(1))}, "int")
    raise BadInput(f"unknown peer transform {name!r}; available: {names()} "
                   f"(and autoround-hadamard-b<k> for any block size k)")


def get(name: str, **options) -> NamedTransform:
    """The peer called ``name`` with ``options`` (``block_size``, ``spinquant_dtype``, ``seed``, ``precision``)."""
    _check_precision(options.get("precision", "transformers"))
    return NamedTransform(name, peer(name), options, registry="quant.peers")


# verifier's registry ``peers``: a float64 campaign runs peers with precision="float64" (module docstring),
# auto-round logs a block per call, and an entry recorded at the default precision is the same finding
_registries.register("peers", sys.modules[__name__], float64_options={"precision": "float64"},
                     precision_option="precision", default_precision="transformers",
                     noisy_loggers={"autoround": "auto_round.logger"}, signature_free_options=("precision",))
