#!/usr/bin/env bash
# Source me: create .venv (Python >= 3.11) on first use, install archfuzz and its pinned dependencies
# into it (again whenever pyproject.toml changes), and activate it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
    python3 -m venv "$ROOT/.venv"
fi
# shellcheck disable=SC1091
. "$ROOT/.venv/bin/activate"
STAMP="$ROOT/.venv/.archfuzz-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    bash "$ROOT/scripts/setup.sh"
    echo "$WANT" > "$STAMP"
fi
