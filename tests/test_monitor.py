"""CurvatureMonitor along short runs: eigenvalues against dense eigvalsh, warm against cold
starts, state untouched, constant sharpness on a quadratic, progressive sharpening on a
two-layer linear network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from hesskit.errors import InvalidArgumentError
from hesskit.monitor import CurvatureMonitor, stability_threshold
from reference import autograd_hessian


class Residual(nn.Module):
    """Not a Sequential: tanh layer with a skip, BatchNorm in train mode, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.norm = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(torch.tanh(self.inner(x)) + x))


def _data(n: int = 16):
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(n, 4, generator=generator, dtype=torch.float64),
            torch.randn(n, 2, generator=generator, dtype=torch.float64))


def test_sharpness_along_a_run_matches_dense_eigvalsh_and_warm_equals_cold(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    X, Y = _data()
    log = tmp_path / "curvature.jsonl"
    warm = CurvatureMonitor(model, nn.MSELoss(), (X, Y), every=2, k=2, tol=1e-10, log=log)
    cold = CurvatureMonitor(model, nn.MSELoss(), (X, Y), every=2, k=2, tol=1e-10,
                            warm_start=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(6):
        expected = np.linalg.eigvalsh(autograd_hessian(model, nn.MSELoss(), X, Y).numpy())
        record, other = warm.step(optimizer), cold.step(optimizer)
        if record is not None:
            np.testing.assert_allclose(record["eigenvalues"], expected[::-1][:2], rtol=1e-8)
            np.testing.assert_allclose(other["eigenvalues"], record["eigenvalues"], rtol=1e-8)
            assert record["threshold"] == pytest.approx(2 / 0.1)
        optimizer.zero_grad()
        nn.MSELoss()(model(X), Y).backward()
        optimizer.step()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 2, 4] == [r["step"] for r in warm.records]
    # after the first measurement the warm start needs fewer products than a cold one
    assert [r["warm"] for r in warm.records] == [False, True, True]
    assert not any(r["warm"] for r in cold.records)
    assert sum(r["products"] for r in warm.records[1:]) < sum(
        r["products"] for r in cold.records[1:])


def test_every_cold_every_th_measurement_starts_cold():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    monitor = CurvatureMonitor(model, nn.MSELoss(), _data(), every=1, cold_every=3)
    for _ in range(7):
        monitor.step()
    assert [r["warm"] for r in monitor.records] == [False, True, True] * 2 + [False]
    assert all(r["products"] >= 20 for r in monitor.records if not r["warm"])


def test_a_measurement_changes_neither_model_nor_optimizer():
    torch.manual_seed(1)
    model = Residual().double().train()
    X, Y = _data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    nn.MSELoss()(model(X), Y).backward()
    optimizer.step()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    momenta = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    monitor = CurvatureMonitor(model, nn.MSELoss(), (X, Y), every=1, trace_probes=4,
                               blocks={"inner": ["inner.weight", "inner.bias"]})
    record = monitor.step(optimizer)
    assert record["threshold"] == pytest.approx((2 + 2 * 0.9) / 0.05)
    assert set(record) >= {"eigenvalues", "trace", "blocks", "seconds", "products"}
    assert record["blocks"]["inner"] <= record["eigenvalues"][0] * (1 + 1e-6)  # interlacing
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    assert all(torch.equal(optimizer.state[p]["momentum_buffer"], m)
               for p, m in zip(model.parameters(), momenta, strict=True))


class Quadratic(nn.Module):
    """f(θ) = θ (the output is the parameter vector): with the loss ½ θᵀAθ below,
    H = A whatever θ."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta.expand(x.shape[0], 3)


def test_gradient_descent_on_a_quadratic_has_constant_sharpness():
    A = torch.diag(torch.tensor([3.0, 1.0, 0.2], dtype=torch.float64))

    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.einsum("bi,ij,bj->b", outputs, A, outputs).mean()

    model = Quadratic()
    batch = (torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    monitor = CurvatureMonitor(model, loss, batch, every=3, tol=1e-12)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    for _ in range(12):
        monitor.step(optimizer)
        optimizer.zero_grad()
        loss(model(batch[0]), batch[1]).backward()
        optimizer.step()
    values = [r["eigenvalues"][0] for r in monitor.records]
    np.testing.assert_allclose(values, 3.0, rtol=1e-10)
    assert len(values) == 4


def test_a_two_layer_linear_network_sharpens_progressively():
    # f(x) = w₂ w₁ x fitting y = 3x by L = E[(w₂w₁x − 3x)²]: H = 2E[x²] [[w₂², 2w₁w₂ − 3],
    # [2w₁w₂ − 3, w₁²]], whose top eigenvalue is ≈ 2E[x²]·2.98 = 6.2 at w₁ = w₂ = 0.1 and
    # 2E[x²]·(3 + 3) = 12.4 at the balanced solution w₁ = w₂ = √3
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)).double()
    with torch.no_grad():
        model[0].weight.fill_(0.1)
        model[1].weight.fill_(0.1)
    X = torch.linspace(-1, 1, 32, dtype=torch.float64)[:, None] * 3**0.5  # E[x²] = 1.03
    Y = 3 * X
    monitor = CurvatureMonitor(model, nn.MSELoss(), (X, Y), every=20, tol=1e-10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02)
    for _ in range(200):
        monitor.step(optimizer)
        optimizer.zero_grad()
        nn.MSELoss()(model(X), Y).backward()
        optimizer.step()
    values = [r["eigenvalues"][0] for r in monitor.records]
    assert values[0] < 6.5 and values[-1] > 12.0  # it dips first, near the saddle at 0
    np.testing.assert_allclose(values[-1], 2 * float((X**2).mean()) * 6, rtol=1e-3)


def test_bad_settings_are_refused_in_one_line():
    model = nn.Linear(2, 1)
    with pytest.raises(InvalidArgumentError, match="every must be an integer"):
        CurvatureMonitor(model, nn.MSELoss(), (torch.zeros(1, 2), torch.zeros(1, 1)), every=0)
    with pytest.raises(InvalidArgumentError, match="matrix must be one of"):
        CurvatureMonitor(model, nn.MSELoss(), (torch.zeros(1, 2), torch.zeros(1, 1)),
                         matrix="fisher")
    with pytest.raises(InvalidArgumentError, match="lr must be greater than 0"):
        stability_threshold(0.0)


@pytest.mark.parametrize("nesterov", [False, True])
def test_the_sgd_threshold_separates_stable_from_divergent_steps_on_a_quadratic(nesterov):
    """torch's SGD with momentum 0.9 on ½λθ²: bounded just below the threshold, divergent
    just above it (heavy ball (2 + 2β)/η; Nesterov (2 + 2β)/((1 + 2β)η))."""
    lr, beta = 0.1, 0.9
    threshold = stability_threshold(lr, beta, nesterov=nesterov)
    assert threshold == pytest.approx(3.8 / (lr * (2.8 if nesterov else 1.0)))
    for factor, bounded in ((0.99, True), (1.01, False)):
        theta = nn.Parameter(torch.ones(1, dtype=torch.float64))
        optimizer = torch.optim.SGD([theta], lr=lr, momentum=beta, nesterov=nesterov)
        for _ in range(3000):
            optimizer.zero_grad()
            (0.5 * factor * threshold * theta**2).sum().backward()
            optimizer.step()
        assert (abs(theta.item()) < 1) == bounded
