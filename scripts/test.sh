#!/usr/bin/env bash
# The test suite (sets itself up on a fresh machine): unit tests and the fuzz properties under the
# derandomized `ci` hypothesis profile, on 2 pytest-xdist workers.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
OMP_NUM_THREADS=1 python -m pytest -q -n 2 --hypothesis-profile=ci "$@"
