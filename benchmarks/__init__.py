"""Benchmarks: scripts that print measured figures (README "Benchmarks", docs/findings.md).

Each one runs as a module from the repository root, e.g. ``python -m benchmarks.bench_verify --help``; none
of them edits ``sys.path``.  They import the ``fuzz``, ``verifier`` and ``quant`` packages, so
``python benchmarks/<name>.py`` also works where archfuzz is installed (``scripts/setup.sh`` installs it
editable into .venv).
"""
