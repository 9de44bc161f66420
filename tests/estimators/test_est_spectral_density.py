"""Stochastic Lanczos quadrature against closed forms: Gauss quadrature moments, eigvalsh."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hesskit.errors import InvalidArgumentError
from hesskit.estimators import (
    density_on_grid,
    hutchinson_trace,
    lanczos_quadrature,
    spectral_density,
)
from hesskit.operators.base import MatrixOperator
from known_spectra import CountingMatrix, with_spectrum

SPECTRUM = np.concatenate([[6.0, 4.0], np.linspace(-1.0, 1.0, 38)])


def test_m_step_rule_integrates_polynomials_up_to_degree_2m_minus_1_exactly():
    A = with_spectrum(SPECTRUM)
    start = torch.randn(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    m = 6
    rule = lanczos_quadrature(MatrixOperator(A), start, m)
    for p, v in enumerate(start.T):
        v = v / v.norm()
        for degree in range(2 * m):
            exact = float(v @ torch.linalg.matrix_power(A, degree) @ v)
            quadrature = float((rule.weights[p] * rule.nodes[p] ** degree).sum())
            assert quadrature == pytest.approx(exact, rel=1e-9, abs=1e-9 * 6.0**degree)


def test_n_steps_give_the_eigenvalues_and_the_squared_projections():
    A = with_spectrum(SPECTRUM)
    start = torch.randn(40, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    rule = lanczos_quadrature(MatrixOperator(A), start, 40)
    eigenvalues, U = np.linalg.eigh(A.numpy())
    for p in range(2):
        v = start[:, p].numpy() / np.linalg.norm(start[:, p].numpy())
        np.testing.assert_allclose(rule.nodes[p].numpy(), eigenvalues, atol=1e-10)
        np.testing.assert_allclose(rule.weights[p].numpy(), (U.T @ v) ** 2, atol=1e-10)


def test_exhausted_krylov_space_stops_early_with_the_distinct_eigenvalues():
    A = with_spectrum([3.0] * 10 + [1.0] * 10 + [-2.0] * 10)
    op = CountingMatrix(A)
    rule = spectral_density(op, probes=2, steps=20)
    assert rule.products == op.products == 2 * 3  # three distinct eigenvalues: three steps
    for p in range(2):
        used = rule.weights[p] > 0
        np.testing.assert_allclose(np.sort(rule.nodes[p][used].numpy()), [-2.0, 1.0, 3.0],
                                   atol=1e-10)
        assert float(rule.weights[p].sum()) == pytest.approx(1.0, abs=1e-12)


def test_products_are_probes_times_steps():
    op = CountingMatrix(with_spectrum(SPECTRUM))
    rule = spectral_density(op, probes=3, steps=7)
    assert rule.products == op.products == 21
    assert rule.nodes.shape == rule.weights.shape == (3, 7)


def test_quadrature_trace_equals_hutchinson_with_the_same_probes():
    A = with_spectrum(SPECTRUM)
    rule = spectral_density(MatrixOperator(A), probes=8, steps=5, seed=3)
    plain = hutchinson_trace(MatrixOperator(A), 8, seed=3)  # draws the same Rademacher block
    assert rule.trace() == pytest.approx(plain.value, rel=1e-10)


def test_density_integrates_to_one_and_is_near_the_exact_smoothed_density():
    A = with_spectrum(SPECTRUM)
    probes = 32
    rule = spectral_density(MatrixOperator(A), probes=probes, steps=40, seed=4)
    grid, density = density_on_grid(rule, points=500, width=0.3)
    assert float(torch.trapezoid(density, grid)) == pytest.approx(1.0, abs=1e-6)
    # each probe's smoothed rule is an unbiased estimate of (1/N) Σ_i g_σ(t − λ_i)
    exact = np.exp(-0.5 * ((grid.numpy()[:, None] - SPECTRUM[None]) / 0.3) ** 2).sum(axis=1)
    exact /= 0.3 * np.sqrt(2 * np.pi) * len(SPECTRUM)
    per_probe = np.stack([
        density_on_grid(type(rule)(rule.nodes[p:p + 1], rule.weights[p:p + 1], 0, 40),
                        grid=grid, width=0.3)[1].numpy()
        for p in range(probes)
    ])
    stderr = per_probe.std(axis=0, ddof=1) / np.sqrt(probes)
    np.testing.assert_array_less(np.abs(density.numpy() - exact), 4 * stderr + 1e-12)


def test_bad_width_is_refused():
    rule = spectral_density(MatrixOperator(with_spectrum(SPECTRUM)), probes=1, steps=3)
    with pytest.raises(InvalidArgumentError, match="width must be a finite number"):
        density_on_grid(rule, width=0.0)
