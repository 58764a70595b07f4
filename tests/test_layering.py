"""The package boundaries of the README's layout, checked on the source: what each package must never import.

Imports count in every form: `import x`, `from x import y`, and the string target of
`importlib.import_module("x")` (how the operator's __main__ loads its handler modules), so a boundary
cannot be crossed by loading a module by name. Inside each package, its modules import one another in layers:
no cycle, so a module split in two cannot leave its halves importing each other.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("tokenbudget_api", "tokenbudget_cli", "tokenbudget_operator", "tokenbudget_sidecar")
NEVER = {
    "api/tokenbudget_api": ("kopf", "kubernetes", "aiohttp", "tokenbudget_operator", "tokenbudget_sidecar",
                            "tokenbudget_testing"),
    "operator/tokenbudget_operator": ("tokenbudget_sidecar", "tokenbudget_testing"),
    "operator/tokenbudget_operator/injector": ("tokenbudget_operator.reconciler",),
    "operator/tokenbudget_operator/reconciler": ("tokenbudget_operator.injector",),
    "sidecar/tokenbudget_sidecar": ("kopf", "kubernetes", "cryptography", "tokenbudget_operator",
                                    "tokenbudget_testing", "tokenbudget_cli"),
    # The plugin reads the cluster through the API models, never through the operator's or sidecar's code...
    "cli/tokenbudget_cli": ("kopf", "tokenbudget_operator", "tokenbudget_sidecar", "tokenbudget_testing"),
}
# ...except that `simulate` replays traces through the sidecar's real admission code (and what it takes:
# the budget state, the ladder's order of stages, the dialects that rewrite a downgraded model, prices,
# the sidecar's default settings).
EXCEPT = {
    "cli/tokenbudget_cli/simulate.py": ("tokenbudget_sidecar.admission", "tokenbudget_sidecar.budget",
                                        "tokenbudget_sidecar.dialects", "tokenbudget_sidecar.ladder",
                                        "tokenbudget_sidecar.pricing", "tokenbudget_sidecar.settings"),
}


def imported(path: Path, root: Path = ROOT, *, runtime: bool = False) -> set[str]:
    """Every module `path` imports, relative imports resolved, import_module("...") strings included.

    `runtime`: only what runs: not the imports under `if TYPE_CHECKING:` (annotations only), nor module paths
    kept as plain strings (a logger's name is one; import_module calls still count).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if runtime:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
    package = ".".join(path.relative_to(root).with_suffix("").parts[1:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}  # `from pkg import submodule`
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)
              and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)
        elif (not runtime and isinstance(node, ast.Constant) and isinstance(node.value, str)
              and node.value.startswith(PRODUCT)):
            names.add(node.value)  # a module path kept in a constant, as __main__'s HANDLER_MODULES
    return names


def forbidden(name: str, rules: tuple[str, ...]) -> bool:
    return any(name == rule or name.startswith(rule + ".") for rule in rules)


@pytest.mark.parametrize("package", sorted(NEVER))
def test_a_package_imports_nothing_it_must_not(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    found = [f"{f.relative_to(ROOT)}: {name}" for f in files for name in sorted(imported(f))
             if forbidden(name, NEVER[package]) and not forbidden(name, EXCEPT.get(str(f.relative_to(ROOT)), ()))]
    assert not found, "\n".join(found)


def test_the_rules_see_every_form_of_import(tmp_path: Path) -> None:
    """The checker itself must catch each form, or the rules above could pass by not looking."""
    probe = tmp_path / "operator" / "tokenbudget_operator" / "injector" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("import importlib\nfrom ..reconciler import fleet\n"
                     "importlib.import_module('tokenbudget_operator.reconciler.handlers')\n", encoding="utf-8")
    names = imported(probe, tmp_path)
    assert "tokenbudget_operator.reconciler.fleet" in names
    assert "tokenbudget_operator.reconciler.handlers" in names


def test_the_wheel_ships_no_test_tooling() -> None:
    """The product distribution finds packages under api/, cli/, operator/ and sidecar/ only: testing/ stays out."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    where = config["tool"]["setuptools"]["packages"]["find"]["where"]
    assert sorted(where) == ["api", "cli", "operator", "sidecar"]
    assert not list((ROOT / "sidecar").glob("tokenbudget_test*")), "test tooling inside a product folder"


def test_only_simulate_reaches_into_the_sidecar() -> None:
    """The exception is one module wide: status, report and export start without the sidecar's code."""
    cli = sorted((ROOT / "cli/tokenbudget_cli").rglob("*.py"))
    users = {str(f.relative_to(ROOT)) for f in cli for name in imported(f) if forbidden(name, ("tokenbudget_sidecar",))}
    assert users == set(EXCEPT)


@pytest.mark.parametrize("package", ["api/tokenbudget_api", "cli/tokenbudget_cli", "operator/tokenbudget_operator",
                                     "sidecar/tokenbudget_sidecar"])
def test_a_package_imports_its_own_modules_in_layers(package: str) -> None:
    """No import cycle among a package's modules (lazy imports inside functions count; TYPE_CHECKING ones do
    not), so each module can be read, tested and moved knowing only what is below it."""
    files = sorted((ROOT / package).rglob("*.py"))
    modules = {".".join(f.relative_to(ROOT).with_suffix("").parts[1:]).removesuffix(".__init__"): f for f in files}
    graph = {name: {dep for dep in imported(f, runtime=True) if dep in modules and dep != name}
             for name, f in modules.items()}
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")
