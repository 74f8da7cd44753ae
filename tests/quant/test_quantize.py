"""Quantization smoke (CI): a tiny synthesized Llama through the whole pipeline with RTN (auto-round
``iters=0``): oracle gate, transform, unfold checked in float64, coverage report, save/reload; and the
refusals (an unproven recipe, a corrupt checkpoint, a weight nobody quantized)."""

import json

import pytest
import torch
from torch import nn

from fuzz import BadInput, build, materialize
from fuzz.families import family_spec, to_transformers
from quant.checkpoints import load_checkpoint, word_tokenizer
from quant.perplexity import perplexity
from quant.quantize import GateRefused, QuantConfig, coverage, gate, quantize, save
from quant.transforms.wht_scale import ALPHA_GRID

pytest.importorskip("auto_round")

DIMS = dict(vocab=64, hidden=64, n_heads=4, n_kv_heads=2, head_dim=16, intermediate=128, n_layers=2)
CFG = dict(bits=2, group_size=16, iters=0, nsamples=4, seqlen=32, batch_size=2)


def tiny() -> nn.Module:
    return to_transformers(materialize(build(family_spec("llama", **DIMS)), seed=3)).float().eval()


def windows(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, DIMS["vocab"], (4, 32), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("recipe", ["none", "bbt-absorb", "bbt-spectral", "bbt-spectral-block", "bbt-pair-pca",
                                    "bbt-spectral-alpha-search"])
def test_rtn_pipeline_unfolds_exactly_and_covers_every_weight(recipe, tmp_path):
    model, tok = tiny(), word_tokenizer(DIMS["vocab"])
    report = quantize(model, tok, recipe, QuantConfig(**CFG), windows())
    if recipe != "none":
        assert report["gate"]["status"] == "invariant"
    if recipe == "bbt-spectral-alpha-search":  # chosen per linear for this run's W2 g16
        assert len(report["alpha_chosen"]) == 7 * DIMS["n_layers"] and report["alpha"] == ALPHA_GRID
    unfold = report["unfold"]
    assert unfold["checked"] and unfold["max_rel_err_f64"] <= 1e-9, unfold
    assert unfold["shipped_vs_transformed_rel"] <= 1e-5, unfold
    cov = report["coverage"]
    assert cov["ok"] and cov["counts"]["quantized"] == 7 * DIMS["n_layers"], cov
    statuses = {r["name"]: r for r in report["coverage_rows"]}
    assert statuses["model.embed_tokens.weight"]["status"] == "excluded"
    assert all(r["status"] in ("quantized", "excluded") for r in statuses.values())
    # the unfolded model is a plain transformers model of the original architecture: no hooks, original shapes
    ref = tiny()
    assert not any(len(m._forward_pre_hooks) for m in model.modules())
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    out = save(model, tok, tmp_path / "q", {k: v for k, v in report.items() if k != "coverage_rows"})
    reloaded, _ = load_checkpoint(out)
    ids = windows(1)
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
    assert json.loads((out / "archfuzz_quantize.json").read_text())["recipe"] == recipe
    ppl = perplexity(reloaded, torch.randint(0, 64, (200,), generator=torch.Generator().manual_seed(2)), window=64,
                     max_tokens=192)
    assert ppl["windows"] == 3 and ppl["tokens_scored"] == 3 * 63 and ppl["ppl"] > 1


@pytest.mark.parametrize("recipe", ["none", "bbt-spectral"])
def test_unfold_checks_the_quantized_model_in_float64(recipe, monkeypatch):
    """A float32 import check compares two float32 paths, whose rounding differs by more than its 1e-4 bound on
    the padded batch of a real W2 model (SmolLM2, NeUQI RTN: 1.03e-4): the quantized and the shipped model are
    imported as float64 copies; the model itself stays float32."""
    import fuzz.importer

    dtypes = []
    real = fuzz.importer.import_model

    def recording(model, *args, **kwargs):
        dtypes.append(next(model.parameters()).dtype)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(fuzz.importer, "import_model", recording)
    model, tok = tiny(), word_tokenizer(DIMS["vocab"])
    quantize(model, tok, recipe, QuantConfig(**CFG), windows())
    assert dtypes[-1] == torch.float64 and next(model.parameters()).dtype == torch.float32
    if recipe == "none":  # the re-import of the quantized weights and the shipped one
        assert dtypes[-2:] == [torch.float64, torch.float64]


def test_t1_quantizes_the_transformed_weight():
    """auto-round sees W~ (d_pad-wide, rotated and column-scaled), not W: the grid lives in that basis."""
    from quant.quantize import prepare, run_autoround
    model = tiny()
    prepared = prepare(model, "bbt-spectral", windows())
    q = model.model.layers[0].self_attn.q_proj
    assert q.in_features == 64 and len(q._forward_pre_hooks) == 1   # hidden 64 is a power of two already
    down = model.model.layers[0].mlp.down_proj
    assert down.weight.shape[1] == 128
    layer_config, _ = run_autoround(model, word_tokenizer(64), QuantConfig(**CFG), windows())
    cov = coverage(model, layer_config, 2, 16)
    assert cov["ok"] and prepared.hooked


def test_block_t1_keeps_every_width_and_the_function():
    """bbt-spectral-block: W~ = W Q_b D in place (no padding), the hook x Q_b D^-1; same logits before auto-round."""
    from quant.quantize import prepare
    model, ref = tiny(), tiny()
    prepared = prepare(model, "bbt-spectral-block", windows())
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert len(prepared.hooked) == 7 * DIMS["n_layers"]
    assert {e["block"] for e in prepared.log if "block" in e} == {64}  # hidden 64, intermediate 128: blocks of 64
    ids = windows(1)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=1e-4, atol=1e-4)


def test_gate_refuses_an_unproven_recipe_naming_the_check(monkeypatch):
    import quant.transforms as T
    from verifier.transform import NamedTransform

    real_get = T.get

    def broken(model, calib, **options):  # scales a norm without compensating its consumers
        out = real_get("bbt-absorb", **options)(model, calib)
        norm = out.layout.of_op("norm")[0]
        out.nodes[norm].weight.data.mul_(1.5)
        return out

    monkeypatch.setattr(T, "get", lambda name, **kw: NamedTransform(name, broken, kw, registry="test")
                        if name == "bbt-absorb" and kw.get("host") != "transformers" else real_get(name, **kw))
    with pytest.raises(GateRefused, match=r"not proven.*diverged.*first divergent node"):
        gate(tiny(), "bbt-absorb")
    with pytest.raises(GateRefused):
        quantize(tiny(), word_tokenizer(64), "bbt-absorb", QuantConfig(**CFG), windows())


def test_coverage_names_a_weight_nobody_quantized():
    model = tiny()
    cov = coverage(model, {}, 2, 16)  # auto-round reported nothing quantized
    bad = [r for r in cov["rows"] if r["status"] == "NOT COVERED"]
    assert not cov["ok"] and len(bad) == 7 * DIMS["n_layers"]
    assert "auto-round did not reach it" in bad[0]["reason"]


def test_bad_checkpoints_are_bad_input(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "x.bin").write_bytes(b"junk")
    with pytest.raises(BadInput, match="unsupported checkpoint"):
        load_checkpoint(tmp_path / "x.bin")
    model = tiny()
    model.save_pretrained(tmp_path / "m")
    st = next((tmp_path / "m").glob("*.safetensors"))
    st.write_bytes(st.read_bytes()[:100])  # truncated
    with pytest.raises(BadInput, match="corrupt safetensors"):
        load_checkpoint(tmp_path / "m")
    with pytest.raises(BadInput, match="corrupt safetensors"):
        load_checkpoint(st)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no config.json"):
        load_checkpoint(tmp_path / "empty")


def test_config_is_checked():
    with pytest.raises(BadInput, match="bits"):
        QuantConfig(bits=8).check()


@pytest.mark.parametrize("iters, lr, expected", [(5, 0.01, 0.01), (5, None, "absent"), (0, 0.01, "absent")])
def test_learning_rate_reaches_autoround_only_when_it_tunes(autoround_kwargs, iters, lr, expected):
    """``--lr`` goes to auto-round's sign-SGD; RTN (iters 0) gets none (auto-round's default is 1/iters)."""
    from quant.quantize import run_autoround

    seen = autoround_kwargs
    cfg = QuantConfig(**{**CFG, "iters": iters, "lr": lr})
    run_autoround(tiny(), word_tokenizer(64), cfg, windows())
    assert seen.get("lr", "absent") == expected and seen["iters"] == iters


def test_cpu_preset_tunes_on_one_batch_with_a_pinned_learning_rate():
    """docs/findings.md: auto-round's 1/iters lr at 10 iterations and mini-batch "best iteration" picks
    ruined the BBT basis (W4 PPL 72.5 vs RTN 36.7); the preset must not fall back to either."""
    from quant.quantize import PRESETS

    cpu = PRESETS["cpu"]
    assert cpu["batch_size"] == cpu["nsamples"] and cpu["lr"] is not None and cpu["lr"] < 1 / cpu["iters"]
    QuantConfig(bits=4, **cpu).check()
    assert "lr" not in PRESETS["paper"]  # the paper ran auto-round's own 1/iters at 200 iterations


def test_preset_settings_apply_only_the_flags_given():
    from quant.quantize import PRESETS, preset_settings

    before = dict(PRESETS["cpu"])
    got = preset_settings("cpu", iters=3, lr=None, nsamples=None)
    assert got == {**before, "iters": 3} and PRESETS["cpu"] == before
