"""The losses under test: torch's own loss (the reference) beside hesskit's, with data.

``make(reduction)`` builds the hesskit loss (through ``as_loss`` wherever torch has the
module, so the conversion of every option is tested too); ``reference(reduction)`` is
torch's loss as a function of (z, y); ``draw`` gives outputs and targets of the right kind,
in float64, with 4 samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from loss_oracles import class_indices, rand, randn
from torch import Tensor, nn
from torch.nn import functional

from hesskit.losses import GaussianNLLLoss, Loss, as_loss

LossFn = Callable[[Tensor, Tensor], Tensor]
N = 4


@dataclass(frozen=True)
class Case:
    name: str
    reference: Callable[[str], LossFn]
    draw: Callable[[torch.Generator], tuple[Tensor, Tensor]]
    make: Callable[[str], Loss] | None = None
    reductions: tuple[str, ...] = ("mean", "sum")

    def hesskit(self, reduction: str) -> Loss:
        if self.make is not None:
            return self.make(reduction)
        return as_loss(self.reference(reduction))


def _torch(module: Callable[..., nn.Module], **options: object) -> Callable[[str], LossFn]:
    return lambda reduction: module(reduction=reduction, **options)


def _real(g: torch.Generator) -> tuple[Tensor, Tensor]:
    return randn((N, 3), g), randn((N, 3), g)


def _spread(g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Residuals from −1.5 to 1.5, so that both zones of Huber and smooth L1 occur."""
    y = randn((N, 3), g)
    return y + torch.linspace(-1.5, 1.5, 3 * N, dtype=torch.float64).reshape(N, 3), y


def _logits_indices(ignore: int | None = None, spatial: tuple[int, ...] = ()) -> Callable:
    def draw(g: torch.Generator) -> tuple[Tensor, Tensor]:
        return randn((N, 5, *spatial), g, 2.0), class_indices((N, *spatial), 5, g, ignore)

    return draw


def _logits_probabilities(spatial: tuple[int, ...] = ()) -> Callable:
    def draw(g: torch.Generator) -> tuple[Tensor, Tensor]:
        z = randn((N, 5, *spatial), g, 2.0)
        return z, torch.softmax(randn((N, 5, *spatial), g), dim=1)

    return draw


def _log_probabilities(g: torch.Generator) -> tuple[Tensor, Tensor]:
    z = torch.log_softmax(randn((N, 5), g), dim=1)
    return z, class_indices((N,), 5, g, ignore=-100)


def _kl(log_target: bool) -> Callable:
    def draw(g: torch.Generator) -> tuple[Tensor, Tensor]:
        z = torch.log_softmax(randn((N, 5), g), dim=1)
        y = torch.log_softmax(randn((N, 5), g), dim=1)
        return z, y if log_target else y.exp()

    return draw


def _probabilities(g: torch.Generator) -> tuple[Tensor, Tensor]:
    return torch.sigmoid(randn((N, 3), g)), rand((N, 3), g)


def _counts(log_input: bool) -> Callable:
    def draw(g: torch.Generator) -> tuple[Tensor, Tensor]:
        z = randn((N, 3), g) if log_input else rand((N, 3), g) + 0.5
        return z, torch.poisson(3 * rand((N, 3), g), generator=g)

    return draw


WEIGHT5 = torch.tensor([0.5, 1.0, 2.0, 0.25, 1.5], dtype=torch.float64)
WEIGHT3 = torch.tensor([0.5, 2.0, 1.25], dtype=torch.float64)
VAR3 = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64)

CASES = [
    Case("mse", _torch(nn.MSELoss), _real),
    Case("l1", _torch(nn.L1Loss), _real),
    Case("huber", _torch(nn.HuberLoss, delta=0.7), _spread),
    Case("smooth_l1", _torch(nn.SmoothL1Loss, beta=0.5), _spread),
    Case("smooth_l1_beta0", _torch(nn.SmoothL1Loss, beta=0.0), _spread),
    Case("ce", _torch(nn.CrossEntropyLoss), _logits_indices()),
    Case("ce_ignore", _torch(nn.CrossEntropyLoss), _logits_indices(ignore=-100)),
    Case(
        "ce_weight_ignore_smooth",
        _torch(nn.CrossEntropyLoss, weight=WEIGHT5, ignore_index=2, label_smoothing=0.2),
        _logits_indices(ignore=2),
    ),
    Case("ce_smooth", _torch(nn.CrossEntropyLoss, label_smoothing=0.3), _logits_indices()),
    Case("ce_probabilities", _torch(nn.CrossEntropyLoss), _logits_probabilities()),
    Case(
        "ce_probabilities_weight_smooth",
        _torch(nn.CrossEntropyLoss, weight=WEIGHT5, label_smoothing=0.1),
        _logits_probabilities(),
    ),
    Case(
        "ce_segmentation",
        _torch(nn.CrossEntropyLoss, weight=WEIGHT5, label_smoothing=0.1),
        _logits_indices(ignore=-100, spatial=(2, 3)),
    ),
    Case("ce_tokens_probabilities", _torch(nn.CrossEntropyLoss), _logits_probabilities((3,))),
    Case("nll", _torch(nn.NLLLoss, weight=WEIGHT5), _log_probabilities),
    Case("bce", _torch(nn.BCELoss, weight=WEIGHT3), _probabilities),
    Case("bce_logits", _torch(nn.BCEWithLogitsLoss), _real),
    Case(
        "bce_logits_weights",
        _torch(nn.BCEWithLogitsLoss, weight=WEIGHT3, pos_weight=2 * WEIGHT3.flip(0)),
        lambda g: (randn((N, 3), g, 2.0), rand((N, 3), g)),
    ),
    Case("kl", _torch(nn.KLDivLoss), _kl(False), reductions=("mean", "sum", "batchmean")),
    Case(
        "kl_log_target",
        _torch(nn.KLDivLoss, log_target=True),
        _kl(True),
        reductions=("mean", "sum", "batchmean"),
    ),
    Case("poisson", _torch(nn.PoissonNLLLoss), _counts(True)),
    Case(
        "poisson_rate_full", _torch(nn.PoissonNLLLoss, log_input=False, full=True), _counts(False)
    ),
    Case(
        "gaussian_fixed_var",
        lambda r: (
            lambda z, y: functional.gaussian_nll_loss(
                z, y, VAR3.expand_as(z), full=True, reduction=r
            )
        ),
        _real,
        make=lambda r: GaussianNLLLoss(r, var=VAR3, full=True),
    ),
]

CONVEX_CASES = CASES

HETEROSCEDASTIC = Case(
    "gaussian_predicted_var",
    lambda r: lambda z, y: functional.gaussian_nll_loss(z[:, :3], y, z[:, 3:], reduction=r),
    lambda g: (torch.cat([randn((N, 3), g), rand((N, 3), g) + 0.2], 1), randn((N, 3), g)),
    make=lambda r: GaussianNLLLoss(r),
)
