"""One ReLU neuron + MSE: closed-form E, ∇E, 2×2 Hessian against autograd and finite differences."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import hessian as autograd_hessian
from torch.autograd.functional import jacobian as autograd_jacobian

from hesskit.errors import InvalidArgumentError
from hesskit.neuron import (
    NeuronNewtonStatus,
    ReluNeuronMSE,
    newton_neuron,
    synthetic_data,
)

PROBLEM = synthetic_data()


def reference_loss(theta: torch.Tensor, problem: ReluNeuronMSE = PROBLEM) -> torch.Tensor:
    """E(θ) written with torch's own relu and mse_loss (no hesskit code)."""
    prediction = torch.nn.functional.relu(theta[0] * problem.x + theta[1])
    return torch.nn.functional.mse_loss(prediction, problem.y)


def random_points_away_from_kinks(count: int, seed: int) -> list[tuple[float, float]]:
    generator = torch.Generator().manual_seed(seed)
    points = []
    while len(points) < count:
        w, b = (4 * torch.rand(2, generator=generator, dtype=torch.float64) - 2).tolist()
        if (w * PROBLEM.x + b).abs().min() > 1e-3:
            points.append((w, b))
    return points


@pytest.mark.parametrize(("w", "b"), random_points_away_from_kinks(20, seed=1))
def test_loss_gradient_and_hessian_match_autograd(w, b):
    theta = torch.tensor([w, b], dtype=torch.float64)
    assert PROBLEM.loss(w, b) == pytest.approx(reference_loss(theta).item(), rel=1e-14, abs=0)
    torch.testing.assert_close(
        PROBLEM.gradient(w, b), autograd_jacobian(reference_loss, theta), rtol=1e-12, atol=1e-14
    )
    torch.testing.assert_close(
        PROBLEM.hessian(w, b), autograd_hessian(reference_loss, theta), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize(("w", "b"), random_points_away_from_kinks(5, seed=2))
def test_gradient_and_hessian_match_central_differences(w, b):
    h = 1e-6  # smaller than the 1e-3 distance to every kink, so E is quadratic across ±h
    for i, (dw, db) in enumerate([(h, 0.0), (0.0, h)]):
        slope = (PROBLEM.loss(w + dw, b + db) - PROBLEM.loss(w - dw, b - db)) / (2 * h)
        assert PROBLEM.gradient(w, b)[i].item() == pytest.approx(slope, abs=1e-8)
        column = (PROBLEM.gradient(w + dw, b + db) - PROBLEM.gradient(w - dw, b - db)) / (2 * h)
        torch.testing.assert_close(PROBLEM.hessian(w, b)[:, i], column, rtol=0, atol=1e-8)


def test_hessian_by_hand_on_three_points():
    problem = ReluNeuronMSE(
        torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64),
        torch.tensor([0.0, 1.0, 5.0], dtype=torch.float64),
    )
    # (w, b) = (1, 0.5): z = (1.5, 2.5, −0.5); samples 1 and 2 active; n = 3.
    expected = (2 / 3) * torch.tensor([[1.0 + 4.0, 1.0 + 2.0], [3.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(problem.hessian(1.0, 0.5), expected, rtol=0, atol=0)
    # residuals r = (1.5, 1.5) on the active samples.
    expected_grad = (2 / 3) * torch.tensor([1.5 * 1 + 1.5 * 2, 3.0], dtype=torch.float64)
    torch.testing.assert_close(problem.gradient(1.0, 0.5), expected_grad, rtol=0, atol=1e-15)
    assert problem.loss(1.0, 0.5) == pytest.approx((1.5**2 + 1.5**2 + 25.0) / 3, rel=1e-15)


def test_curvature_in_w_is_nonzero_and_changes_with_w():
    b = 0.5
    kinks = PROBLEM.kinks_in_w(b)
    ws = [
        w
        for w in torch.linspace(-2, 3, 201, dtype=torch.float64).tolist()
        if (kinks - w).abs().min() > 1e-6
    ]
    curvature = []
    for w in ws:
        theta = torch.tensor([w, b], dtype=torch.float64)
        exact = autograd_hessian(reference_loss, theta)[0, 0].item()
        assert PROBLEM.hessian(w, b)[0, 0].item() == pytest.approx(exact, rel=1e-12)
        curvature.append(exact)
    assert min(curvature) > 0.5  # far from zero, unlike relu″ itself
    assert len({round(c, 12) for c in curvature}) >= 10  # piecewise constant, many pieces
    assert max(curvature) - min(curvature) > 0.5


def test_hessian_jumps_where_a_sample_crosses_the_kink():
    b = 0.5
    kink = PROBLEM.kinks_in_w(b)[0].item()
    i = int(torch.argmin((-b / PROBLEM.x - kink).abs()))
    jump = PROBLEM.hessian(kink + 1e-9, b)[0, 0] - PROBLEM.hessian(kink - 1e-9, b)[0, 0]
    assert abs(jump.item()) == pytest.approx(2 / PROBLEM.num_samples * PROBLEM.x[i].item() ** 2)


def test_newton_from_an_active_start_reaches_a_stationary_point():
    result = newton_neuron(PROBLEM, 1.0, 0.0)
    assert result.status is NeuronNewtonStatus.CONVERGED
    theta = torch.tensor([result.w, result.b], dtype=torch.float64)
    assert torch.linalg.vector_norm(autograd_jacobian(reference_loss, theta)) < 1e-12
    assert torch.linalg.eigvalsh(autograd_hessian(reference_loss, theta)).min() > 0
    # Independent: least squares on the final active set gives the same (w, b).
    active = PROBLEM.active(result.w, result.b)
    design = torch.stack([PROBLEM.x[active], torch.ones_like(PROBLEM.x[active])], dim=1)
    solution = torch.linalg.lstsq(design, PROBLEM.y[active].unsqueeze(1)).solution.squeeze(1)
    torch.testing.assert_close(theta, solution, rtol=1e-12, atol=1e-12)
    assert result.iterates[0].loss > result.iterates[-1].loss


def test_dead_neuron_is_a_singular_hessian_not_a_crash():
    result = newton_neuron(PROBLEM, 0.0, -1.0)  # w x + b = −1 < 0 for every sample
    assert result.status is NeuronNewtonStatus.SINGULAR_HESSIAN
    assert "dead" in result.message
    assert len(result.iterates) == 1


def test_one_active_sample_gives_a_rank_one_hessian():
    problem = ReluNeuronMSE(
        torch.tensor([1.0, -1.0, -2.0], dtype=torch.float64),
        torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64),
    )
    assert torch.linalg.matrix_rank(problem.hessian(1.0, -0.5)) == 1
    result = newton_neuron(problem, 1.0, -0.5)
    assert result.status is NeuronNewtonStatus.SINGULAR_HESSIAN
    assert "fewer than two distinct x" in result.message


def test_max_iterations_zero_stops_before_any_step():
    result = newton_neuron(PROBLEM, 1.0, 0.0, max_iter=0)
    assert result.status is NeuronNewtonStatus.MAX_ITERATIONS
    assert (result.w, result.b) == (1.0, 0.0)


def test_synthetic_data_is_deterministic_per_seed():
    again = synthetic_data()
    assert torch.equal(again.x, PROBLEM.x) and torch.equal(again.y, PROBLEM.y)
    assert not torch.equal(synthetic_data(seed=1).x, PROBLEM.x)
    assert PROBLEM.x.dtype == torch.float64 and PROBLEM.num_samples == 24


def test_bad_data_is_a_clear_error():
    with pytest.raises(InvalidArgumentError, match="same length"):
        ReluNeuronMSE(torch.zeros(3), torch.zeros(4))
    with pytest.raises(InvalidArgumentError, match="finite"):
        ReluNeuronMSE(torch.tensor([1.0, float("nan")]), torch.zeros(2))
    with pytest.raises(InvalidArgumentError, match="num_samples"):
        synthetic_data(0)
    with pytest.raises(InvalidArgumentError, match="w0"):
        newton_neuron(PROBLEM, float("inf"), 0.0)
