"""CurvatureMonitor's preconditioned sharpness λ_max(P⁻¹H): against a dense eigvalsh of
P^{-1/2} H P^{-1/2} (H by autograd on the flat parameters, P dense from the optimizer's
operator), Adam's state untouched, Adam's threshold 38/η, nothing for SGD by default, a
skip with its reason before the optimizer has state."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from hesskit import Shampoo
from hesskit.errors import InvalidArgumentError
from hesskit.monitor import CurvatureMonitor, preconditioned_threshold
from hesskit.optim.preconditioner_operators import torch_preconditioner

LOSS = nn.MSELoss()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def _data(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(n, 3, generator=generator, dtype=torch.float64),
            torch.randn(n, 2, generator=generator, dtype=torch.float64))


def _dense_hessian(model: nn.Module, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """H of θ ↦ L(θ) on the flat parameter vector (``model.parameters()`` order)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        pieces = flat.split(sizes)
        params = {n: t.reshape(s) for n, t, s in zip(names, pieces, shapes, strict=True)}
        return LOSS(functional_call(model, params, (X,)), Y)

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return torch.autograd.functional.hessian(loss, flat)


def _top_of_sandwich(P: torch.Tensor, H: torch.Tensor) -> float:
    """λ_max(P^{-1/2} H P^{-1/2}) for a dense SPD P."""
    values, vectors = torch.linalg.eigh(P)
    S = (vectors * values.rsqrt()) @ vectors.T
    return float(torch.linalg.eigvalsh(S @ H @ S)[-1])


def _adam_step(model: nn.Module, optimizer: torch.optim.Optimizer, X, Y) -> None:
    optimizer.zero_grad()
    LOSS(model(X), Y).backward()
    optimizer.step()


def test_adam_preconditioned_sharpness_is_the_dense_top_eigenvalue_of_the_sandwich():
    model, (X, Y) = _model(), _data()
    # ε = 0.05, comparable to √v̂ here: a P without ε (or without v's bias correction)
    # gives another value, checked below, so the comparison tells them apart
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, eps=0.05)
    monitor = CurvatureMonitor(model, LOSS, (X, Y), every=1, tol=1e-12, max_products=80)
    for t in range(1, 5):
        _adam_step(model, optimizer, X, Y)
        record = monitor.step(optimizer)
        H = _dense_hessian(model, X, Y)
        P = torch.diag(torch_preconditioner(optimizer).diagonal())
        expected = _top_of_sandwich(P, H)
        assert record["preconditioned_sharpness"] == pytest.approx(expected, rel=1e-6)
        details = record["preconditioned"]
        assert details["converged"] and details["optimizer"] == "Adam"
        assert details["warm"] == (t > 1)
        assert details["products"] > 0 and details["seconds"] >= 0
        assert details["first_moment_correction"] == pytest.approx(1 - 0.9**t, rel=1e-12)
        # the comparison discriminates: P without ε, P without v's bias correction, and
        # the unpreconditioned sharpness are all more than 1e-3 away
        v = torch.cat([optimizer.state[p]["exp_avg_sq"].reshape(-1)
                       for p in model.parameters()])
        for wrong in (torch.diag(v.sqrt() / (1 - 0.999**t) ** 0.5),
                      torch.diag(v.sqrt() + 0.05), torch.eye(len(v), dtype=v.dtype)):
            assert abs(_top_of_sandwich(wrong, H) / expected - 1) > 1e-3
    assert [r["step"] for r in monitor.records] == [0, 1, 2, 3]


def test_a_measurement_leaves_adams_state_and_the_model_bitwise_unchanged():
    model, (X, Y) = _model(), _data()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, amsgrad=True)
    for _ in range(3):
        _adam_step(model, optimizer, X, Y)
    state = copy.deepcopy(optimizer.state_dict())
    params = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    monitor = CurvatureMonitor(model, LOSS, (X, Y), every=1)
    record = monitor.step(optimizer)
    assert record["preconditioned_sharpness"] > 0
    after = optimizer.state_dict()
    assert after["param_groups"] == state["param_groups"]
    for key, entries in state["state"].items():
        assert set(after["state"][key]) == set(entries)
        for name, value in entries.items():
            assert torch.equal(after["state"][key][name], value), (key, name)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params, strict=True))
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))


@pytest.mark.parametrize("kind", [torch.optim.Adam, torch.optim.AdamW])
def test_adams_threshold_is_38_over_lr_and_the_first_call_is_skipped_with_a_reason(kind):
    model, (X, Y) = _model(), _data()
    optimizer = kind(model.parameters(), lr=0.004, betas=(0.9, 0.999))
    monitor = CurvatureMonitor(model, LOSS, (X, Y), every=1)
    first = monitor.step(optimizer)  # no step yet: no state, so no P
    assert first["preconditioned_sharpness"] is None
    assert "no state" in first["preconditioned"]["skipped"]
    assert first["threshold"] is None  # gradient descent's threshold does not apply
    _adam_step(model, optimizer, X, Y)
    second = monitor.step(optimizer)
    for record in (first, second):
        assert record["preconditioned_threshold"] == pytest.approx(38 / 0.004, rel=1e-12)
    assert second["preconditioned_sharpness"] > 0
    assert not second["preconditioned"]["warm"]  # the skipped call left no eigenvector
    optimizer.param_groups[0]["betas"] = (0.5, 0.999)
    assert preconditioned_threshold(optimizer) == pytest.approx(6 / 0.004, rel=1e-12)


def test_sgd_records_nothing_preconditioned_unless_asked():
    model, (X, Y) = _model(), _data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    record = CurvatureMonitor(model, LOSS, (X, Y), every=1).step(optimizer)
    assert not [key for key in record if "preconditioned" in key]
    assert record["threshold"] == pytest.approx(3 / 0.1)
    adam = torch.optim.Adam(model.parameters())
    _adam_step(model, adam, X, Y)
    off = CurvatureMonitor(model, LOSS, (X, Y), every=1, preconditioned=False).step(adam)
    assert not [key for key in off if "preconditioned" in key]
    # asked for, SGD's P = I: the preconditioned sharpness is the sharpness
    on = CurvatureMonitor(model, LOSS, (X, Y), every=1, tol=1e-10,
                          preconditioned=True).step(optimizer)
    assert on["preconditioned_sharpness"] == pytest.approx(on["eigenvalues"][0], rel=1e-8)
    assert on["preconditioned_threshold"] == pytest.approx(3 / 0.1)


def test_a_hesskit_optimizer_with_a_preconditioner_is_measured_by_default():
    model, (X, Y) = _model(), _data()
    optimizer = Shampoo(model.parameters(), lr=0.01)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = LOSS(model(X), Y)
        value.backward()
        return value

    optimizer.step(closure)
    record = CurvatureMonitor(model, LOSS, (X, Y), every=1, tol=1e-12).step(optimizer)
    expected = _top_of_sandwich(optimizer.preconditioner(1.0).to_dense(),
                                _dense_hessian(model, X, Y))
    assert record["preconditioned_sharpness"] == pytest.approx(expected, rel=1e-6)
    assert record["preconditioned_threshold"] is None  # no paper gives Shampoo's


def test_unreadable_preconditioners_are_refused_and_a_missing_optimizer_is_skipped():
    model, (X, Y) = _model(), _data()
    monitor = CurvatureMonitor(model, LOSS, (X, Y), every=1, preconditioned=True)
    assert "no optimizer" in monitor.step()["preconditioned"]["skipped"]
    with pytest.raises(InvalidArgumentError, match="no adapter reads the preconditioner"):
        monitor.step(torch.optim.Adagrad(model.parameters()))
