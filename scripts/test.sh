#!/usr/bin/env bash
# The test suite: unit tests and the fuzz properties under the derandomized `ci` hypothesis profile.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -q -n 2 --hypothesis-profile=ci "$@"
