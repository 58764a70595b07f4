"""Each image's extra installs every third-party module its code imports.

The images install `tokenbudget[sidecar]` or `tokenbudget[operator]` and nothing else, so a module imported by
the operator (or by tokenbudget_api, which both sides import) but missing from its extra crashes the pod at
start; the dev environment, which installs both extras, never shows it. Found once by the real-node tier
(genai_prices in the operator); this finds it in a second.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO_ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"tokenbudget_api", "tokenbudget_operator", "tokenbudget_sidecar", "tokenbudget_testing"}
SIDES = {"sidecar": ("api", "sidecar"), "operator": ("api", "operator")}


def third_party_imports(*dirs: str) -> dict[str, str]:
    """Top-level module → a file importing it (absolute imports only; stdlib and our own left out)."""
    found: dict[str, str] = {}
    for directory in dirs:
        for path in sorted((REPO_ROOT / directory).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                        found.setdefault(top, str(path.relative_to(REPO_ROOT)))
    return found


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(dist: str, extras: set[str]) -> set[str]:
    """Distributions `dist[extras]` installs, from the installed metadata (markers evaluated here)."""
    seen: set[str] = set()
    todo = [(dist, extras)]
    while todo:
        name, wanted = todo.pop()
        key = canonical(name)
        if key in seen and not wanted:
            continue
        seen.add(key)
        for line in md.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (wanted or {""})):
                todo.append((req.name, set(req.extras)))
    return seen


@pytest.mark.parametrize("side", list(SIDES))
def test_the_extra_installs_every_module_its_side_imports(side: str) -> None:
    providers = md.packages_distributions()
    installed = closure("tokenbudget", {side})
    missing = {
        module: where
        for module, where in third_party_imports(*SIDES[side]).items()
        if not {canonical(d) for d in providers.get(module, [])} & installed
    }
    assert not missing, f"tokenbudget[{side}] lacks what these import: {missing}"


def test_the_sidecar_extra_brings_no_kubernetes_client() -> None:
    installed = closure("tokenbudget", {"sidecar"})
    assert not installed & {"kopf", "kubernetes", "cryptography"}


@pytest.mark.parametrize(("image", "dist", "extras"), [("sidecar", "tokenbudget", {"sidecar"}),
                                                      ("operator", "tokenbudget", {"operator"}),
                                                      ("testapp", "tokenbudget-testing", set())])
def test_the_image_lock_pins_everything_the_image_installs(image: str, dist: str, extras: set[str]) -> None:
    """A dependency added to pyproject.toml without `scripts/images_lock.py` breaks `make images` (no index)."""
    lock = REPO_ROOT / "images" / f"requirements-{image}.txt"
    pinned = {canonical(line.split("==")[0]) for line in lock.read_text().splitlines() if "==" in line}
    needed = closure(dist, extras) - {"tokenbudget", "tokenbudget-testing"}
    assert not needed - pinned, f"{lock.name} lacks {sorted(needed - pinned)}: run scripts/images_lock.py"
