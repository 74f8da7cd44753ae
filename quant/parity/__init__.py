"""Device parity: PyTorch float32 vs OpenVINO, per device and precision hint, with crashes as findings.

The walk (:func:`compare`):

1. **Reference.**  The model (a synthesized or imported :class:`~fuzz.materialize.GraphModel`, possibly
   transformed, or a transformers causal LM) runs in PyTorch float32 on the token ids.
2. **Export** (child process).  :func:`export_ir`: ``torch.export.export`` of :class:`ExportWrapper`
   (token ids in, logits out), ``openvino.convert_model`` of the ExportedProgram, ``openvino.save_model``
   with ``compress_to_fp16=False`` (the default would store float16 weights and lose parity).
3. **Compile + execute** (one child process per device and hint).  Every device OpenVINO reports (CPU
   always; GPU / NPU where present) with the precision hints ``f32`` (plus ``EXECUTION_MODE_HINT=ACCURACY``
   and, on CPU, an f32 KV cache and no dynamic quantization), ``bf16`` and ``f16``; ``default`` (no
   config: what a deployment gets) on request.  The precision the plugin actually chose is read back
   from the compiled model: on a CPU without native f16 the ``f16`` hint silently runs bf16.
4. **Compare** per row: logits relative error ``max|a-b| / max|b|``, top-1 agreement, perplexity of the
   token ids under both (teacher forcing, first token not scored) and ``dPPL``.  The gate: CPU ``f32``
   within :data:`GATE` (relative error <= 1e-5, ``|dPPL|`` <= 0.01, relative 1e-4 above PPL 100: see
   :func:`dppl_bound`); lower-precision hints are reported,
   not gated.  Positions after a MoE top-k near-tie of the reference (margin below ``tie_margin``) are
   set aside: rounding may legitimately flip the routing there.

Every child runs under :func:`run_in_child` (multiprocessing ``spawn``, a timeout, stdout/stderr to a
log): an exception, a segfault, another crash or a hang becomes a :class:`ChildResult` with its
``stage`` (``export`` / ``compile`` / ``execute``) and ``symptom`` instead of a dead campaign; wrong
numbers are the symptom ``inconsistency`` (stage ``execute``).

Export-friendly formulation.  :class:`ExportWrapper` calls a GraphModel's node modules along its own
execution plan instead of ``GraphModel.forward``, each through its ``export_forward`` (the op's exportable
form, declared with the op in :mod:`fuzz.materialize`), for two reasons found by exporting (both reported
upstream, neither changes GraphModel's behaviour):

* ``GraphModel.forward`` checks the token range with ``if ids.min() < 0 ...``: a data-dependent branch
  that ``torch.export`` refuses (``GuardOnDataDependentSymNode``).  The reference run still checks it.
* :class:`~fuzz.materialize.Experts` loops over ``nonzero(routing weights)`` rows (data-dependent
  shapes, ``if rows.numel() == 0``).  Its ``export_forward`` computes the experts densely instead, every
  expert on every token weighted by the (scattered, mostly zero) routing weights: equal in exact
  arithmetic, and since the reference uses the loop, the parity figures also check that the two agree.

A transformers MoE model (Qwen3-MoE, Mixtral, Qwen2-MoE) fails ``torch.export`` the same way in its eager
experts loop; :func:`export_ir` switches it to transformers' own ``batched_mm`` experts implementation
for the export (weights gathered per token and top-k slot: static shapes) and back afterwards.

The package, one room per seam: :mod:`.runner` (child processes: stages, symptoms, crashes and hangs as
results), :mod:`.export` (the wrapper, ``torch.export`` -> OpenVINO IR), :mod:`.device` (precision hints,
compile and execute on a device), :mod:`.comparison` (the reference, the figures, the gate, :func:`compare`),
:mod:`.report` (markdown and JSON), :mod:`.subjects` (the command line's subjects) and :mod:`.corpus`
(exporter findings in the regression corpus: their repro script and the replay hook).
"""

from __future__ import annotations

from .comparison import GATE, TIE_MARGIN, as_float32, compare, dppl_bound, perplexity_of
from .device import HINT_CHOICES, HINTS, compile_config
from .export import ExportWrapper, available_devices, export_job, export_ir
from .report import parity_markdown, write_report
from .runner import STAGES, SYMPTOMS, TIMEOUT, ChildResult, enter_stage, run_in_child
from .subjects import load_subject
from .corpus import PARITY_REPRO  # noqa: E402  (after compare: registers the corpus replay hook)

__all__ = ["GATE", "TIE_MARGIN", "dppl_bound", "perplexity_of", "as_float32", "compare", "HINTS", "HINT_CHOICES",
           "compile_config", "ExportWrapper", "export_ir", "export_job", "available_devices", "parity_markdown",
           "write_report", "STAGES", "SYMPTOMS", "TIMEOUT", "ChildResult", "enter_stage", "run_in_child",
           "load_subject", "PARITY_REPRO"]
