"""Regression losses on real outputs: squared error, absolute error, Huber, smooth L1.

All are element-wise, φ(z_j − y_j) with r = z − y, so H_ℓ = c diag φ''(r) (``ElementwiseLoss``);
the definitions and the ``"mean"`` count (all elements) are those of ``torch.nn``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hesskit.errors import InvalidArgumentError
from hesskit.losses.base import ElementwiseLoss, ZeroCurvatureLoss, flat


class MSELoss(ElementwiseLoss):
    """Squared error ℓ_i = ‖z_i − y_i‖² (not halved, like ``nn.MSELoss``); H_ℓ = 2c I.

    As a likelihood it is a Gaussian with variance 1/2, which the Fisher sampler uses:
    E[r rᵀ] = 4 Var(y) I = 2 I = H_ℓ/c for r = 2(z − ŷ).
    """

    has_likelihood = True

    def _elementwise(self, z: Tensor, y: Tensor) -> Tensor:
        return (z - y) ** 2

    def _curvature(self, z: Tensor, y: Tensor) -> Tensor:
        return torch.full_like(z, 2.0)

    def hessian_vector(self, z: Tensor, y: Tensor, u: Tensor) -> Tensor:
        return 2.0 * self.scale(z) * u

    def hessian_sqrt(self, z: Tensor, y: Tensor) -> Tensor:
        n, k = flat(z).shape
        eye = torch.eye(k, dtype=z.dtype, device=z.device)
        return math.sqrt(2.0 * self.scale(z)) * eye.expand(n, k, k)

    def sample_targets(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        return z.detach() + math.sqrt(0.5) * noise


class L1Loss(ZeroCurvatureLoss):
    """Absolute error ℓ = Σ_j |z_j − y_j| (``nn.L1Loss``).

    Piecewise linear: H_ℓ = 0 almost everywhere (undefined on the kink z = y), so
    ``hessian_vector`` returns zeros and the Gauss-Newton matrix of this loss is zero. It is
    convex, but no Fisher sampling (no likelihood is attached).
    """

    def _elementwise(self, z: Tensor, y: Tensor) -> Tensor:
        return (z - y).abs()


class HuberLoss(ElementwiseLoss):
    """Huber loss (``nn.HuberLoss``): φ(r) = r²/2 for |r| < δ, δ(|r| − δ/2) otherwise.

    H_ℓ = c diag 1{|r| < δ}: the quadratic zone has unit curvature, the linear tails none.
    """

    def __init__(self, reduction: str = "mean", *, delta: float = 1.0) -> None:
        super().__init__(reduction)
        if not delta > 0:
            raise InvalidArgumentError(f"HuberLoss needs delta > 0, got {delta}")
        self.delta = float(delta)

    def _elementwise(self, z: Tensor, y: Tensor) -> Tensor:
        r = (z - y).abs()
        return torch.where(r < self.delta, 0.5 * r**2, self.delta * (r - 0.5 * self.delta))

    def _curvature(self, z: Tensor, y: Tensor) -> Tensor:
        return ((z - y).abs() < self.delta).to(z.dtype)


class SmoothL1Loss(ElementwiseLoss):
    """Smooth L1 (``nn.SmoothL1Loss``): φ(r) = r²/(2β) for |r| < β, |r| − β/2 otherwise.

    H_ℓ = c diag 1{|r| < β}/β, i.e. Huber with δ = β divided by β. β = 0 is the L1 loss
    (torch's definition), whose H_ℓ is zero.
    """

    def __init__(self, reduction: str = "mean", *, beta: float = 1.0) -> None:
        super().__init__(reduction)
        if beta < 0:
            raise InvalidArgumentError(f"SmoothL1Loss needs beta >= 0, got {beta}")
        self.beta = float(beta)

    def _elementwise(self, z: Tensor, y: Tensor) -> Tensor:
        r = (z - y).abs()
        if self.beta == 0:
            return r
        return torch.where(r < self.beta, 0.5 * r**2 / self.beta, r - 0.5 * self.beta)

    def _curvature(self, z: Tensor, y: Tensor) -> Tensor:
        if self.beta == 0:
            return torch.zeros_like(z)
        return ((z - y).abs() < self.beta).to(z.dtype) / self.beta
