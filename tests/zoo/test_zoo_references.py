"""The independent oracles themselves, checked against finite differences in float64.

Central differences with step ε have error O(ε²) from the third derivative plus O(u/ε)
rounding (u = 2⁻⁵³); with ε = 1e-5 both are about 1e-10 for these models, so 1e-7
relative is a bound with a wide margin that still fails for any wrong formula.
"""

from __future__ import annotations

import pytest
import torch

from reference import (
    autograd_gradient,
    finite_difference_gradient,
    finite_difference_hessian,
    finite_difference_jacobian,
    flat_parameters,
    loss_of_flat,
    model_outputs_of_flat,
    per_sample_gradients,
)
from zoo.models import make
from zoo.oracle import assert_relative, reference, zoo_params

FD_RTOL = 1e-7
EPS = 1e-5


def _smooth(case) -> bool:
    return case.smooth


@pytest.mark.parametrize("name", zoo_params(_smooth))
def test_reference_hessian_matches_finite_differences(name):
    case = make(name)
    X, y = case.all_data()
    H = finite_difference_hessian(case.model, case.loss, X, y, case.names, eps=EPS)
    assert_relative(reference(name).hessian, 0.5 * (H + H.T), f"{name}: reference H", FD_RTOL)


def _output_hessian(case, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∂²L/∂z² in closed form, ``[n k, n k]``, for the zoo's three losses."""
    n, k = z.shape
    scale = case.sample_weight()
    if isinstance(case.loss, torch.nn.MSELoss):
        return 2 * scale * torch.eye(n * k, dtype=z.dtype)
    if isinstance(case.loss, torch.nn.BCEWithLogitsLoss):
        s = torch.sigmoid(z).reshape(-1)
        return scale * torch.diag(s * (1 - s))
    p = torch.softmax(z, dim=1)
    blocks = [torch.diag(p_i) - torch.outer(p_i, p_i) for p_i in p]
    return scale * torch.block_diag(*blocks)


@pytest.mark.parametrize("name", zoo_params(_smooth))
def test_reference_gauss_newton_matches_finite_difference_jacobians(name):
    case = make(name)
    X, y = case.all_data()
    outputs = model_outputs_of_flat(case.model, X, case.names)
    theta = flat_parameters(case.model, case.names)
    J = finite_difference_jacobian(outputs, theta, eps=EPS)
    with torch.no_grad():
        z = outputs(theta)
    G = J.T @ _output_hessian(case, z, y) @ J
    assert_relative(reference(name).gauss_newton, G, f"{name}: reference G", FD_RTOL)


@pytest.mark.parametrize("name", zoo_params(_smooth))
def test_reference_per_sample_gradients_match_finite_differences(name):
    case = make(name)
    X, y = case.all_data()
    grads = per_sample_gradients(case.model, case.per_sample_loss(), X, y, case.names)
    theta = flat_parameters(case.model, case.names)
    for i in (0, len(X) - 1):
        f = loss_of_flat(case.model, case.per_sample_loss(), X[i : i + 1], y[i : i + 1], case.names)
        fd = finite_difference_gradient(f, theta, eps=EPS)
        assert_relative(grads[i], fd, f"{name}: per-sample gradient {i}", FD_RTOL)
    total = autograd_gradient(case.model, case.loss, X, y, case.names)
    assert_relative(case.sample_weight() * grads.sum(0), total, f"{name}: Σ a_i g_i = ∇L", 1e-12)
