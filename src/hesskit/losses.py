"""Losses ℓ(z, y) on network outputs z, with their output-space curvature in closed form.

Each loss is an ``nn.Module`` (``forward = value``) written by hand, not a wrapper of
``torch.nn.functional``: forward-over-reverse autodiff through ``nn.MSELoss`` raises on
torch 2.13, and the closed forms give the output-space Hessian H_ℓ = ∂²ℓ/∂z² cheaply.

Shapes: z is ``[n, k]`` (n samples, k outputs per sample; more trailing dimensions are
flattened into k). The reduction decides the scale c of the batch loss ℓ = c Σ_i ℓ_i:

* ``"mean"``: like ``torch.nn``, the mean over all elements (c = 1/(n k) for MSE and BCE,
  1/n for cross-entropy, whose elements are the samples);
* ``"sum"``: c = 1;
* ``"sample_mean"``: sum over the outputs of a sample, mean over samples (c = 1/n): Martens'
  per-case objective for autoencoders.

Across several batches, hesskit weights batch b by ``batch_weight(n_b, N)`` so that the
total is the same reduction over all N samples.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from hesskit.errors import InvalidArgumentError

REDUCTIONS = ("mean", "sum", "sample_mean")


class Loss(nn.Module, ABC):
    """A loss with closed-form output curvature.

    Subclasses define the per-sample loss ℓ_i(z_i, y_i), its output Hessian and a sampler
    of targets from the model's predictive distribution (for the Monte-Carlo Fisher).
    """

    convex: bool = True
    """ℓ is convex in z, so the Gauss-Newton matrix Jᵀ H_ℓ J is positive semi-definite."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise InvalidArgumentError(
                f"unknown reduction {reduction!r}; use one of {', '.join(REDUCTIONS)}"
            )
        self.reduction = reduction

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        return self.value(z, y)

    def value(self, z: Tensor, y: Tensor) -> Tensor:
        """The batch loss ℓ = c Σ_i ℓ_i(z_i, y_i), a scalar."""
        return self.scale(z) * self._elementwise(z, y).sum()

    def scale(self, z: Tensor) -> float:
        """The reduction factor c for a batch of outputs z."""
        n = z.shape[0]
        if self.reduction == "sum":
            return 1.0
        if self.reduction == "sample_mean":
            return 1.0 / n
        return 1.0 / self._num_elements(z)

    def batch_weight(self, batch_size: int, num_data: int) -> float:
        """Weight of one batch's loss in the loss over all ``num_data`` samples."""
        return 1.0 if self.reduction == "sum" else batch_size / num_data

    @abstractmethod
    def _elementwise(self, z: Tensor, y: Tensor) -> Tensor:
        """Unscaled loss terms whose sum over all entries is Σ_i ℓ_i."""

    @abstractmethod
    def _num_elements(self, z: Tensor) -> int:
        """How many elements ``reduction="mean"`` averages over."""

    @abstractmethod
    def hessian_vector(self, z: Tensor, y: Tensor, u: Tensor) -> Tensor:
        """H_ℓ u for output-space vectors u shaped like z (or ``[K, *z.shape]``)."""

    @abstractmethod
    def hessian_sqrt(self, z: Tensor, y: Tensor) -> Tensor:
        """A factor S, ``[n, k, m]``, with H_ℓ = blockdiag_i(S_i S_iᵀ) on flattened outputs."""

    @abstractmethod
    def sample_targets(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Targets drawn from the model's predictive distribution p(y | z), one per sample."""


def _flat(z: Tensor) -> Tensor:
    return z.reshape(z.shape[0], -1)


class MSELoss(Loss):
    """Squared error ℓ_i = ‖z_i − y_i‖² (not halved, like ``nn.MSELoss``); H_ℓ = 2c I.

    As a likelihood it is a Gaussian with variance 1/2, which the Fisher sampler uses.
    """

    def _elementwise(self, z: Tensor, y: Tensor) -> Tensor:
        return (z - y) ** 2

    def _num_elements(self, z: Tensor) -> int:
        return z.numel()

    def hessian_vector(self, z: Tensor, y: Tensor, u: Tensor) -> Tensor:
        return 2.0 * self.scale(z) * u

    def hessian_sqrt(self, z: Tensor, y: Tensor) -> Tensor:
        n, k = _flat(z).shape
        eye = torch.eye(k, dtype=z.dtype, device=z.device)
        return math.sqrt(2.0 * self.scale(z)) * eye.expand(n, k, k)

    def sample_targets(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        return z.detach() + math.sqrt(0.5) * noise


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy ℓ_i = −log softmax(z_i)[y_i] with class-index targets y.

    H_ℓ for sample i is c (diag p_i − p_i p_iᵀ), p_i = softmax(z_i); its factor is
    S_i = √c (diag √p_i − p_i √p_iᵀ).
    """

    def _elementwise(self, z: Tensor, y: Tensor) -> Tensor:
        return -torch.log_softmax(z, dim=-1).gather(-1, y.long().unsqueeze(-1))

    def _num_elements(self, z: Tensor) -> int:
        return z.shape[0]

    def hessian_vector(self, z: Tensor, y: Tensor, u: Tensor) -> Tensor:
        p = torch.softmax(z, dim=-1)
        return self.scale(z) * p * (u - (p * u).sum(-1, keepdim=True))

    def hessian_sqrt(self, z: Tensor, y: Tensor) -> Tensor:
        p = torch.softmax(z, dim=-1)
        root = p.sqrt()
        factor = torch.diag_embed(root) - p.unsqueeze(-1) * root.unsqueeze(-2)
        return math.sqrt(self.scale(z)) * factor

    def sample_targets(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        p = torch.softmax(z.detach(), dim=-1)
        return torch.multinomial(p, 1, generator=generator).squeeze(-1)


class BCEWithLogitsLoss(Loss):
    """Logistic outputs with cross-entropy: ℓ = Σ softplus(z) − y z over the outputs.

    H_ℓ = c diag(σ(z)(1 − σ(z))). Targets y may be fractional in [0, 1] (pixel intensities).
    """

    def _elementwise(self, z: Tensor, y: Tensor) -> Tensor:
        return nn.functional.softplus(z) - y * z

    def _num_elements(self, z: Tensor) -> int:
        return z.numel()

    def hessian_vector(self, z: Tensor, y: Tensor, u: Tensor) -> Tensor:
        s = torch.sigmoid(z)
        return self.scale(z) * s * (1 - s) * u

    def hessian_sqrt(self, z: Tensor, y: Tensor) -> Tensor:
        s = torch.sigmoid(_flat(z))
        return torch.diag_embed((self.scale(z) * s * (1 - s)).sqrt())

    def sample_targets(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.bernoulli(torch.sigmoid(z.detach()), generator=generator)


_FROM_TORCH: dict[type[nn.Module], type[Loss]] = {
    nn.MSELoss: MSELoss,
    nn.CrossEntropyLoss: CrossEntropyLoss,
    nn.BCEWithLogitsLoss: BCEWithLogitsLoss,
}


def as_loss(loss: nn.Module) -> Loss:
    """Return the hesskit loss equal to ``loss`` (a hesskit ``Loss`` or a supported torch loss)."""
    if isinstance(loss, Loss):
        return loss
    cls = _FROM_TORCH.get(type(loss))
    if cls is None:
        known = ", ".join(t.__name__ for t in _FROM_TORCH)
        raise InvalidArgumentError(
            f"unsupported loss {type(loss).__name__}; use one of {known} or a hesskit.losses.Loss"
        )
    _reject_unsupported_options(loss)
    return cls(reduction=loss.reduction)


def _reject_unsupported_options(loss: nn.Module) -> None:
    for option in ("weight", "pos_weight"):
        if getattr(loss, option, None) is not None:
            raise InvalidArgumentError(f"{type(loss).__name__} with {option} is not supported")
    if getattr(loss, "label_smoothing", 0.0) or getattr(loss, "ignore_index", -100) != -100:
        raise InvalidArgumentError(
            "CrossEntropyLoss with label_smoothing or ignore_index is not supported"
        )
