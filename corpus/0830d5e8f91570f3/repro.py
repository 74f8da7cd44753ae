"""Self-contained repro of corpus entry 0830d5e8f91570f3: first_activation verify/diverged at linear"""
import json
from pathlib import Path

import torch

from fuzz import Layout
from verifier import verify
from verifier.registry import resolve

here = Path(__file__).resolve().parent
meta = json.loads((here / "meta.json").read_text())
layout = Layout.load(here / "layout.json")
transform = resolve(meta["transform"]["registry_name"], **meta["transform"]["options"])
verdict = verify(transform, layout, dtype=getattr(torch, meta["dtype"]), seed=meta["seed"])
print(verdict)
assert verdict.ok or verdict.refused, verdict.message
