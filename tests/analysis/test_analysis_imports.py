"""``hesskit.analysis`` sits below ``hesskit.training`` (training → analysis): no module of
the analysis imports the training package, at module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

ANALYSIS = Path(__file__).resolve().parents[2] / "src" / "hesskit" / "analysis"


def training_imports(path: Path) -> list[str]:
    """``line: statement`` of every import of ``hesskit.training`` in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        if any(m == "hesskit.training" or m.startswith("hesskit.training.") for m in modules):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_walker_finds_a_training_import_in_any_form(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text("import hesskit.training.loop\nfrom hesskit import training\n"
                      "def f():\n    from hesskit.training.bench import run_benchmark\n")
    assert [line.split(":")[1] for line in training_imports(source)] == ["1", "2", "4"]


def test_no_analysis_module_imports_the_training_package():
    modules = sorted(ANALYSIS.glob("*.py"))
    assert len(modules) >= 5
    found = [line for path in modules for line in training_imports(path)]
    assert not found, "analysis/ imports training/: " + "; ".join(found)
