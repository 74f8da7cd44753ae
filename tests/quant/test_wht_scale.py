"""T1 (wht-scale) in each of its three forms (padded, group-aligned blocks, exact width: ``FORMS``): exact on drawn
layouts and the unfold restores the original layout, the weights and scales follow the energy in the form's basis,
the online forms (the ``wht_in`` module, the quantize hook, ``OnlineRotation``) agree and refuse a form that does not
fit with one error; then the padded form's own cases and the oracle catching a scale applied the wrong way round.
The block and exact forms' own cases: ``test_wht_scale_block.py``, ``test_wht_scale_exact.py``."""

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from fuzz import BadInput, DecoderSpec, LayerSpec, Refusal, build, materialize
from fuzz import strategies as S
from fuzz.errors import FormError
from fuzz.hadamard import exact_hadamard, hadamard, hadamard_split, next_pow2, online_input
from quant.online import MODES, OnlineRotation
from quant.quantize import ONLINE, RECIPES, WHTInput
from quant.transforms import get
from quant.transforms.calibration import collect, energy_scales
from quant.transforms.recipes import RECIPES as GRAPH_RECIPES
from quant.transforms.wht_scale import fitted_block, folded_weight, unfold, wht_scale
from verifier import verify
from verifier.transform import Calibration

OPTIONS = [dict(alpha=0.0), dict(alpha=0.5), dict(alpha=1.0), dict(scales="random")]
ODD = DecoderSpec(hidden=48, n_heads=4, n_kv_heads=2, head_dim=12, intermediate=40,
                  layers=(LayerSpec(), LayerSpec(sparse=True)), shared_expert=True, qkv_bias=True)
POW2 = DecoderSpec(hidden=32, n_heads=4, n_kv_heads=2, head_dim=8, intermediate=64, mlp_bias=True, qkv_bias=True)
#: widths with a Paley I factor (Q_n not symmetric) and only Paley II / Sylvester factors (symmetric)
ASYMMETRIC = DecoderSpec(hidden=24, intermediate=48, n_heads=4, n_kv_heads=2, head_dim=6)
SYMMETRIC = DecoderSpec(hidden=36, intermediate=72, n_heads=2, n_kv_heads=1, head_dim=18)
# pinned widths whose every linear has a construction (12 = Paley I q=11 or II q=5, 20 = I q=19, 28 = II q=13)
PINNED = [dict(hidden=24, intermediate=48, head_dim=6, mla="none", moe=False, per_layer_input=None),
          dict(hidden=12, intermediate=20, head_dim=4, mla="none", moe=False, per_layer_input=None),
          dict(hidden=20, intermediate=28, head_dim=10, mla="none", moe=False, per_layer_input=None)]


@dataclass(frozen=True)
class Form:
    """One T1 form as these tests drive it."""

    transform: str         # its registered transform (``-roundtrip`` added: with the unfold)
    recipe: str
    options: tuple         # drawn on layouts
    layouts: st.SearchStrategy
    block: object          # (d_in, options) -> the ``block`` value the transform gives a linear of width d_in
    specs: tuple           # its recipe is proved on
    tol: float             # weights back after the unfold, relative to max |W|
    atol: float            # W~, x~ and the unfold against the dense matrix
    online: tuple          # (spec, target, ``block=`` of wht_scale, atol of the online operators)
    bad: tuple             # (d_in, d_pad, block, feature): forms that do not fit, refused by each online operator


FORMS = {
    "padded": Form(transform="wht-scale", recipe="bbt-spectral", options=tuple(OPTIONS), layouts=S.layouts(),
                   block=lambda d, o: None, specs=(ODD, POW2), tol=1e-13, atol=1e-14,
                   online=(ODD, "l0_q_proj", None, 1e-14),
                   bad=((48, 40, None, "form-padding"), (48, 96, None, "form-padding"))),
    "block": Form(transform="wht-scale-block", recipe="bbt-spectral-block",
                  options=(dict(alpha=0.0), dict(alpha=0.5), dict(alpha=0.25, max_block=16), dict(scales="random")),
                  layouts=S.layouts(), block=lambda d, o: fitted_block(d, o.get("max_block", 64)), specs=(ODD, POW2),
                  tol=1e-13, atol=1e-14, online=(ODD, "l0_q_proj", 16, 1e-14),
                  bad=((48, 64, 16, "form-padding"), (48, 48, 32, "block-misaligned"))),
    "exact": Form(transform="wht-scale-exact", recipe="bbt-spectral-exact",
                  options=(dict(alpha=0.0), dict(alpha=0.25), dict(scales="random")),
                  layouts=st.one_of(S.layouts(), *[S.layouts(**c) for c in PINNED]), block=lambda d, o: "exact",
                  specs=(ASYMMETRIC, SYMMETRIC), tol=1e-12, atol=1e-12,
                  online=(ASYMMETRIC, "l0_mlp_down_proj", "exact", 1e-13),
                  bad=((48, 64, "exact", "form-padding"), (22, 22, "exact", "no-hadamard-order"))),
}
#: the weight and scale cases: (form, spec) with the linear l0_q_proj transformed alone
WEIGHT_CASES = [("padded", ODD), ("padded", POW2), ("block", ODD), ("block", POW2), ("exact", ASYMMETRIC),
                ("exact", SYMMETRIC)]


def calib(vocab: int = 64, seed: int = 0) -> Calibration:
    return Calibration(torch.randint(0, vocab, (4, 12), generator=torch.Generator().manual_seed(seed)), seed)


def dense(block, d_in: int) -> torch.Tensor:
    """The ``(d_in, d_pad)`` matrix ``M`` of ``x -> [x, 0] Q`` built densely (independent of the butterflies)."""
    if block is None:
        return hadamard(next_pow2(d_in))[:d_in]
    if block == "exact":
        return exact_hadamard(d_in)
    return torch.kron(torch.eye(d_in // block, dtype=torch.float64), hadamard(block))


def wht_params(block, d_in: int) -> dict:
    """The ``wht_in`` node's parameters T1 writes for ``block`` (the defaults left out)."""
    if block is None:
        return {"in_features": d_in, "d_pad": next_pow2(d_in)}
    return {"in_features": d_in, "d_pad": d_in, **({"exact": True} if block == "exact" else {"block": block})}


def padded_rotation(w: torch.Tensor, d_pad: int) -> torch.Tensor:
    """``[W, 0] Q`` with the dense Hadamard (independent of the butterfly)."""
    return torch.nn.functional.pad(w.double(), (0, d_pad - w.shape[1])) @ hadamard(d_pad)


# ============================================================================ every form
@pytest.mark.parametrize("form", FORMS)
@given(data=st.data(), seed=st.integers(0, 999))
def test_exact_and_roundtrip_on_drawn_layouts(form, data, seed):
    """Invariant and its unfold too (1e-12) wherever the form fits every linear, refused by name where one has no
    construction (the exact form); the unfold gives back the layout and the weights."""
    f = FORMS[form]
    layout = data.draw(f.layouts, label="layout")
    options = data.draw(st.sampled_from(f.options), label="options")
    options = {**options, "seed": seed} if options.get("scales") == "random" else options
    verdict = verify(get(f.transform, **options), layout, seed=seed % 97)
    widths = {layout.params(n)["in_features"] for n in layout.of_op("linear")}
    if form == "exact" and any(hadamard_split(d) is None for d in widths):
        assert verdict.status == "refused" and "no-hadamard-order" in str(verdict), verdict
        return
    assert verdict.ok and verdict.max_rel_err <= 1e-12, verdict
    back = verify(get(f"{f.transform}-roundtrip", **options), layout, seed=seed % 97)
    assert back.ok and back.max_rel_err <= 1e-12, back

    model = materialize(layout, seed=seed)
    out = get(f.transform, **options)(model, calib(layout.params(layout.source)["vocab"], seed))
    for node in layout.of_op("linear"):  # the padded form widens a linear to d_pad, the others keep its width
        d_in = layout.params(node)["in_features"]
        expected = wht_params(f.block(d_in, options), d_in)
        assert out.layout.params(f"{node}_wht") == expected
        assert out.layout.params(node)["in_features"] == expected["d_pad"]
    plain = unfold(out)
    assert plain.layout.hash() == layout.hash()
    assert not plain.layout.of_op("wht_in")
    for node in layout.of_op("linear"):
        w, w_back = model.nodes[node].weight, plain.nodes[node].weight
        assert (w_back - w).abs().max() <= f.tol * w.abs().max()


@pytest.mark.parametrize("form, spec", WEIGHT_CASES)
def test_weight_and_scales_follow_the_energy_in_the_form_basis(form, spec):
    """``s = (1 + d_pad rho)^alpha`` over ``E[(x M)^2]``, ``W~ = W M D``, ``x~ = x M D^-1`` and the unfold of a
    perturbed ``W^`` is ``(W^ D^-1) M^T``, with ``M`` built densely; ``s`` is monotone in the energy."""
    node, block, atol = "l0_q_proj", FORMS[form].online[2], FORMS[form].atol
    layout = build(spec)
    model = materialize(layout)
    c = calib()
    d = spec.hidden
    m_dense = dense(block, d)
    d_pad = m_dense.shape[1]
    energy = collect(model, c, wht_energy=[(node, block)])["wht_energy"][node]
    x = []  # the energy is E[(x M)^2] of the linear's input, taken densely here
    h = model.nodes[node].register_forward_pre_hook(lambda m, a: x.append(a[0].detach().reshape(-1, d)))
    for batch in c.batches(size=c.input_ids.shape[0]):
        model(batch)
    h.remove()
    torch.testing.assert_close(energy, (torch.cat(x).double() @ m_dense).pow(2).mean(0), rtol=1e-12, atol=0)

    out = wht_scale(model, c, alpha=0.5, block=block, targets=[node])
    assert out.layout.params(f"{node}_wht") == wht_params(block, d)
    assert out.layout.params(node)["in_features"] == d_pad
    assert out.layout.inputs(node) == [f"{node}_wht"] and out.layout.of_op("wht_in") == [f"{node}_wht"]
    s = out.nodes[f"{node}_wht"].scale.detach()
    assert s.shape == (d_pad,)
    torch.testing.assert_close(s, (1 + d_pad * energy / energy.sum()) ** 0.5, rtol=1e-15, atol=0)
    assert (s >= 1).all() and s[energy.argmax()] == s.max() > 1
    assert torch.equal(torch.argsort(s), torch.argsort(energy))  # s is monotone in the energy

    rotated = model.nodes[node].weight.detach().double() @ m_dense
    w_t = out.nodes[node].weight.detach()
    torch.testing.assert_close(w_t, rotated * s, rtol=0, atol=atol)  # W~ = W M D
    # the high-energy coordinates' columns are boosted by exactly s
    torch.testing.assert_close(w_t.norm(dim=0), rotated.norm(dim=0) * s, rtol=1e-13, atol=0)
    xs = torch.randn(2, 3, d, dtype=torch.float64)
    torch.testing.assert_close(out.nodes[f"{node}_wht"](xs), xs @ m_dense / s, rtol=0, atol=atol)  # x~ = x M D^-1

    with torch.no_grad():  # a quantized W^ (here: W~ plus noise): W_eff = (W^ D^-1) M^T
        out.nodes[node].weight.add_(1e-3 * torch.randn_like(out.nodes[node].weight))
    w_hat = out.nodes[node].weight.detach().clone()
    folded = (w_hat / s) @ m_dense.T
    torch.testing.assert_close(folded_weight(w_hat, s, d, block), folded, rtol=0, atol=atol)
    plain = unfold(out)
    torch.testing.assert_close(plain.nodes[node].weight.detach(), folded, rtol=0, atol=atol)
    assert plain.layout.hash() == layout.hash()


@pytest.mark.parametrize("form", FORMS)
def test_online_forms_agree_with_the_wht_in_module(form):
    """``online_input``, the quantize hook (``WHTInput``) and ``OnlineRotation`` in every mode compute the ``wht_in``
    module's ``x M / s``; a form that does not fit its width is one ``FormError`` naming the feature in each."""
    f = FORMS[form]
    spec, node, block, atol = f.online
    out = wht_scale(materialize(build(spec)), calib(), scales="random", block=block, targets=[node])
    mod = out.nodes[f"{node}_wht"]
    s = mod.scale.detach()
    d_in = out.layout.params(f"{node}_wht")["in_features"]
    x = torch.randn(2, 5, d_in, dtype=torch.float64)
    ref = x @ dense(block, d_in) / s
    torch.testing.assert_close(mod(x), ref, rtol=0, atol=atol)
    assert torch.equal(online_input(x, s, s.numel(), block), mod(x))
    hook = WHTInput(s, d_in, torch.float64, block=block)
    torch.testing.assert_close(hook(None, (x,))[0], ref, rtol=0, atol=atol)
    for mode in MODES:
        rot = OnlineRotation(d_in, s.numel(), 1, s, mode, block=block).double()
        torch.testing.assert_close(rot(x), ref, rtol=0, atol=1e-6)  # float32 buffers
    word = {None: "padded", "exact": "exact"}.get(block, "block")
    for bad_in, bad_pad, bad_block, feature in f.bad:
        with pytest.raises(FormError, match=word) as exc:
            OnlineRotation(bad_in, bad_pad, 1, None, "kron", block=bad_block)
        assert exc.value.feature == feature
        with pytest.raises(FormError, match=word) as exc:
            WHTInput(torch.ones(bad_pad, dtype=torch.float64), bad_in, torch.float64, block=bad_block)
        assert exc.value.feature == feature


@pytest.mark.parametrize("form", FORMS)
def test_recipe_is_registered_and_exact(form):
    f = FORMS[form]
    assert f.recipe in GRAPH_RECIPES and f.recipe in RECIPES and f.recipe in ONLINE
    for spec in f.specs:
        verdict = verify(get(f.recipe, alpha=0.25), build(spec))
        assert verdict.ok and verdict.max_rel_err <= 1e-12, verdict


# ============================================================================ the padded form
@pytest.mark.parametrize("spec, padded", [(ODD, True), (POW2, False)])
def test_padded_and_power_of_two_widths(spec, padded):
    layout = build(spec)
    model = materialize(layout)
    out = wht_scale(model, calib())
    q = out.layout.params("l0_q_proj")
    assert q["in_features"] == (64 if padded else 32)
    assert out.layout.params("l0_q_proj_wht") == {"in_features": spec.hidden, "d_pad": q["in_features"]}
    assert out.layout.inputs("l0_q_proj") == ["l0_q_proj_wht"]
    assert out.layout.inputs("l0_q_proj_wht") == layout.inputs("l0_q_proj")
    assert torch.equal(out.nodes["l0_q_proj"].bias, model.nodes["l0_q_proj"].bias)  # bias unchanged
    assert len(out.layout.of_op("wht_in")) == len(layout.of_op("linear"))
    assert "l0_lm_head_wht" not in out.layout.graph and not any(
        out.layout.op(out.layout.inputs(h)[0]) == "wht_in" for h in out.layout.of_op("lm_head"))
    for name in ("wht-scale", "wht-scale-roundtrip"):
        for options in OPTIONS:
            verdict = verify(get(name, **options), layout)
            assert verdict.ok and verdict.max_rel_err <= 1e-12, verdict


def test_alpha_zero_is_the_rotation_alone():
    layout = build(ODD)
    model = materialize(layout)
    out = wht_scale(model, calib(), alpha=0.0)
    for wht in out.layout.of_op("wht_in"):
        assert torch.equal(out.nodes[wht].scale, torch.ones_like(out.nodes[wht].scale))
    torch.testing.assert_close(out.nodes["l0_o_proj"].weight.detach(),
                               padded_rotation(model.nodes["l0_o_proj"].weight, 64), rtol=0, atol=1e-14)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 1.0])
def test_uniform_energy_gives_two_to_the_alpha(alpha):
    s = energy_scales(torch.full((64,), 3.7, dtype=torch.float64), alpha)
    torch.testing.assert_close(s, torch.full_like(s, 2.0 ** alpha), rtol=1e-15, atol=0)
    # zero energy falls back to uniform; torch's pow may differ from Python's by an ulp on some CPUs
    torch.testing.assert_close(energy_scales(torch.zeros(8, dtype=torch.float64), alpha),
                               torch.full((8,), 2.0 ** alpha, dtype=torch.float64), rtol=1e-15, atol=0)


def test_targets_and_float32():
    layout = build(ODD)
    out = wht_scale(materialize(layout), calib(), targets=["l0_k_proj", "l0_mlp_down_proj"])
    assert sorted(out.layout.of_op("wht_in")) == ["l0_k_proj_wht", "l0_mlp_down_proj_wht"]
    verdict = verify(get("wht-scale", targets=["l1_mlp_router_proj"]), layout)
    assert verdict.ok and verdict.max_rel_err <= 1e-12, verdict
    f32 = verify(get("wht-scale-roundtrip"), layout, dtype=torch.float32)
    assert f32.ok and f32.max_rel_err < 5e-6, f32


def test_refusals():
    layout = build(ODD)
    with pytest.raises(Refusal) as exc:
        wht_scale(nn.Linear(4, 4), calib())
    assert exc.value.feature == "module-without-layout"
    once = wht_scale(materialize(layout), calib())
    with pytest.raises(Refusal) as exc:
        wht_scale(once, calib())
    assert exc.value.feature == "already-transformed" and exc.value.op == "linear"
    with pytest.raises(Refusal) as exc:
        wht_scale(materialize(layout), calib(), targets=["lm_head"])
    assert exc.value.feature == "not-a-linear" and exc.value.op == "lm_head"
    with pytest.raises(BadInput):
        wht_scale(materialize(layout), calib(), targets=["no_such_node"])
    with pytest.raises(BadInput):
        wht_scale(materialize(layout), calib(), scales="ones")
    twice = verify(lambda m, c: wht_scale(wht_scale(m, c), c), layout)
    assert twice.status == "refused" and "already-transformed" in twice.message


def scale_as_d(node: str | None = None, **options):
    """Mutant: the online input multiplies by D instead of dividing (``x~ = [x, 0] Q D``)."""
    def transform(model, c):
        out = wht_scale(model, c, **options)
        with torch.no_grad():
            for wht in out.layout.of_op("wht_in"):
                if node is None or wht == f"{node}_wht":
                    out.nodes[wht].scale.reciprocal_()
        return out
    return transform


@pytest.mark.parametrize("options", [dict(alpha=0.5), dict(scales="random")])
def test_oracle_catches_scale_applied_as_d(options):
    verdict = verify(scale_as_d(**options), build(ODD))
    assert verdict.status == "diverged", verdict
    assert verdict.max_rel_err > 1e-3


def test_oracle_names_the_linear_behind_a_wrong_scale():
    verdict = verify(scale_as_d("l0_k_proj", scales="random", targets=["l0_k_proj"]), build(ODD))
    assert verdict.status == "diverged", verdict
    assert verdict.first_divergent["node"] == "l0_k_proj", verdict
