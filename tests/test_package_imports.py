"""No import cycle inside vq3dlib: lower layers never import upper ones, not even lazily.

The graph is read from the source (AST) of every module: ``import`` / ``from ... import`` statements
(absolute or relative, at module level or deferred inside functions) and ``importlib.import_module``
calls with a literal name, resolved to vq3dlib modules; ``if TYPE_CHECKING:`` blocks are left out (they
never run). ``from package import name`` counts as importing ``package.name`` when that is a module,
else ``package``. Importing a submodule initialises its parent packages, but a package importing its
own submodules (``vq3dlib/ops/__init__.py`` importing ``vq3dlib.ops.march``) is not a cycle, so only
the named modules are edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vq3dlib"


def _modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package) for every ``.py`` file under ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST, package: str) -> list[tuple[str, str | None]]:
    """``(module, name)`` pairs imported anywhere in ``tree`` (``name`` set for ``from m import name``)."""
    found: list[tuple[str, str | None]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, None) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                found.extend((module, alias.name) for alias in child.names)
            elif (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Attribute)
                and child.func.attr == "import_module"
                and child.args
                and isinstance(child.args[0], ast.Constant)
                and isinstance(child.args[0].value, str)
            ):
                found.append((child.args[0].value, None))
            visit(child)

    visit(tree)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same top-level package it imports (see the module docstring)."""
    modules = _modules(root)

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        targets = set()
        for module, imported in _imported_names(ast.parse(path.read_text(), str(path)), package):
            submodule = f"{module}.{imported}" if imported else None
            target = submodule if submodule in modules else resolve(module)
            if target is not None:
                targets.add(target)
        targets.discard(name)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]`` of ``graph``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_vq3dlib_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert "vq3dlib.backend" in graph and "vq3dlib.ops._library" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_dispatcher_imports_only_the_extension_loaders():
    # the compiled extension's loader and the emulated CUDA kernels' loader (the cuda-emu backend)
    assert import_graph(PACKAGE)["vq3dlib.backend"] == {"vq3dlib._ext", "vq3dlib._emu"}


def test_the_walker_finds_lazy_relative_and_importlib_cycles(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.a import f\n")
    (pkg / "sub" / "a.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    import pkg.c\n")
    (pkg / "b.py").write_text("def g():\n    from . import c\n")
    (pkg / "c.py").write_text("import importlib\nimportlib.import_module('pkg.b')\n")
    graph = import_graph(pkg)
    assert graph["pkg.sub"] == {"pkg.sub.a"} and graph["pkg.sub.a"] == set()  # TYPE_CHECKING left out
    assert find_cycle(graph) == ["pkg.b", "pkg.c", "pkg.b"]
