"""The one-way flow of imports: curvature operators import nothing above them.

``hesskit.operators`` is a layer below the consumers (dense matrices, estimators, solvers'
users, optimizers, training, reports, the CLI); an import from one of those back into
``operators`` — at module level or inside a function — makes a cycle in the design even
when Python tolerates it. Parsed with ``ast``, so nothing is imported to check.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "src" / "hesskit"
FORBIDDEN = ("estimators", "optim", "training", "report", "dense", "cli")


def _imported_modules(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in the tree, relative ones resolved."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            if module == "hesskit":  # from hesskit import estimators
                found += [(node.lineno, f"hesskit.{alias.name}") for alias in node.names]
    return found


def _operator_files() -> list[Path]:
    return sorted((SOURCE / "operators").rglob("*.py"))


def test_there_are_operator_modules_to_check():
    assert _operator_files(), f"no modules under {SOURCE / 'operators'}"


@pytest.mark.parametrize("path", _operator_files(), ids=lambda p: p.name)
def test_operator_module_imports_nothing_from_the_layers_above(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    offending = sorted(
        {
            f"line {line}: {module}"
            for line, module in _imported_modules(tree, "hesskit.operators")
            if any(
                module == f"hesskit.{layer}" or module.startswith(f"hesskit.{layer}.")
                for layer in FORBIDDEN
            )
        }
    )
    assert not offending, f"{path.name} imports from above hesskit.operators: {offending}"
