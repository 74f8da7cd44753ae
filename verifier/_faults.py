"""The one private fault hook: how the known-buggy transforms (:mod:`verifier.mutants`) get their bugs.

A transform never takes a test-only keyword.  Where a mutant's bug acts, the transform asks
``fault(name)``: ``None`` (always, outside tests) or the parameters the fault was injected with.  A
mutant runs the real transform inside ``inject(name, **params)``::

    with inject("unscaled_consumer", where=pred):
        model = norm_absorb(model, calib)

The state is a :class:`contextvars.ContextVar`, so an injection is confined to the code that runs inside
the ``with`` block (this thread, this task) and is undone on exit, exceptions included.

It lives here, next to the transform protocol (:mod:`verifier.transform`), because both the reference
transforms (:mod:`verifier.reference`) and the library (``quant.transforms``, a layer above) ask it:
imports stay one-way.  Tests and ``verifier.mutants`` only; never a feature.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, Iterator, Mapping

# fault -> where it acts and what it does (the mutants in verifier/mutants.py are built from these)
FAULTS = {
    "unscaled_consumer": "norm-absorb leaves the norm readers for which where(layout, consumer) holds unscaled",
    "expert_output_axis": "norm-absorb scales fused experts on down_proj's output H axis, not gate_up_proj's input",
    "router_bias_in_weights": "moe-absorb leaves each router weighing its experts by score + e_score_correction_bias "
                              "(the bias must only choose them)",
    "expert_up_bias_unscaled": "up-down divides the experts' up rows by s but not the up part of gate_up_proj_bias",
    "pair_reflection": "pair-pca keeps each 2x2 U a reflection (det -1) instead of a rotation",
    "kpe_per_head": "pair-pca rotates each query head's MLA RoPE rows by its own U, as if k_pe were per head, and "
                    "the one shared k_pe by head 0's",
    "pair_bias_unrotated": "pair-pca rotates the q/k weight rows of each RoPE pair but not their biases",
    "float32_angles": "pair-pca's random rotation angles are rounded to float32",
    "symmetric_gamma": "spectral-pca builds Gamma = B^T diag(g) B instead of diag(g) B",
    "block_scale_before_rotation": "wht-scale's block form folds W~ = W D Q_b (the scale applied before the block "
                                   "rotation) while the online input stays x Q_b D^-1",
    "writer_bias_unpermuted": "permute_hidden permutes the residual writers' weight rows but not their biases",
    "rope_unscaled": "a layout rewrite (quant.transforms.graph_edit) re-emits every RoPE node from its theta alone, "
                     "dropping its scaling (inv_freq table, attention_factor, NTK / long tables)",
    "heads_across_groups": "permute_heads moves query heads across GQA groups and leaves the kv heads in place",
    "lm_head_bias_dropped": "a layout edit (graph_edit.LayoutEdit.apply) rebuilds the lm_head without its bias",
    "positions_unmasked": "a layout edit (graph_edit.LayoutEdit.apply) rebuilds a position_embedding that follows "
                          "the attention_mask (OPT) with plain positions (from the first column, padding included)",
    "window_dropped": "a layout edit (graph_edit.LayoutEdit.apply) rebuilds attention nodes without their sliding window",
    "alibi_unpermuted": "permute_heads permutes the heads but not the attention's ALiBi slopes",
    "sinks_unpermuted": "permute_heads permutes the heads but not the attention's sink logits",
    "softcap_scale_outside": "fold_attn_scale moves the folded factor across the soft-cap (rescales the cap too)",
    "position_table_unpermuted": "permute_hidden permutes the token embedding's columns but not the position table's",
    "position_table_unrotated": "residual-rotation rotates the token embedding but not the learned position table",
    "extra_rows_unrotated": "residual-rotation rotates only the embedding rows of the ids the logits predict, not "
                            "the rows past the output vocabulary (extra_input_id: Moshi's initial token)",
    "shared_head_gamma": "spectral-pca takes head 0's q/k norm weight for every head of a norm with group_weights",
    "homogeneity_assumed": "up-down moves s across every plain MLP's act as if it were relu (degree-1 homogeneous)",
    "sparsemixer_dropped": "a layout edit (graph_edit.LayoutEdit.apply) re-emits a sparsemixer router (Phimoe) as the "
                           "plain softmax top-2 router",
    "chunk_dropped": "a layout edit (graph_edit.LayoutEdit.apply) rebuilds attention nodes without their chunks "
                     "(Llama-4's chunked local attention becomes full causal attention)",
    "temperature_form_confused": "a layout edit (graph_edit.LayoutEdit.apply) rebuilds attention nodes with Beam's "
                                 "smooth temperature (1 + (p + o) / L) ** beta as Llama-4's steps "
                                 "1 + beta log(1 + floor((p + o) / L))",
    "temperature_dropped": "a layout edit (graph_edit.LayoutEdit.apply) rebuilds attention nodes without their "
                           "temperature tuning (the per-position query factor of Ministral3 / Mistral4 / Llama-4)",
    "clamped_glu_as_linear": "up-down scales a dense clamped SwiGLU's up rows and down columns as if the GLU were "
                             "linear in up (clamp(up) + 1 is not)",
    "weightless_norm_unabsorbed": "norm-absorb scales the readers of a weight-free norm (g = 1) but has no weight "
                                  "to divide by s, so nothing absorbs 1 / s",
    "rope_direction_lost": "a layout edit (graph_edit.LayoutEdit.apply) re-emits a RoPE by -theta (NanoChat) as "
                              "the rotation by +theta",
    "ple_unrotated": "residual-rotation leaves the per-layer input projection (Gemma4 PLE: the linear from the token "
                     "embedding into the per-layer inputs) unrotated",
    "expert_scale_moved": "a layout edit (graph_edit.LayoutEdit.apply) re-emits experts whose routing weight scales "
                          "their input (Llama 4) as experts weighting their outputs",
    "residual_gate_rotated": "residual-rotation takes a residual gate (Ergo: the stream times a per-channel factor) "
                             "for a plain residual add and rotates the stream through it",
    "differential_pairs_broken": "permute_heads moves a differential attention's second heads (i + h/2) by "
                                 "another rule than their first heads i, breaking the pairs P_i - lam P_{i + h/2}",
    "indexer_key_unrotated": "residual-rotation leaves the sparse-attention indexer's key projection (the linear "
                             "of the stream behind index_topk's k port) in the old basis: a rotator that only knows "
                             "the attention's q/k/v readers; the selection changes only where top-k < seq",
    "xielu_quadratic": "up-down moves s^2 across xIELU as if it were relu2 (its positive side a_p x^2 + beta x is "
                       "quadratic, but not homogeneous)",
}

_ACTIVE: ContextVar[Mapping[str, Mapping[str, Any]]] = ContextVar("archfuzz_faults", default=MappingProxyType({}))


def _known(name: str) -> None:
    if name not in FAULTS:
        raise ValueError(f"unknown fault {name!r}; faults: {sorted(FAULTS)}")


@contextmanager
def inject(name: str, **params: Any) -> Iterator[None]:
    """Make ``fault(name)`` return ``params`` for the code run inside the block."""
    _known(name)
    token = _ACTIVE.set(MappingProxyType({**_ACTIVE.get(), name: MappingProxyType(dict(params))}))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def fault(name: str) -> Mapping[str, Any] | None:
    """The parameters of fault ``name`` when injected (an empty mapping for a plain switch), else ``None``:
    test with ``is not None``."""
    _known(name)
    return _ACTIVE.get().get(name)
