"""auto-round's extra SignRound options (``QuantConfig.options``) reach auto-round itself and take effect:
a tiny synthesized Llama, W2, one tuning iteration, the real auto-round."""

import pytest
import torch

from fuzz import BadInput
from fuzz import build, materialize
from fuzz.families import family_spec, to_transformers
from quant.checkpoints import word_tokenizer
from quant.quantize import AUTOROUND_OPTIONS, QuantConfig, run_autoround

auto_round = pytest.importorskip("auto_round")

CFG = dict(bits=2, group_size=16, iters=0, nsamples=4, seqlen=32, batch_size=4)


def tiny():
    spec = family_spec("llama", vocab=64, hidden=64, n_heads=4, n_kv_heads=2, head_dim=16, intermediate=128,
                       n_layers=2)
    return to_transformers(materialize(build(spec), seed=3)).float().eval()


def windows():
    return torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(0))


def test_unknown_option_is_refused_before_any_work():
    with pytest.raises(BadInput, match="unknown auto-round option"):
        QuantConfig(**CFG, options={"enable_neuqui": True}).check()
    assert "enable_neuqi" in AUTOROUND_OPTIONS


@pytest.mark.parametrize("neuqi", [False, True])
def test_neuqi_option_anchors_every_tuned_layer(monkeypatch, neuqi):
    """``enable_neuqi`` makes auto-round search each layer's (scale, zero) grid once (NeUQI) instead of min/max:
    counted where auto-round calls the search, once per quantized linear (7 per block) and never without it."""
    import auto_round.data_type.neuqi as nq

    calls = []
    real = nq.neuqi_anchor_margins

    def counting(*a, **k):
        calls.append(a[0].shape)
        return real(*a, **k)

    monkeypatch.setattr(nq, "neuqi_anchor_margins", counting)
    cfg = QuantConfig(**{**CFG, "iters": 1, "lr": 0.01},
                      options={"enable_neuqi": True} if neuqi else {})
    model = tiny()
    before = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    layer_config, _ = run_autoround(model, word_tokenizer(64), cfg, windows())
    assert len(calls) == (7 * 2 if neuqi else 0)
    after = model.model.layers[0].mlp.down_proj.weight.detach()
    assert not torch.equal(before, after)  # quantized in place (QDQ weights left on the model)
    assert layer_config["model.layers.0.mlp.down_proj"]["bits"] == 2


def test_options_are_passed_after_the_defaults(autoround_kwargs):
    """The options override what run_autoround sets itself (``disable_opt_rtn=False`` at iters 0 is auto-round's
    optimized RTN), and the recorded config says what ran."""
    seen = autoround_kwargs
    run_autoround(tiny(), word_tokenizer(64), QuantConfig(**CFG, options={"disable_opt_rtn": False}), windows())
    assert seen["disable_opt_rtn"] is False and seen["iters"] == 0
    seen.clear()
    cfg = QuantConfig(**{**CFG, "iters": 2}, enable_alg_ext=True, options={"minmax_lr": 0.05, "nblocks": 2})
    run_autoround(tiny(), word_tokenizer(64), cfg, windows())
    assert (seen["minmax_lr"], seen["nblocks"], seen["enable_alg_ext"]) == (0.05, 2, True)


def test_neuqi_grid_reaches_the_search_and_is_restored(monkeypatch):
    """``neuqi_grid`` is auto-round's AR_NEUQI_COARSE/FINE for the run: the search sees it, the process does not keep it."""
    import os

    import auto_round.data_type.neuqi as nq
    from auto_round import envs

    monkeypatch.delenv("AR_NEUQI_COARSE", raising=False)
    monkeypatch.delenv("AR_NEUQI_FINE", raising=False)
    seen = []
    real = nq.neuqi_anchor_margins

    def recording(*a, **k):
        seen.append((envs.AR_NEUQI_COARSE, envs.AR_NEUQI_FINE))
        return real(*a, **k)

    monkeypatch.setattr(nq, "neuqi_anchor_margins", recording)
    cfg = QuantConfig(**{**CFG, "iters": 1, "lr": 0.01}, options={"enable_neuqi": True}, neuqi_grid=(16, 8))
    run_autoround(tiny(), word_tokenizer(64), cfg, windows())
    assert seen and set(seen) == {(16, 8)}
    assert "AR_NEUQI_COARSE" not in os.environ and "AR_NEUQI_FINE" not in os.environ
    with pytest.raises(BadInput, match="neuqi_grid"):
        QuantConfig(**CFG, neuqi_grid=(1, 8)).check()


def _resolved(tmp_path, *flags):
    from archfuzz.cli import build_parser
    from archfuzz.cli.quantize import resolve
    return resolve(build_parser().parse_args(["quantize", "--recipe", "bbt-spectral", "--out", str(tmp_path / "q"),
                                              *flags]))


def test_w2_default_resolves_to_the_measured_recipe(tmp_path):
    """docs/findings.md, "The W2 frontier": at W2 the cpu preset tunes with NeUQI weighted by the alg_ext imatrix
    on the 16/8 grid, 20 iterations, alpha 0.25; W4, RTN and explicit flags are left as they were."""
    cfg, alpha = _resolved(tmp_path, "--bits", "2")
    assert (cfg.enable_alg_ext, cfg.options, cfg.neuqi_grid, alpha) == (True, {"enable_neuqi": True}, (16, 8), 0.25)
    assert (cfg.iters, cfg.nsamples, cfg.lr) == (20, 8, 0.01)
    cfg, _ = _resolved(tmp_path, "--bits", "2", "--iters", "5")  # a flag wins over the W2 settings
    assert (cfg.iters, cfg.neuqi_grid) == (5, (16, 8))
    cfg, alpha = _resolved(tmp_path, "--bits", "4")
    assert (cfg.enable_alg_ext, cfg.options, cfg.neuqi_grid, alpha) == (False, {}, None, 0.5)
    cfg, _ = _resolved(tmp_path, "--bits", "2", "--iters", "0")
    assert (cfg.enable_alg_ext, cfg.options, cfg.neuqi_grid) == (False, {}, None)  # RTN stays plain
    cfg, alpha = _resolved(tmp_path, "--bits", "2", "--no-alg-ext", "--autoround-option", "enable_neuqi=False",
                           "--alpha", "0.5")
    assert (cfg.enable_alg_ext, cfg.options, alpha) == (False, {"enable_neuqi": False}, 0.5)
