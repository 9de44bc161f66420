"""``preconditioned_sharpness``: λ_max(P⁻¹H) by Lanczos on P^{-1/2} H P^{-1/2}, against
``eigvalsh`` of the dense matrix (H from ``torch.autograd.functional.hessian``); and Adam's
threshold 2(1 + β₁)/((1 − β₁)η) of Cohen et al. 2022."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from closures import batch_closure
from hesskit.analysis import adam_stability_threshold, preconditioned_sharpness
from hesskit.errors import InvalidArgumentError
from hesskit.layout import ParameterLayout
from hesskit.operators import DiagonalOperator, MatrixOperator, hessian_operator
from hesskit.optim import KFAC, AdaHessian, Shampoo, Sophia
from hesskit.problem import Problem

LOSS = nn.MSELoss()


def model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    g = torch.Generator().manual_seed(1)
    X = torch.randn(16, 3, generator=g, dtype=torch.float64)
    y = torch.randn(16, 2, generator=g, dtype=torch.float64)
    return model, X, y


def dense_hessian(model: nn.Module, X, y) -> torch.Tensor:
    """∇²L of the loss as a function of the flat parameter vector (model order)."""
    named = dict(model.named_parameters())
    layout = ParameterLayout.from_tensors(named)
    theta = torch.cat([p.detach().reshape(-1) for p in named.values()])

    def loss(flat: torch.Tensor) -> torch.Tensor:
        return LOSS(functional_call(model, layout.unflatten(flat), (X,)), y)

    return torch.autograd.functional.hessian(loss, theta)


def dense_sharpness(P: torch.Tensor, H: torch.Tensor) -> float:
    values, vectors = torch.linalg.eigh(P)
    S = (vectors * values.rsqrt()) @ vectors.T
    return float(torch.linalg.eigvalsh(S @ H @ S)[-1])


def dense(op) -> torch.Tensor:
    return op.matmat(torch.eye(op.shape[0], dtype=op.dtype))


def in_model_order(own: torch.Tensor, optimizer, model) -> torch.Tensor:
    """A dense P on the optimizer's flat vector (param_groups order) in the model's order."""
    offsets, start = {}, 0
    for p in (p for g in optimizer.param_groups for p in g["params"]):
        offsets[id(p)] = torch.arange(start, start + p.numel())
        start += p.numel()
    index = torch.cat([offsets[id(p)] for p in model.parameters()])
    return own[index][:, index]


def run(kind: str):
    model, X, y = model_and_data()
    params = list(model.parameters())

    def closure(backward: bool = True):
        def f():
            for p in params:
                p.grad = None
            value = LOSS(model(X), y)
            if backward:
                value.backward()
            return value
        return f

    if kind == "kfac":
        optimizer = KFAC([{"params": params[2:]}, {"params": params[:2]}], model=model,
                         loss=LOSS)
        for _ in range(3):
            optimizer.step(batch_closure(optimizer, X, y))
        return model, X, y, optimizer
    optimizer, step_closure = {
        "adam": lambda: (torch.optim.Adam(params, lr=0.01), closure()),
        "rmsprop": lambda: (torch.optim.RMSprop(params, lr=0.01), closure()),
        "sgd": lambda: (torch.optim.SGD(params, lr=0.01, momentum=0.9), closure()),
        "adahessian": lambda: (AdaHessian(params, lr=0.05), closure(backward=False)),
        "sophia": lambda: (Sophia(params, lr=0.01, rho=0.5, interval=1,
                                  curvature=lambda: Problem(model, LOSS, (X, y))), closure()),
        "shampoo": lambda: (Shampoo([{"params": params[2:]}, {"params": params[:2]}],
                                    lr=0.01, update_freq=1, start_preconditioning_step=1),
                            closure()),
    }[kind]()
    for _ in range(3):
        optimizer.step(step_closure)
    return model, X, y, optimizer


def preconditioner_dense(kind: str, optimizer, model) -> torch.Tensor:
    if kind == "adam":
        return torch.diag(torch.cat([
            (optimizer.state[p]["exp_avg_sq"].sqrt() / math.sqrt(1 - 0.999**3) + 1e-8)
            .reshape(-1) for p in model.parameters()]))
    if kind == "rmsprop":
        return torch.diag(torch.cat([(optimizer.state[p]["square_avg"].sqrt() + 1e-8)
                                     .reshape(-1) for p in model.parameters()]))
    if kind == "sgd":
        return torch.eye(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    return in_model_order(dense(optimizer.preconditioner()), optimizer, model)


@pytest.mark.parametrize("kind", ["adam", "rmsprop", "sgd", "adahessian", "sophia", "kfac",
                                  "shampoo"])
def test_sharpness_of_an_optimizer_is_the_dense_top_eigenvalue(kind):
    model, X, y, optimizer = run(kind)
    H = dense_hessian(model, X, y)
    P = preconditioner_dense(kind, optimizer, model)
    expected = dense_sharpness(P, H)
    result = preconditioned_sharpness(optimizer, hessian_operator(Problem(model, LOSS, (X, y))),
                                      tol=1e-10)
    assert result.converged
    assert float(result.values[0]) == pytest.approx(expected, rel=1e-6)
    if kind != "sgd":  # it is P⁻¹H's, not H's
        assert float(torch.linalg.eigvalsh(H)[-1]) != pytest.approx(expected, rel=1e-3)


def test_sharpness_of_an_operator_is_the_dense_top_eigenvalue():
    model, X, y = model_and_data()
    H = dense_hessian(model, X, y)
    curvature = hessian_operator(Problem(model, LOSS, (X, y)))
    n = H.shape[0]
    g = torch.Generator().manual_seed(2)
    d = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    B = torch.randn(n, n, generator=g, dtype=torch.float64)
    M = B @ B.T / n + 0.2 * torch.eye(n, dtype=torch.float64)
    for op, P in ((DiagonalOperator(d, curvature.layout), torch.diag(d)),
                  (MatrixOperator(M, curvature.layout), M)):
        result = preconditioned_sharpness(op, curvature, tol=1e-10)
        assert float(result.values[0]) == pytest.approx(dense_sharpness(P, H), rel=1e-6)


def test_sharpness_refuses_a_preconditioner_of_another_size():
    model, X, y = model_and_data()
    curvature = hessian_operator(Problem(model, LOSS, (X, y)))
    with pytest.raises(InvalidArgumentError, match="same parameters"):
        preconditioned_sharpness(DiagonalOperator(torch.ones(3, dtype=torch.float64)),
                                 curvature)


def test_adam_threshold_is_38_over_lr_for_beta1_09():
    assert adam_stability_threshold(0.01) == pytest.approx(3800, rel=1e-12)
    assert adam_stability_threshold(2e-3, beta1=0.0) == pytest.approx(2 / 2e-3)  # GD's 2/η
    assert adam_stability_threshold(1.0, beta1=0.99) == pytest.approx(398)
    with pytest.raises(InvalidArgumentError):
        adam_stability_threshold(0.0)
