"""Known transformers families as :class:`~fuzz.decoder.DecoderSpec` presets, and the bridge to them.

A *family* is a transformers decoder class (``LlamaForCausalLM``, ``Qwen3MoeForCausalLM``, ...) seen as
a region of the spec space: a preset function (:func:`family_spec`) maps the family's config knobs
(tiny dims, bias flags, expert counts) to the spec that switches on exactly that family's features.

Membership is decided by round trip, not by a feature checklist: a layout is an instance of a family
iff reading the family's knobs back from its spec (``layout.meta["spec"]``) and rebuilding the preset
gives the *same graph* (:func:`families_of`, :func:`family_of`).  A knob the family cannot express
(interleaved RoPE in Llama, a LayerNorm in Qwen3, a dense layer in Mixtral) changes the graph, so the
layout is not a member; :func:`check_family` names the spec fields that are to blame.

:func:`to_transformers` builds the real transformers model of a member layout and copies a
:class:`~fuzz.materialize.GraphModel`'s weights into it.  With ``numerics="transformers"`` and float64
weights, the two agree to float64 rounding (``sdpa`` attention: transformers' eager attention upcasts
the softmax to float32, sdpa on CPU stays in the model dtype).

Registered families, in :func:`family_of` priority order (the first member wins; e.g. a Granite layout
without multipliers is a Llama, a Qwen3-MoE layout without sparse layers is a Qwen3):

=========  ============================  =====================================================================
name       transformers class            features
=========  ============================  =====================================================================
llama      LlamaForCausalLM              RMSNorm, SwiGLU, ``attention_bias`` (q/k/v/o), ``mlp_bias``
qwen2      Qwen2ForCausalLM              q/k/v bias, no o bias
qwen3      Qwen3ForCausalLM              per-head q/k RMSNorm, ``attention_bias``
qwen3_moe  Qwen3MoeForCausalLM           Qwen3 attention, fused experts, ``norm_topk_prob``, sparse/dense mix
mixtral    MixtralForCausalLM            all layers sparse, top-k always renormalised
granite    GraniteForCausalLM            Llama plus embedding / residual / logit multipliers
gemma      GemmaForCausalLM              ``1 + w`` RMSNorm, GeGLU (tanh), embeddings scaled by sqrt(hidden)
qwen2_moe  Qwen2MoeForCausalLM           q/k/v bias, experts plus a sigmoid-gated shared expert
mistral    MistralForCausalLM            Llama without biases, ``sliding_window`` on every layer
phi3       Phi3ForCausalLM               fused qkv / gate_up weights, partial rotary
stablelm   StableLmForCausalLM           LayerNorm with bias, partial rotary, parallel residual, qkv bias
=========  ============================  =====================================================================

Sliding windows: ``qwen2`` takes ``sliding_window`` and ``max_window_layers`` (layers from it on slide),
``mixtral`` and ``phi3`` take ``sliding_window`` (every layer).

Not registered: OLMo2 (q/k norm over the full width, but norms only *after* each branch with no
pre-norm, a placement :class:`DecoderSpec` has no value for) and Cohere (its RoPE and LayerNorm follow
a float32 policy of their own that ``numerics="transformers"`` does not model).

The package: :mod:`.base` (:class:`Family` and the pieces every family shares: dims, config kwargs,
weight names, draws), one module per family (its preset, knobs, config, support check, weight fusing and
drawn knobs, ending in ``FAMILY``), :mod:`.registry` (the list of family modules: adding a family is a
new module plus one name there), :mod:`.membership`, :mod:`.bridge` (:func:`to_transformers`) and
:mod:`.draws` (the hypothesis strategies).
"""

from .base import Family
from .bridge import to_transformers
from .draws import FamilyCase, family_cases, family_layouts, family_specs
from .membership import check_family, families_of, family_of
from .registry import FAMILIES, family, family_spec

# a family's preset is ``family_spec(name, ...)`` (or ``family(name).preset``); ``fuzz.families.llama`` is the
# family's module
__all__ = ["FAMILIES", "Family", "FamilyCase", "check_family", "families_of", "family", "family_cases",
           "family_layouts", "family_of", "family_spec", "family_specs", "to_transformers"]
