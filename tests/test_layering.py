"""The package boundaries of design.md §1, checked on the source: what each package must never import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NEVER = {
    "api/tokenbudget_api": ("kopf", "kubernetes", "aiohttp", "tokenbudget_operator", "tokenbudget_sidecar"),
    "operator/tokenbudget_operator": ("tokenbudget_sidecar",),
    "sidecar/tokenbudget_sidecar": ("kopf", "kubernetes", "tokenbudget_operator"),
}


def imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return names


@pytest.mark.parametrize("package", sorted(NEVER))
def test_a_package_imports_nothing_it_must_not(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    found = [f"{f.relative_to(ROOT)}: {name}" for f in files for name in sorted(imported(f))
             if name.split(".")[0] in NEVER[package]]
    assert not found, "\n".join(found)
