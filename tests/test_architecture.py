"""The provider boundary and the import graph, checked on the real imports.

* The core -- scheduling, callbacks, interaction, store, web, metrics and the neutral parts of ``providers``
  -- never imports a vendor's package or the sandboxes: an import-linter contract (``[tool.importlinter]``
  in ``pyproject.toml``; transitive imports count).
* No module is part of an import cycle, ``TYPE_CHECKING`` imports included (a cycle hidden behind them is
  still two concepts that cannot be understood apart); nor is a package, counting the neutral provider
  modules apart from the vendors' packages. Checked on import-linter's own graph (grimp).

The second half of each test shows the check catches what it forbids, on a small package built for it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
NEUTRAL_PROVIDER_MODULES = ("base", "registry", "errors")


def lint_imports(cwd: Path, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("lint-imports"))]
    if config is not None:
        command += ["--config", str(config)]
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, check=False, env={"PYTHONPATH": str(cwd)}
    )


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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


def import_edges(package: str, group: Callable[[str], str] = lambda m: m) -> dict[str, set[str]]:
    graph = grimp.build_graph(package, exclude_type_checking_imports=False)
    edges: dict[str, set[str]] = defaultdict(set)
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if group(module) != group(imported):
                edges[group(module)].add(group(imported))
    return edges


def package_of(module: str) -> str:
    """The top-level part of ``orchestrator`` a module belongs to; a vendor's package is its own part, the
    neutral provider modules another."""
    parts = module.split(".")
    if len(parts) > 2 and parts[1] == "providers":
        return "orchestrator.providers" if parts[2] in NEUTRAL_PROVIDER_MODULES else ".".join(parts[:3])
    return ".".join(parts[:2])


def test_the_core_imports_no_vendor_package() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 1 kept, 0 broken." in result.stdout, result.stdout


def test_no_module_and_no_package_imports_in_a_circle() -> None:
    assert cycles(import_edges("orchestrator")) == []
    assert cycles(import_edges("orchestrator", package_of)) == []


def test_the_checks_catch_a_vendor_import_and_a_cycle(tmp_path: Path) -> None:
    """A small package that breaks both rules: its core imports a vendor, and two modules import each other
    (one of them only for type checking)."""
    package = tmp_path / "shop"
    (package / "providers" / "acme").mkdir(parents=True)
    (package / "core").mkdir()
    files = {
        "__init__.py": "",
        "providers/__init__.py": "",
        "providers/acme/__init__.py": "VALUE = 1\n",
        "core/__init__.py": "",
        "core/a.py": "from shop.providers.acme import VALUE\nfrom shop.core import b\n",
        "core/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from shop.core import a\n",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    config = tmp_path / "contracts.toml"
    config.write_text(
        textwrap.dedent(
            """
            [tool.importlinter]
            root_package = "shop"
            exclude_type_checking_imports = false

            [[tool.importlinter.contracts]]
            name = "core never imports a vendor"
            type = "forbidden"
            source_modules = ["shop.core"]
            forbidden_modules = ["shop.providers.acme"]
            """
        )
    )
    result = lint_imports(tmp_path, config)
    assert result.returncode != 0
    assert "Contracts: 0 kept, 1 broken." in result.stdout, result.stdout
    assert "shop.core.a -> shop.providers.acme" in result.stdout, result.stdout
    sys.path.insert(0, str(tmp_path))
    try:
        assert cycles(import_edges("shop")) == [["shop.core.a", "shop.core.b"]]
    finally:
        sys.path.remove(str(tmp_path))
