"""Every zoo model: Lanczos eigenvalues of the Hessian operator equal the reference's."""

from __future__ import annotations

import pytest
import torch

from hesskit.estimators import top_eigenpairs
from hesskit.operators import gauss_newton_operator, hessian_operator
from hesskit.problem import Problem
from zoo.models import make
from zoo.oracle import reference, zoo_params


def _problem(name: str) -> Problem:
    case = make(name)
    return Problem(case.model, case.loss, case.data, params=case.params)


def _check(name: str, op, matrix: torch.Tensor, which: str, k: int) -> None:
    n = matrix.shape[0]
    k = min(k, n)
    result = top_eigenpairs(op, k, which=which, tol=1e-10, max_products=n, seed=0)
    eigenvalues = torch.linalg.eigvalsh(matrix)
    want = eigenvalues.flip(0)[:k] if which == "largest" else eigenvalues[:k]
    scale = float(eigenvalues.abs().max())
    error = float((result.values - want).abs().max()) / scale
    assert error <= 1e-8, (
        f"{name}: {which} {k} eigenvalues {result.values.tolist()} vs {want.tolist()} "
        f"(error {error:.3g} of the spectral radius)"
    )


@pytest.mark.parametrize("name", zoo_params())
@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_hessian_eigenvalues_equal_the_reference(name, which):
    _check(name, hessian_operator(_problem(name)), reference(name).hessian, which, 3)


@pytest.mark.parametrize("name", zoo_params())
def test_gauss_newton_top_eigenvalues_equal_the_reference(name):
    _check(name, gauss_newton_operator(_problem(name)), reference(name).gauss_newton, "largest", 3)
