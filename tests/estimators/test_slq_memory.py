"""Stochastic Lanczos quadrature without a stored basis against a small network's dense
Hessian: moments vᵀAᵖv, the weight of ghost copies, the spectrum's moments; budget refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hesskit.errors import TooLargeError
from hesskit.estimators import lanczos_quadrature, spectral_density
from hesskit.estimators.spectral_density import quadrature_vectors
from hesskit.operators.base import MatrixOperator
from reference import autograd_hessian


@pytest.fixture(scope="module")
def network_hessian() -> torch.Tensor:
    """H of a 6 → 12 → 12 → 4 tanh classifier under cross-entropy, 64 samples (N = 292)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(),
                          nn.Linear(12, 4)).double()
    X = torch.randn(64, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (64,))
    return autograd_hessian(model, nn.functional.cross_entropy, X, y)


def test_three_term_rule_keeps_the_moments_despite_ghost_eigenvalues(network_hessian):
    H = network_hessian
    eigenvalues = np.linalg.eigvalsh(H.numpy())
    norm = float(np.abs(eigenvalues).max())
    start = torch.randn(H.shape[0], 2, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(1))
    m = 90  # Ghorbani et al.'s 90 steps: long enough for the top eigenvalue to converge twice
    plain = lanczos_quadrature(MatrixOperator(H), start, m, reorthogonalize=False)
    exact = lanczos_quadrature(MatrixOperator(H), start, m, reorthogonalize=True)
    eigenvalues, U = np.linalg.eigh(H.numpy())
    degrees = np.arange(2 * m)[:, None]
    for p in range(2):
        v = (start[:, p] / start[:, p].norm()).numpy()
        expected = ((U.T @ v) ** 2 * eigenvalues ** degrees).sum(axis=1)  # vᵀ Hᵖ v
        nodes, weights = plain.nodes[p].numpy(), plain.weights[p].numpy()
        moments = (weights * nodes ** degrees).sum(axis=1)
        np.testing.assert_array_less(np.abs(moments - expected), 1e-10 * norm ** degrees[:, 0])
    # the loss of orthogonality shows: the top eigenvalue appears more than once ...
    near_top = np.abs(plain.nodes[0].numpy() - eigenvalues[-1]) < 1e-8 * norm
    assert near_top.sum() >= 2
    assert (np.abs(exact.nodes[0].numpy() - eigenvalues[-1]) < 1e-8 * norm).sum() == 1
    # ... and the copies share the one weight (u₁ᵀv)² between them
    v = (start[:, 0] / start[:, 0].norm()).numpy()
    assert float(plain.weights[0][near_top].sum()) == pytest.approx((U[:, -1] @ v) ** 2,
                                                                   abs=1e-10)


def test_three_term_density_estimates_the_dense_spectrums_moments(network_hessian):
    H = network_hessian
    eigenvalues = np.linalg.eigvalsh(H.numpy())
    probes = 16
    rule = spectral_density(MatrixOperator(H), probes=probes, steps=40, reorthogonalize=False,
                            seed=2)
    for degree in range(1, 7):
        per_probe = (rule.weights * rule.nodes**degree).sum(dim=1).numpy()
        stderr = per_probe.std(ddof=1) / np.sqrt(probes)
        assert abs(per_probe.mean() - np.mean(eigenvalues**degree)) <= 4 * stderr, degree


def test_exhausted_krylov_space_stops_early_without_a_basis_too():
    values = torch.tensor([3.0] * 10 + [1.0] * 10 + [-2.0] * 10, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(30, 30, dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(0)))
    rule = spectral_density(MatrixOperator(Q @ torch.diag(values) @ Q.T), probes=2, steps=20,
                            reorthogonalize=False)
    assert rule.products == 6
    np.testing.assert_allclose(np.sort(rule.nodes[0][rule.weights[0] > 0].numpy()),
                               [-2.0, 1.0, 3.0], atol=1e-10)


def test_a_quadrature_that_does_not_fit_is_refused_with_the_setting_that_does():
    op = MatrixOperator(torch.eye(1000, dtype=torch.float64))  # one vector: 8 KB
    assert quadrature_vectors(4, 90, reorthogonalize=False) == 20
    with pytest.raises(TooLargeError, match=(
        r"^spectral_density \(4 probes x 90 steps, reorthogonalize=True\) for N = 1,000 "
        r"parameters holds \d+ vectors of N float64 numbers, .* but the memory budget is "
        r"200.0 KB; pass reorthogonalize=False \(it holds 20 vectors, 160.0 KB\)"
    )):
        spectral_density(op, probes=4, steps=90, reorthogonalize=True, memory_budget=25 * 8000)
    with pytest.raises(TooLargeError, match=r"use probes=2 with reorthogonalize=False"):
        spectral_density(op, probes=4, steps=90, reorthogonalize=False, memory_budget=80_000)


def test_the_default_keeps_a_basis_only_where_the_budget_holds_it(network_hessian):
    op = MatrixOperator(network_hessian)
    n = op.shape[0]
    small = 6 * n * 8  # float64: the three-term recurrence of one probe, not a basis
    default = spectral_density(op, probes=1, steps=20, memory_budget=small)
    plain = spectral_density(op, probes=1, steps=20, reorthogonalize=False)
    kept = spectral_density(op, probes=1, steps=20)
    explicit = spectral_density(op, probes=1, steps=20, reorthogonalize=True)
    assert torch.equal(default.nodes, plain.nodes) and torch.equal(default.weights, plain.weights)
    assert torch.equal(kept.nodes, explicit.nodes) and not torch.equal(kept.nodes, plain.nodes)
