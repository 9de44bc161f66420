"""Losses of distributions: Kullback-Leibler divergence, Poisson and Gaussian likelihoods.

Definitions, clamps and ``"mean"`` counts (all elements) follow ``torch.nn``; KL's
``"batchmean"`` (sum over a sample, mean over samples) is hesskit's ``"sample_mean"``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hesskit.errors import InvalidArgumentError
from hesskit.losses.autodiff import autodiff_hessian_vector
from hesskit.losses.base import REDUCTIONS, ElementwiseLoss, ZeroCurvatureLoss


class KLDivLoss(ZeroCurvatureLoss):
    """KL divergence of targets from log-probabilities z (``nn.KLDivLoss``).

    φ = y (log y − z), or with ``log_target`` φ = eʸ (y − z). Linear in z, so H_ℓ = 0 and
    the Gauss-Newton matrix is zero (the curvature is in the network's ``log_softmax``):
    for a GGN feed logits with probability targets to ``CrossEntropyLoss``, which is this
    divergence plus a constant. Reductions: ``"mean"`` (over elements), ``"sum"``,
    ``"batchmean"`` (= ``"sample_mean"``, torch's recommended one).
    """

    reductions = (*REDUCTIONS, "batchmean")

    def __init__(self, reduction: str = "mean", *, log_target: bool = False) -> None:
        super().__init__(reduction)
        if reduction == "batchmean":
            self.reduction = "sample_mean"
        self.log_target = bool(log_target)

    def _elementwise(self, z: Tensor, y: Tensor) -> Tensor:
        if self.log_target:
            return torch.exp(y) * (y - z)
        return torch.xlogy(y, y) - y * z


class PoissonNLLLoss(ElementwiseLoss):
    """Poisson negative log-likelihood (``nn.PoissonNLLLoss``).

    With ``log_input`` (default) z = log rate: φ = eᶻ − y z, φ'' = eᶻ. Without it z = rate:
    φ = z − y log(z + eps), φ'' = y/(z + eps)². ``full`` adds Stirling's term
    y log y − y + ½ log(2π y) for y > 1, constant in z. The sampler draws ŷ ~ Poisson(rate);
    with ``log_input``, E[r²] = eᶻ = φ'' (r = eᶻ − ŷ).
    """

    has_likelihood = True

    def __init__(
        self,
        reduction: str = "mean",
        *,
        log_input: bool = True,
        full: bool = False,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(reduction)
        self.log_input, self.full, self.eps = bool(log_input), bool(full), float(eps)

    def _elementwise(self, z: Tensor, y: Tensor) -> Tensor:
        terms = torch.exp(z) - y * z if self.log_input else z - y * torch.log(z + self.eps)
        if self.full:
            stirling = y * torch.log(y) - y + 0.5 * torch.log(2 * math.pi * y)
            terms = terms + stirling.masked_fill(y <= 1, 0)
        return terms

    def _curvature(self, z: Tensor, y: Tensor) -> Tensor:
        if self.log_input:
            return torch.exp(z)
        return y / (z + self.eps) ** 2

    def sample_targets(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        rate = torch.exp(z.detach()) if self.log_input else z.detach().clamp(min=0)
        return torch.poisson(rate, generator=generator)


class GaussianNLLLoss(ElementwiseLoss):
    """Gaussian negative log-likelihood (``nn.GaussianNLLLoss``) with a variance v.

    φ = ½ (log v + (z − y)²/v) (+ ½ log 2π with ``full``), v clamped at ``eps`` as torch.

    * ``var`` a float or a tensor that broadcasts against one batch of outputs (per output
      entry, not per sample): z is the mean, φ'' = 1/v, convex; the sampler draws
      ŷ ~ N(z, v), for which E[r²] = 1/v = φ''.
    * ``var=None``: the network predicts both, z = [mean, variance] concatenated along
      dimension 1 (``[n, 2h, ...]``, targets ``[n, h, ...]``). ℓ is then not convex in the
      variance (∂²φ/∂v² = (2(z − y)²/v − 1)/(2v²) < 0 near the mean), so the GGN does not
      apply (``hessian_sqrt`` raises); H_ℓ u comes from autodiff for the Hessian.
    """

    has_likelihood = True

    def __init__(
        self,
        reduction: str = "mean",
        *,
        var: float | Tensor | None = None,
        full: bool = False,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(reduction)
        if var is not None:
            if not isinstance(var, Tensor):
                var = torch.tensor(float(var))
            if bool((var < 0).any()):
                raise InvalidArgumentError("GaussianNLLLoss: var has negative entries")
        self.register_buffer("var", var)
        self.full, self.eps = bool(full), float(eps)
        self.convex = var is not None

    def describe(self) -> str:
        return (
            "GaussianNLLLoss(var=None) (predicted variance)"
            if self.var is None
            else ("GaussianNLLLoss")
        )

    def _split(self, z: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(mean, variance) from z: the fixed variance, or the second half of dimension 1."""
        if self.var is not None:
            try:
                variance = self.var.to(z.dtype).expand(z.shape)
            except RuntimeError:
                raise InvalidArgumentError(
                    f"GaussianNLLLoss: var of shape {list(self.var.shape)} does not broadcast "
                    f"to outputs of shape {list(z.shape)}; pass one variance per output entry"
                ) from None
            return z, variance
        half = z.shape[1] // 2
        if z.shape[1] % 2 or (y is not None and y.shape != (z.shape[0], half, *z.shape[2:])):
            target = "" if y is None else f" for targets of shape {list(y.shape)}"
            raise InvalidArgumentError(
                f"GaussianNLLLoss(var=None): outputs of shape {list(z.shape)} are not "
                f"[mean, variance] along dimension 1{target}; output 2h channels for h targets"
            )
        return z[:, :half], z[:, half:]

    def _clamped(self, variance: Tensor) -> Tensor:
        """max(v, eps) in value, with torch's gradient (the clamp is done under no_grad)."""
        return variance + (variance.clamp(min=self.eps) - variance).detach()

    def value(self, z: Tensor, y: Tensor) -> Tensor:
        if self.var is not None:
            return super().value(z, y)
        return self.reduction_factor(z, y) * self._elementwise(z, y).sum()

    def _mean_count(self, z: Tensor | None, y: Tensor | None) -> float:
        if self.var is not None or y is not None:
            return (y if y is not None else z).numel()
        return z.numel() / 2

    def _elementwise(self, z: Tensor, y: Tensor) -> Tensor:
        mean, variance = self._split(z, y)
        variance = self._clamped(variance)
        terms = 0.5 * (torch.log(variance) + (mean - y) ** 2 / variance)
        return terms + 0.5 * math.log(2 * math.pi) if self.full else terms

    def _curvature(self, z: Tensor, y: Tensor) -> Tensor:
        return 1.0 / self._split(z)[1].clamp(min=self.eps)

    def hessian_vector(self, z: Tensor, y: Tensor, u: Tensor) -> Tensor:
        if self.var is not None:
            return super().hessian_vector(z, y, u)
        return autodiff_hessian_vector(lambda out: self.value(out, y), z, u)

    def hessian_sqrt(self, z: Tensor, y: Tensor) -> Tensor:
        self.require_convex("hessian_sqrt")
        return super().hessian_sqrt(z, y)

    def sample_targets(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mean, variance = self._split(z.detach())
        noise = torch.randn(mean.shape, generator=generator, dtype=z.dtype, device=z.device)
        return mean + variance.clamp(min=self.eps).sqrt() * noise
