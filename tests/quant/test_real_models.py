"""The transform library on real transformers models: tiny instances of every family the foundation
emits, and the default checkpoint SmolLM2-135M.

A transformers model is imported through its recorded dataflow (``fuzz.importer.import_model``): the
GraphModel shares its parameters and computes in true float64 (``numerics="exact"``), which is the proof;
transformers' own forward upcasts RMSNorm to float32, so on the transformers module itself the check
runs in float32 (``host="transformers"``: what ships).
"""

import pytest
import torch

import quant.transforms as T
from fuzz import build, materialize
from fuzz.families import FAMILIES, family_spec, to_transformers
from fuzz.importer import import_model
from verifier import verify

RECIPES = list(T.RECIPES)
DIMS = dict(vocab=64, hidden=32, n_heads=4, n_kv_heads=2, head_dim=8, intermediate=48, n_layers=2)


def tiny(family: str) -> torch.nn.Module:
    """A tiny transformers model of ``family`` with random, non-trivial weights (norms, biases, gates)."""
    dims = {k: v for k, v in DIMS.items() if not (family == "stablelm" and k == "head_dim")}  # derived there
    return to_transformers(materialize(build(family_spec(family, **dims)), seed=3))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_transform_on_every_family_instance(family):
    hf = tiny(family)
    graph = import_model(hf)  # check=True: the import itself is proven first
    for name in T.names():
        verdict = verify(T.get(name), graph)
        assert verdict.ok or verdict.refused, f"{family}: {verdict}"
        if verdict.ok:
            assert verdict.max_rel_err <= 1e-12, f"{family}: {verdict}"


@pytest.mark.parametrize("family", FAMILIES)
def test_recipes_on_the_transformers_module_itself(family):
    hf = tiny(family)
    for name in RECIPES:
        verdict = verify(T.get(name, host="transformers"), hf, dtype=torch.float32)
        assert verdict.ok or verdict.refused, f"{family}: {verdict}"


@pytest.fixture(scope="module")
def smollm2():
    from quant.checkpoints import load_default_checkpoint
    model, _ = load_default_checkpoint()
    return model


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_on_smollm2_float64_proof(smollm2, recipe):
    graph = import_model(smollm2)  # checked: the proof is about SmolLM2's own function
    assert graph.layout.meta["import_check"]["floor"] in ("exact", "float32")
    verdict = verify(T.get(recipe), graph, dtype=torch.float64, batch=1, seq=8, calib_batch=1)
    assert verdict.ok, verdict
    assert verdict.max_rel_err <= 1e-12, verdict


@pytest.mark.slow
def test_recipe_on_smollm2_transformers_module_float32(smollm2):
    verdict = verify(T.get("bbt-absorb", host="transformers"), smollm2, dtype=torch.float32, batch=1, seq=8,
                     calib_batch=1)
    assert verdict.ok and verdict.max_rel_err < 1e-5, verdict


@pytest.mark.slow
def test_the_default_checkpoint_saves_as_a_plain_checkpoint(tmp_path):
    """GGUF loading leaves transformers' gguf quantizer on the model; a quantized-and-unfolded SmolLM2 must
    still save_pretrained (it once refused as "quantized with gguf and not serializable")."""
    from quant.checkpoints import load_checkpoint
    model, tok = load_checkpoint(None)
    assert not getattr(model, "is_quantized", False) and model.float() is model  # .float() refuses a "quantized" model
    model.save_pretrained(tmp_path, safe_serialization=True)
    reloaded, _ = load_checkpoint(tmp_path)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)
