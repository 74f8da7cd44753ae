"""One-way layers (issue 13): a lower layer never depends on an upper one, not even through a string.

Layers, lowest first: ``fuzz`` (IR, ops and their math, materializer, recorder, importer) <- ``verifier``
(oracle, tolerance, reducer, corpus) <- ``quant`` (transforms, quantization, parity, low-bit) <- the
application (``benchmarks``; today also ``quant/cli.py``, ``verifier/gate.py`` and the campaign's
orchestration, which still sit inside the packages).

Every module under ``fuzz/``, ``verifier/`` and ``quant/`` is read with :mod:`ast` (nothing is imported):

* every ``import`` / ``from ... import``, at module level or inside a function or class (relative imports
  resolved against the module's package);
* every string constant that names a module of an upper layer (``"quant.peers"`` in a registry dict or a
  corpus prefix map, the argument of ``importlib.import_module`` / ``__import__``): a dotted name whose
  package is a layer and that resolves to a module file in the checkout;
* ``import``/``from ... import`` lines inside string constants (generated repro scripts).

An edge from a module to a module of a higher layer fails unless it is in :data:`ALLOWED`, the upward edges
that existed when this test was written, each with what has to move.  A vanished allowlisted edge fails
too, so the list only shrinks: delete its entry when you remove the dependency.

Test files inside the packages (``fuzz/test_properties.py``, ``fuzz/test_export_properties.py``: ``pytest
fuzz/`` is the design card's entry point) are tests, the top of the house, and are not checked.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"fuzz": 0, "verifier": 1, "quant": 2, "benchmarks": 3}
CHECKED = ("fuzz", "verifier", "quant")
_DOTTED = re.compile(r"(?:%s)(?:\.[A-Za-z_][A-Za-z0-9_]*)*" % "|".join(LAYERS))
_IMPORT_CALLS = {"import_module", "__import__"}
_CODE_IMPORT = re.compile(r"^\s*(?:from\s+(%s)\s+import|import\s+(%s))\b" % ((_DOTTED.pattern,) * 2), re.M)

_GATE = "move the release gate's orchestration (verifier/gate.py) up into the application layer"
_REGISTRY = ("the quant layer registers its transform registries (quant.transforms, quant.peers) with verifier's "
             "registry instead of verifier naming them")
_MUTANTS = ("mutants of quant transforms move up to quant (or register themselves from quant) instead of "
            "verifier.mutants naming quant.transforms")
_CORPUS_PREFIX = ("the registry prefix map comes from the registry filled by its owners (quant registers "
                  "'quant'/'peers')")
_CORPUS_PARITY = ("parity findings are recorded/replayed through a hook quant.parity registers (or the parity "
                  "corpus code moves up to quant)")
_CAMPAIGN = ("the campaign's peer special cases (float64 skip, quiet third-party logs, default precision) become "
             "properties the quant.peers registry declares, or the orchestration moves up to the application")

# (module, upper module it depends on) -> "to be removed by issue 13: <what has to move>"
ALLOWED: dict[tuple[str, str], str] = {
    # verifier/gate.py: the release gate runs quant's stages and loads quant's checkpoint
    ("verifier.gate", "quant.gate_checks"): f"to be removed by issue 13: {_GATE}",
    ("verifier.gate", "quant.transforms"): f"to be removed by issue 13: {_GATE}",
    ("verifier.gate", "quant.checkpoints"): f"to be removed by issue 13: {_GATE}",
    # verifier/registry.py: REGISTRIES names the quant registries as strings
    ("verifier.registry", "quant.transforms"): f"to be removed by issue 13: {_REGISTRY}",
    ("verifier.registry", "quant.peers"): f"to be removed by issue 13: {_REGISTRY}",
    # verifier/mutants.py: the mutant table names the registry of the correct transform
    ("verifier.mutants", "quant.transforms"): f"to be removed by issue 13: {_MUTANTS}",
    # verifier/corpus.py: registry prefix map, and parity findings compared with quant.parity
    ("verifier.corpus", "quant.transforms"): f"to be removed by issue 13: {_CORPUS_PREFIX}",
    ("verifier.corpus", "quant.peers"): f"to be removed by issue 13: {_CORPUS_PREFIX}",
    ("verifier.corpus", "quant.parity"): f"to be removed by issue 13: {_CORPUS_PARITY}",
    # verifier/campaign.py: special cases keyed on the string "quant.peers"
    ("verifier.campaign", "quant.peers"): f"to be removed by issue 13: {_CAMPAIGN}",
}


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
    new = {k: v for k, v in upward_edges().items() if k not in ALLOWED}
    assert not new, ("upward dependencies (a lower layer must never import or name an upper one; move the code "
                     "or let the upper layer register itself):\n"
                     + "\n".join(f"  {a} -> {b}: {', '.join(w)}" for (a, b), w in sorted(new.items())))


def test_the_allowlist_only_shrinks():
    edges = upward_edges()
    gone = sorted(k for k in ALLOWED if k not in edges)
    assert not gone, ("these allowlisted upward dependencies are gone: delete their entries from ALLOWED in "
                      "tests/test_layers.py:\n" + "\n".join(f"  {a} -> {b}" for a, b in gone))


def test_every_allowlist_entry_is_upward_and_says_what_has_to_move():
    for (module, target), reason in ALLOWED.items():
        assert _layer(module) is not None and _layer(target) is not None and _layer(target) > _layer(module), \
            (module, target)
        assert reason.startswith("to be removed by issue 13: ") and len(reason) > 40, (module, target)
