"""The import-layer contract of the genlab package: no module imports upwards.

``LAYERS`` below is the one place the layers are written down, bottom (0) to top. Each entry is a layer: its
name, the units in it (a unit is a top-level module or package of genlab; a package's submodules belong to
it) and whether the units of the layer may import one another. A module may import

* anything in its own unit (``genlab.nn.text`` may import ``genlab.nn.minilm``; cycles inside the
  ``CYCLE_FREE`` packages are a separate test below),
* any unit of a lower layer,
* a unit of its own layer only where the layer says ``siblings=True`` (the utilities).

``genlab/__init__.py`` re-exports the API; it is the top and is exempt as an importer, but importing it from
inside the package (``from genlab import sample``) is an import of the top layer. ``from .. import faults``
names the submodule ``genlab.faults``, not ``genlab/__init__``: a name imported from a package is resolved to
its submodule whenever that submodule exists.

Every import statement counts, at module level or inside a function (lazy imports close circles too), under
``if``/``try`` as well, and ``importlib.import_module("genlab...")`` with a literal name. The scan is an AST
walk of every ``genlab/**/*.py``; nothing of genlab is imported by this test. A new top-level module must be
placed in ``LAYERS`` (``test_layer_table_covers_every_module``).
"""
from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

import pytest


class Layer(NamedTuple):
    name: str
    units: tuple[str, ...]
    siblings: bool = False     # may the units of this layer import one another?


LAYERS: tuple[Layer, ...] = (
    # 0: helpers that know nothing of images, models or methods (genlab.configs: the shipped YAML recipes)
    Layer("utilities", ("genlab.rng", "genlab.files", "genlab.faults", "genlab.registry", "genlab.pictures",
                        "genlab.version", "genlab.configs"), siblings=True),
    # 1: datasets, backbones, diffusion processes: independent of each other
    Layer("data/nn/diffusion", ("genlab.data", "genlab.nn", "genlab.diffusion")),
    # 2: the config schema (may name datasets and samplers of layer 1)
    Layer("config", ("genlab.config",)),
    # 3: training objectives and samplers of each family
    Layer("methods", ("genlab.methods",)),
    # 4: training and evaluation: siblings, neither imports the other
    Layer("train/eval", ("genlab.train", "genlab.eval")),
    # 5: run directories
    Layer("runs", ("genlab.runs",)),
    # 6: pictures and comparison reports
    Layer("report", ("genlab.report",)),
    # 7: the Python API
    Layer("api", ("genlab.api",)),
    # 8: the web app (runs, reports, live generation)
    Layer("serve", ("genlab.serve",)),
    # 9: the command line, the one entry point: it dispatches to everything, `genlab serve` included
    Layer("cli", ("genlab.cli",)),
)
TOP = "genlab"                 # genlab/__init__.py: above every layer, exempt as an importer
TOP_LAYER = len(LAYERS)
# packages whose modules must not import each other in a circle (module level or lazily)
CYCLE_FREE = ("genlab.data", "genlab.nn", "genlab.diffusion")

PKG_DIR = Path(importlib.util.find_spec(TOP).submodule_search_locations[0])


@dataclass(frozen=True)
class Import:
    module: str                # the importing module, dotted
    line: int
    target: str                # the imported genlab module, dotted, resolved


def module_name(path: Path, root: Path = PKG_DIR) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(root: Path = PKG_DIR) -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    return {module_name(p, root): p for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts}


def imports_of(source: str, module: str, is_package: bool, known: Iterable[str]) -> list[Import]:
    """The genlab modules that ``source`` (the text of ``module``) imports, anywhere in it, resolved:
    relative imports against ``module``'s package, and ``from P import x`` to ``P.x`` when ``P.x`` is one of
    the ``known`` modules (else to ``P`` itself)."""
    known = set(known)
    package = module if is_package else module.rpartition(".")[0]
    out: list[Import] = []

    def add(node, target):
        if target == TOP or target.startswith(TOP + "."):
            out.append(Import(module, node.lineno, target))

    for node in ast.walk(ast.parse(source, filename=module)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level - 1 >= len(parts):
                    raise ValueError(f"{module}:{node.lineno}: relative import beyond the top package")
                base = ".".join(parts[:len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(node, sub if alias.name != "*" and sub in known else base)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"):
            add(node, node.args[0].value)
    return sorted(set(out), key=lambda i: (i.line, i.target))


def unit_of(module: str) -> str | None:
    """The unit of LAYERS a module belongs to (TOP for genlab/__init__), or None when it is not placed."""
    if module == TOP:
        return TOP
    units = [u for layer in LAYERS for u in layer.units if module == u or module.startswith(u + ".")]
    return max(units, key=len) if units else None


def layer_of(unit: str | None) -> int | None:
    if unit == TOP:
        return TOP_LAYER
    return next((i for i, layer in enumerate(LAYERS) for u in layer.units if u == unit), None)


def layer_label(i: int | None) -> str:
    if i is None:
        return "layer ? (not in LAYERS)"
    return f"layer {i} {'top genlab/__init__' if i == TOP_LAYER else LAYERS[i].name}"


def violation(imp: Import) -> str | None:
    """``module:line imports target (layer A -> layer B)`` when ``imp`` breaks the contract, else None."""
    src, dst = unit_of(imp.module), unit_of(imp.target)
    if src == TOP or src == dst:
        return None
    a, b = layer_of(src), layer_of(dst)
    ok = a is not None and b is not None and (b < a or (b == a and LAYERS[a].siblings))
    return None if ok else f"{imp.module}:{imp.line} imports {imp.target} ({layer_label(a)} -> {layer_label(b)})"


def violations(imports: Iterable[Import]) -> list[str]:
    return [v for v in map(violation, imports) if v]


def cycles(imports: Iterable[Import], packages: Iterable[str] = CYCLE_FREE) -> list[str]:
    """Import circles between modules of one of ``packages`` (Tarjan's strongly connected components),
    each as its members and the imports that close it."""
    packages = tuple(packages)
    def pkg(m):
        return next((p for p in packages if m == p or m.startswith(p + ".")), None)
    edges: dict[str, dict[str, list[Import]]] = {}
    for imp in imports:
        if imp.module != imp.target and pkg(imp.module) and pkg(imp.module) == pkg(imp.target):
            edges.setdefault(imp.module, {}).setdefault(imp.target, []).append(imp)
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    out = []
    for comp in sorted(comps):
        closing = [f"{i.module}:{i.line} imports {i.target}" for a in comp for b, imps in sorted(edges[a].items())
                   if b in comp for i in imps]
        out.append(f"circle {' <-> '.join(comp)}: " + "; ".join(closing))
    return out


def scan(root: Path = PKG_DIR) -> list[Import]:
    mods = package_modules(root)
    return [imp for m, p in mods.items()
            for imp in imports_of(p.read_text(encoding="utf-8"), m, p.name == "__init__.py", mods)]


# ---------------------------------------------------------------------------------------------------- the package

def test_no_upward_imports():
    bad = violations(scan())
    assert not bad, (f"{len(bad)} import(s) against the layers of tests/test_layers.py (LAYERS):\n  "
                     + "\n  ".join(bad))


def test_no_import_cycles_inside_layer1_packages():
    bad = cycles(scan())
    assert not bad, "import circles inside a package:\n  " + "\n  ".join(bad)


def test_layer_table_covers_every_module():
    placed = [u for layer in LAYERS for u in layer.units]
    assert len(placed) == len(set(placed)), "a unit is in two layers of LAYERS"
    assert all(u.count(".") == 1 and u.startswith(TOP + ".") for u in placed), "units are top-level genlab.X"
    unplaced = sorted(m for m in package_modules() if unit_of(m) is None)
    assert not unplaced, f"modules in no layer of tests/test_layers.py LAYERS (place them): {unplaced}"


# ---------------------------------------------------------------------------------------------- the checker itself

KNOWN = {"genlab", "genlab.api", "genlab.faults", "genlab.runs", "genlab.eval", "genlab.eval.metrics",
         "genlab.nn", "genlab.nn.text", "genlab.nn.minilm", "genlab.nn.unet", "genlab.train",
         "genlab.train.loop", "genlab.pictures"}

FAKE = '''
from __future__ import annotations
import numpy as np
from .. import faults                      # a utility: fine
from . import unet                         # own package: fine
from ..pictures import grid                # a utility: fine
from ..api import sample                   # 1 -> 7


def later():
    from genlab import runs                # lazy, resolves to genlab.runs: 1 -> 5
    import genlab.eval.metrics             # lazy, 1 -> 4
    if True:
        from genlab import something_else  # the re-exports of genlab/__init__: 1 -> top
    import importlib
    return importlib.import_module("genlab.train.loop")   # 1 -> 4
'''


def test_checker_finds_a_synthetic_upward_import():
    imps = imports_of(FAKE, "genlab.nn.fake", False, KNOWN)
    assert [(i.line, i.target) for i in imps] == [
        (4, "genlab.faults"), (5, "genlab.nn.unet"), (6, "genlab.pictures"), (7, "genlab.api"),
        (11, "genlab.runs"), (12, "genlab.eval.metrics"), (14, "genlab"), (16, "genlab.train.loop")]
    assert violations(imps) == [
        "genlab.nn.fake:7 imports genlab.api (layer 1 data/nn/diffusion -> layer 7 api)",
        "genlab.nn.fake:11 imports genlab.runs (layer 1 data/nn/diffusion -> layer 5 runs)",
        "genlab.nn.fake:12 imports genlab.eval.metrics (layer 1 data/nn/diffusion -> layer 4 train/eval)",
        "genlab.nn.fake:14 imports genlab (layer 1 data/nn/diffusion -> layer 10 top genlab/__init__)",
        "genlab.nn.fake:16 imports genlab.train.loop (layer 1 data/nn/diffusion -> layer 4 train/eval)"]


@pytest.mark.parametrize("module, source, bad", [
    ("genlab.data.x", "from ..nn import unet", True),            # siblings of layer 1
    ("genlab.eval.x", "from genlab.train import loop", True),     # siblings of layer 4
    ("genlab.train.x", "from .. import eval", True),
    ("genlab.config", "from .methods import x", True),           # 2 -> 3
    ("genlab.config", "from .data import x", False),             # 2 -> 1
    ("genlab.runs", "from . import faults", False),              # -> genlab.faults, not genlab/__init__
    ("genlab.train.loop", "from .. import faults", False),
    ("genlab.cli", "from . import api", False),
    ("genlab.cli", "import genlab", True),                       # the top, from inside
    ("genlab", "from .cli import main", False),                  # genlab/__init__ is exempt
    ("genlab.faults", "from .pictures import grid", False),      # utilities may import each other
    ("genlab.newthing", "from .rng import x", True),             # not in LAYERS
])
def test_checker_rules(module, source, bad):
    imps = imports_of(source, module, module == "genlab", KNOWN | {"genlab.eval", "genlab.data"})
    assert imps and bool(violations(imps)) == bad, violations(imps)


def test_checker_finds_a_circle_closed_lazily():
    a = imports_of("from .b import x\n", "genlab.nn.a", False, KNOWN)
    b = imports_of("def f():\n    from . import a\n", "genlab.nn.b", False, KNOWN | {"genlab.nn.a"})
    c = imports_of("from .a import y\n", "genlab.nn.c", False, KNOWN)
    assert cycles(a + b + c) == ["circle genlab.nn.a <-> genlab.nn.b: genlab.nn.a:1 imports genlab.nn.b; "
                                 "genlab.nn.b:2 imports genlab.nn.a"]
    assert cycles(a + c) == []
