"""Binary cross-entropy, on logits (``BCEWithLogitsLoss``) or on probabilities (``BCELoss``).

Element-wise over all outputs, ``"mean"`` over all elements, as ``torch.nn``. Both are the
Bernoulli likelihood, so ``sample_targets`` draws ŷ ~ Bernoulli(p).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hesskit.losses.base import ElementwiseLoss


def _softplus(z: Tensor) -> Tensor:
    """log(1 + eᶻ); exact also above torch's softplus threshold of 20 (where it returns z)."""
    return torch.where(z > 20, z + torch.log1p(torch.exp(-z.abs())), nn.functional.softplus(z))


class BCEWithLogitsLoss(ElementwiseLoss):
    """Logistic outputs with cross-entropy (``nn.BCEWithLogitsLoss``).

    Per element, with σ = sigmoid(z), pos_weight p and weight w (both broadcast like torch;
    pos_weight along the last dimension)::

        φ = w (p y softplus(−z) + (1 − y) softplus(z))
          = w (softplus(z) − y z + (p − 1) y softplus(−z)),
        φ'' = w (1 + (p − 1) y) σ(z) σ(−z),

    as softplus'' = σ(1 − σ) at ±z. Targets may be fractional in [0, 1]. σ(z) σ(−z) is
    computed as such, not as σ(1 − σ), which is 0 in float32 once |z| > 17. With weights
    the sampler still draws from Bernoulli(σ(z)), so the Fisher estimates the unweighted
    likelihood's curvature times the weights (E[F̂] = G only for pos_weight = 1).
    """

    has_likelihood = True

    def __init__(
        self,
        reduction: str = "mean",
        *,
        weight: Tensor | None = None,
        pos_weight: Tensor | None = None,
    ) -> None:
        super().__init__(reduction)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)
        self.convex = all(t is None or bool((t >= 0).all()) for t in (weight, pos_weight))

    def _elementwise(self, z: Tensor, y: Tensor) -> Tensor:
        terms = _softplus(z) - y * z
        if self.pos_weight is not None:
            terms = terms + (self.pos_weight - 1) * y * _softplus(-z)
        return terms if self.weight is None else terms * self.weight

    def _curvature(self, z: Tensor, y: Tensor) -> Tensor:
        curvature = torch.sigmoid(z) * torch.sigmoid(-z)
        if self.pos_weight is not None:
            curvature = curvature * (1 + (self.pos_weight - 1) * y)
        return curvature if self.weight is None else curvature * self.weight

    def sample_targets(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.bernoulli(torch.sigmoid(z.detach()), generator=generator)


class BCELoss(ElementwiseLoss):
    """Binary cross-entropy on probabilities x ∈ (0, 1) (``nn.BCELoss``).

    φ = −w (y log x + (1 − y) log(1 − x)), each log clamped at −100 as torch does;
    φ'' = w (y/x² + (1 − y)/(1 − x)²) where the log is not clamped. Convex in x, but
    H_ℓ grows without bound as x → 0 or 1: prefer logits with ``BCEWithLogitsLoss``.
    """

    has_likelihood = True

    def __init__(self, reduction: str = "mean", *, weight: Tensor | None = None) -> None:
        super().__init__(reduction)
        self.register_buffer("weight", weight)
        self.convex = weight is None or bool((weight >= 0).all())

    def _elementwise(self, z: Tensor, y: Tensor) -> Tensor:
        log_x = torch.log(z).clamp(min=-100)
        log_rest = torch.log1p(-z).clamp(min=-100)
        terms = -(y * log_x + (1 - y) * log_rest)
        return terms if self.weight is None else terms * self.weight

    def _curvature(self, z: Tensor, y: Tensor) -> Tensor:
        near_zero = torch.log(z) > -100
        near_one = torch.log1p(-z) > -100
        curvature = near_zero * y / z**2 + near_one * (1 - y) / (1 - z) ** 2
        return curvature if self.weight is None else curvature * self.weight

    def sample_targets(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.bernoulli(z.detach().clamp(0, 1), generator=generator)
