"""The offline default calibration / evaluation text: docstrings of the Python standard library.

**This is not wikitext.**  When ``--calib-text`` / ``--eval-text`` are not given, the text is built on the
fly (nothing is stored in the project) from the Python installation that runs archfuzz: every ``.py`` file
under ``sysconfig.get_paths()["stdlib"]`` (sub-folders ``test``, ``tests``, ``idlelib``, ``lib2to3``,
``turtledemo``, ``site-packages`` and ``__pycache__`` skipped), walked in sorted order; from each file, its
module, class and function docstrings (``ast.get_docstring``, in source order), joined by blank lines.
Files alternate by their sorted index: even -> the **calibration** split, odd -> the **evaluation** split,
so the two never share a file.  The text is English technical prose under the PSF licence (the Python
licence permits this use).  It is deterministic for a given Python version (3.11.7 here); the reports
record its SHA-256 so runs on another Python are recognisably different.  Perplexities measured on it are
not comparable with wikitext-2 figures.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
import sysconfig
from functools import lru_cache

SKIP = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages", "__pycache__"}


def _files() -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP)
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    return out


def _docstrings(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    return [d for d in (ast.get_docstring(n) for n in nodes) if d and len(d) > 40]


@lru_cache(maxsize=2)
def default_text(split: str) -> str:
    """The ``"calibration"`` or ``"evaluation"`` split (module docstring)."""
    if split not in ("calibration", "evaluation"):
        raise ValueError(f"split must be 'calibration' or 'evaluation', got {split!r}")
    parity = 0 if split == "calibration" else 1
    parts = [d for i, f in enumerate(_files()) if i % 2 == parity for d in _docstrings(f)]
    return "\n\n".join(parts)


def describe(split: str) -> dict:
    text = default_text(split)
    return {"source": f"python{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro} "
                      f"stdlib docstrings ({split} split; not wikitext)",
            "chars": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()}
