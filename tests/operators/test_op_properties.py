"""Property tests: random small architectures, activations, losses and batch splits."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_op_cases import LOSSES, REDUCTIONS, make_case
from torch import nn

from hesskit.operators import gauss_newton_operator, hessian_operator
from reference import autograd_gauss_newton, autograd_hessian

ACTIVATIONS = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softplus": nn.Softplus, "relu": nn.ReLU}


@st.composite
def cases(draw):
    widths = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    sizes = (draw(st.integers(1, 3)), *widths, draw(st.integers(2, 3)))
    batch_sizes = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    return dict(
        loss=draw(st.sampled_from(LOSSES)),
        reduction=draw(st.sampled_from(REDUCTIONS)),
        batch_sizes=batch_sizes,
        sizes=sizes,
        seed=draw(st.integers(0, 1000)),
        activation=ACTIVATIONS[draw(st.sampled_from(sorted(ACTIVATIONS)))],
    )


@settings(max_examples=25, deadline=None)
@given(cases(), st.integers(0, 2**31 - 1))
def test_products_equal_the_autograd_matrices_on_random_networks(case, vector_seed):
    problem, model, loss_fn, X, y = make_case(**case)
    H = autograd_hessian(model, loss_fn, X, y)
    G = autograd_gauss_newton(model, loss_fn, X, y)
    g = torch.Generator().manual_seed(vector_seed)
    V = torch.randn(problem.num_params, 2, generator=g, dtype=torch.float64)
    tol = dict(rtol=1e-10, atol=1e-10 * max(1.0, float(H.abs().max())))
    torch.testing.assert_close(hessian_operator(problem).matmat(V), H @ V, **tol)
    gauss_newton = gauss_newton_operator(problem)
    torch.testing.assert_close(gauss_newton.matvec(V[:, 0]), G @ V[:, 0], **tol)
    quadratic = V[:, 1] @ gauss_newton.matvec(V[:, 1])
    assert quadratic >= -1e-12 * max(1.0, float(G.abs().max()))  # convex losses: G ⪰ 0
