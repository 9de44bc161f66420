"""Each refusal is one ``InvalidArgumentError`` that says what is wrong and what to do."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hesskit.errors import InvalidArgumentError
from hesskit.losses import (
    AutodiffLoss,
    CrossEntropyLoss,
    GaussianNLLLoss,
    HuberLoss,
    KLDivLoss,
    L1Loss,
    MSELoss,
    NLLLoss,
    SmoothL1Loss,
    as_loss,
)

NO_LIKELIHOOD = [
    L1Loss(),
    HuberLoss(),
    SmoothL1Loss(),
    KLDivLoss(),
    NLLLoss(),
    AutodiffLoss(lambda z, y: ((z - y) ** 2).mean()),
]


@pytest.mark.parametrize("loss", NO_LIKELIHOOD, ids=lambda loss: loss.describe())
def test_losses_without_likelihood_refuse_fisher_sampling(loss) -> None:
    with pytest.raises(InvalidArgumentError, match=r"Fisher sampling .* use the empirical Fisher"):
        loss.sample_targets(torch.zeros(2, 3))
    with pytest.raises(InvalidArgumentError, match=r"^fisher_operator: .* is not one"):
        loss.require_likelihood("fisher_operator")


def test_nll_loss_points_to_cross_entropy_on_logits() -> None:
    with pytest.raises(InvalidArgumentError, match="feed logits to CrossEntropyLoss"):
        NLLLoss().require_likelihood("fisher_operator")


def test_predicted_variance_gaussian_is_not_convex() -> None:
    loss = GaussianNLLLoss(var=None)
    pattern = (
        r"^gauss_newton_operator: the Gauss-Newton matrix needs a loss convex in the network "
        r"outputs; GaussianNLLLoss\(var=None\).* is not; use the Hessian \(hessian_operator\)"
    )
    with pytest.raises(InvalidArgumentError, match=pattern):
        loss.require_convex("gauss_newton_operator")


def test_convex_losses_pass_both_checks() -> None:
    for loss in (MSELoss(), CrossEntropyLoss(), GaussianNLLLoss(var=2.0)):
        loss.require_convex("gauss_newton_operator")
        loss.require_likelihood("fisher_operator")


def test_autodiff_loss_finds_a_non_convex_loss_and_remembers() -> None:
    loss = AutodiffLoss(lambda z, y: torch.cos(z - y).sum())
    z = torch.zeros(3, 2)  # cos'' = −1 < 0 at 0
    assert loss.convex
    with pytest.raises(InvalidArgumentError, match=r"negative eigenvalue.*use the Hessian"):
        loss.hessian_sqrt(z, torch.zeros(3, 2))
    assert not loss.convex
    with pytest.raises(InvalidArgumentError, match="needs a loss convex"):
        loss.require_convex("gauss_newton_operator")


def test_autodiff_loss_refuses_a_factor_for_a_loss_coupling_samples() -> None:
    loss = AutodiffLoss(lambda z, y: ((z - y).sum(0) ** 2).sum())
    with pytest.raises(InvalidArgumentError, match="couples different samples"):
        loss.hessian_sqrt(torch.randn(3, 2), torch.zeros(3, 2))


def test_autodiff_loss_refuses_a_non_scalar_value() -> None:
    loss = AutodiffLoss(lambda z, y: (z - y) ** 2)
    with pytest.raises(InvalidArgumentError, match=r"returned \[2, 3\], not a scalar"):
        loss.value(torch.zeros(2, 3), torch.zeros(2, 3))


@pytest.mark.parametrize(
    ("loss", "pattern"),
    [
        (nn.GaussianNLLLoss(), r"hesskit.losses.GaussianNLLLoss\(var=...\)"),
        (nn.MSELoss(reduction="none"), "reduction='none' gives no scalar loss"),
        (42, "pass a hesskit.losses.Loss, a torch loss module or a callable"),
    ],
)
def test_as_loss_refusals(loss, pattern: str) -> None:
    with pytest.raises(InvalidArgumentError, match=pattern):
        as_loss(loss)


def test_unknown_reduction_names_the_choices() -> None:
    with pytest.raises(InvalidArgumentError, match="use one of mean, sum, sample_mean"):
        MSELoss("batchmean")
    with pytest.raises(InvalidArgumentError, match=r"use one of mean, sum$"):
        AutodiffLoss(lambda z, y: z.sum(), reduction="sample_mean")


def test_target_shape_mismatch() -> None:
    with pytest.raises(
        InvalidArgumentError, match=r"targets of shape \[4\] do not match .*\[4, 1\]"
    ):
        MSELoss().value(torch.zeros(4, 1), torch.zeros(4))
    with pytest.raises(InvalidArgumentError, match=r"\[n, d1, ...\] for outputs \[n, C, d1, ...\]"):
        CrossEntropyLoss().value(torch.zeros(4, 3, 5), torch.zeros(4, 3, dtype=torch.long))


def test_gaussian_variance_must_fit_and_be_non_negative() -> None:
    with pytest.raises(InvalidArgumentError, match="negative entries"):
        GaussianNLLLoss(var=torch.tensor([-1.0, 1.0]))
    with pytest.raises(InvalidArgumentError, match=r"var of shape \[2\] does not broadcast"):
        GaussianNLLLoss(var=torch.ones(2)).value(torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(InvalidArgumentError, match=r"not \[mean, variance\] along dimension 1"):
        GaussianNLLLoss().value(torch.zeros(4, 3), torch.zeros(4, 1))


def test_label_smoothing_out_of_range() -> None:
    with pytest.raises(InvalidArgumentError, match=r"label_smoothing must lie in \[0, 1\]"):
        CrossEntropyLoss(label_smoothing=1.5)
