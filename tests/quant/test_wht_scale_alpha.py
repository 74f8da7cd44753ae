"""T1 with an alpha grid (``bbt-spectral-alpha-search``): per linear the alpha of least calibration-weighted RTN error
``err = sum_j E[x~_j^2] sum_i (W~ - q(W~))_ij^2``, checked against T1 run at each alpha of the grid with the error
computed from its output; a grid of one is the float alpha; the oracle proves the recipe; the refusals."""

import argparse

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fuzz import BadInput, DecoderSpec, LayerSpec, Refusal, build, materialize
from fuzz import strategies as S
from quant.quantize import ALPHA_SEARCH, ONLINE, RECIPES, prepare, recipe_options
from quant.transforms import get
from quant.transforms.calibration import collect
from quant.transforms.recipes import RECIPES as GRAPH_RECIPES
from quant.transforms.rtn import rtn
from quant.transforms.wht_scale import ALPHA_GRID, wht_scale, wht_scale_block, wht_scale_exact
from verifier import verify
from verifier.transform import Calibration

RECIPE = "bbt-spectral-alpha-search"
ODD = DecoderSpec(hidden=48, n_heads=4, n_kv_heads=2, head_dim=12, intermediate=40,
                  layers=(LayerSpec(), LayerSpec(sparse=True)), shared_expert=True, qkv_bias=True)
POW2 = DecoderSpec(hidden=32, n_heads=4, n_kv_heads=2, head_dim=8, intermediate=64, mlp_bias=True)
WIDE = DecoderSpec(hidden=64, n_heads=4, n_kv_heads=2, head_dim=16, intermediate=128)  # every d_pad a multiple of 64
EXACT24 = DecoderSpec(hidden=24, intermediate=48, n_heads=4, n_kv_heads=2, head_dim=6)
#: (T1 form, spec, group size): padded, group-aligned blocks, exact width
CASES = [(wht_scale, ODD, 16), (wht_scale, POW2, 8), (wht_scale_block, POW2, 16), (wht_scale_exact, EXACT24, 8)]


def calib(vocab: int = 64, seed: int = 0) -> Calibration:
    return Calibration(torch.randint(0, vocab, (4, 12), generator=torch.Generator().manual_seed(seed)), seed)


def direct_err(out, node: str, c: Calibration, bits: int, group: int) -> float:
    """``sum_j E[x~_j^2] sum_i (W~ - q(W~))_ij^2`` from T1's output: ``x~`` measured at its ``wht_in`` node."""
    ex = collect(out, c, energy=[f"{node}_wht"])["energy"][f"{node}_wht"]
    w = out.nodes[node].weight.detach().double()
    return float((ex * (w - rtn(w, bits, group)).pow(2).sum(0)).sum())


@pytest.mark.parametrize("form, spec, group", CASES)
@pytest.mark.parametrize("bits", [2, 3])
def test_the_chosen_alpha_is_the_brute_force_argmin(form, spec, group, bits):
    """Each linear's logged err per alpha is the error of T1 run at that alpha (x~ measured, W~ rounded), its chosen
    alpha their argmin, and its weight and scales exactly T1's at the chosen alpha."""
    model, c = materialize(build(spec), seed=1), calib()
    out = form(model, c, alpha=ALPHA_GRID, bits=bits, group_size=group)
    fixed = {a: form(model, c, alpha=a) for a in ALPHA_GRID}
    log = {e["node"]: e for e in out.transform_log}
    linears = out.layout.of_op("linear")
    assert set(log) == set(linears)
    picked = set()
    for node in linears:
        errs = [direct_err(fixed[a], node, c, bits, group) for a in ALPHA_GRID]
        entry = log[node]
        assert entry["alpha_search"] == {"grid": list(ALPHA_GRID), "err": pytest.approx(errs, rel=1e-9),
                                         "bits": bits, "group_size": group}
        best = ALPHA_GRID[min(range(len(errs)), key=errs.__getitem__)]
        assert entry["alpha"] == best
        picked.add(best)
        assert torch.equal(out.nodes[node].weight, fixed[best].nodes[node].weight)
        assert torch.equal(out.nodes[f"{node}_wht"].scale, fixed[best].nodes[f"{node}_wht"].scale)
    assert len(picked) > 1, picked  # the choice is per linear: not one alpha everywhere on these models


@pytest.mark.parametrize("form, spec, group", CASES)
@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5])
def test_a_grid_of_one_is_the_float_alpha(form, spec, group, alpha):
    model, c = materialize(build(spec), seed=2), calib(seed=1)
    one = form(model, c, alpha=(alpha,), group_size=group)
    plain = form(model, c, alpha=alpha)
    assert one.layout.hash() == plain.layout.hash()
    for node in plain.layout.of_op("linear"):
        assert torch.equal(one.nodes[node].weight, plain.nodes[node].weight)
        assert torch.equal(one.nodes[f"{node}_wht"].scale, plain.nodes[f"{node}_wht"].scale)


def test_the_recipe_is_wired_proven_and_deterministic():
    """Listed with the T1 recipes; the oracle proves it at its defaults (W2 g64) on a layout every linear fits, its
    unfold too; two runs choose the same alphas and weights."""
    assert RECIPE in GRAPH_RECIPES and RECIPE in RECIPES and RECIPE in ONLINE and RECIPE in ALPHA_SEARCH
    layout = build(WIDE)
    verdict = verify(get(RECIPE), layout)
    assert verdict.ok and verdict.max_rel_err <= 1e-12, verdict
    back = verify(get("wht-scale-roundtrip", alpha=ALPHA_GRID), layout)
    assert back.ok and back.max_rel_err <= 1e-12, back
    model, c = materialize(layout, seed=4), calib()
    a, b = get(RECIPE)(model, c), get(RECIPE)(model, c)
    assert [e["alpha"] for e in a.transform_log] == [e["alpha"] for e in b.transform_log]
    assert all(torch.equal(a.nodes[n].weight, b.nodes[n].weight) for n in a.layout.of_op("linear"))


@given(data=st.data(), seed=st.integers(0, 999))
def test_the_recipe_is_invariant_on_drawn_layouts(data, seed):
    """Invariant (1e-12) wherever the group size divides every linear's ``d_pad`` (or a row is narrower than a
    group), refused by name elsewhere (48 into a power of two of 64 and more)."""
    layout = data.draw(S.layouts(), label="layout")
    group = data.draw(st.sampled_from([4, 48, 64]), label="group_size")
    verdict = verify(get(RECIPE, group_size=group), layout, seed=seed % 97)
    pads = {1 << (layout.params(n)["in_features"] - 1).bit_length() for n in layout.of_op("linear")}
    if any(p > group and p % group for p in pads):
        assert verdict.status == "refused" and "group-misaligned" in str(verdict), verdict
        return
    assert verdict.ok and verdict.max_rel_err <= 1e-12, verdict


@pytest.mark.parametrize("options, match", [
    (dict(alpha=()), "alpha grid is empty"),
    (dict(alpha=(0.0, -0.25)), "alpha must be a finite number >= 0"),
    (dict(alpha=-0.5), "alpha must be a finite number >= 0"),
    (dict(alpha=(float("nan"),)), "alpha must be a finite number >= 0"),
    (dict(alpha=(True,)), "alpha must be a finite number >= 0"),
    (dict(alpha=ALPHA_GRID, bits=0), "bits must be an integer in 1..8"),
    (dict(alpha=ALPHA_GRID, bits=9), "bits must be an integer in 1..8"),
    (dict(alpha=ALPHA_GRID, bits=2.0), "bits must be an integer in 1..8"),
    (dict(alpha=ALPHA_GRID, group_size=0), "group_size must be an integer >= 1"),
    (dict(alpha=ALPHA_GRID, scales="random"), "an alpha grid chooses energy scales"),
])
def test_bad_inputs_are_refused(options, match):
    with pytest.raises(BadInput, match=match):
        wht_scale(materialize(build(POW2)), calib(), **options)


def test_a_group_that_does_not_divide_d_pad_is_refused_naming_the_linear():
    model = materialize(build(ODD))  # d_pad 64 everywhere: groups of 48 do not divide it
    with pytest.raises(Refusal) as exc:
        wht_scale(model, calib(), alpha=ALPHA_GRID, group_size=48, targets=["l0_mlp_down_proj"])
    assert exc.value.feature == "group-misaligned" and "l0_mlp_down_proj" in str(exc.value)
    assert "64 input columns" in str(exc.value)
    wht_scale(model, calib(), alpha=0.25, group_size=48)  # a float alpha rounds nothing: no group needed
    with pytest.raises(Refusal, match="group-misaligned"):  # the block form rounds d_in columns: 48 into 32
        wht_scale_block(materialize(build(WIDE)), calib(), alpha=ALPHA_GRID, group_size=48, max_block=32)


def test_a_row_narrower_than_a_group_is_one_group():
    """POW2's ``W~`` are 32 and 64 columns wide: at group size 64 the 32-wide ones are rounded as one group."""
    model, c = materialize(build(POW2), seed=5), calib()
    out = wht_scale(model, c, alpha=ALPHA_GRID, group_size=64)
    one = wht_scale(model, c, alpha=ALPHA_GRID, group_size=32)
    for e, f in zip(out.transform_log, one.transform_log):
        assert e["alpha_search"]["group_size"] == min(64, e["d_pad"])
        if e["d_pad"] == 32:
            assert e["alpha_search"]["err"] == f["alpha_search"]["err"] and e["alpha"] == f["alpha"]


def test_the_recipe_and_the_pipeline_refuse_a_single_alpha():
    model = materialize(build(WIDE))
    with pytest.raises(BadInput, match="chooses alpha per linear from a grid"):
        get(RECIPE, alpha=0.25)(model, calib())  # the option's type (a tuple) is checked by the registry first
    with pytest.raises(BadInput, match="single alpha"):
        recipe_options(RECIPE, 0.25)
    assert recipe_options(RECIPE, None, 3, 32) == {"alpha": ALPHA_GRID, "bits": 3, "group_size": 32}
    assert recipe_options("bbt-spectral", None) == {"alpha": 0.5}


def test_the_cli_refuses_alpha_with_the_search_recipe():
    from archfuzz.cli.quantize import check
    args = argparse.Namespace(alpha=0.25, recipe=RECIPE, online_fwht="kron", lowbit=False, embedding="int8",
                              no_eval=False, eval_text=None)
    with pytest.raises(BadInput, match="--alpha"):
        check(args)
    check(argparse.Namespace(**{**vars(args), "alpha": None}))


def test_prepare_passes_the_quantizer_to_the_choice():
    """``quant.quantize.prepare`` on a transformers model: the alpha search measures against the run's bits and
    group size, every linear hooked with T1's padded form."""
    pytest.importorskip("transformers")
    from fuzz.families import family_spec, to_transformers
    model = to_transformers(materialize(build(family_spec("llama", vocab=64, hidden=64, n_heads=4, n_kv_heads=2,
                                                          head_dim=16, intermediate=128, n_layers=1)),
                                        seed=3)).float().eval()
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    prepared = prepare(model, RECIPE, ids, bits=3, group_size=32)
    searched = [e for e in prepared.log if "alpha_search" in e]
    assert len(searched) == len(prepared.hooked) == 7
    assert {(e["alpha_search"]["bits"], e["alpha_search"]["group_size"]) for e in searched} == {(3, 32)}
    assert all(e["alpha"] in ALPHA_GRID for e in searched)
