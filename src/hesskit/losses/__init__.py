"""Losses ℓ(z, y) on network outputs z, with their output-space curvature H_ℓ = ∂²ℓ/∂z².

Each loss is an ``nn.Module`` (``forward = value``) written by hand, not a wrapper of
``torch.nn.functional``: forward-over-reverse autodiff through ``nn.MSELoss`` raises on
torch 2.13, and closed forms give H_ℓ u and a factor S of H_ℓ cheaply. ``as_loss`` turns
a torch loss module into its hesskit twin, and any other callable ``loss(output, target)``
into an ``AutodiffLoss``, whose curvature comes from autodiff of the loss itself.

The interface (``base.Loss``): ``value``, ``scale`` (the reduction factor c),
``normalizer`` (what ``"mean"`` divides by), ``hessian_vector`` (H_ℓ u), ``hessian_sqrt``
(S with H_ℓ = blockdiag_i S_i S_iᵀ), ``sample_targets`` (for the Monte-Carlo Fisher),
``convex``, ``require_convex`` and ``require_likelihood``.

Sequence models: :class:`CausalLMLoss` (logits ``[n, T, V]``, labels = input ids, shifted
by one inside, ``-100`` ignored) and :class:`TokenCrossEntropyLoss` (no shift).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from hesskit.errors import InvalidArgumentError
from hesskit.losses.autodiff import AutodiffLoss
from hesskit.losses.base import REDUCTIONS, ElementwiseLoss, Loss
from hesskit.losses.binary import BCELoss, BCEWithLogitsLoss
from hesskit.losses.classification import CrossEntropyLoss, NLLLoss
from hesskit.losses.distributions import GaussianNLLLoss, KLDivLoss, PoissonNLLLoss
from hesskit.losses.regression import HuberLoss, L1Loss, MSELoss, SmoothL1Loss
from hesskit.losses.sequence import CausalLMLoss, TokenCrossEntropyLoss

__all__ = [
    "REDUCTIONS",
    "AutodiffLoss",
    "BCELoss",
    "BCEWithLogitsLoss",
    "CausalLMLoss",
    "CrossEntropyLoss",
    "ElementwiseLoss",
    "GaussianNLLLoss",
    "HuberLoss",
    "KLDivLoss",
    "L1Loss",
    "Loss",
    "MSELoss",
    "NLLLoss",
    "PoissonNLLLoss",
    "SmoothL1Loss",
    "TokenCrossEntropyLoss",
    "as_loss",
]

_CONVERTERS: dict[type[nn.Module], Callable[[nn.Module, str], Loss]] = {
    nn.MSELoss: lambda m, r: MSELoss(r),
    nn.L1Loss: lambda m, r: L1Loss(r),
    nn.HuberLoss: lambda m, r: HuberLoss(r, delta=m.delta),
    nn.SmoothL1Loss: lambda m, r: SmoothL1Loss(r, beta=m.beta),
    nn.CrossEntropyLoss: lambda m, r: CrossEntropyLoss(
        r, weight=m.weight, ignore_index=m.ignore_index, label_smoothing=m.label_smoothing
    ),
    nn.NLLLoss: lambda m, r: NLLLoss(r, weight=m.weight, ignore_index=m.ignore_index),
    nn.BCELoss: lambda m, r: BCELoss(r, weight=m.weight),
    nn.BCEWithLogitsLoss: lambda m, r: BCEWithLogitsLoss(
        r, weight=m.weight, pos_weight=m.pos_weight
    ),
    nn.KLDivLoss: lambda m, r: KLDivLoss(r, log_target=m.log_target),
    nn.PoissonNLLLoss: lambda m, r: PoissonNLLLoss(
        r, log_input=m.log_input, full=m.full, eps=m.eps
    ),
}


def as_loss(loss: nn.Module | Callable[[Tensor, Tensor], Tensor]) -> Loss:
    """The hesskit loss equal to ``loss``.

    * a hesskit ``Loss``: returned as is;
    * ``nn.MSELoss``, ``L1Loss``, ``HuberLoss``, ``SmoothL1Loss``, ``CrossEntropyLoss``,
      ``NLLLoss``, ``BCELoss``, ``BCEWithLogitsLoss``, ``KLDivLoss``, ``PoissonNLLLoss``
      (exact type, all their options, reduction ``"mean"`` or ``"sum"``, ``"batchmean"``
      for KL): the closed-form twin;
    * ``nn.GaussianNLLLoss`` is refused (its variance is a third argument): use
      ``hesskit.losses.GaussianNLLLoss(var=...)``;
    * any other callable ``loss(output, target) -> scalar``: an ``AutodiffLoss``, assumed a
      mean over samples (``"sum"`` when the module says ``reduction="sum"``).
    """
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, nn.GaussianNLLLoss):
        raise InvalidArgumentError(
            "nn.GaussianNLLLoss takes the variance as a third argument; use "
            "hesskit.losses.GaussianNLLLoss(var=...) for a fixed variance, or var=None "
            "for a network that outputs [mean, variance]"
        )
    reduction = getattr(loss, "reduction", "mean")
    if reduction == "none":
        raise InvalidArgumentError(
            f"{type(loss).__name__} with reduction='none' gives no scalar loss; use "
            f"reduction='mean' or 'sum'"
        )
    converter = _CONVERTERS.get(type(loss))
    if converter is not None:
        return converter(loss, reduction)
    if not callable(loss):
        raise InvalidArgumentError(
            f"cannot use {type(loss).__name__} as a loss; pass a hesskit.losses.Loss, a "
            f"torch loss module or a callable loss(output, target) -> scalar"
        )
    return AutodiffLoss(loss, reduction="sum" if reduction == "sum" else "mean")
