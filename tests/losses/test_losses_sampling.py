"""``sample_targets`` draws from p(y | z): shapes, and means (and variances) within 5 σ.

Each check draws S = 20 000 targets for a few outputs; the standard error of a sample mean
is σ/√S, so a tolerance of 5 σ/√S fails by chance with probability < 1e-6 per entry, while
a sampler from the wrong distribution (e.g. rate z instead of exp z) is off by far more.
"""

from __future__ import annotations

import math

import pytest
import torch

from hesskit.losses import (
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    GaussianNLLLoss,
    MSELoss,
    PoissonNLLLoss,
)

S = 20_000


def _repeat(z: torch.Tensor) -> torch.Tensor:
    return z.unsqueeze(0).expand(S, *z.shape).reshape(S * z.shape[0], *z.shape[1:])


def _draws(loss, z: torch.Tensor) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    draws = loss.sample_targets(_repeat(z), generator=generator)
    return draws.reshape(S, z.shape[0], *draws.shape[1:])


def _close(estimate: torch.Tensor, expected: torch.Tensor, sd: torch.Tensor) -> bool:
    return bool(((estimate - expected).abs() <= 5 * sd / math.sqrt(S) + 1e-12).all())


def test_cross_entropy_draws_classes_with_softmax_frequencies() -> None:
    z = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    draws = _draws(CrossEntropyLoss(), z)  # [S, 2]
    assert draws.shape == (S, 2) and draws.dtype == torch.long
    frequencies = torch.nn.functional.one_hot(draws, 3).double().mean(0)
    p = torch.softmax(z, dim=1)
    assert _close(frequencies, p, (p * (1 - p)).sqrt())


def test_segmentation_cross_entropy_draws_one_class_per_position() -> None:
    z = torch.randn(3, 4, 2, 5, dtype=torch.float64)
    draws = CrossEntropyLoss().sample_targets(z, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (3, 2, 5)
    z = torch.zeros(1, 2, 2)
    z[0, 1, 0] = 30.0  # position 0 is surely class 1, position 1 surely class 0
    z[0, 0, 1] = 30.0
    assert CrossEntropyLoss().sample_targets(z).tolist() == [[1, 0]]


@pytest.mark.parametrize("loss", [BCEWithLogitsLoss(), BCELoss()], ids=["logits", "probabilities"])
def test_binary_draws_have_bernoulli_means(loss) -> None:
    logits = torch.tensor([[-2.0, 0.0, 1.5]], dtype=torch.float64)
    z = logits if isinstance(loss, BCEWithLogitsLoss) else torch.sigmoid(logits)
    draws = _draws(loss, z)
    p = torch.sigmoid(logits)
    assert draws.shape == (S, 1, 3)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    assert _close(draws.mean(0), p, (p * (1 - p)).sqrt())


def test_mse_draws_gaussian_with_variance_one_half() -> None:
    z = torch.tensor([[1.0, -3.0]], dtype=torch.float64)
    draws = _draws(MSELoss(), z)
    assert _close(draws.mean(0), z, torch.full_like(z, 0.5**0.5))
    assert _close(draws.var(0), torch.full_like(z, 0.5), torch.full_like(z, 0.5 * 2**0.5))


def test_gaussian_draws_use_the_fixed_variance() -> None:
    z = torch.tensor([[1.0, -3.0]], dtype=torch.float64)
    var = torch.tensor([0.25, 4.0], dtype=torch.float64)
    draws = _draws(GaussianNLLLoss(var=var), z)
    assert _close(draws.mean(0), z, var.sqrt())
    assert _close(draws.var(0), var.expand_as(z), var * 2**0.5)


def test_predicted_variance_gaussian_draws_targets_of_the_mean_half() -> None:
    z = torch.tensor([[1.0, -3.0, 0.25, 4.0]], dtype=torch.float64)
    draws = _draws(GaussianNLLLoss(), z)
    assert draws.shape == (S, 1, 2)
    mean, var = z[:, :2], z[:, 2:]
    assert _close(draws.mean(0), mean, var.sqrt())
    assert _close(draws.var(0), var, var * 2**0.5)


@pytest.mark.parametrize("log_input", [True, False])
def test_poisson_draws_have_the_rate_as_mean(log_input: bool) -> None:
    rate = torch.tensor([[0.5, 3.0, 10.0]], dtype=torch.float64)
    z = rate.log() if log_input else rate
    draws = _draws(PoissonNLLLoss(log_input=log_input), z)
    assert _close(draws.mean(0), rate, rate.sqrt())
    assert _close(draws.var(0), rate, (rate + 2 * rate**2).sqrt())
