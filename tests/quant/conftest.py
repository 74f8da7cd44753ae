"""Fixtures shared by the quantization tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def autoround_kwargs(monkeypatch) -> dict:
    """The keyword arguments ``run_autoround`` gives ``auto_round.AutoRound``, recorded by a stand-in that
    quantizes nothing (filled when ``run_autoround`` runs; cleared by the test between runs)."""
    import auto_round

    seen: dict = {}

    class Recorder:
        def __init__(self, model, tokenizer, **kwargs):
            seen.update(kwargs)

        def quantize(self):
            return None, {}

    monkeypatch.setattr(auto_round, "AutoRound", Recorder)
    return seen
