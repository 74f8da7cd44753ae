"""Quantize a real checkpoint with auto-round in a transformed basis, unfold it, and account for every weight.

The pipeline (:func:`quantize`), each step refusing rather than guessing:

1. **Oracle gate** (:func:`gate`).  The checkpoint is imported through its recorded dataflow
   (:func:`fuzz.importer.import_model`) and the chosen recipe is verified on it in float64
   (``verifier.verify``).  Anything but ``invariant`` raises :class:`GateRefused`, naming the verdict's
   status, message and first divergent node.  No recipe (``none``) and auto-round's own Hadamard
   (``autoround-hadamard``, a peer) skip the gate: there is nothing of ours to prove.
2. **Transform** (:func:`prepare`), with calibration windows of the calibration text:

   * weight-only recipes (``bbt-absorb``, ``bbt-pair-pca``, ``bbt-spectral-pca``): the recipe edits the
     transformers model in place (``quant.transforms.get(name, host="transformers")``).  The result is
     already a plain checkpoint of the original architecture whose weights live in the transformed basis
     (norm ``g/s``, linears ``W diag(s)``, q/k rows rotated per RoPE pair);
   * ``bbt-spectral`` (T1, online WHT): the recipe runs on the imported GraphModel; every transformed
     linear of the transformers model then gets the weight ``W~ = [W, 0] Q D`` (``in_features = d_pad``)
     and a **forward pre-hook** computing ``x~ = [x, 0] Q D^-1``; ``bbt-spectral-block`` (T1's group-aligned
     block form): ``W~ = W Q_b D`` (``in_features`` unchanged) and ``x~ = x Q_b D^-1``; ``bbt-spectral-exact``
     (the exact-width full Hadamard ``Q_n``): ``W~ = W Q_n D`` and ``x~ = x Q_n D^-1``; ``bbt-spectral-alpha-search``:
     the padded form with alpha chosen per linear from a grid for this run's quantizer (its ``bits`` and
     ``group_size``: :func:`recipe_options`).  auto-round 0.16 runs the wrapped
     layer's forward pre-hooks itself (``auto_round/wrapper.py`` ``WrapperLinear.forward``: "Even without
     act_quant, run pre-hooks for online Hadamard correctness"), so its block reconstruction loss is
     measured on exactly the function of the transformed model, and it quantizes ``W~``.  No auto-round
     internals are patched.

3. **auto-round** (:func:`run_autoround`): ``AutoRound(model, tokenizer, bits, group_size, sym, iters,
   nsamples, seqlen, dataset=<pre-tokenized (1, seqlen) windows>, device_map="cpu", amp=False,
   enable_torch_compile=False, low_cpu_mem_usage=False, enable_alg_ext=False)`` plus
   :attr:`QuantConfig.options` (:data:`AUTOROUND_OPTIONS`); ``iters=0`` is plain RTN (``disable_opt_rtn=True``:
   no imatrix).  After ``quantize()`` the fake-quantized (QDQ) weights are left
   on the model.
4. **Unfold** (:func:`unfold`): T1 layers are folded back, ``W_eff = fwht(W^ / s)[:, :d_in]``
   (:func:`quant.transforms.wht_scale.unfold` on the GraphModel holding the quantized ``W^``), the hooks are
   removed and ``in_features`` restored.  The oracle checks the unfold: the quantized model in the
   transformed basis (GraphModel) and the unfolded plain model (the transformers model re-imported) agree
   in float64 (``verifier.relative_error`` on logits).  Weight-only recipes need no folding (un-rotating
   would move the weights off the quantization grid); the same float64 check then compares the quantized
   transformed model with its saved-and-reloadable export.
5. **Coverage** (:func:`coverage`): every parameter is ``quantized`` (checked: at most ``2^bits`` distinct
   values per group), or ``excluded`` with a reason (embeddings, the lm_head, 1-D norm weights and biases);
   any other matrix (e.g. fused 3-D experts auto-round did not reach) is ``NOT COVERED`` and fails the run.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from fuzz.errors import BadInput
from fuzz.hadamard import rotation
from fuzz.layout import atomic_dir
from fuzz.ops import wht_in_form

RECIPES = ("none", "bbt-absorb", "bbt-pair-pca", "bbt-spectral-pca", "bbt-spectral", "bbt-spectral-block",
           "bbt-spectral-exact", "bbt-spectral-alpha-search", "autoround-hadamard")
WEIGHT_ONLY = ("bbt-absorb", "bbt-pair-pca", "bbt-spectral-pca")
ONLINE = ("bbt-spectral", "bbt-spectral-block", "bbt-spectral-exact", "bbt-spectral-alpha-search")
#: the recipes that choose alpha per linear from a grid, for the quantizer's bits and group size
ALPHA_SEARCH = ("bbt-spectral-alpha-search",)
BITS = (2, 3, 4)  # A16 weight-only widths auto-round is run at
UNFOLD_TOL = 1e-9  # float64 relative logit error between the transformed quantized model and the unfolded one
SHIPPED_TOL = 1e-5  # the same, for the shipped float32 checkpoint (its weights are the float64 fold rounded)


class GateRefused(BadInput):
    """The oracle did not prove the recipe on this checkpoint: quantization is refused."""

    def __init__(self, recipe: str, verdict):
        self.verdict = verdict
        fd = verdict.first_divergent
        where = f"; first divergent node {fd['node']} ({fd['op']}, rel {fd['rel']:.2e})" if fd else ""
        super().__init__(f"oracle gate: recipe {recipe!r} is not proven on this checkpoint: verdict "
                         f"{verdict.status}: {verdict.message or ''}{where}; refusing to quantize")


@dataclass
class QuantConfig:
    bits: int = 2
    group_size: int = 64
    sym: bool = False
    iters: int = 20
    nsamples: int = 16
    seqlen: int = 256
    batch_size: int = 4
    seed: int = 0
    lr: float | None = None
    enable_alg_ext: bool = False
    #: further auto-round (SignRound) options by their auto-round name, e.g. ``{"enable_neuqi": True}``
    #: (:data:`AUTOROUND_OPTIONS`); passed as given, after the defaults above, RTN (``iters=0``) included
    options: dict = field(default_factory=dict)
    #: ``(coarse, fine)`` scale candidates of the NeUQI search (auto-round's ``AR_NEUQI_COARSE``/``AR_NEUQI_FINE``;
    #: its CPU default is 64/32, whose eager sweep costs ~10 CPU-s per 1536x1024 W2 matrix); None = auto-round's
    neuqi_grid: tuple | None = None

    def check(self) -> None:
        if self.bits not in BITS:
            raise BadInput(f"bits must be {', '.join(map(str, BITS[:-1]))} or {BITS[-1]} (A16 weight-only), "
                           f"got {self.bits}")
        if self.group_size <= 0 or self.iters < 0 or self.nsamples <= 0 or self.seqlen <= 1 or self.batch_size <= 0:
            raise BadInput(f"invalid quantization settings: {self}")
        if self.neuqi_grid is not None and (len(self.neuqi_grid) != 2 or min(self.neuqi_grid) < 2):
            raise BadInput(f"neuqi_grid must be (coarse, fine) with at least 2 candidates each, got {self.neuqi_grid}")
        unknown = sorted(set(self.options) - set(AUTOROUND_OPTIONS))
        if unknown:
            raise BadInput(f"unknown auto-round option(s) {unknown}; known: {', '.join(AUTOROUND_OPTIONS)}")


#: auto-round 0.16 SignRound options a :class:`QuantConfig` may set (``options``), with what each does
AUTOROUND_OPTIONS = {
    "minmax_lr": "learning rate of the per-group min/max scale factors (default: lr)",
    "enable_minmax_tuning": "tune the per-group min/max scale factors (default True)",
    "enable_norm_bias_tuning": "also tune norm weights and biases (experimental in auto-round)",
    "nblocks": "decoder blocks reconstructed together (default 1)",
    "enable_neuqi": "NeUQI grid search (arXiv 2505.17595): (scale, integer zero) per group searched once, "
                    "imatrix-weighted when one is collected (enable_alg_ext), then frozen during tuning",
    "enable_quanted_input": "each block reads the quantized output of the previous ones (default True)",
    "not_use_best_mse": "keep the last iteration instead of the best-loss one",
    "momentum": "sign-SGD momentum (default 0)",
    "gradient_accumulate_steps": "mini-batches per update (default 1)",
    "disable_opt_rtn": "iters=0 only: False = auto-round's optimized RTN (imatrix-weighted scale search)",
}


PRESETS = {
    # fits this 2-core machine (<= ~10 minutes per quantization of SmolLM2-135M, T1 included). Two settings
    # matter more than their size (docs/findings.md, "Why the first head-to-head was wrong"): auto-round's
    # default lr is 1/iters, tuned for 200 iterations; at 10 it is 0.1 and its sign-SGD moves tuned blocks
    # further from the RTN grid than RTN's own error, so lr is pinned at 0.01; and a batch smaller than
    # nsamples makes auto-round pick its "best" iteration by losses measured on different mini-batches.
    "cpu": dict(iters=10, nsamples=8, seqlen=256, batch_size=8, lr=0.01),
    # the seed paper's settings (auto-round defaults with 128 x 2048 calibration tokens): bigger machines
    "paper": dict(iters=200, nsamples=128, seqlen=2048, batch_size=8),
}


#: what a preset changes when it tunes W2 weights (docs/findings.md, "The W2 frontier"): auto-round's NeUQI search
#: of each group's (scale, integer zero), weighted by the imatrix that ``enable_alg_ext`` collects, on a 16/8 grid
#: (the 64/32 default took BBT-spectral from 513 to 884 s for 101.3 vs 105.9 PPL, seed 0), and 20 sign-SGD
#: iterations instead of 10 (the 16/8 grid leaves the time). BBT-spectral alpha 0.25 with these: W2 PPL 87.7 +- 4.0
#: on SmolLM2 (3 seeds, 482-548 s); at 10 iterations 111.2 +- 5.8, with lr 0.005 / 0.02 / 0.05 instead of 0.01
#: 128.5 / 108.6 / 375.2 (seed 0); without NeUQI 195.6.
W2_SETTINGS = {"cpu": dict(enable_alg_ext=True, options={"enable_neuqi": True}, neuqi_grid=(16, 8), iters=20)}
#: the recipes' alpha when none is given, per width: 0.25 was the best W2 alpha on SmolLM2 (cpu preset, 3 seeds);
#: elsewhere the paper's 0.5
DEFAULT_ALPHA = {2: 0.25}


def default_alpha(bits: int) -> float:
    return DEFAULT_ALPHA.get(bits, 0.5)


def recipe_options(recipe: str, alpha: float | tuple | None = None, bits: int = 2, group_size: int = 64) -> dict:
    """The options the transform ``recipe`` gets: its ``alpha`` (``None``: 0.5); an alpha search its grid (``None``:
    its default grid; a single float is refused) and the quantizer it chooses for (``bits``, ``group_size``)."""
    if recipe in ALPHA_SEARCH:
        if alpha is not None and not isinstance(alpha, (tuple, list)):
            raise BadInput(f"recipe {recipe!r} chooses alpha per linear from a grid; got the single alpha {alpha!r} "
                           f"(give a tuple, or none for its default grid)")
        from quant.transforms.wht_scale import ALPHA_GRID
        return {"alpha": ALPHA_GRID if alpha is None else tuple(alpha), "bits": bits, "group_size": group_size}
    return {"alpha": 0.5 if alpha is None else alpha}


def preset_settings(preset: str, bits: int | None = None, **overrides) -> dict:
    """The tuning settings of ``preset`` with every override that is not ``None`` applied (CLI flags); with
    ``bits=2`` and tuning (iters > 0), the preset's :data:`W2_SETTINGS` over the preset, under the overrides (RTN
    stays plain round-to-nearest)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    settings = {**PRESETS[preset], **given}
    if bits == 2 and settings["iters"] > 0:
        settings = {**PRESETS[preset], **copy.deepcopy(W2_SETTINGS.get(preset, {})), **given}
    return settings


# ============================================================================================ gate
def gate(model: nn.Module, recipe: str, alpha: float | tuple | None = None, seed: int = 0, bits: int = 2,
         group_size: int = 64):
    """The float64 oracle verdict of ``recipe`` (with :func:`recipe_options`) on ``model``'s imported dataflow;
    raises :class:`GateRefused`."""
    import quant.transforms as T
    from fuzz.importer import import_model
    from verifier import verify

    if recipe not in RECIPES:
        raise BadInput(f"unknown recipe {recipe!r}; choose one of {RECIPES}")
    if recipe in ("none", "autoround-hadamard"):
        return None
    graph = import_model(model)  # checked against the checkpoint first: the proof is about its own function
    transform = T.get(recipe, **recipe_options(recipe, alpha, bits, group_size))
    verdict = verify(transform, graph, dtype=torch.float64, seed=seed, batch=1, seq=8, calib_batch=1)
    if not verdict.ok:
        raise GateRefused(recipe, verdict)
    verdict.import_check = graph.layout.meta["import_check"]  # the import the proof rests on (its floor)
    return verdict


# ============================================================================================ transform
class WHTInput:
    """Forward pre-hook ``x -> [x, 0] Q D^-1`` (T1's online operator, ``Q`` the form ``block``'s rotation:
    :func:`fuzz.hadamard.rotation`): padded, one dense ``(d_in, d_pad)`` matmul with ``1 / s`` folded in; the block
    and exact forms, ``x`` reshaped ``(a, b)`` times the rotation's Kronecker factors (``X Q_b``; exact:
    ``Q_m^T (X Q_b)``), then ``/ s``."""

    def __init__(self, scale: torch.Tensor, d_in: int, dtype: torch.dtype, block: int | str | None = None):
        rot = rotation(block, d_in, scale.numel())
        self.d_in, self.d_pad, self.block = d_in, rot.d_pad, block
        self.scale = scale.detach().double().clone()  # s, for quant.online.make_online
        if block is None:
            self.matrix = (rot.matrix() / scale.double()[None, :]).to(dtype)
        else:
            self.split, qa, qb = rot.factors()
            self.qm_t = None if qa is None else qa.to(dtype)
            self.matrix = qb.to(dtype)
            self.inv_scale = (1.0 / scale.double()).to(dtype)

    def __call__(self, module, args):
        x = args[0]
        if self.block is None:
            return (x @ self.matrix.to(x.dtype),) + tuple(args[1:])
        y = x.unflatten(-1, self.split) @ self.matrix.to(x.dtype)
        if self.qm_t is not None:
            y = self.qm_t.to(x.dtype) @ y
        return (y.flatten(-2) * self.inv_scale.to(x.dtype),) + tuple(args[1:])


@dataclass
class Prepared:
    """A transformers model ready for auto-round, plus what :func:`unfold` needs."""

    model: nn.Module
    recipe: str
    graph: object | None = None          # T1: the transformed GraphModel (its linears hold W~)
    hooked: dict = field(default_factory=dict)  # T1: linear node -> (module path, wht node, hook handle)
    seconds: float = 0.0
    log: list = field(default_factory=list)


def _module_of(model: nn.Module, qualified_param: str) -> tuple[str, nn.Module]:
    path = qualified_param.rsplit(".", 1)[0]
    return path, model.get_submodule(path)


def prepare(model: nn.Module, recipe: str, calib_ids: torch.Tensor, alpha: float | tuple | None = None, seed: int = 0,
            bits: int = 2, group_size: int = 64) -> Prepared:
    """Apply ``recipe`` (with :func:`recipe_options`) to the transformers ``model`` (in place) with calibration token
    ids ``(n, seqlen)``."""
    import quant.transforms as T
    from fuzz.importer import import_model
    from verifier.transform import Calibration

    t0 = time.time()
    calib = Calibration(calib_ids, seed)
    if recipe in ("none", "autoround-hadamard"):
        return Prepared(model, recipe)
    if recipe in WEIGHT_ONLY:
        out = T.get(recipe, host="transformers", **recipe_options(recipe, alpha))(model, calib)
        if out is not model:
            raise BadInput(f"recipe {recipe!r} added operators to this model; only weight-only recipes run here")
        return Prepared(model, recipe, seconds=time.time() - t0)
    if recipe not in ONLINE:
        raise BadInput(f"unknown recipe {recipe!r}; choose one of {RECIPES}")
    graph = import_model(model)  # checked against the (untransformed) model before T1 is built on it
    param_map = graph.layout.meta["param_map"]
    t1 = T.get(recipe, **recipe_options(recipe, alpha, bits, group_size))(graph, calib)
    prepared = Prepared(model, recipe, graph=t1, log=list(getattr(t1, "transform_log", [])))
    for wht in t1.layout.of_op("wht_in"):
        d_in, block = t1.layout.params(wht)["in_features"], wht_in_form(t1.layout.params(wht))
        s = t1.nodes[wht].scale.detach()
        for reader, _ in t1.layout.consumers(wht):
            if t1.layout.op(reader) != "linear":
                raise BadInput(f"{recipe}: {wht} feeds a {t1.layout.op(reader)}, not a linear")
            path, mod = _module_of(model, param_map[reader]["weight"])
            if not isinstance(mod, nn.Linear):
                raise BadInput(f"{recipe}: {path} is a {type(mod).__name__}, not an nn.Linear: auto-round "
                               "cannot quantize it with an online input transform")
            w = t1.nodes[reader].weight.detach()
            mod.weight = nn.Parameter(w.to(mod.weight.dtype).clone(), requires_grad=False)
            mod.in_features = w.shape[1]
            handle = mod.register_forward_pre_hook(WHTInput(s, d_in, mod.weight.dtype, block))
            prepared.hooked[reader] = (path, wht, handle)
    prepared.seconds = time.time() - t0
    return prepared


# ============================================================================================ auto-round
def _inference_tensors_to_normal(model: nn.Module) -> int:
    """Replace every inference-mode parameter/buffer by a normal clone (auto-round's rotation makes them)."""
    n = 0
    for mod in model.modules():
        for k, p in list(mod._parameters.items()):
            if p is not None and p.is_inference():
                mod._parameters[k] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
                n += 1
        for k, b in list(mod._buffers.items()):
            if b is not None and b.is_inference():
                mod._buffers[k] = b.clone()
                n += 1
    return n


def hadamard_rotation(model: nn.Module, block_size: int = 64) -> dict:
    """auto-round's own Hadamard rotation, applied before :func:`run_autoround` (the peer method).

    ``apply_rotation`` builds its weights under ``torch.inference_mode``; SignRound (``iters > 0``) then
    fails with "Inference tensors cannot be saved for backward".  Workaround (PyTorch's documented one:
    clone inference tensors outside inference mode): every inference parameter/buffer is cloned.
    """
    from auto_round.algorithms.transforms import apply_rotation
    cfg = {"hadamard_type": "hadamard", "block_size": block_size}
    apply_rotation(model, cfg, data_type="int")
    return {"rotation_config": cfg, "inference_tensors_cloned": _inference_tensors_to_normal(model)}


def run_autoround(model: nn.Module, tokenizer, cfg: QuantConfig, calib_windows: torch.Tensor) -> tuple[dict, float]:
    """auto-round on ``model`` in place (QDQ weights left on it); returns ``(layer_config, seconds)``."""
    from auto_round import AutoRound

    cfg.check()
    data = [w[None, :].clone() for w in calib_windows[:cfg.nsamples]]
    kwargs = dict(bits=cfg.bits, group_size=cfg.group_size, sym=cfg.sym, iters=cfg.iters, nsamples=cfg.nsamples,
                  seqlen=cfg.seqlen, batch_size=min(cfg.batch_size, cfg.nsamples), dataset=data, device_map="cpu",
                  amp=False, enable_torch_compile=False, low_cpu_mem_usage=False, seed=cfg.seed)
    if cfg.iters == 0:
        kwargs["disable_opt_rtn"] = True
    else:
        kwargs["enable_alg_ext"] = cfg.enable_alg_ext
        if cfg.lr is not None:  # RTN has nothing to learn
            kwargs["lr"] = cfg.lr
    kwargs.update(cfg.options)
    t0 = time.time()
    with _neuqi_grid(cfg.neuqi_grid):
        ar = AutoRound(model, tokenizer, **kwargs)
        out = ar.quantize()
    layer_config = out[1] if isinstance(out, tuple) and len(out) > 1 else getattr(ar, "layer_config", {})
    return dict(layer_config or {}), time.time() - t0


@contextlib.contextmanager
def _neuqi_grid(grid):
    """auto-round reads its NeUQI grid from the environment when it searches: set it for this run only."""
    import os
    names = ("AR_NEUQI_COARSE", "AR_NEUQI_FINE")
    saved = {n: os.environ.get(n) for n in names}
    if grid is not None:
        os.environ.update({n: str(int(v)) for n, v in zip(names, grid)})
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


# ============================================================================================ unfold
def _float64(model: nn.Module) -> nn.Module:
    """``model`` itself when every floating tensor of it is float64, else a float64 copy (``model`` is left as it
    was): the same weights, computed without float32's rounding."""
    f64 = all(t.dtype == torch.float64 for t in (*model.parameters(), *model.buffers()) if t.is_floating_point())
    return model if f64 else copy.deepcopy(model).double()


def _f64_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Float64 logits of ``model`` on ``ids`` in eval mode; a float64 model is run as it is (its mode restored), any
    other on a float64 copy (``model`` is left as it was)."""
    m = _float64(model)
    training = m.training
    try:
        with torch.no_grad():
            out = m.eval()(ids)
    finally:
        m.train(training)
    return (out.logits if hasattr(out, "logits") else out).double()


def unfold(prepared: Prepared, check_ids: torch.Tensor) -> dict:
    """Fold T1 back into plain linears of the original shape; the float64 oracle compares before and after."""
    from fuzz.importer import import_model
    from quant.transforms.wht_scale import unfold as unfold_graph
    from verifier.tolerance import relative_error

    model = prepared.model
    if prepared.recipe == "autoround-hadamard":
        return {"unfold": "not applicable: auto-round's rotation stays as its own online hooks/fused weights",
                "checked": False}
    if prepared.recipe in ONLINE:
        t1 = prepared.graph
        for reader, (path, _wht, _handle) in prepared.hooked.items():
            t1.nodes[reader].weight.data.copy_(model.get_submodule(path).weight.detach().to(t1.nodes[reader].weight.dtype))
        transformed = copy.deepcopy(t1).double()       # the quantized W^ in the transformed basis, float64
        ref = _f64_logits(transformed, check_ids)
        plain = unfold_graph(transformed)                # W_eff = fwht(W^ / s)[:, :d_in], float64
        del transformed  # one float64 model less while the shipped one is imported and run
        if plain.layout.of_op("wht_in"):
            raise BadInput(f"unfold left wht_in nodes: {plain.layout.of_op('wht_in')}")
        for reader, (path, _wht, handle) in prepared.hooked.items():
            mod = model.get_submodule(path)
            handle.remove()
            w = plain.nodes[reader].weight.detach()
            mod.weight = nn.Parameter(w.to(mod.weight.dtype).clone(), requires_grad=False)
            mod.in_features = w.shape[1]
        prepared.hooked = {}
    else:
        # the quantized weights in the transformed basis: a re-import of the model as it now is, checked
        # against that same model (its right reference: the GraphModel must compute what will ship)
        # (imported in float64, as the shipped model below)
        transformed = import_model(_float64(model))
        plain = transformed
        ref = _f64_logits(transformed, check_ids)
    if any(len(m._forward_pre_hooks) for m in model.modules()):
        raise BadInput("the unfolded model still carries forward pre-hooks")
    rel, abs_ = relative_error(_f64_logits(plain, check_ids), ref)
    if rel > UNFOLD_TOL:
        raise BadInput(f"unfold check failed: transformed quantized vs unfolded logits differ by {rel:.3e} "
                       f"relative in float64 (bound {UNFOLD_TOL:.0e})")
    # the plain model as it ships (a fresh import of the transformers model: no archfuzz operator in it);
    # its weights are the float64 fold rounded to the checkpoint dtype
    # checked against itself, in float64 (a float32 import check compares two float32 paths whose rounding
    # differs by more than its 1e-4 bound on the padded batch of a W2 model)
    shipped_rel, _ = relative_error(_f64_logits(import_model(_float64(model)), check_ids), ref)
    bound = UNFOLD_TOL if next(model.parameters()).dtype == torch.float64 else SHIPPED_TOL
    if shipped_rel > bound:
        raise BadInput(f"unfold check failed: the shipped model differs from the float64 unfold by "
                       f"{shipped_rel:.3e} relative (bound {bound:.0e})")
    return {"unfold": "wht-scale folded" if prepared.recipe in ONLINE else "identity (weight-only recipe)",
            "checked": True, "max_rel_err_f64": rel, "max_abs_err_f64": abs_, "tolerance": UNFOLD_TOL,
            "shipped_vs_transformed_rel": shipped_rel, "shipped_tolerance": bound}


# ============================================================================================ coverage
def _on_grid(w: torch.Tensor, bits: int, group_size: int) -> bool:
    if w.dim() != 2 or w.shape[1] % group_size:
        return False
    g = w.detach().reshape(w.shape[0], -1, group_size).sort(-1).values
    distinct = (g[..., 1:] != g[..., :-1]).sum(-1) + 1
    return bool((distinct <= 2 ** bits).all())


def coverage(model: nn.Module, layer_config: dict, bits: int, group_size: int) -> dict:
    """Every parameter is quantized (and on the grid) or excluded with a reason; otherwise ``NOT COVERED``."""
    quantized_names = {n for n, c in layer_config.items() if isinstance(c, dict) and c.get("bits", 16) <= 8}
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    rows = []
    seen = set()
    for mod_name, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            name = f"{mod_name}.{pname}" if mod_name else pname
            if id(p) in seen:
                rows.append({"name": name, "shape": list(p.shape), "status": "excluded", "reason": "tied (alias)"})
                continue
            seen.add(id(p))
            row = {"name": name, "shape": list(p.shape)}
            layer_config = layer_config or {}
            if isinstance(mod, nn.Linear) and pname == "weight" and mod_name in quantized_names:
                ok = _on_grid(p, bits, group_size)
                row.update(status="quantized" if ok else "NOT COVERED",
                           reason=f"W{bits} g{group_size}" if ok else "listed as quantized but not on a grid")
            elif isinstance(mod, nn.Embedding):
                row.update(status="excluded", reason="embedding (A16 weight-only: embeddings stay float)")
            elif mod is getattr(model, "lm_head", None) or mod_name.endswith("lm_head"):
                row.update(status="excluded", reason="lm_head" + (" (tied to the embeddings)" if tied else ""))
            elif p.dim() <= 1:
                row.update(status="excluded", reason="1-D (norm weight or bias)")
            else:
                why = (f"auto-round left it at {layer_config[mod_name].get('bits')} bits"
                       if mod_name in layer_config else "auto-round did not reach it")
                row.update(status="NOT COVERED", reason=f"{type(mod).__name__}.{pname}: {why}")
            rows.append(row)
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    params = {s: sum(int(torch.Size(r["shape"]).numel()) for r in rows if r["status"] == s) for s in counts}
    return {"ok": "NOT COVERED" not in counts, "counts": counts, "parameters": params, "rows": rows}


def coverage_markdown(cov: dict) -> str:
    lines = ["| parameter | shape | status | reason |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {tuple(r['shape'])} | {r['status']} | {r['reason']} |" for r in cov["rows"]]
    lines.append(f"\ncounts: {cov['counts']}; parameters: {cov['parameters']}")
    return "\n".join(lines)


# ============================================================================================ pipeline
def quantize(model: nn.Module, tokenizer, recipe: str, cfg: QuantConfig, calib_windows: torch.Tensor, *,
             alpha: float | tuple | None = None, hadamard_block: int = 64, gate_verdict=None, check_ids: torch.Tensor | None = None,
             quiet: bool = True, before_unfold=None) -> dict:
    """Gate, transform, auto-round, unfold, coverage; ``model`` is quantized in place.  Returns a report.

    ``before_unfold(prepared)``: called after auto-round, before the unfold, with the :class:`Prepared` model
    (for T1: ``W^`` in the padded rotated basis and its online pre-hooks; e.g. :func:`quant.online.make_online`)."""
    cfg.check()
    if recipe not in RECIPES:
        raise BadInput(f"unknown recipe {recipe!r}; choose one of {RECIPES}")
    if calib_windows.shape[0] < cfg.nsamples or calib_windows.shape[1] != cfg.seqlen:
        raise BadInput(f"need {cfg.nsamples} calibration windows of {cfg.seqlen} tokens, got {tuple(calib_windows.shape)}")
    options = recipe_options(recipe, alpha, cfg.bits, cfg.group_size) if recipe in WEIGHT_ONLY + ONLINE else {}
    report = {"recipe": recipe, "alpha": options.get("alpha"), "config": asdict(cfg)}
    t0 = time.time()
    verdict = gate_verdict if gate_verdict is not None else gate(model, recipe, alpha, bits=cfg.bits,
                                                                 group_size=cfg.group_size)
    report["gate"] = None if verdict is None else {"status": verdict.status, "max_rel_err": verdict.max_rel_err,
                                                   "seconds": round(time.time() - t0, 1),
                                                   "import_check": getattr(verdict, "import_check", None)}
    sink = io.StringIO()
    with _quiet(quiet, sink):
        prepared = prepare(model, recipe, calib_windows[:cfg.nsamples], alpha=alpha, seed=cfg.seed, bits=cfg.bits,
                           group_size=cfg.group_size)
        report["transform_seconds"] = round(prepared.seconds, 1)
        if recipe in ALPHA_SEARCH:  # each linear's chosen alpha (its err per grid value: the transform_log)
            report["alpha_chosen"] = {e["node"]: e["alpha"] for e in prepared.log if "alpha_search" in e}
        if recipe == "autoround-hadamard":
            report["peer"] = hadamard_rotation(model, hadamard_block)
        layer_config, seconds = run_autoround(model, tokenizer, cfg, calib_windows)
    report["autoround_seconds"] = round(seconds, 1)
    ids = check_ids if check_ids is not None else calib_windows[:1, :16]
    cov = coverage(model, layer_config, cfg.bits, cfg.group_size)  # on W^, before the unfold densifies T1 layers
    if before_unfold is not None:
        before_unfold(prepared)
    report["unfold"] = unfold(prepared, ids)
    report["coverage"] = {k: cov[k] for k in ("ok", "counts", "parameters")}
    report["coverage_rows"] = cov["rows"]
    report["layer_config_keys"] = len(layer_config)
    if not cov["ok"]:
        bad = [r["name"] for r in cov["rows"] if r["status"] == "NOT COVERED"]
        raise BadInput(f"coverage: {len(bad)} weights neither quantized nor explicitly excluded: {bad[:8]}")
    report["total_seconds"] = round(time.time() - t0, 1)
    return report


@contextlib.contextmanager
def _quiet(quiet: bool, sink):
    if not quiet:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("auto_round", "autoround", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sink):
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def save(model: nn.Module, tokenizer, out: str | Path, report: dict) -> Path:
    """``save_pretrained`` (safetensors) of the plain, unfolded model + ``archfuzz_quantize.json``.

    Written into a sibling temporary folder and renamed into place, so ``out`` is either the complete
    checkpoint or untouched (an existing ``out`` is replaced only once the new one is complete)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for mod in model.modules():  # auto-round's QDQ side attributes are not part of the architecture
        for attr in ("scale", "zp", "q_scale", "global_name", "tmp_name"):
            if attr in mod.__dict__ and not isinstance(getattr(mod, attr, None), (nn.Parameter, nn.Module)):
                mod.__dict__.pop(attr, None)
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "quantization_config"):
        with contextlib.suppress(Exception):
            delattr(cfg, "quantization_config")
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / "archfuzz_quantize.json").write_text(json.dumps(report, indent=1, default=str))
    return out


# ============================================================================================ text
def text_ids(tokenizer, path: str | Path | None, split: str) -> tuple[torch.Tensor, dict]:
    """Token ids of the text at ``path`` (read by path), or of the offline default split; plus a description."""
    import hashlib

    from quant.default_text import default_text, describe
    from quant.text import read_text, tokenize
    if path is None:
        text, info = default_text(split), describe(split)
    else:
        text = read_text(path)
        info = {"source": str(path), "chars": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    if split == "evaluation":
        text = text[:200_000]  # the first 8,192 tokens are far inside this; tokenizing less is faster
        info["chars_tokenized"] = len(text)
    return tokenize(tokenizer, text), info
