"""The core's layering: each subpackage's public names resolve, nothing in the core imports the CLI or a plugin."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parent.parent / "harness"
SUBPACKAGES = sorted(p.parent.name for p in HARNESS.glob("*/__init__.py"))


@pytest.mark.parametrize("name", ["", *SUBPACKAGES])
def test_every_public_name_of_a_subpackage_resolves(name):
    package = importlib.import_module("aprbench.harness" + (f".{name}" if name else ""))
    assert package.__all__, "a subpackage names what the others may use"
    for public in package.__all__:
        assert getattr(package, public) is not None, public


def _imports(path: Path) -> list[str]:
    modules = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.append(node.module)
        elif isinstance(node, ast.Import):
            modules += [a.name for a in node.names]
    return modules


def test_the_core_never_imports_the_cli_or_a_concrete_plugin():
    upward = []
    for path in HARNESS.rglob("*.py"):
        rel = path.relative_to(HARNESS)
        if rel.parts[0] == "cli" or rel.name == "__main__.py":
            continue
        upward += [f"{rel}: {m}" for m in _imports(path)
                   if m.startswith(("aprbench.harness.cli", "aprbench.plugins", "plugins", "harness"))]
    assert not upward, upward

