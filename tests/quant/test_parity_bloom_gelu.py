"""BLOOM's GELU (act ``bloom_gelu``) survives the OpenVINO export: a plain bloom_gelu MLP exported matches PyTorch
at CPU f32 within the gate."""

import pytest
import torch

from fuzz import DecoderSpec, build, materialize


@pytest.mark.slow
def test_a_bloom_gelu_mlp_exports_and_matches(cpu_f32_parity):
    model = materialize(build(DecoderSpec(mlp="bloom_gelu")), dtype=torch.float32, seed=3)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    cpu_f32_parity(model, ids)
