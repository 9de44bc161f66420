"""The ``Loss`` interface: a batch loss ℓ(z, y) with its output-space curvature H_ℓ = ∂²ℓ/∂z².

Shapes: z is ``[n, ...]`` (n samples; the per-sample outputs z_i, flattened, have k entries).
The batch loss is ℓ = c Σ_i ℓ_i with ℓ_i the unscaled loss of sample i and c the reduction
factor (``scale``):

* ``"mean"``: like ``torch.nn``, c = 1/``normalizer(y)``: the number of elements for MSE or
  BCE, the number of non-ignored targets (or Σ weight[y_i]) for cross-entropy;
* ``"sum"``: c = 1;
* ``"sample_mean"``: sum over the outputs of a sample, mean over samples (c = 1/n): Martens'
  per-case objective for autoencoders (torch's ``"batchmean"`` for ``KLDivLoss``).

Over several batches, weighting batch b by normalizer_b / Σ_b' normalizer_b' (1 for
``"sum"``) gives exactly the loss of the same reduction over all the data, also with
``ignore_index``, class weights and a smaller last batch. ``batch_weight(n_b, N) = n_b/N``
is the older rule; it is exact when normalizer_b is proportional to n_b.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from hesskit.errors import InvalidArgumentError
from hesskit.tensor_tree import network_output

REDUCTIONS = ("mean", "sum", "sample_mean")
"""How a loss reduces over elements: torch's ``"mean"`` (over every element) and ``"sum"``,
and ``"sample_mean"`` (summed within a sample, averaged over samples: Martens' objective)."""

LIKELIHOOD_LOSSES = "CrossEntropyLoss, BCELoss, BCEWithLogitsLoss, MSELoss, GaussianNLLLoss, "
LIKELIHOOD_LOSSES += "PoissonNLLLoss"


class Loss(nn.Module, ABC):
    """A loss ℓ(z, y) on network outputs z with its output Hessian H_ℓ.

    Subclasses define the unscaled terms (``_elementwise``), the count that ``"mean"``
    divides by (``_mean_count``), the product H_ℓ u and a factor S of H_ℓ; losses that are
    negative log-likelihoods also draw targets from p(y | z) (``sample_targets``).
    """

    convex: bool = True
    """ℓ is convex in z, so the Gauss-Newton matrix Jᵀ H_ℓ J is positive semi-definite."""

    has_likelihood: bool = False
    """ℓ is −log p(y | z) for a distribution that ``sample_targets`` draws from."""

    reductions: tuple[str, ...] = REDUCTIONS

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in self.reductions:
            raise InvalidArgumentError(
                f"unknown reduction {reduction!r} for {type(self).__name__}; "
                f"use one of {', '.join(self.reductions)}"
            )
        self.reduction = reduction

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        """ℓ(z, y) (:meth:`value`); a model output with ``logits`` (a Hugging Face
        ``ModelOutput``) is read as its logits, as hesskit reads network outputs."""
        return self.value(z if isinstance(z, Tensor) else network_output(z), y)

    def value(self, z: Tensor, y: Tensor) -> Tensor:
        """The batch loss ℓ = c Σ_i ℓ_i(z_i, y_i), a scalar."""
        return self.reduction_factor(z, y) * self._elementwise(z, y).sum()

    def scale(self, z: Tensor, y: Tensor | None = None) -> float:
        """The reduction factor c for a batch of outputs z (and targets y, where c needs them).

        Without y, ``"mean"`` divides by the count read from z; losses whose count depends
        on the targets (class weights) raise and ask for y.
        """
        return float(self.reduction_factor(z, y))

    def reduction_factor(self, z: Tensor, y: Tensor | None = None) -> float | Tensor:
        """c as ``scale``, but a 0-d tensor where it depends on the targets' values.

        ``value``, ``hessian_vector`` and ``hessian_sqrt`` use it, so they never read a
        tensor into Python and work under ``torch.func.vmap`` (over samples or vectors).
        """
        if self.reduction == "sum":
            return 1.0
        if self.reduction == "sample_mean":
            return 1.0 / z.shape[0]
        count = self._mean_count(z, y)
        if isinstance(count, Tensor):
            return 1.0 / count.to(z.dtype)
        return 1.0 / count if count else math.inf

    def normalizer(self, targets: Tensor, outputs: Tensor | None = None) -> float:
        """What ``"mean"`` divides the batch sum by: 1/``scale``; 1.0 for ``"sum"``.

        Weighting batch b by normalizer_b / Σ_b' normalizer_b' makes the weighted sum of
        the batch losses the same reduction over all the data.
        """
        if self.reduction == "sum":
            return 1.0
        if self.reduction == "sample_mean":
            return float(targets.shape[0])
        return float(self._mean_count(outputs, targets))

    def batch_weight(self, batch_size: int, num_data: int) -> float:
        """Weight n_b/N of one batch's loss in the loss over all ``num_data`` samples.

        Exact when ``normalizer`` is proportional to the batch size; ``normalizer`` is exact
        always (ignored targets, class weights).
        """
        return 1.0 if self.reduction == "sum" else batch_size / num_data

    def require_convex(self, purpose: str) -> None:
        """Raise ``InvalidArgumentError`` unless ℓ is convex in z (the GGN needs H_ℓ ⪰ 0)."""
        if not self.convex:
            raise InvalidArgumentError(
                f"{purpose}: the Gauss-Newton matrix needs a loss convex in the network "
                f"outputs; {self.describe()} is not; use the Hessian (hessian_operator) instead"
            )

    def require_likelihood(self, purpose: str) -> None:
        """Raise ``InvalidArgumentError`` unless ``sample_targets`` has a distribution."""
        if not self.has_likelihood:
            raise InvalidArgumentError(
                f"{purpose}: Monte-Carlo Fisher sampling needs a negative log-likelihood loss "
                f"({LIKELIHOOD_LOSSES}); {self.describe()} is not one; "
                f"{self._likelihood_remedy()}"
            )

    def describe(self) -> str:
        """A short name for messages."""
        return type(self).__name__

    def _likelihood_remedy(self) -> str:
        return (
            "use the empirical Fisher (empirical_fisher_operator) or the Gauss-Newton "
            "matrix (gauss_newton_operator) instead"
        )

    def sample_targets(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Targets drawn from the model's predictive distribution p(y | z), one per sample."""
        self.require_likelihood("sample_targets")
        raise NotImplementedError  # pragma: no cover - every likelihood loss overrides it

    def _elementwise(self, z: Tensor, y: Tensor) -> Tensor:
        """Unscaled loss terms whose sum over all entries is Σ_i ℓ_i."""
        raise NotImplementedError(f"{type(self).__name__} defines value directly")

    def _mean_count(self, z: Tensor | None, y: Tensor | None) -> float | Tensor:
        """How many elements ``reduction="mean"`` averages over (from z, or from y).

        A 0-d tensor where the count depends on the targets' values (ignored targets).
        """
        return (z if z is not None else y).numel()

    @abstractmethod
    def hessian_vector(self, z: Tensor, y: Tensor, u: Tensor) -> Tensor:
        """H_ℓ u (c included) for output-space vectors u shaped like z (or ``[K, *z.shape]``)."""

    @abstractmethod
    def hessian_sqrt(self, z: Tensor, y: Tensor) -> Tensor:
        """A factor S, ``[n, k, m]``, with H_ℓ = blockdiag_i(S_i S_iᵀ) on flattened outputs."""


def flat(z: Tensor) -> Tensor:
    """``[n, ...]`` → ``[n, k]``."""
    return z.reshape(z.shape[0], -1)


def check_same_shape(loss: Loss, z: Tensor, y: Tensor) -> None:
    """Targets of element-wise losses must be shaped like the outputs (no silent broadcast)."""
    if y.shape != z.shape:
        raise InvalidArgumentError(
            f"{loss.describe()}: targets of shape {list(y.shape)} do not match outputs of "
            f"shape {list(z.shape)}; reshape the targets (or the model's output) to match"
        )


class ElementwiseLoss(Loss):
    """ℓ = c Σ_j φ(z_j, y_j) over all output entries j, so H_ℓ = c diag φ''(z, y).

    Subclasses give φ (``_elementwise``) and φ'' (``_curvature``, shaped like z). The
    product costs one pass over z; the factor is S_i = diag √(c φ''(z_i)) (``[n, k, k]``).
    """

    def _curvature(self, z: Tensor, y: Tensor) -> Tensor:
        """φ''(z, y), the second derivative of each term in its output, shaped like z."""
        raise NotImplementedError

    def value(self, z: Tensor, y: Tensor) -> Tensor:
        check_same_shape(self, z, y)
        return super().value(z, y)

    def hessian_vector(self, z: Tensor, y: Tensor, u: Tensor) -> Tensor:
        return self.reduction_factor(z, y) * self._curvature(z, y) * u

    def hessian_sqrt(self, z: Tensor, y: Tensor) -> Tensor:
        curvature = self.reduction_factor(z, y) * self._curvature(z, y).expand(z.shape)
        return torch.diag_embed(flat(curvature).clamp(min=0).sqrt())


class ZeroCurvatureLoss(ElementwiseLoss):
    """A loss with H_ℓ = 0 (almost everywhere): the Gauss-Newton matrix Jᵀ H_ℓ J is zero."""

    def hessian_vector(self, z: Tensor, y: Tensor, u: Tensor) -> Tensor:
        return torch.zeros_like(u)

    def hessian_sqrt(self, z: Tensor, y: Tensor) -> Tensor:
        n, k = flat(z).shape
        return torch.zeros(n, k, 1, dtype=z.dtype, device=z.device)
