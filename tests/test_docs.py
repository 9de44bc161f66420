"""The reference documentation: every public name has a docstring, and the Sphinx build
(``make docs``) passes with warnings as errors."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import hesskit

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["hesskit", *sorted(
    f"hesskit.{info.name}" for info in pkgutil.iter_modules(hesskit.__path__)
    if info.ispkg and hasattr(importlib.import_module(f"hesskit.{info.name}"), "__all__"))]


def _attribute_docs(package: str) -> set[str]:
    """Names of module-level constants documented by a string literal after them, in
    ``package`` and every module under it."""
    from sphinx.pycode import ModuleAnalyzer

    names: set[str] = set()
    module = importlib.import_module(package)
    modules = [package]
    if hasattr(module, "__path__"):
        modules += [info.name for info in pkgutil.walk_packages(module.__path__, f"{package}.")
                    if not info.name.endswith("__main__") and ".cli" not in info.name]
    for name in modules:
        try:
            docs = ModuleAnalyzer.for_module(name).find_attr_docs()
        except Exception:
            continue
        names |= {attr for (scope, attr) in docs if scope == ""}
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_has_a_docstring(package):
    pytest.importorskip("sphinx")
    module = importlib.import_module(package)
    assert inspect.getdoc(module), f"{package} has no module docstring"
    constants = None
    undocumented = []
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj):
            if not (obj.__doc__ or "").strip():
                undocumented.append(name)
            continue
        if constants is None:
            constants = _attribute_docs(package) | _attribute_docs("hesskit")
        if name not in constants:
            undocumented.append(name)
    assert not undocumented, f"{package}: no docstring for {undocumented}"


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-E", "-W", "--keep-going",
         str(ROOT / "docs"), str(tmp_path / "html")],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    api = (tmp_path / "html" / "api.html").read_text()
    for name in ("hesskit.operators.hessian_operator", "hesskit.optim.HessianFree",
                 "hesskit.estimators.density_on_grid", "hesskit.layout.ParameterLayout"):
        assert f'id="{name}"' in api, f"{name} is missing from the API reference"
    assert (tmp_path / "html" / "guide.html").is_file()
    assert (tmp_path / "html" / "distributed.html").is_file()


def test_version_follows_the_changelog():
    import tomllib

    changelog = (ROOT / "CHANGELOG.md").read_text()
    released = [line.split("]")[0][4:] for line in changelog.splitlines()
                if line.startswith("## [") and "Unreleased" not in line]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert released[0] == project["version"] == hesskit.__version__


def test_the_user_guide_code_runs_as_written(capsys):
    import re

    guide = (ROOT / "docs" / "guide.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", guide, re.S))
    exec(compile(code, "docs/guide.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "DiagonalResult(ggn, exact" in printed and "HessianFree(N=1210" in printed
