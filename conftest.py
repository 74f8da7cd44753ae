"""Hypothesis profiles for the whole suite live in fuzz.profiles; ``dev`` unless told otherwise."""

from hypothesis import settings

import fuzz.profiles  # noqa: F401  (registers dev / ci / nightly / release)

settings.load_profile("dev")


import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The suite's matrices are tiny: one thread per worker beats two threads fighting over 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
