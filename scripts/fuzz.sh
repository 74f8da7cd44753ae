#!/usr/bin/env bash
# The main job (sets itself up on a fresh machine): a layout-discovery campaign of every registered
# transform on the default (`ci`) profile; extra arguments go to `archfuzz fuzz`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
export TQDM_DISABLE="${TQDM_DISABLE:-1}"  # auto-round's per-call progress bars (peers) would bury the summary
archfuzz fuzz --profile ci --out runs/fuzz-latest "$@"
