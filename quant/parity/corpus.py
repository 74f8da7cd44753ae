"""Exporter findings in the regression corpus (registry ``parity``): the template of their ``repro.py`` and the
hook :mod:`verifier.corpus` compares them again with (:func:`verifier.corpus.register_replayer`)."""

from __future__ import annotations

from verifier.corpus import register_replayer

from .comparison import compare

PARITY_REPRO = '''"""Self-contained repro of corpus entry {sig}: OpenVINO {stage}/{symptom} (CPU f32 vs PyTorch)"""
import json
from pathlib import Path

from fuzz import Layout
from verifier.corpus import parity_subject

here = Path(__file__).resolve().parent
meta = json.loads((here / "meta.json").read_text())
model, ids = parity_subject(Layout.load(here / "layout.json"), meta)

if __name__ == "__main__":
    from quant.parity import compare
    report = compare(model, ids, devices=["CPU"], hints=["f32"])
    print(json.dumps({{"export": report["export"], "rows": report["rows"]}}, indent=1, default=str))
    assert report["ok"], "OpenVINO CPU f32 does not match PyTorch"
'''


register_replayer("parity", compare, repro=PARITY_REPRO)
