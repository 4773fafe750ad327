"""The import layers: no module imports a higher layer, and no import cycle between modules.

Order, bottom to top: ``misc`` < ``config`` < ``loader``, ``metrics``, ``postproc`` < ``models``
< ``engine``, ``inference`` < the scripts (``train``, ``infer``, ``process``, ``extract_patches``,
``demo``). Every ``import`` of every project module counts, at the top of a file or inside a
function. Imports within a layer are allowed when they form no cycle. ``benchmarks`` and
``tests`` sit outside the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

LAYERS: dict[str, int] = {
    "misc": 0,
    "config": 1,
    "loader": 2, "metrics": 2, "postproc": 2,
    "models": 3,
    "engine": 4, "inference": 4,
    "train": 5, "infer": 5, "process": 5, "extract_patches": 5, "demo": 5,
}
OUTSIDE = ("tests", "benchmarks")


def module_name(path: Path) -> str:
    """Dotted module name of a file under the repository root (a package's ``__init__`` is the package)."""
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    """Every module of the layers: name -> file."""
    modules = {}
    for top in LAYERS:
        files = sorted((REPO_ROOT / top).rglob("*.py")) if (REPO_ROOT / top).is_dir() else [REPO_ROOT / f"{top}.py"]
        modules.update((module_name(path), path) for path in files if path.is_file())
    return modules


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported dotted name refers to: the longest prefix that is one."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """``(imported project module, line)`` of every import statement in ``path``, at any depth.

    ``from package import name`` counts as importing ``package.name`` when that is a module.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = resolve(name, modules)
            if target is not None and target != module:
                found.append((target, node.lineno))
    return found


def layer(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def import_graph() -> tuple[dict[str, Path], dict[str, set[str]], list[str]]:
    """The modules, their import edges and the upward imports (as readable lines)."""
    modules = project_modules()
    edges: dict[str, set[str]] = {name: set() for name in modules}
    upward = []
    for name, path in sorted(modules.items()):
        for target, line in imports_of(name, path, modules):
            edges[name].add(target)
            if layer(target) > layer(name):
                upward.append(f"{path.relative_to(REPO_ROOT)}:{line} imports {target} (a higher layer)")
    return modules, edges, upward


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_module_belongs_to_a_layer():
    modules = project_modules()
    assert {"misc.errors", "config", "loader.keys", "models.checkpoint", "engine.loop", "inference.tta", "demo"} <= set(modules)
    strays = [p.name for p in REPO_ROOT.glob("*.py") if p.stem not in LAYERS]
    assert not strays, f"top-level modules without a layer: {strays}"
    packages = [p.name for p in REPO_ROOT.iterdir()
                if (p / "__init__.py").is_file() and p.name not in LAYERS and p.name not in OUTSIDE]
    assert not packages, f"packages without a layer: {packages}"


def test_no_import_runs_up_the_layers():
    _, _, upward = import_graph()
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    _, edges, _ = import_graph()
    found = cycles(edges)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("source, expected", [
    ("from models import checkpoint\n", {"models.checkpoint"}),
    ("def f():\n    from engine.loop import train\n", {"engine.loop"}),
    ("import loader.colour as colour\n", {"loader.colour"}),
    ("from . import tiling\n", {"inference.tiling"}),
])
def test_the_walk_sees_every_form_of_import(tmp_path, source, expected):
    modules = {"models": Path(), "models.checkpoint": Path(), "engine.loop": Path(), "loader.colour": Path(),
               "inference": Path(), "inference.tiling": Path(), "inference.folder": Path()}
    path = tmp_path / "folder.py"
    path.write_text(source)
    assert {target for target, _ in imports_of("inference.folder", path, modules)} == expected


def test_cycles_are_found():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
