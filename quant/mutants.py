"""Mutants of the transform library: known-buggy variants of ``quant:norm-absorb``, ``quant:moe-absorb``,
``quant:pair-pca`` and ``quant:spectral-pca``, registered into verifier's ``mutants`` registry (``mutants:<name>``).  Each is a
real failure mode of rotation/scaling quantizers (most from the seed paper's code), kept so the tests can
show the oracle has teeth; never use them for anything else.

=====================  ==========================================================  ==========================
name                   bug                                                         applies when
=====================  ==========================================================  ==========================
gproj_omission         norm absorption misses the linear that feeds a gate's       a gate logit projection
                       logits (the seed code's ``g_proj``: softplus(Wx/s) !=        reads a norm (head gate,
                       softplus(Wx)/s)                                             shared-expert gate)
skip_norm_consumer     norm absorption leaves one reader of each norm unscaled     a norm has >= 2 readers
router_unscaled        norm absorption leaves the MoE router unscaled              MoE
expert_wrong_axis      fused experts scaled on the output H axis (down_proj)       MoE
                       instead of gate_up_proj's input axis
corrected_weights      a router's e_score_correction_bias (DeepSeek-V3) used in    a sigmoid router with a
                       the routing weights, not only in the choice of experts      correction bias (and
                                                                                   not renormalised top-1)
expert_bias_unscaled   up-down scales the experts' up rows but not the up part of  expert biases
                       gate_up_proj_bias (GPT-OSS)
pair_reflection        RoPE pair "rotation" with det -1 (an eigh reflection)        RoPE on plain q/k
forget_pair_bias       pair rotation applied to weight rows, not to the biases     RoPE and q/k biases
float32_rotation       rotation angles built in float32 inside a float64 model     plain q/k
symmetric_gamma        spectral-PCA with Gamma = U^T diag(g) U (the seed code's     an RMS q/k norm
                       stale form) instead of diag(g) U
block_scale_before_    wht-scale-block folds W D Q_b (scales before the block       always (an o_proj reads
rotation               rotation) while the online input is x Q_b D^-1               an even width: block >= 2)
window_dropped         wht-scale's rebuilt layout keeps each attention's heads      a sliding-window layer
                       but not its sliding window (full causal attention)
rope_scaling_dropped   a layout rewrite (wht-scale's) re-emits RoPE from theta,     scaled RoPE
                       dropping linear / llama3 / yarn / dynamic / longrope /
                       proportional (Gemma4: its unrotated pairs rotated)
                       scaling and the attention factor
position_unrotated     residual rotation of the token embedding only (the learned    learned positions, RMS,
                       position table left in the old basis)                       pre-norm, untied
shared_head_gamma      spectral-PCA builds every head's Gamma from head 0's q/k     a q/k RMS norm with a
                       norm weight (code written for Qwen3's shared q_norm)         weight per head (Cohere)
assumed_homogeneous    up-down moves s from up to down across every plain MLP's    a dense plain MLP whose
                       act as if it were relu (gelu, silu, quick_gelu: not          act is not relu
                       homogeneous; relu2: s^2, not s)
mla_latent_unscaled    norm absorption divides an MLA latent norm's gamma          multi-head latent attention
                       (kv_a_layernorm, q_a_layernorm) by s but leaves its reader  (``mla``)
                       (kv_b_proj, q_b_proj) unscaled: an absorber that only knows
                       the residual-stream readers (q/k/v, gates, MLP)
kpe_per_head           pair-PCA on MLA rotates each query head's RoPE rows by its   multi-head latent attention
                       own U as if k_pe were per head; the one shared k_pe gets    (``mla``), two or more
                       head 0's                                                    heads
lm_head_bias_dropped   a layout rewrite (wht-scale's) re-emits the lm_head without  a logit bias
                       its logit bias (GPT-J, CodeGen)
extra_rows_unrotated   residual-rotation rotates only the embedding rows of ids     an id read and never
                       the logits predict (the first out-vocab rows)                predicted (Moshi)
positions_unmasked     a layout rewrite (wht-scale's) re-emits OPT's learned        learned positions that
                       positions that follow the attention_mask as plain ones      follow the mask (shows on
                       (counted from the first column, padding included)           the oracle's padded batch)
temperature_dropped    a layout rewrite (wht-scale's) re-emits each attention      attention temperature
                       without its temperature tuning (the queries no longer       tuning
                       scaled by 1 + beta log(1 + floor(p / L)))
weightless_unabsorbed  norm absorption scales the readers of a weight-free norm     weight-free norms
                       (OLMo, NanoChat: g = 1) with no weight to divide by s        (pre-norm or sandwich)
rope_direction_lost    a layout rewrite (wht-scale's) re-emits a RoPE by -theta     RoPE by -theta
                       (NanoChat) as the rotation by +theta                         (``rope_reversed``)
xielu_as_relu2         up-down moves s^2 across xIELU as if it were relu2 (its          a dense xIELU MLP
                       positive side a_p x^2 + beta x is quadratic, not homogeneous)
expert_scale_moved     a layout rewrite (wht-scale's) re-emits experts whose routing  experts scaling their
                       weight scales their input (Llama 4) as weighting their       input
                       output: the GLU is not linear, so the function changes       (``expert_scale_input``)
ple_unrotated          residual-rotation rotates every reader of the stream it knows  per-layer input
                       but leaves Gemma4's per-layer input projection (the linear   embeddings (Gemma4 PLE),
                       reading the token embedding) in the old basis               RMS, pre-norm, untied
residual_gate_rotated  residual-rotation takes Ergo's residual gate for a plain add   a residual gate
                       and rotates the stream through it: Q^T diag(c) Q is not      (``residual_gate``)
                       diagonal, so the function changes
chunk_dropped          a layout rewrite (wht-scale's) re-emits each attention      chunked local attention
                       without its chunks (Llama-4's attention_chunk_size: full
                       causal attention instead)
temperature_form_      a layout rewrite (wht-scale's) re-emits Beam's smooth       the power form of the
confused               temperature (1 + (p + o) / L) ** beta as Llama-4's steps    attention temperature
                       1 + beta log(1 + floor((p + o) / L))
indexer_unrotated      residual-rotation leaves the sparse-attention indexer's key  DeepSeek Sparse Attention
                       projection (wk, reading the stream) in the old basis: the    (``sparse_index_topk``),
                       index scores, so the keys each query reads, change (only     RMS, pre-norm
                       where top-k < seq: the oracle's 12 tokens > top-k 3;
                       ``untie=True``: tied layouts too)
=====================  ==========================================================  ==========================

Loaded with the registries (the ``archfuzz.registries`` entry points, :func:`verifier.registry.load_plugins`).
"""

from __future__ import annotations

from fuzz.layout import Layout
from verifier.mutants import register_mutant


def _feeds(op: str, port: int | None = None):
    """A consumer predicate: the linear's output is read by an ``op`` node (at ``port``)."""
    def pred(layout: Layout, consumer: str) -> bool:
        return any(layout.op(c) == op and (port is None or p == port) for c, p in layout.consumers(consumer))
    return pred


def _last_reader(layout: Layout, consumer: str) -> bool:
    return any(readers and readers[-1][0] == consumer
               for readers in (layout.consumers(n) for n, _ in layout.graph.in_edges(consumer)))


def _reads_latent_norm(layout: Layout, consumer: str) -> bool:
    """The consumer reads a norm of a projection's output, not of the residual stream (MLA's ``kv_a_layernorm``
    on the compressed kv, ``q_a_layernorm`` on the q latent): the reader is ``kv_b_proj`` / ``q_b_proj``."""
    return any(layout.op(i) == "norm" and layout.op(layout.inputs(i)[0]) in ("head_slice", "linear")
               for i in layout.inputs(consumer))


_SKIP = {"on_unsupported": "skip"}
_PLAIN_QK = {"qk_norm": "none", "rope": True, "fused_qkv": False}  # pair-pca refuses fused qkv rows (fused-qkv)

# name, correct transform, fault injected while it runs (with its parameters), options the mutant fixes,
# layout constraints (fuzz.strategies.layouts) under which its bug always shows
register_mutant("gproj_omission", "quant:norm-absorb", "unscaled_consumer", params={"where": _feeds("gate", 1)},
                fixed=_SKIP, applies={"attn_gate": "head_softplus", "placement": ("pre", "sandwich")})
register_mutant("skip_norm_consumer", "quant:norm-absorb", "unscaled_consumer", params={"where": _last_reader},
                fixed=_SKIP, applies={"placement": "pre", "residual": "sequential"})
register_mutant("router_unscaled", "quant:norm-absorb", "unscaled_consumer", params={"where": _feeds("router")},
                fixed=_SKIP, applies={"moe": True, "placement": ("pre", "sandwich")})
register_mutant("expert_wrong_axis", "quant:norm-absorb", "expert_output_axis", fixed=_SKIP,
                applies={"moe": True, "placement": ("pre", "sandwich")})
register_mutant("corrected_weights", "quant:moe-absorb", "router_bias_in_weights",
                applies={"moe": True, "placement": ("pre", "sandwich"), "router": ("sigmoid_bias", "grouped")})
register_mutant("expert_bias_unscaled", "quant:up-down", "expert_up_bias_unscaled",
                applies={"moe": True, "expert_form": "bias"})
register_mutant("pair_reflection", "quant:pair-pca", "pair_reflection", applies=_PLAIN_QK)
register_mutant("forget_pair_bias", "quant:pair-pca", "pair_bias_unrotated", applies={**_PLAIN_QK, "qkv_bias": True})
register_mutant("float32_rotation", "quant:pair-pca", "float32_angles", fixed={"rotation": "random"},
                applies={**_PLAIN_QK, "max_head_dim": 12})
register_mutant("symmetric_gamma", "quant:spectral-pca", "symmetric_gamma",
                applies={"qk_norm": ("per_head", "full"), "norm": "rms", "fused_qkv": False})
register_mutant("block_scale_before_rotation", "quant:wht-scale-block", "block_scale_before_rotation",
                fixed={"scales": "random"})
register_mutant("lm_head_bias_dropped", "quant:wht-scale", "lm_head_bias_dropped", applies={"lm_head_bias": True})
register_mutant("positions_unmasked", "quant:wht-scale", "positions_unmasked",
                applies={"position_embedding": True, "positions_from_mask": True})
register_mutant("temperature_dropped", "quant:wht-scale", "temperature_dropped",
                applies={"attn_temperature": (0.5, 0.1)})
register_mutant("temperature_form_confused", "quant:wht-scale", "temperature_form_confused",
                applies={"attn_temperature": (0.5, 0.1), "attn_temperature_form": "power"})
register_mutant("chunk_dropped", "quant:wht-scale", "chunk_dropped", applies={"attn_chunk": (4, 2)})
register_mutant("window_dropped", "quant:wht-scale", "window_dropped", applies={"sliding_window": (4, 2)})
register_mutant("rope_scaling_dropped", "quant:wht-scale", "rope_unscaled",
                applies={"rope": True, "rope_scaling": ("linear", "llama3", "yarn", "dynamic", "longrope",
                                                        "proportional")})
register_mutant("assumed_homogeneous", "quant:up-down", "homogeneity_assumed",
                applies={"mlp": ("gelu", "gelu_tanh", "relu2", "quick_gelu", "fast_gelu", "silu", "bloom_gelu"),
                         "moe": False, "mlp_xielu": False})
register_mutant("sparsemixer_dropped", "quant:wht-scale", "sparsemixer_dropped",
                applies={"moe": True, "router": "sparsemixer"})
register_mutant("ple_unrotated", "quant:residual-rotation", "ple_unrotated",
                applies={"per_layer_input": 4, "norm": "rms", "placement": "pre", "tie_embeddings": False,
                         "residual_gate": False})
register_mutant("expert_scale_moved", "quant:wht-scale", "expert_scale_moved",
                applies={"moe": True, "expert_scale_input": True})
register_mutant("clamped_glu_as_linear", "quant:up-down", "clamped_glu_as_linear",
                applies={"mlp": "clamped_swiglu", "moe": False, "mlp_xielu": False})
register_mutant("shared_head_gamma", "quant:spectral-pca", "shared_head_gamma",
                applies={"qk_norm": "per_head_own", "norm": "rms", "fused_qkv": False, "norm_weightless": False})
register_mutant("mla_latent_unscaled", "quant:norm-absorb", "unscaled_consumer",
                params={"where": _reads_latent_norm}, fixed=_SKIP, applies={"mla": ("q_lora", "q_direct")})
register_mutant("kpe_per_head", "quant:pair-pca", "kpe_per_head", applies={"mla": ("q_lora", "q_direct")})
register_mutant("position_unrotated", "quant:residual-rotation", "position_table_unrotated",
                applies={"position_embedding": True, "norm": "rms", "placement": "pre", "tie_embeddings": False,
                         "residual_gate": False})
register_mutant("extra_rows_unrotated", "quant:residual-rotation", "extra_rows_unrotated",
                applies={"extra_input_id": True, "norm": "rms", "placement": "pre", "tie_embeddings": False,
                         "residual_gate": False})
register_mutant("weightless_unabsorbed", "quant:norm-absorb", "weightless_norm_unabsorbed", fixed=_SKIP,
                applies={"norm_weightless": True, "placement": ("pre", "sandwich")})
register_mutant("rope_direction_lost", "quant:wht-scale", "rope_direction_lost",
                applies={"rope": True, "rope_reversed": True})
register_mutant("xielu_as_relu2", "quant:up-down", "xielu_quadratic", applies={"mlp_xielu": True, "moe": False})
register_mutant("residual_gate_rotated", "quant:residual-rotation", "residual_gate_rotated", fixed={"untie": True},
                applies={"residual_gate": True, "residual": "sequential", "norm": "rms", "placement": "pre"})
register_mutant("indexer_unrotated", "quant:residual-rotation", "indexer_key_unrotated", fixed={"untie": True},
                applies={"sparse_index_topk": 3, "norm": "rms", "placement": "pre", "residual_gate": False})
