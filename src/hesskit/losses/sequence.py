"""Cross-entropy over the tokens of sequence models: logits ``[n, T, V]``, labels ``[n, T]``.

Language models (Hugging Face's among them) put the vocabulary LAST, ``[n, T, V]``, while
``nn.CrossEntropyLoss`` wants the classes in dimension 1. :class:`TokenCrossEntropyLoss`
is cross-entropy at every position of that layout, and :class:`CausalLMLoss` adds the
causal-LM convention: the logits at position t predict the label at t + 1
(``logits[:, :-1]`` against ``labels[:, 1:]``, as ``transformers``' ``ForCausalLMLoss``
does), so the labels are the input ids themselves, with ``ignore_index`` (-100) where no
token is to be predicted (padding).

Both are the closed-form :class:`~hesskit.losses.CrossEntropyLoss` composed with a fixed
linear map P of the outputs (a transpose, and for the causal loss a drop of the last
position): ℓ(z) = ℓ_CE(P z), so H_ℓ = Pᵀ H_CE P and its factor is Pᵀ S_CE. The reduction
``"mean"`` divides by the number of non-ignored predicted tokens, and over several batches
``Problem`` weights each batch by its token count, so the total loss is the exact mean over
every token of the data, however the sequences are batched. A "sample" (Fisher, empirical
Fisher, per-sample diagonals) is a sequence. Costs: as cross-entropy on n (T − 1) positions.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional

from hesskit.errors import InvalidArgumentError
from hesskit.losses.base import Loss
from hesskit.losses.classification import CrossEntropyLoss


class TokenCrossEntropyLoss(Loss):
    """Cross-entropy at every position of logits ``[n, T, V]`` against labels ``[n, T]``.

    Args:
        reduction: ``"mean"`` (over non-ignored tokens, as torch) or ``"sum"``.
        ignore_index: a label that contributes nothing (default -100, as torch and HF).
        label_smoothing: as ``nn.CrossEntropyLoss``.
    """

    has_likelihood = True
    reductions = ("mean", "sum")
    shift = 0
    """How many positions the labels lead the logits by (1 for a causal LM)."""

    def __init__(
        self, reduction: str = "mean", *, ignore_index: int = -100, label_smoothing: float = 0.0
    ) -> None:
        super().__init__(reduction)
        self.cross_entropy = CrossEntropyLoss(
            reduction, ignore_index=ignore_index, label_smoothing=label_smoothing
        )
        self.ignore_index = int(ignore_index)

    def describe(self) -> str:
        return type(self).__name__

    def _view(self, z: Tensor) -> Tensor:
        """P z: ``[..., T, V]`` → ``[..., V, T − shift]`` (classes before positions)."""
        return z[..., : z.shape[-2] - self.shift, :].transpose(-1, -2)

    def _unview(self, p: Tensor, positions: int) -> Tensor:
        """Pᵀ p: ``[..., V, T − shift]`` → ``[..., T, V]``, zero at the dropped positions."""
        return functional.pad(p.transpose(-1, -2), (0, 0, 0, self.shift)) if self.shift else (
            p.transpose(-1, -2)
        )

    def _labels(self, y: Tensor) -> Tensor:
        return y[:, self.shift :]

    def _check(self, z: Tensor, y: Tensor) -> None:
        if z.ndim != 3 or y.shape != z.shape[:2]:
            raise InvalidArgumentError(
                f"{self.describe()}: logits of shape {list(z.shape)} and labels of shape "
                f"{list(y.shape)}; pass logits [n, T, V] and labels [n, T]"
            )
        if y.is_floating_point():
            raise InvalidArgumentError(
                f"{self.describe()}: labels must be integer token ids, got {y.dtype}"
            )

    def value(self, z: Tensor, y: Tensor) -> Tensor:
        self._check(z, y)
        return self.cross_entropy.value(self._view(z), self._labels(y))

    def reduction_factor(self, z: Tensor, y: Tensor | None = None) -> float | Tensor:
        view = self._view(z) if z is not None else None
        return self.cross_entropy.reduction_factor(view, None if y is None else self._labels(y))

    def normalizer(self, targets: Tensor, outputs: Tensor | None = None) -> float:
        if self.reduction == "sum":
            return 1.0
        return float(self.cross_entropy._index_count(self._labels(targets)))

    def hessian_vector(self, z: Tensor, y: Tensor, u: Tensor) -> Tensor:
        product = self.cross_entropy.hessian_vector(self._view(z), self._labels(y), self._view(u))
        return self._unview(product, z.shape[-2])

    def hessian_sqrt(self, z: Tensor, y: Tensor) -> Tensor:
        """Pᵀ S_CE as ``[n, T V, m]``: rows in z's (position, class) order."""
        n, T, V = z.shape
        factor = self.cross_entropy.hessian_sqrt(self._view(z), self._labels(y))
        m = factor.shape[-1]
        rows = factor.reshape(n, V, T - self.shift, m).transpose(1, 2)  # [n, T', V, m]
        rows = functional.pad(rows, (0, 0, 0, 0, 0, self.shift))
        return rows.reshape(n, T * V, m)

    def sample_targets(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Labels drawn from softmax(z) at every predicting position (``ignore_index`` at
        the first ``shift`` positions, which no logit predicts)."""
        drawn = self.cross_entropy.sample_targets(self._view(z), generator=generator)
        lead = torch.full(
            (z.shape[0], self.shift), self.ignore_index, dtype=drawn.dtype, device=drawn.device
        )
        return torch.cat([lead, drawn], dim=1)


class CausalLMLoss(TokenCrossEntropyLoss):
    """The causal language-model loss: ``logits[:, :-1]`` predict ``labels[:, 1:]``.

    Pass the input ids as labels (``-100`` where a token is not to be predicted, such as
    padding): ``Problem(model, CausalLMLoss(), [({"input_ids": ids, "attention_mask": m},
    labels)])``. The mean is over the non-ignored predicted tokens of all batches (see the
    module docstring); the logits of the last position carry no loss and no curvature.
    """

    shift = 1
