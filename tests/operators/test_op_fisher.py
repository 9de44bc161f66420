"""Monte-Carlo Fisher (its mean is G) and empirical Fisher (per-sample gradient reference)."""

from __future__ import annotations

import pytest
import torch
from test_op_cases import LOSSES, REDUCTIONS, make_case

from hesskit.errors import InvalidArgumentError
from hesskit.operators import empirical_fisher_operator, fisher_operator
from reference import autograd_gauss_newton, flat_parameters, loss_of_flat

DRAWS = 100


def per_sample_empirical_fisher(model, loss_fn, X, y, weight):
    """Σ_i a_i g_i g_iᵀ with g_i = ∇ℓ_i by one autograd call per sample (ℓ_i summed over
    the sample's outputs, i.e. torch's loss with reduction="sum" on that sample alone)."""
    theta = flat_parameters(model)
    total = torch.zeros(theta.numel(), theta.numel(), dtype=theta.dtype)
    for i in range(len(X)):
        sample_loss = loss_of_flat(model, loss_fn, X[i : i + 1], y[i : i + 1])
        t = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(sample_loss(t), t)
        total += weight * torch.outer(g, g)
    return total


def sample_weight(loss, reduction, n, k):
    """a_i, the weight of sample i's summed loss in the total loss, worked out by hand."""
    if reduction == "sum":
        return 1.0
    if reduction == "sample_mean" or loss == "ce":
        return 1.0 / n
    return 1.0 / (n * k)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empirical_fisher_equals_weighted_per_sample_gradient_outer_products(loss, reduction):
    problem, model, _, X, y = make_case(loss, reduction, batch_sizes=(4, 3))
    per_sample_loss = {
        "mse": torch.nn.functional.mse_loss,
        "ce": torch.nn.functional.cross_entropy,
        "bce": torch.nn.functional.binary_cross_entropy_with_logits,
    }[loss]
    loss_fn = lambda z, t: per_sample_loss(z, t, reduction="sum")  # noqa: E731
    weight = sample_weight(loss, reduction, n=len(X), k=3)
    expected = per_sample_empirical_fisher(model, loss_fn, X, y, weight)
    op = empirical_fisher_operator(problem)
    assert op.symmetric and op.psd
    torch.testing.assert_close(op.to_dense(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss", LOSSES)
def test_monte_carlo_fisher_averages_to_the_gauss_newton_matrix(loss):
    """Single-draw Fishers F_1 have mean G: |mean − G| ≤ 5 standard errors entrywise; a
    many-sample F̂_S lies within 5 σ(F_1)/√S of G."""
    problem, model, loss_fn, X, y = make_case(loss, "mean", batch_sizes=(4, 3), sizes=(3, 3, 3))
    G = autograd_gauss_newton(model, loss_fn, X, y)
    draws = torch.stack(
        [fisher_operator(problem, samples=1, generator=seed).to_dense() for seed in range(DRAWS)]
    )
    spread = draws.std(dim=0)
    standard_error = spread / DRAWS**0.5
    assert ((draws.mean(0) - G).abs() <= 5 * standard_error + 1e-12).all()
    samples = 2000
    F = fisher_operator(problem, samples=samples, generator=12345).to_dense()
    assert ((F - G).abs() <= 5 * spread / samples**0.5 + 1e-12).all()
    assert (F - G).abs().max() > 0  # it is an estimate, not G itself


def test_a_fixed_generator_reproduces_the_fisher_and_another_seed_changes_it():
    problem, *_ = make_case("ce", "mean")
    first = fisher_operator(problem, samples=3, generator=7).to_dense()
    again = fisher_operator(problem, samples=3, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(again.to_dense(), first, rtol=0, atol=0)
    other = fisher_operator(problem, samples=3, generator=8).to_dense()
    assert (other - first).abs().max() > 1e-6


def test_fisher_is_one_fixed_psd_matrix_even_without_cache():
    problem, *_ = make_case("bce", "mean", sizes=(3, 4, 3))
    op = fisher_operator(problem, samples=2, generator=0, cache=False)
    first, second = op.to_dense(), op.to_dense()
    torch.testing.assert_close(second, first, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(first, first.T, rtol=0, atol=1e-14)
    assert op.psd and torch.linalg.eigvalsh(first).min() > -1e-12


@pytest.mark.parametrize("samples", [0, -1, 1.5, True])
def test_a_bad_number_of_samples_is_refused(samples):
    problem, *_ = make_case("mse", "mean")
    with pytest.raises(InvalidArgumentError, match="samples must be a positive integer"):
        fisher_operator(problem, samples=samples)


def test_a_bad_generator_is_refused():
    problem, *_ = make_case("mse", "mean")
    with pytest.raises(InvalidArgumentError, match="generator must be"):
        fisher_operator(problem, generator="seed")
