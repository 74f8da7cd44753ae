"""One op, one place: every op of ``fuzz.ops.SPECS`` has every piece registered against it.

An op is declared once (``fuzz.ops.declare``: parameters, ports, shape inference, parameter shapes and
initialisers, the decoder-spec axes that draw it, its feature tags); its backends register against its
name (``@torch_impl`` in ``fuzz.materialize``, ``@import_pattern`` / ``refuse_import`` in
``fuzz.importer.patterns``).  The completeness test names the op and the missing piece; the registries
refuse an unknown or a second registration.
"""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from fuzz import DecoderSpec, LayerSpec, build, materialize
from fuzz.importer import IMPORT_PATTERNS, import_pattern, refuse_import
from fuzz.layout import Layout
from fuzz.materialize import MODULES, Node, torch_impl
from fuzz.ops import ALWAYS, SPECS, NotDrawn, OpSpec, declare, parameter_shapes

_SPEC_FIELDS = {f.name for f in fields(DecoderSpec)}

# The ops no DecoderSpec draws (the spectral transforms make them), in a small hand-built layout.
_SPECTRAL = Layout.from_nodes([
    ("tokens", "tokens", {"vocab": 16}, []),
    ("embed", "embedding", {"vocab": 16, "dim": 12}, ["tokens"]),
    ("wht", "wht_in", {"in_features": 12, "d_pad": 16}, ["embed"]),
    ("proj", "linear", {"in_features": 16, "out_features": 12, "bias": True}, ["wht"]),
    ("gamma", "gamma_norm", {"dim": 4, "groups": 3}, ["proj"]),
    ("lm_head", "lm_head", {"dim": 12, "vocab": 16}, ["gamma"]),
])
# Every optional parameter switched on (biases, LayerNorm, per-head norms, a shared expert, a tied head).
_RICH = DecoderSpec(layers=(LayerSpec(sparse=True), LayerSpec()), norm="layer", norm_bias=True, qkv_bias=True,
                    o_bias=True, mlp_bias=True, qk_norm="per_head", shared_expert=True, tie_embeddings=True,
                    attn_gate="output_sigmoid", attn_scale=0.2, attn_softcap=2.0, final_softcap=4.0, alibi=True,
                    attn_sinks=True, lm_head_bias=True)


def _switched_on(switch: dict) -> DecoderSpec:
    return DecoderSpec.from_dict({**DecoderSpec().to_dict(), **switch})


def _examples() -> list[Layout]:
    layouts = [build(DecoderSpec()), build(_RICH), build(_RICH.with_(tie_embeddings=False)), _SPECTRAL,
               build(DecoderSpec(attn_differential=True))]  # the attention's lambda vectors (DiffLlama)
    for op_spec in SPECS.values():
        if isinstance(op_spec.drawn_by, tuple):
            layouts += [build(_switched_on(switch)) for switch in op_spec.drawn_by
                        if isinstance(switch, dict) and set(switch) <= _SPEC_FIELDS]
    return layouts


EXAMPLES = _examples()


def _nodes_of(op: str) -> list[tuple[Layout, str]]:
    return [(layout, node) for layout in EXAMPLES for node in layout.of_op(op)]


def _drawn_by_problems(op: str, op_spec: OpSpec) -> list[str]:
    drawn_by = op_spec.drawn_by
    if drawn_by == ALWAYS:
        return [] if build(DecoderSpec()).of_op(op) else ["drawn_by='always' but the default DecoderSpec has none"]
    if isinstance(drawn_by, NotDrawn):
        return [] if drawn_by.reason.strip() else ["drawn_by=NotDrawn without a reason"]
    if not isinstance(drawn_by, tuple) or not drawn_by:
        return [f"drawn_by {drawn_by!r}: expected 'always', switches of DecoderSpec fields or NotDrawn(reason)"]
    problems = []
    for switch in drawn_by:
        unknown = set(switch) - _SPEC_FIELDS if isinstance(switch, dict) else {switch}
        if not switch or unknown:
            problems.append(f"drawn_by switch {switch!r} names no DecoderSpec field(s) {sorted(map(str, unknown))}")
        elif not build(_switched_on(switch)).of_op(op):
            problems.append(f"drawn_by switch {switch!r} does not draw it (no {op} node in the built layout)")
    return problems


def _export_problems(op: str) -> list[str]:
    """Run every example layout holding ``op`` and compare each such node's export_forward with forward."""
    problems = []
    for layout in EXAMPLES:
        nodes = layout.of_op(op)
        if not nodes:
            continue
        model = materialize(layout, seed=1)
        seen: dict[str, tuple] = {}
        handles = [model.nodes[n].register_forward_pre_hook(lambda m, args, n=n: seen.setdefault(n, args))
                   for n in nodes]
        vocab = layout.params(layout.source)["vocab"]
        with torch.no_grad():
            model(torch.randint(0, vocab, (2, 7), generator=torch.Generator().manual_seed(0)))
            for h in handles:
                h.remove()
            for n in nodes:
                module = model.nodes[n]
                want, got = module(*seen[n]), module.export_forward(*seen[n])
                if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-12, atol=1e-12):
                    problems.append(f"export_forward of node {n!r} differs from forward")
    return problems


@pytest.mark.parametrize("op", sorted(SPECS))
def test_every_op_has_every_piece(op):
    op_spec = SPECS[op]
    examples = _nodes_of(op)
    missing = []
    if not callable(op_spec.infer):
        missing.append("shape inference (infer)")
    if op_spec.shapes is None:
        missing.append("parameter shapes (OpSpec.shapes)")
    if not examples:
        missing.append("an example layout: drawn_by draws it nowhere and no hand-built layout holds it")
    for layout, node in examples:
        if op_spec.shapes is None:
            break
        params = layout.params(node)
        for name in parameter_shapes(op, params):
            if name not in op_spec.init:
                missing.append(f"an initialiser for parameter {name!r} (OpSpec.init)")
        tags = op_spec.features(params) if op_spec.features is not None else ()
        if not tags or not all(isinstance(t, str) and t.startswith(f"op:{op}") for t in tags):
            missing.append(f"feature tags 'op:{op}...' (OpSpec.features gave {tags!r} for node {node!r})")
    if not (isinstance(MODULES.get(op), type) and issubclass(MODULES[op], Node)):
        missing.append("a torch implementation (@torch_impl in fuzz/materialize.py)")
    pattern = IMPORT_PATTERNS.get(op)
    if pattern is None or (pattern.convert is None and not (pattern.refusal or "").strip()):
        missing.append("an importer pattern (@import_pattern) or a declared refusal (refuse_import) with its reason")
    missing += _drawn_by_problems(op, op_spec)
    can_run = op in MODULES and examples and op_spec.shapes is not None and \
        not any(m.startswith("an initialiser") for m in missing)
    if can_run:  # materializing needs the module, the shapes and every initialiser
        missing += _export_problems(op)
    assert not missing, f"op {op!r} lacks: " + "; ".join(dict.fromkeys(missing))


def test_initialisers_only_name_declared_parameters():
    for op, op_spec in SPECS.items():
        declared = {name for layout, node in _nodes_of(op) for name in parameter_shapes(op, layout.params(node))}
        assert set(op_spec.init) <= declared, f"op {op!r} initialises parameters it never declares: " \
                                              f"{sorted(set(op_spec.init) - declared)}"


def test_registries_reject_an_unknown_op_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown op 'sliding_attention'; known: \[.*'norm'"):
        torch_impl("sliding_attention")
    with pytest.raises(ValueError, match=r"importer pattern for unknown op 'sliding_attention'"):
        import_pattern("sliding_attention")
    with pytest.raises(ValueError, match=r"unknown op 'sliding_attention'"):
        refuse_import("sliding_attention", "no model has it")


def test_registries_reject_a_second_registration_and_keep_the_first():
    norm_module, norm_pattern, wht_pattern = MODULES["norm"], IMPORT_PATTERNS["norm"], IMPORT_PATTERNS["wht_in"]
    with pytest.raises(ValueError, match=r"op 'norm' already has a torch implementation"):
        torch_impl("norm")
    with pytest.raises(ValueError, match=r"op 'norm' already has an importer pattern"):
        import_pattern("norm")
    with pytest.raises(ValueError, match=r"op 'wht_in' already has an importer pattern"):
        refuse_import("wht_in", "again")
    with pytest.raises(ValueError, match=r"op 'norm' is declared twice"):
        declare(OpSpec("norm", {}, ("x",), SPECS["norm"].infer))
    assert (MODULES["norm"], IMPORT_PATTERNS["norm"], IMPORT_PATTERNS["wht_in"]) == \
           (norm_module, norm_pattern, wht_pattern)


def test_op_features_tag_the_nodes_of_a_layout():
    layout = build(DecoderSpec(rope_style="interleaved", norm_weight_form="1+w", layers=(LayerSpec(sparse=True),),
                               renormalize=False))
    tags = layout.op_features()
    assert tags == sorted(set(tags))
    assert {"op:rope:interleaved", "op:norm:rms:1+w", "op:attention:gqa", "op:router:no-renorm",
            "op:experts:silu", "op:lm_head:untied"} <= set(tags)
    assert not any(t.startswith(("op:wht_in", "op:gamma_norm", "op:head_slice")) for t in tags)
    assert {"op:wht_in", "op:gamma_norm:per_head", "op:linear:bias"} <= set(_SPECTRAL.op_features())
