"""OpenVINO compile and execute on one device with one precision hint (:func:`compile_config`), run in a
child by :func:`_run_job`."""

from __future__ import annotations

import time

import numpy as np

from fuzz.errors import BadInput
from verifier.outcomes import Stage

from .runner import enter_stage

HINTS = ("f32", "bf16", "f16")  # "default" (no config at all) may be asked for too
HINT_CHOICES = HINTS + ("default",)  # every hint that may be asked for (the CLI's --hint choices)


def compile_config(device: str, hint: str) -> dict:
    """The compile config of ``hint`` on ``device``: ``f32`` pins accuracy (and, on CPU, an f32 KV cache and
    no dynamic quantization); ``bf16`` / ``f16`` set only the hint; ``default`` sets nothing."""
    if hint == "default":
        return {}
    if hint not in HINTS:
        raise BadInput(f"unknown precision hint {hint!r}; hints: {HINT_CHOICES}")
    cfg = {"INFERENCE_PRECISION_HINT": hint}
    if hint == "f32":
        cfg["EXECUTION_MODE_HINT"] = "ACCURACY"
        if device.startswith("CPU"):
            cfg.update(KV_CACHE_PRECISION="f32", DYNAMIC_QUANTIZATION_GROUP_SIZE="0")
    return cfg


def compile_timed(core, model, device: str, config: dict):
    """``core.compile_model(model, device, config)`` in the COMPILE stage: (compiled model, seconds, the
    inference precision the plugin chose, or None where it has no such property)."""
    enter_stage(Stage.COMPILE, "compile_model")
    t0 = time.perf_counter()
    compiled = core.compile_model(model, device, config)
    compile_s = time.perf_counter() - t0
    try:
        effective = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    except Exception:  # a plugin without the property
        effective = None
    return compiled, compile_s, effective


def _run_job(xml_path: str, ids_path: str, device: str, config: dict, out_path: str) -> dict:
    """Child: compile the IR on ``device`` with ``config``, run it twice on the ids, save the logits."""
    import openvino as ov

    ids = np.load(ids_path)
    enter_stage(Stage.COMPILE, "read_model")
    core = ov.Core()
    ov_model = core.read_model(xml_path)
    ov_model.reshape({ov_model.input(0): ov.PartialShape(list(ids.shape))})  # static: NPUs want it
    compiled, compile_s, effective = compile_timed(core, ov_model, device, config)
    enter_stage(Stage.EXECUTE, "infer")
    request = compiled.create_infer_request()
    t0 = time.perf_counter()
    logits = request.infer({0: ids})[compiled.output(0)]
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits = request.infer({0: ids})[compiled.output(0)].copy()
    again = time.perf_counter() - t0
    np.save(out_path, logits.astype(np.float32, copy=False))
    return {"compile_s": round(compile_s, 3), "first_infer_s": round(first, 4), "infer_s": round(again, 4),
            "effective_precision": effective}
