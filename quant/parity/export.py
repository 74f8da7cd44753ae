"""Export: :class:`ExportWrapper` (token ids in, logits out, each node through its ``export_forward``) and
:func:`export_ir` (``torch.export`` -> ``openvino.convert_model`` -> ``openvino.save_model`` with float32
weights), run in a child by :func:`export_job`."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fuzz.materialize import GraphModel
from verifier.outcomes import Stage

from .runner import enter_stage


def _is_hf(model: nn.Module) -> bool:
    return hasattr(model, "config") and hasattr(model, "generation_config")


class ExportWrapper(nn.Module):
    """``input_ids (batch, seq) -> logits (batch, seq, vocab)`` for ``torch.export``.

    A GraphModel runs its own node modules along its execution plan, each through ``export_forward`` (no
    data-dependent token check; the fused experts dense: see the package docstring); a transformers model is called with ``use_cache=False``
    and only its logits are returned; any other module is called as ``model(ids)``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        m = self.model
        if isinstance(m, GraphModel):
            values: dict[str, torch.Tensor] = {}
            for node, inputs, done in m._plan:
                args = [values[i] for i in inputs] if inputs else [input_ids]
                values[node] = m.nodes[node].export_forward(*args)
                for i in done:
                    del values[i]
            return values[m.layout.sink]
        out = m(input_ids=input_ids, use_cache=False) if _is_hf(m) else m(input_ids)
        return out.logits if hasattr(out, "logits") else out


@contextlib.contextmanager
def _static_experts(model: nn.Module):
    """A transformers MoE runs transformers' ``batched_mm`` experts inside the block; yields its name or None."""
    config = getattr(model, "config", None)
    before = getattr(config, "_experts_implementation", None)
    switch = _is_hf(model) and before not in (None, "batched_mm") and hasattr(model, "set_experts_implementation")
    if switch:
        model.set_experts_implementation("batched_mm")
        switch = config._experts_implementation == "batched_mm"  # a dense model keeps its "eager"
    try:
        yield "batched_mm" if switch else None
    finally:
        if switch:
            model.set_experts_implementation(before)


def export_ir(model: nn.Module, ids: torch.Tensor, path: str | Path) -> dict:
    """Export ``model`` on ``ids`` through ``torch.export`` to OpenVINO IR at ``path`` (``.xml`` + ``.bin``,
    float32 weights).  Returns timings and the IR's size; reports its steps with :func:`enter_stage`."""
    import openvino as ov

    wrapper = model if isinstance(model, ExportWrapper) else ExportWrapper(model)
    wrapper.eval()
    figures = {}
    enter_stage(Stage.EXPORT, "torch.export")
    t0 = time.perf_counter()
    with torch.no_grad(), _static_experts(wrapper.model) as experts:
        program = torch.export.export(wrapper, (ids,))
    t1 = time.perf_counter()
    if experts:
        figures["experts_implementation"] = experts
    enter_stage(Stage.EXPORT, "ov.convert_model")
    ov_model = ov.convert_model(program)
    t2 = time.perf_counter()
    enter_stage(Stage.EXPORT, "ov.save_model")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(path), compress_to_fp16=False)
    t3 = time.perf_counter()
    figures.update(torch_export_s=round(t1 - t0, 3), convert_s=round(t2 - t1, 3), save_s=round(t3 - t2, 3),
                   ir_ops=len(ov_model.get_ops()), ir_bytes=path.with_suffix(".bin").stat().st_size,
                   ir=str(path))
    return figures


def available_devices() -> dict:
    """``{device: {"name", "capabilities"}}`` for every device OpenVINO reports."""
    import openvino as ov

    core = ov.Core()
    out = {}
    for dev in core.available_devices:
        info = {}
        for key, prop in (("name", "FULL_DEVICE_NAME"), ("capabilities", "OPTIMIZATION_CAPABILITIES")):
            try:
                info[key] = core.get_property(dev, prop)
            except Exception as exc:  # a plugin that cannot answer is still listed
                info[key] = f"unavailable: {exc}"
        out[dev] = info
    return out


def export_job(model_path: str, ids_path: str, xml_path: str) -> dict:
    """Child: load the pickled wrapper, export it, and list OpenVINO's devices."""
    import openvino as ov

    enter_stage(Stage.EXPORT, "load model")
    wrapper = torch.load(model_path, weights_only=False)
    ids = torch.from_numpy(np.load(ids_path))
    figures = export_ir(wrapper, ids, xml_path)
    figures["devices"] = available_devices()
    figures["openvino"] = ov.__version__
    return figures

