"""One-way layers (issue 13): a lower layer never depends on an upper one, not even through a string.

Layers, lowest first: ``fuzz`` (IR, ops and their math, materializer, recorder, importer) <- ``verifier``
(oracle, tolerance, reducer, corpus) <- ``quant`` (transforms, quantization, parity, low-bit) <- the
application (``archfuzz``: the CLI, one module per command, and the release gate; ``benchmarks``).

Every module under ``fuzz/``, ``verifier/``, ``quant/`` and ``archfuzz/`` is read with :mod:`ast` (nothing is imported):

* every ``import`` / ``from ... import``, at module level or inside a function or class (relative imports
  resolved against the module's package);
* every string constant that names a module of an upper layer (``"quant.peers"`` in a registry dict or a
  corpus prefix map, the argument of ``importlib.import_module`` / ``__import__``): a dotted name whose
  package is a layer and that resolves to a module file in the checkout;
* ``import``/``from ... import`` lines inside string constants (generated repro scripts).

An edge from a module to a module of a higher layer fails.  Where a lower layer needs what an upper one
provides (quant's transform registries, its mutants, the parity replayer), the upper layer registers it:
``[project.entry-points."archfuzz.registries"]`` in ``pyproject.toml``, loaded by ``verifier.registry``.

Test files inside the packages (``fuzz/test_properties.py``, ``fuzz/test_export_properties.py``: ``pytest
fuzz/`` is the design card's entry point) are tests, the top of the house, and are not checked.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"fuzz": 0, "verifier": 1, "quant": 2, "archfuzz": 3, "benchmarks": 3}
CHECKED = ("fuzz", "verifier", "quant", "archfuzz")
_DOTTED = re.compile(r"(?:%s)(?:\.[A-Za-z_][A-Za-z0-9_]*)*" % "|".join(LAYERS))
_IMPORT_CALLS = {"import_module", "__import__"}
_CODE_IMPORT = re.compile(r"^\s*(?:from\s+(%s)\s+import|import\s+(%s))\b" % ((_DOTTED.pattern,) * 2), re.M)

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _refine(module: str, names: list[str]) -> list[str]:
    """``from pkg import sub`` depends on ``pkg.sub`` when that is a module, else on ``pkg``."""
    out = [f"{module}.{n}" for n in names if n != "*" and _is_module(f"{module}.{n}")]
    return out or [module]


def _resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    parts = importer.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([module] if module else []))


def _layer(name: str) -> int | None:
    return LAYERS.get(name.split(".")[0])


def dependencies(source: str, importer: str, is_package: bool = False) -> list[tuple[str, int, str]]:
    """``(module, line, how)`` for every module ``source`` depends on (imports and module-naming strings)."""
    deps: list[tuple[str, int, str]] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            deps += [(a.name, node.lineno, "import") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                mod = _resolve_relative(importer, is_package, node.level, node.module)
            deps += [(m, node.lineno, "from-import") for m in _refine(mod, [a.name for a in node.names])]
        elif isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else None
            if (name in _IMPORT_CALLS and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                deps.append((node.args[0].value, node.lineno, f"{name}()"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if _DOTTED.fullmatch(text) and "." in text and _is_module(text):
                deps.append((text, node.lineno, "string"))
            for m in _CODE_IMPORT.finditer(text):  # generated code (repro scripts) importing a module
                deps.append((m.group(1) or m.group(2), node.lineno, "import in a code string"))
    return deps


def _checked_files() -> list[Path]:
    files = []
    for pkg in CHECKED:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "__pycache__" in path.parts or path.name == "conftest.py":
                continue
            if path.name.startswith(("test_", "prop_")):  # tests (pytest's python_files), not the library
                continue
            files.append(path)
    return files


def upward_edges() -> dict[tuple[str, str], list[str]]:
    """``(module, upper module) -> ["path:line how", ...]`` over every checked module."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in _checked_files():
        importer = _module_name(path)
        own = _layer(importer)
        for target, line, how in dependencies(path.read_text(), importer, path.name == "__init__.py"):
            layer = _layer(target)
            if layer is not None and layer > own:
                edges.setdefault((importer, target), []).append(f"{path.relative_to(ROOT)}:{line} {how}")
    return edges


def test_the_detector_sees_function_level_imports_and_module_naming_strings():
    src = '''
import importlib
from . import sibling
from .. import ops
REG = {"quant": "quant.transforms", "name": "quant", "file": "quant.json"}

def f():
    from quant.parity import compare
    import verifier.oracle as o
    importlib.import_module("quant.peers")
    __import__("benchmarks")
    return "x = 1\\nfrom quant.parity import compare\\n"
'''
    found = {(m, how) for m, _, how in dependencies(src, "verifier.x.y")}
    assert ("verifier.x.sibling", "from-import") in found or ("verifier.x", "from-import") in found
    assert ("verifier.ops", "from-import") in found or ("verifier", "from-import") in found
    assert ("quant.transforms", "string") in found          # a registry dict value
    assert ("quant.parity", "from-import") in found         # function-level
    assert ("verifier.oracle", "import") in found
    assert ("quant.peers", "import_module()") in found
    assert ("benchmarks", "__import__()") in found
    assert ("quant.parity", "import in a code string") in found
    assert not any(m in ("quant", "quant.json") and how == "string" for m, how in found)  # not module names


def test_no_lower_layer_depends_on_an_upper_one():
    new = upward_edges()
    assert not new, ("upward dependencies (a lower layer must never import or name an upper one; move the code "
                     "or let the upper layer register itself):\n"
                     + "\n".join(f"  {a} -> {b}: {', '.join(w)}" for (a, b), w in sorted(new.items())))
