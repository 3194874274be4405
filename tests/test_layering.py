"""pinn_engine is pure numerics: it never imports pydicom, pynetdicom, highdicom or dicom_node."""

from __future__ import annotations

import ast
from pathlib import Path

FORBIDDEN = {"pydicom", "pynetdicom", "highdicom", "dicom_node"}


def test_pinn_engine_imports_no_dicom_code():
    root = Path(__file__).resolve().parents[1] / "pinn_engine"
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders, offenders


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[ast.ImportFrom | ast.Import]:
    """Every import of a module, also those inside functions (a deferred import is still a dependency)."""
    return [n for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(n, (ast.Import, ast.ImportFrom)) and getattr(n, "level", 0) == 0]


def _all_imports(path: Path) -> list[ast.ImportFrom]:
    return [n for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(n, ast.ImportFrom) and n.module and n.level == 0]


def test_dicom_node_uses_other_packages_through_what_they_offer():
    """A package's ``__all__`` is its interface: dicom_node imports from pinn_engine's packages and from its own
    sub-packages (outside them) only the names listed there, never from their modules."""
    import importlib

    root = Path(__file__).resolve().parents[1] / "dicom_node"
    offenders = []
    for path in root.rglob("*.py"):
        here = _module_name(path, root)
        for node in _all_imports(path):
            parts = node.module.split(".")
            if parts[0] not in ("pinn_engine", "dicom_node") or len(parts) < 2:
                continue
            package = ".".join(parts[:2])
            if parts[0] == "dicom_node" and (package == "dicom_node." + here.split(".")[1] if "." in here else False):
                continue  # a sub-package's own modules import each other freely
            try:
                is_package = hasattr(importlib.import_module(package), "__path__")
            except ImportError:
                continue
            if not is_package:
                continue  # a single-module part of the package (pinn_engine.aha, dicom_node.index, ...)
            if node.module != package:
                offenders.append(f"{here}: from {node.module} import ... (use {package})")
                continue
            offered = set(getattr(importlib.import_module(package), "__all__", ()))
            offenders += [f"{here}: {a.name} is not in {package}.__all__" for a in node.names if a.name not in offered]
    assert not offenders, offenders


def test_dicom_node_has_no_import_cycles():
    """Imports between dicom_node's modules, deferred ones included, form no cycle (lazy exports resolved)."""
    import importlib

    root = Path(__file__).resolve().parents[1] / "dicom_node"
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        here = _module_name(path, root)
        edges = graph.setdefault(here, set())
        for node in _imports(path):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name.startswith("dicom_node."))
                continue
            if not node.module or not node.module.startswith("dicom_node"):
                continue
            target = importlib.import_module(node.module)
            lazy = getattr(target, "_EXPORTS", {})
            for alias in node.names:
                if alias.name in lazy:
                    edges.add(f"{node.module}.{lazy[alias.name]}")
                elif hasattr(target, "__path__") and (root.parent / node.module.replace(".", "/") /
                                                      f"{alias.name}.py").exists():
                    edges.add(f"{node.module}.{alias.name}")
                else:
                    edges.add(node.module)
    # every module also imports its parent packages
    for name in list(graph):
        parts = name.split(".")
        graph[name].update(".".join(parts[:k]) for k in range(1, len(parts)) if ".".join(parts[:k]) != name)

    cycles = []
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph.get(name, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]) if nxt in trail else f"{name} -> {nxt}")
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles
