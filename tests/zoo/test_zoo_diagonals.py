"""Every zoo model: exact diagonals equal the reference diagonals; estimates say so."""

from __future__ import annotations

import pytest
import torch

import hesskit
from hesskit.errors import UnsupportedArchitectureError
from hesskit.estimators.exact_diagonal import (
    DiagonalMethod,
    empirical_fisher_diagonal,
    gauss_newton_diagonal,
    hessian_diagonal,
)
from hesskit.problem import Problem
from zoo.models import make
from zoo.oracle import assert_relative, reference, zoo_params

KINDS = {"hessian": "hessian", "ggn": "gauss_newton", "ef": "empirical_fisher"}


def _problem(name: str) -> Problem:
    case = make(name)
    return Problem(case.model, case.loss, case.data, params=case.params)


def _reference_diagonal(name: str, kind: str) -> torch.Tensor:
    return getattr(reference(name), KINDS[kind]).diagonal()


@pytest.mark.parametrize("name", zoo_params())
def test_hessian_diagonal_is_exact_or_refuses(name):
    try:
        got = hessian_diagonal(_problem(name))
    except UnsupportedArchitectureError:
        pytest.skip("hessian_diagonal refuses this model (UnsupportedArchitectureError)")
    assert_relative(got, _reference_diagonal(name, "hessian"), f"{name}: hessian_diagonal")


@pytest.mark.parametrize("name", zoo_params())
@pytest.mark.parametrize("use_chain", [None, False])
def test_gauss_newton_diagonal_equals_the_reference(name, use_chain):
    got = gauss_newton_diagonal(_problem(name), use_chain=use_chain)
    assert_relative(got, _reference_diagonal(name, "ggn"), f"{name}: gauss_newton_diagonal")


@pytest.mark.parametrize("name", zoo_params())
@pytest.mark.parametrize("use_chain", [None, False])
def test_empirical_fisher_diagonal_equals_the_reference(name, use_chain):
    got = empirical_fisher_diagonal(_problem(name), use_chain=use_chain)
    assert_relative(got, _reference_diagonal(name, "ef"), f"{name}: empirical_fisher_diagonal")


@pytest.mark.parametrize("name", zoo_params())
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_front_door_diagonal_is_exact_when_it_says_so_and_an_estimate_otherwise(name, kind):
    result = hesskit.diagonal(_problem(name), kind, probes=20, seed=0)
    want = _reference_diagonal(name, kind)
    if result.exact:
        assert_relative(result.values, want, f"{name}: diagonal({kind!r}) [{result.method.name}]")
        assert float(result.stderr.abs().max()) == 0
        assert result.trace == pytest.approx(float(want.sum()), rel=1e-8, abs=1e-12), (
            f"{name}: exact trace {result.trace} vs reference {float(want.sum())}"
        )
    else:
        assert result.method is DiagonalMethod.HUTCHINSON
        assert result.fallback_reason, f"{name}: an estimate without a reason"
        assert float(result.stderr.max()) > 0, f"{name}: an estimate with zero stderr"
        assert result.products == 20
    assert result.trace == pytest.approx(float(result.values.sum()), rel=1e-12)
