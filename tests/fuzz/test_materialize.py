"""The materializer against weight-free structural oracles (the oracle's tier 1)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from fuzz import BadInput, DecoderSpec, LayerSpec, build, materialize
from fuzz.materialize import Rope


@given(style=st.sampled_from(["half", "interleaved"]), head_dim=st.sampled_from([4, 8, 12]),
       partial=st.booleans(), theta=st.sampled_from([100.0, 10000.0]), shift=st.integers(1, 5))
def test_rope_scores_depend_only_on_relative_position(style, head_dim, partial, theta, shift):
    r = head_dim - 2 if partial and head_dim > 4 else head_dim
    rope = Rope("r", {"n_heads": 1, "head_dim": head_dim, "rotary_dim": r, "style": style, "theta": theta}, "exact")
    g = torch.Generator().manual_seed(head_dim)
    q, k = torch.randn(head_dim, generator=g, dtype=torch.float64), torch.randn(head_dim, generator=g, dtype=torch.float64)
    t = 12
    rq = rope(q.expand(1, t, head_dim))[0]
    rk = rope(k.expand(1, t, head_dim))[0]
    scores = rq @ rk.T
    for i in range(t - shift):  # <R_i q, R_{i+shift} k> is the same for every i
        assert torch.allclose(scores[i, i + shift], scores[0, shift], rtol=1e-12, atol=1e-12)
    assert torch.allclose(rq.norm(dim=-1), q.norm().expand(t), rtol=1e-13)  # rotations keep length


def test_interleaved_and_half_pairings_differ():
    p = {"n_heads": 1, "head_dim": 4, "rotary_dim": 4, "theta": 10.0}
    x = torch.arange(1.0, 5.0, dtype=torch.float64).expand(1, 3, 4)
    half = Rope("a", {**p, "style": "half"}, "exact")(x)
    inter = Rope("b", {**p, "style": "interleaved"}, "exact")(x)
    assert torch.equal(half[0, 0], inter[0, 0])  # position 0 is the identity
    assert not torch.allclose(half[0, 1], inter[0, 1])


def test_gqa_equals_mha_with_repeated_kv():
    spec = DecoderSpec(n_heads=6, n_kv_heads=2, head_dim=4, qkv_bias=True)
    gqa = materialize(build(spec), seed=3)
    mha = materialize(build(spec.with_(n_kv_heads=6)), seed=3)
    with torch.no_grad():
        for name, param in gqa.named_parameters():
            target = dict(mha.named_parameters())[name]
            if name.endswith(("l0_k_proj.weight", "l0_v_proj.weight", "l0_k_proj.bias", "l0_v_proj.bias")):
                blocks = param.reshape(2, 4, *param.shape[1:])
                target.copy_(blocks.repeat_interleave(3, dim=0).reshape(target.shape))
            else:
                target.copy_(param)
    ids = torch.randint(0, 64, (2, 7))
    assert torch.allclose(gqa(ids), mha(ids), rtol=1e-12, atol=1e-12)


def test_fused_experts_equal_a_per_expert_loop():
    spec = DecoderSpec(layers=(LayerSpec(sparse=True),), n_experts=4, top_k=2, renormalize=True)
    model = materialize(build(spec), seed=1)
    experts, router_proj = model.nodes["l0_mlp_experts"], model.nodes["l0_mlp_router_proj"]
    x = torch.randn(5, spec.hidden, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    probs = torch.softmax(F.linear(x, router_proj.weight), -1)
    top, idx = probs.topk(2, dim=-1)
    top = top / top.sum(-1, keepdim=True)
    expected = torch.zeros_like(x)
    for t in range(5):
        for w, e in zip(top[t], idx[t]):
            gate = F.linear(x[t], experts.gate_up_proj[e][:spec.moe_intermediate])
            up = F.linear(x[t], experts.gate_up_proj[e][spec.moe_intermediate:])
            expected[t] += w * F.linear(F.silu(gate) * up, experts.down_proj[e])
    weights = model.nodes["l0_mlp_router"](F.linear(x, router_proj.weight))
    assert (weights != 0).sum(-1).eq(2).all()
    assert torch.allclose(experts(x[None], weights[None])[0], expected, rtol=1e-12, atol=1e-13)


def test_router_records_top_k_margins():
    spec = DecoderSpec(layers=(LayerSpec(sparse=True),), n_experts=3, top_k=1)
    model = materialize(build(spec))
    model(torch.randint(0, 64, (2, 5)))
    margin = model.nodes["l0_mlp_router"].last_margin
    assert margin.shape == (2, 5) and (margin >= 0).all()


def test_tied_lm_head_reads_the_embedding_table():
    model = materialize(build(DecoderSpec(tie_embeddings=True)))
    assert model.nodes["lm_head"].weight is model.nodes["embed"].weight


def test_weights_are_never_trivial():
    model = materialize(build(DecoderSpec(norm="layer", norm_bias=True, qkv_bias=True, o_bias=True)))
    for name, p in model.named_parameters():
        assert not torch.all(p == 1) and not torch.all(p == 0), name
    again = materialize(build(DecoderSpec(norm="layer", norm_bias=True, qkv_bias=True, o_bias=True)))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


def test_weights_of_a_node_do_not_depend_on_other_nodes():
    one = materialize(build(DecoderSpec(layers=(LayerSpec(),))), seed=5)
    two = materialize(build(DecoderSpec(layers=(LayerSpec(), LayerSpec()))), seed=5)
    assert torch.equal(one.nodes["l0_q_proj"].weight, two.nodes["l0_q_proj"].weight)


def test_float32_materialization():
    model = materialize(build(DecoderSpec()), dtype=torch.float32)
    assert model(torch.randint(0, 64, (1, 4))).dtype == torch.float32


def test_bad_inputs_are_named():
    model = materialize(build(DecoderSpec()))
    with pytest.raises(BadInput, match="token ids must lie"):
        model(torch.tensor([[64]]))
    with pytest.raises(BadInput, match="integer tensor"):
        model(torch.zeros(1, 3))
    with pytest.raises(BadInput, match="numerics"):
        materialize(build(DecoderSpec()), numerics="fast")
    with pytest.raises(BadInput, match="fuzz.Layout"):
        materialize({"nodes": []})


def test_deepcopy_is_independent_and_keeps_ties_and_hooks():
    import copy
    model = materialize(build(DecoderSpec(tie_embeddings=True)))
    seen = []
    model.nodes["tokens"].register_forward_pre_hook(lambda mod, args: seen.append(1))
    clone = copy.deepcopy(model)
    assert clone.layout is model.layout  # layouts are immutable and shared
    assert clone.nodes["lm_head"].weight is clone.nodes["embed"].weight
    with torch.no_grad():
        clone.nodes["embed"].weight.add_(1.0)
    assert not torch.equal(clone.nodes["embed"].weight, model.nodes["embed"].weight)
    clone(torch.tensor([[1, 2]]))
    assert seen == [1]


def test_deepcopy_falls_back_when_a_transform_replaced_a_module():
    import copy
    from torch import nn
    model = materialize(build(DecoderSpec()))
    model.nodes["l0_q_proj"].extra = nn.Identity()  # no longer what the layout says
    clone = copy.deepcopy(model)
    assert isinstance(clone.nodes["l0_q_proj"].extra, nn.Identity)
    assert clone.nodes["l0_q_proj"] is not model.nodes["l0_q_proj"]


def _constructed(layout, dtype=torch.float64):
    """Every node module as its constructor and ``register_parameter`` build it (what ``GraphModel`` did
    before it built them from a template of ``nn.Module``'s state)."""
    from fuzz.materialize import MODULES
    from fuzz.ops import parameter_shapes
    out = {}
    for node in layout.order:
        op, params = layout.op(node), layout.params(node)
        module = MODULES[op](node, params, "exact")
        for name, shape in parameter_shapes(op, params).items():
            module.register_parameter(name, torch.nn.Parameter(torch.empty(shape, dtype=dtype)))
        out[node] = module.eval()  # as materialize leaves them
    return out


def _state(module) -> dict:
    """A module's instance state with its containers by type and keys (parameters by name, shape, dtype)."""
    out = {}
    for key, value in module.__dict__.items():
        if key == "_parameters":
            out[key] = [(n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in value.items()]
        elif isinstance(value, (dict, set, list)):
            out[key] = (type(value), sorted(map(str, value)))
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("spec", [DecoderSpec(), DecoderSpec(tie_embeddings=True, qkv_bias=True),
                                  DecoderSpec(layers=(LayerSpec(sparse=True), LayerSpec()), n_experts=3, top_k=2)])
def test_modules_built_from_the_template_equal_constructed_ones_and_copies_equal_the_model(spec):
    import copy
    layout = build(spec)
    model = materialize(layout, seed=3)
    want = _constructed(layout)
    for node, module in model.nodes.items():
        assert type(module) is type(want[node])
        got, expected = _state(module), _state(want[node])
        if node in layout.of_op("lm_head") and layout.params(node)["tied_to"]:
            expected["_parameters"] = expected["_parameters"] + [("weight", got["_parameters"][-1][1], torch.float64, True)]
        assert got == expected, node
    model.nodes[layout.order[1]].weight.requires_grad_(False)
    clone = copy.deepcopy(model)
    assert [n for n, _ in clone.named_parameters()] == [n for n, _ in model.named_parameters()]
    for (name, a), (_, b) in zip(clone.named_parameters(), model.named_parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr() and a.requires_grad == b.requires_grad, name
    assert all(_state(clone.nodes[n]) == _state(m) for n, m in model.nodes.items())
    assert not clone.training and all(not m.training for m in clone.modules())
    ids = torch.randint(0, layout.params(layout.source)["vocab"], (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(clone(ids), model(ids))


def test_deepcopy_of_an_untied_head_keeps_it_untied():
    import copy
    model = materialize(build(DecoderSpec(tie_embeddings=True)))
    head = model.nodes["lm_head"]
    head.weight = torch.nn.Parameter(head.weight.detach().clone())  # a transform that untied the head
    clone = copy.deepcopy(model)
    assert clone.nodes["lm_head"].weight is not clone.nodes["embed"].weight
    assert torch.equal(clone.nodes["lm_head"].weight, head.weight)


def test_rope_tables_are_cached_per_parameters_and_length_and_never_as_inference_tensors():
    from fuzz.materialize import cached_rope_tables, rope_tables
    p = {"n_heads": 2, "head_dim": 8, "rotary_dim": 8, "style": "half", "theta": 10000.0}
    cos, sin = cached_rope_tables(p, 7, torch.float64, "exact")
    want = rope_tables(p, 7, torch.float64, "exact")
    assert torch.equal(cos, want[0]) and torch.equal(sin, want[1])
    assert cached_rope_tables(dict(p), 7, torch.float64, "exact")[0] is cos
    for other in ({**p, "theta": 10000}, {**p, "style": "interleaved"}):  # 10000 == 10000.0, other tables' key
        assert cached_rope_tables(other, 7, torch.float64, "exact")[0] is not cos
    assert cached_rope_tables(p, 8, torch.float64, "exact")[0].shape[0] == 8
    layout = build(DecoderSpec())
    model = materialize(layout)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 5, 6]])  # a length no other test caches first
    with torch.inference_mode():
        model(ids)  # tables built here must not be the ones a differentiated forward saves
    model(ids).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
