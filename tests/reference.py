"""Independent oracles for tests. Imports nothing from hesskit, on purpose.

Every dense matrix here is built with ``torch.autograd.functional`` and torch's own loss
functions (or finite differences), so a bug in hesskit's code cannot hide in its reference.
Flat vectors use the order of ``model.named_parameters()`` restricted to ``names``, each
tensor flattened row-major: hesskit's documented layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

LossFn = Callable[[Tensor, Tensor], Tensor]


def parameter_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def flat_parameters(model: nn.Module, names: Sequence[str] | None = None) -> Tensor:
    named = dict(model.named_parameters())
    names = parameter_names(model) if names is None else names
    return torch.cat([named[n].detach().reshape(-1) for n in names])


def _unflatten(model: nn.Module, names: Sequence[str], theta: Tensor) -> dict[str, Tensor]:
    named = dict(model.named_parameters())
    out, start = {}, 0
    for n in names:
        size = named[n].numel()
        out[n] = theta[start : start + size].reshape(named[n].shape)
        start += size
    return out


def loss_of_flat(
    model: nn.Module, loss_fn: LossFn, X: Tensor, y: Tensor, names: Sequence[str] | None = None
) -> Callable[[Tensor], Tensor]:
    """θ ↦ loss_fn(model_θ(X), y) for a flat θ over ``names``."""
    names = parameter_names(model) if names is None else list(names)
    return lambda theta: loss_fn(functional_call(model, _unflatten(model, names, theta), (X,)), y)


def autograd_hessian(
    model: nn.Module, loss_fn: LossFn, X: Tensor, y: Tensor, names: Sequence[str] | None = None
) -> Tensor:
    """The N×N Hessian by ``torch.autograd.functional.hessian`` on the flat parameters."""
    f = loss_of_flat(model, loss_fn, X, y, names)
    return torch.autograd.functional.hessian(f, flat_parameters(model, names))


def autograd_gradient(
    model: nn.Module, loss_fn: LossFn, X: Tensor, y: Tensor, names: Sequence[str] | None = None
) -> Tensor:
    theta = flat_parameters(model, names).requires_grad_(True)
    (g,) = torch.autograd.grad(loss_of_flat(model, loss_fn, X, y, names)(theta), theta)
    return g


def finite_difference_hessian(
    model: nn.Module,
    loss_fn: LossFn,
    X: Tensor,
    y: Tensor,
    names: Sequence[str] | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """Central differences of the autograd gradient, column by column (use float64)."""
    f = loss_of_flat(model, loss_fn, X, y, names)
    theta0 = flat_parameters(model, names)

    def gradient(theta: Tensor) -> Tensor:
        theta = theta.clone().requires_grad_(True)
        return torch.autograd.grad(f(theta), theta)[0]

    columns = []
    for i in range(theta0.numel()):
        step = torch.zeros_like(theta0)
        step[i] = eps
        columns.append((gradient(theta0 + step) - gradient(theta0 - step)) / (2 * eps))
    return torch.stack(columns, dim=1)


def autograd_gauss_newton(
    model: nn.Module, loss_fn: LossFn, X: Tensor, y: Tensor, names: Sequence[str] | None = None
) -> Tensor:
    """G = Jᵀ H_ℓ J from the full output Jacobian J and the loss's Hessian in the outputs."""
    names = parameter_names(model) if names is None else list(names)
    theta0 = flat_parameters(model, names)

    def outputs(theta: Tensor) -> Tensor:
        return functional_call(model, _unflatten(model, names, theta), (X,))

    z0 = outputs(theta0).detach()
    J = torch.autograd.functional.jacobian(outputs, theta0).reshape(z0.numel(), -1)
    H_out = torch.autograd.functional.hessian(
        lambda z: loss_fn(z.reshape(z0.shape), y), z0.reshape(-1)
    )
    return J.T @ H_out @ J


def model_outputs_of_flat(
    model: nn.Module, X: Tensor, names: Sequence[str] | None = None
) -> Callable[[Tensor], Tensor]:
    """θ ↦ model_θ(X) for a flat θ over ``names`` (other parameters and buffers as they are)."""
    names = parameter_names(model) if names is None else list(names)
    return lambda theta: functional_call(model, _unflatten(model, names, theta), (X,))


def per_sample_gradients(
    model: nn.Module,
    sample_loss: LossFn,
    X: Tensor,
    y: Tensor,
    names: Sequence[str] | None = None,
) -> Tensor:
    """``[n, N]``: row i is ∇_θ sample_loss(model(x_i), y_i), one autograd pass per sample.

    Pass a loss with ``reduction="sum"`` for ℓ_i, the sample's loss summed over its outputs.
    """
    rows = [
        autograd_gradient(model, sample_loss, X[i : i + 1], y[i : i + 1], names)
        for i in range(len(X))
    ]
    return torch.stack(rows)


def empirical_fisher(
    model: nn.Module,
    sample_loss: LossFn,
    X: Tensor,
    y: Tensor,
    sample_weight: float,
    names: Sequence[str] | None = None,
) -> Tensor:
    """EF = Σ_i a_i ∇ℓ_i ∇ℓ_iᵀ with one weight a_i = ``sample_weight`` for every sample."""
    grads = per_sample_gradients(model, sample_loss, X, y, names)
    return sample_weight * grads.T @ grads


def finite_difference_jacobian(
    f: Callable[[Tensor], Tensor], theta0: Tensor, eps: float = 1e-6
) -> Tensor:
    """``[numel(f), N]`` Jacobian of f at θ₀ by central differences (use float64)."""
    columns = []
    for i in range(theta0.numel()):
        step = torch.zeros_like(theta0)
        step[i] = eps
        with torch.no_grad():
            columns.append(((f(theta0 + step) - f(theta0 - step)) / (2 * eps)).reshape(-1))
    return torch.stack(columns, dim=1)


def finite_difference_gradient(
    f: Callable[[Tensor], Tensor], theta0: Tensor, eps: float = 1e-6
) -> Tensor:
    """∇f(θ₀) of a scalar f by central differences (use float64)."""
    return finite_difference_jacobian(lambda t: f(t).reshape(1), theta0, eps)[0]
