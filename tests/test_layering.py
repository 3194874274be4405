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
