"""Every curvature optimizer is importable from ``hesskit`` itself, listed in ``__all__``,
and named in the package docstring and the README (the README once omitted Shampoo)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import torch

import hesskit
import hesskit.optim

README = Path(__file__).resolve().parents[2] / "README.md"
EXPECTED = {"KFAC", "Shampoo", "AdaHessian", "Sophia", "HessianFree", "DampedNewton",
            "StochasticHessianFree"}


def optimizer_classes() -> set[str]:
    """The names in ``hesskit.optim.__all__`` that are ``torch.optim.Optimizer`` classes."""
    return {name for name in hesskit.optim.__all__
            if inspect.isclass(obj := getattr(hesskit.optim, name))
            and issubclass(obj, torch.optim.Optimizer)}


def test_the_seven_optimizers_import_from_the_top_level():
    from hesskit import (  # noqa: F401 - the import itself is the claim
        KFAC,
        AdaHessian,
        DampedNewton,
        HessianFree,
        Shampoo,
        Sophia,
        StochasticHessianFree,
    )

    assert optimizer_classes() == EXPECTED
    for name in EXPECTED:
        assert getattr(hesskit, name) is getattr(hesskit.optim, name)
        assert name in hesskit.__all__


def test_the_package_docstring_and_the_readme_name_every_optimizer():
    readme = README.read_text(encoding="utf-8")
    for name in optimizer_classes():
        assert re.search(rf"\b{name}\b", hesskit.__doc__), f"{name} not in hesskit's docstring"
        assert f"`{name}`" in readme, f"{name} not in README.md"
