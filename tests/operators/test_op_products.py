"""Hessian and Gauss-Newton products against dense references built by autograd (float64)."""

from __future__ import annotations

import pytest
import torch
from test_op_cases import LOSSES, REDUCTIONS, make_case

from hesskit.errors import InvalidArgumentError
from hesskit.operators import gauss_newton_operator, hessian_operator
from hesskit.problem import Problem
from reference import autograd_gauss_newton, autograd_hessian

TOL = dict(rtol=1e-10, atol=1e-10)
BUILDERS = {
    "hessian": (hessian_operator, autograd_hessian),
    "gauss_newton": (gauss_newton_operator, autograd_gauss_newton),
}


@pytest.mark.parametrize("kind", BUILDERS)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_dense_matrix_equals_reference_over_uneven_batches(kind, loss, reduction):
    """Batches of 4 and 3 samples: the operator is the matrix of the loss over all 7."""
    problem, model, loss_fn, X, y = make_case(loss, reduction, batch_sizes=(4, 3))
    build, reference = BUILDERS[kind]
    expected = reference(model, loss_fn, X, y)
    torch.testing.assert_close(build(problem).to_dense(), expected, **TOL)


@pytest.mark.parametrize("kind", BUILDERS)
def test_every_input_form_gives_the_reference_product(kind):
    problem, model, loss_fn, X, y = make_case("ce", "mean", batch_sizes=(5, 2))
    build, reference = BUILDERS[kind]
    op, A = build(problem), reference(model, loss_fn, X, y)
    g = torch.Generator().manual_seed(3)
    V = torch.randn(op.shape[0], 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(V[:, 0]), A @ V[:, 0], **TOL)
    torch.testing.assert_close(op @ V[:, 0], A @ V[:, 0], **TOL)
    torch.testing.assert_close(op.matmat(V), A @ V, **TOL)
    torch.testing.assert_close(op @ V, A @ V, **TOL)
    as_dict = op.matvec(op.layout.unflatten(V[:, 0]))
    torch.testing.assert_close(op.layout.flatten(as_dict), A @ V[:, 0], **TOL)
    as_list = op.matvec(list(op.layout.unflatten(V[:, 0]).values()))
    torch.testing.assert_close(op.layout.flatten(as_list), A @ V[:, 0], **TOL)
    columns = op.matmat(op.layout.unflatten(V.T))
    torch.testing.assert_close(op.layout.flatten(columns, batch_dims=1).T, A @ V, **TOL)
    columns = op.matmat(list(op.layout.unflatten(V.T).values()))
    torch.testing.assert_close(op.layout.flatten(columns, batch_dims=1).T, A @ V, **TOL)


def test_operator_reports_shape_dtype_device_and_flags():
    problem, *_ = make_case("bce", "mean")
    n = problem.num_params
    for op in (hessian_operator(problem), gauss_newton_operator(problem)):
        assert op.shape == (n, n)
        assert op.dtype == torch.float64
        assert op.device == torch.device("cpu")
        assert op.symmetric
    assert not hessian_operator(problem).psd
    assert gauss_newton_operator(problem).psd


@pytest.mark.parametrize("loss", LOSSES)
def test_gauss_newton_is_symmetric_positive_semidefinite(loss):
    problem, *_ = make_case(loss, "mean", sizes=(3, 5, 4))
    G = gauss_newton_operator(problem).to_dense()
    torch.testing.assert_close(G, G.T, rtol=0, atol=1e-14)
    assert torch.linalg.eigvalsh(G).min() > -1e-12 * G.abs().max()


def test_hessian_of_a_tanh_network_is_indefinite():
    """A claim the GGN cannot satisfy, so it tells the two operators apart."""
    problem, *_ = make_case("mse", "mean", sizes=(3, 5, 4))
    eigenvalues = torch.linalg.eigvalsh(hessian_operator(problem).to_dense())
    assert eigenvalues.min() < -1e-8 and eigenvalues.max() > 1e-8


@pytest.mark.parametrize("kind", BUILDERS)
def test_without_cache_the_products_are_the_same(kind):
    problem, *_ = make_case("mse", "sum", batch_sizes=(3, 3, 1))
    build, _ = BUILDERS[kind]
    torch.testing.assert_close(
        build(problem, cache=False).to_dense(), build(problem, cache=True).to_dense(), **TOL
    )
    assert not build(problem, cache=False).cache


@pytest.mark.parametrize("kind", BUILDERS)
def test_a_subset_of_parameters_gives_the_reference_block(kind):
    problem, model, loss_fn, X, y = make_case("ce", "mean", batch_sizes=(7,))
    names = ["2.weight", "0.bias"]
    subset = Problem(model, problem.loss, (X, y), params=names)
    build, reference = BUILDERS[kind]
    ordered = [n for n, _ in model.named_parameters() if n in names]
    expected = reference(model, loss_fn, X, y, names=ordered)
    torch.testing.assert_close(build(subset).to_dense(), expected, **TOL)


def test_operator_keeps_the_parameters_it_was_built_at():
    problem, model, *_ = make_case("mse", "mean")
    op = gauss_newton_operator(problem, cache=False)
    before = op.to_dense()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    torch.testing.assert_close(op.to_dense(), before, **TOL)


def test_a_vector_of_the_wrong_length_is_refused():
    problem, *_ = make_case("mse", "mean")
    op = hessian_operator(problem)
    with pytest.raises(InvalidArgumentError, match=r"shaped \[N\] with N = "):
        op.matvec(torch.zeros(op.shape[0] + 1, dtype=torch.float64))
