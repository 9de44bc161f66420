"""The library without its optional packages: ``import hesskit`` and the operators, dense
matrices, estimators and optimizers work with torch, NumPy and SciPy only; what needs an
extra says which one to install."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hesskit.errors import MissingExtraError
from hesskit.extras import OPTIONAL_PACKAGES, missing_extra_message, require

BLOCKER = textwrap.dedent("""
    import importlib.abc, importlib.machinery, sys

    BLOCKED = {"matplotlib", "rich", "sklearn", "mnist1d", "requests", "narwhals"}

    class Block(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        # importing a blocked package fails as if it were not installed

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                return importlib.machinery.ModuleSpec(name, self)
            return None

        def create_module(self, spec):
            raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)

        def exec_module(self, module):
            raise AssertionError("unreachable")

    sys.meta_path.insert(0, Block())
""")

WITHOUT_EXTRAS = BLOCKER + textwrap.dedent("""
    import torch
    from torch import nn
    import hesskit, hesskit.optim, hesskit.training, hesskit.problems

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    X, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 2, (16,))
    problem = hesskit.Problem(model, nn.CrossEntropyLoss(), (X, y))
    H = hesskit.hessian_operator(problem)
    dense = hesskit.hessian_of(problem).hessian
    v = torch.randn(26, dtype=torch.float64)
    assert torch.allclose(H @ v, dense @ v, atol=1e-10)
    top = hesskit.top_eigenpairs(H, 1)
    assert abs(float(top.values[0]) - float(torch.linalg.eigvalsh(dense)[-1])) < 1e-6
    assert abs(hesskit.diagonal(problem, "ggn").trace
               - float(hesskit.gauss_newton_operator(problem).to_dense().trace())) < 1e-10
    hesskit.spectral_density(H, probes=2, steps=5)
    optimizer = hesskit.HessianFree(model.parameters(),
                                    curvature=lambda: hesskit.gauss_newton_operator(problem))
    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(X), y)
        loss.backward()
        return loss
    optimizer.step(closure)
    try:
        hesskit.data.load_dataset("digits")
    except hesskit.MissingExtraError as error:
        print("MISSING:", error)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print("LOADED:", loaded)
""")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    source = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [source, *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


def test_library_imports_and_computes_without_matplotlib_rich_and_scikit_learn():
    result = _run(WITHOUT_EXTRAS)
    assert result.returncode == 0, result.stderr
    assert "LOADED: []" in result.stdout
    assert ("MISSING: the bundled 8x8 digits needs scikit-learn, which is not installed; "
            "install hesskit's cli extra: pip install 'hesskit[cli]'") in result.stdout


def test_the_command_names_the_extra_in_one_line_when_one_is_missing(tmp_path):
    code = BLOCKER + (
        "from hesskit.cli.main import main\n"
        f"raise SystemExit(main(['activations', '--plot', {str(tmp_path)!r}]))\n")
    result = _run(code)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(r"hesskit: error: the hesskit command needs (rich|matplotlib), which is "
                        r"not installed; install hesskit's cli extra: pip install 'hesskit\[cli\]'",
                        lines[0])


def test_require_names_the_package_to_install():
    with pytest.raises(MissingExtraError, match=r"plots need|needs scikit-learn"):
        require("sklearn_not_installed_here.datasets", "plots")
    assert "scikit-learn" in missing_extra_message("sklearn.datasets", "the digits")
    assert set(OPTIONAL_PACKAGES) == {"matplotlib", "rich", "sklearn", "mnist1d"}


def test_pyproject_keeps_the_optional_packages_out_of_the_core_dependencies():
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text())["project"]
    core = " ".join(project["dependencies"])
    for package in ("matplotlib", "rich", "scikit-learn", "mnist1d"):
        assert package not in core
        assert any(entry.startswith(package) for entry in project["optional-dependencies"]["cli"])
    assert "hesskit[cli]" in project["optional-dependencies"]["dev"]
