"""Issue 12, item 0: no proof on an unchecked graph.

Every path that imports a model checks the imported graph against its source first, at several lengths past
every window in the config (batch 2), at transformers' float32 floor where the source computes in float32,
and refuses naming the first divergent module otherwise.  Tiny float64 instances are built from each
transformers config's defaults (``python -m benchmarks.import_check_families`` prints the whole table).
"""

from __future__ import annotations

import pytest
import torch

from benchmarks import import_check_families as families
from fuzz.errors import BadInput
from fuzz.importer import import_model
from fuzz.importer.logits import graph_logits, relative_error

MISTRAL = "mistral (sliding_window=8)"


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _calibration(vocab=64):
    from verifier.transform import Calibration
    return Calibration(torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(1)), 0)


def _windows(gm) -> list:
    return [gm.layout.params(n)["window"] for n in gm.layout.of_op("attention")]


def _without_window_measurement(monkeypatch):
    """An importer that misses the window (as before windows were measured): the check must still refuse."""
    import fuzz.importer.api as api
    monkeypatch.setattr(api, "measure_windows", lambda model, gm, rebuild, **kw: (gm, {}))


@pytest.mark.parametrize("name", [MISTRAL, "mixtral (sliding_window=8)", "phi3 (sliding_window=8)",
                                  "starcoder2 (sliding_window=8)"])
def test_a_sliding_window_is_measured_and_imported_exactly(name):
    """The window (8) is measured against the source (no module attribute read) and checked past 2 W + 8."""
    hf = families.from_config(name)
    gm = import_model(hf)
    assert _windows(gm) == [8, 8]
    check = gm.layout.meta["import_check"]
    assert check["floor"] == "exact" and [2, 24] in check["lengths"], check
    ids = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(4))
    assert relative_error(graph_logits(gm, ids, check["numerics"]), _logits(hf, ids)) <= 1e-10


def test_mistral_without_its_window_is_refused_naming_the_module(monkeypatch):
    """The check's teeth: a graph that drops the window (8) is refused; at 8 recording tokens nothing shows,
    at 24 it does."""
    _without_window_measurement(monkeypatch)
    hf = families.from_config(MISTRAL)
    with pytest.raises(BadInput) as err:
        import_model(hf)
    msg = str(err.value)
    assert "at (2, 24) token ids" in msg, msg
    assert "first divergent node 'model_layers_0_self_attn__attention' (attention) in module " \
           "model.layers.0.self_attn" in msg, msg
    assert "sliding window: measured" in msg, msg


def test_a_window_in_one_layer_only_is_measured_at_that_layer(monkeypatch):
    """Qwen2 with the window in layer 1 only (max_window_layers=1): imported with a window there only; without
    the measurement the check refuses it at that layer (the logits' dependence on the first token does not show
    the window; the attention node's position profile does: it agrees up to 8)."""
    hf = families.from_config("qwen2 (sliding_window=8 in layer 1 of 2)")
    assert _windows(import_model(hf)) == [None, 8]
    _without_window_measurement(monkeypatch)
    with pytest.raises(BadInput, match=r"first divergent node 'model_layers_1_self_attn__attention' \(attention\) in "
                                       r"module model\.layers\.1\.self_attn: .* sliding window: measured, this "
                                       r"attention agrees with its source at positions 0\.\.7 and differs from "
                                       r"position 8 on"):
        import_model(hf)


def test_a_window_longer_than_the_default_lengths_is_found_from_the_config(monkeypatch):
    """sliding_window=70 (> 64): the check reads the span from the config and runs at 2 * 70 + 8 tokens; the
    window is measured there."""
    import transformers as tf
    cfg = tf.MistralConfig(**{**families.DIMS, "max_position_embeddings": 256}, sliding_window=70)
    hf = families.randomize(tf.MistralForCausalLM._from_config(cfg, dtype=torch.float64))
    gm = import_model(hf)
    assert _windows(gm) == [70, 70] and [2, 148] in gm.layout.meta["import_check"]["lengths"]
    _without_window_measurement(monkeypatch)
    with pytest.raises(BadInput, match=r"at \(2, 148\) token ids.*in module model\.layers\.0\.self_attn.*"
                                       r"sliding window"):
        import_model(hf)


@pytest.mark.parametrize("recipe", ["bbt-spectral", "wht-scale", "wht-scale-roundtrip"])
def test_the_transformers_host_path_preserves_a_windowed_model(recipe):
    """These recipes used to return a model computing another function (0.23) on Mistral with a window: now
    the float64 proof on the imported graph (verified past 2 W + 8 tokens) holds, and the host path's result
    agrees with the model to its float32 RoPE tables (the source computes them in float32)."""
    import quant.transforms as T
    from verifier import verify
    hf = families.from_config(MISTRAL)
    gm = import_model(hf, numerics="transformers")
    verdict = verify(T.get(recipe), gm)
    assert verdict.ok and verdict.positions_compared >= 4 * 25, verdict
    ids = torch.randint(0, 64, (1, 32), generator=torch.Generator().manual_seed(2))
    before = _logits(hf, ids)
    out = T.get(recipe, host="transformers")(hf, _calibration())
    with torch.no_grad():
        after = out(ids) if not hasattr(out, "config") else _logits(out, ids)
    assert relative_error(after, before) < 1e-5


@pytest.mark.parametrize("name", ["cohere", "helium", "ernie4_5"])
def test_a_float32_floor_family_is_accepted_and_labelled(name):
    hf = families.from_config(name)
    gm = import_model(hf)
    check = gm.layout.meta["import_check"]
    assert check["floor"] == "float32" and check["dtype"] == "float64", check
    assert check["downcasts"] > 0 and check["bound"] == check["float32_bound"] < 1e-5, check
    assert 1e-10 < min(check["max_rel_err"].values()) <= check["bound"], check
    assert [2, 24] in check["lengths"] and [2, 64] in check["lengths"] and check["batch"] == 2, check
    ids = torch.randint(0, 64, (2, 64), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = gm(ids)
    want = _logits(hf, ids)
    assert ((got - want).abs().max() / want.abs().max()).item() <= check["bound"]


def test_the_transformers_host_path_refuses_instead_of_transforming_something_else():
    """bbt-spectral on the host path used to return a GraphModel computing another function; a feature the
    importer cannot express (Doge's dynamic-mask attention; DiffLlama's differential attention and MPT's ALiBi
    until they were imported) is refused by name, untouched."""
    import transformers as tf

    import quant.transforms as T
    from benchmarks.compat import tiny_config
    cfg = tiny_config(tf.DogeForCausalLM)
    hf = tf.DogeForCausalLM._from_config(cfg, dtype=torch.float64).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 32), generator=torch.Generator().manual_seed(2))
    before = _logits(hf, ids)
    with pytest.raises(BadInput, match=r"cannot import .*dynamic-mask attention"):
        T.get("bbt-spectral", host="transformers")(hf, _calibration())
    assert torch.equal(_logits(hf, ids), before)  # refused before any weight was edited


def test_the_transformers_host_path_transforms_the_imported_function():
    """GLM-4-MoE (sigmoid router with a correction bias, group-limited top-k, a dense first layer: refused
    before its router was measured) now imports at the float32 floor, and bbt-spectral on the host path
    returns a model computing the source's function."""
    import quant.transforms as T
    hf = families.from_config("glm4_moe")
    ids = torch.randint(0, 64, (1, 32), generator=torch.Generator().manual_seed(2))
    before = _logits(hf, ids)
    out = T.get("bbt-spectral", host="transformers")(hf, _calibration())
    with torch.no_grad():
        got = out(ids)
    got = getattr(got, "logits", got)
    assert ((got - before).abs().max() / before.abs().max()).item() <= 1e-5


def test_mixed_dtype_parameters_are_refused_not_a_traceback():
    """GLM-4-MoE built in float64 keeps its router in float32: the graph cannot run; BadInput says so."""
    import transformers as tf
    prefix, extra = families.CONFIG_FAMILIES["glm4_moe"]
    cfg = tf.Glm4MoeConfig(**families.DIMS, **extra)
    hf = families.randomize(tf.Glm4MoeForCausalLM._from_config(cfg, dtype=torch.float64,
                                                                 experts_implementation="eager"))
    assert hf.model.layers[1].mlp.gate.weight.dtype == torch.float32
    with pytest.raises(BadInput, match=r"Glm4MoeForCausalLM: the imported graph does not run"):
        import_model(hf)


def test_quantize_import_path_is_checked():
    """archfuzz quantize's oracle gate and its T1 preparation import through the check (no quantization)."""
    from quant.quantize import gate, prepare
    windowed = gate(families.from_config(MISTRAL), "bbt-absorb")  # its window measured, checked and proven
    assert windowed.ok and [2, 24] in windowed.import_check["lengths"], windowed
    assert windowed.positions_compared == 2 * 8 + 9  # proven past the window, not at the gate's 8 tokens
    hf = families.from_config("glm4_moe")
    calib = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(3))
    with pytest.raises(BadInput, match=r"Glm4MoeTopkRouter, not an nn\.Linear"):  # imported, checked, then refused
        prepare(hf, "bbt-spectral", calib)
    assert all(m.weight.shape[1] == m.in_features for m in hf.modules() if isinstance(m, torch.nn.Linear))
    verdict = gate(families.from_registry("llama"), "bbt-absorb")  # a faithful import still gets its proof
    assert verdict.ok, verdict
    assert verdict.import_check["floor"] == "exact" and [2, 64] in verdict.import_check["lengths"]
