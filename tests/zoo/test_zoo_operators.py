"""Every zoo model: the curvature operators' products equal the autograd references."""

from __future__ import annotations

import pytest
import torch

from hesskit.operators import (
    empirical_fisher_operator,
    fisher_operator,
    gauss_newton_operator,
    hessian_operator,
)
from hesskit.problem import Problem
from zoo.models import make
from zoo.oracle import assert_relative, probe_vectors, reference, zoo_params


def _problem(name: str) -> Problem:
    case = make(name)
    return Problem(case.model, case.loss, case.data, params=case.params)


@pytest.mark.parametrize("name", zoo_params())
def test_hessian_vector_product_equals_autograd_hessian(name):
    H = reference(name).hessian
    v = probe_vectors(H.shape[0], 1)[:, 0]
    assert_relative(hessian_operator(_problem(name)) @ v, H @ v, f"{name}: H v")


@pytest.mark.parametrize("name", zoo_params())
def test_hessian_matmat_equals_autograd_hessian(name):
    H = reference(name).hessian
    V = probe_vectors(H.shape[0], 4, seed=1)
    assert_relative(hessian_operator(_problem(name)).matmat(V), H @ V, f"{name}: H V")


@pytest.mark.parametrize("name", zoo_params())
def test_hessian_matvec_with_a_parameter_dict_equals_the_flat_product(name):
    problem = _problem(name)
    H = reference(name).hessian
    v = probe_vectors(H.shape[0], 1, seed=2)[:, 0]
    as_dict = problem.layout.unflatten(v)
    got = problem.layout.flatten(hessian_operator(problem) @ as_dict)
    assert_relative(got, H @ v, f"{name}: H v (dict)")


@pytest.mark.parametrize("name", zoo_params())
def test_gauss_newton_matmat_equals_autograd_gauss_newton(name):
    G = reference(name).gauss_newton
    V = probe_vectors(G.shape[0], 3, seed=3)
    assert_relative(gauss_newton_operator(_problem(name)).matmat(V), G @ V, f"{name}: G V")


@pytest.mark.parametrize("name", zoo_params())
def test_empirical_fisher_matmat_equals_sum_of_per_sample_gradient_outer_products(name):
    EF = reference(name).empirical_fisher
    V = probe_vectors(EF.shape[0], 3, seed=4)
    got = empirical_fisher_operator(_problem(name)).matmat(V)
    assert_relative(got, EF @ V, f"{name}: EF V")


@pytest.mark.parametrize("name", zoo_params())
def test_fisher_is_symmetric_positive_semidefinite(name):
    F = fisher_operator(_problem(name), samples=3, seed=0).to_dense()
    scale = max(1.0, float(F.abs().max()))
    assert float((F - F.T).abs().max()) <= 1e-12 * scale, f"{name}: F is not symmetric"
    lowest = float(torch.linalg.eigvalsh(0.5 * (F + F.T))[0])
    assert lowest >= -1e-10 * scale, f"{name}: F has eigenvalue {lowest:.3g} < 0"


@pytest.mark.parametrize("name", zoo_params(lambda case: case.tiny))
def test_fisher_averaged_over_many_samples_approaches_the_gauss_newton_matrix(name):
    G = reference(name).gauss_newton
    F = fisher_operator(_problem(name), samples=4000, seed=0).to_dense()
    assert_relative(F, G, f"{name}: Monte-Carlo F vs G", tol=0.05)


@pytest.mark.parametrize("name", zoo_params())
def test_products_carry_no_autograd_graph(name):
    """A product is a number, not a graph: CG loops must not keep every product's graph.

    With ``params=`` a subset, the unselected parameters still require grad in the model.
    """
    problem = _problem(name)
    V = probe_vectors(problem.num_params, 2, seed=5)
    for op in (
        hessian_operator(problem),
        gauss_newton_operator(problem),
        empirical_fisher_operator(problem),
    ):
        assert not op.matmat(V).requires_grad, f"{name}: {type(op).__name__} product has a graph"


@pytest.mark.parametrize("name", zoo_params())
def test_every_operator_gives_the_same_bits_twice_and_on_a_rebuilt_operator(name):
    """Same call, same bits: on the operator again (its cached linearization, whichever
    way J v ran) and on an operator built anew (a fresh linearization)."""
    V = probe_vectors(_problem(name).num_params, 2, seed=6)
    builders = {
        "H": hessian_operator, "G": gauss_newton_operator, "EF": empirical_fisher_operator,
        "F": lambda p: fisher_operator(p, samples=2, seed=0),
    }
    for kind, build in builders.items():
        op = build(_problem(name))
        first = op.matmat(V)
        for _ in range(3):
            assert torch.equal(op.matmat(V), first), f"{name}: {kind} changed on the same operator"
        assert torch.equal(build(_problem(name)).matmat(V), first), f"{name}: {kind} rebuilt"
