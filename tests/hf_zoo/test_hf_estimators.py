"""Unwrapped Hugging Face models: hesskit's estimators and dense builds equal the oracles.

The estimators run on a parameter block (tens of entries) of each model family, so the
dense block from ``hf_zoo.reference`` gives their exact answer. The hesskit operator and
the oracle differ by at most the case's ``rtol`` (Frobenius, relative), so by Weyl their
eigenvalues differ by at most rtol·‖A‖_F: each tolerance below is the estimator's own stated
error plus that.
"""

from __future__ import annotations

from functools import cache

import pytest

pytest.importorskip("transformers")

import torch

from hesskit.dense import hessian_of
from hesskit.estimators import hutchinson_trace, spectral_density, top_eigenpairs
from hesskit.operators import gauss_newton_operator, hessian_operator
from hesskit.problem import Problem
from hf_zoo.models import make, one_torch_thread  # noqa: F401 - a fixture
from hf_zoo.reference import Oracle, relative_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAMILIES = ["gpt2_eager", "llama_sdpa", "resnet_train", "bart_sdpa"]
MATRICES = {"H": hessian_operator, "G": gauss_newton_operator}


@cache
def _dense_block(name: str, matrix: str) -> torch.Tensor:
    case = make(name)
    oracle = Oracle(case.reference_model, case.loss_kind, case.data, case.block)
    dense = oracle.hessian_dense() if matrix == "H" else oracle.gauss_newton_dense()
    return 0.5 * (dense + dense.T)


def _block_operator(name: str, matrix: str):
    case = make(name)
    problem = Problem(case.model, case.loss, case.data)
    return MATRICES[matrix](problem).block(case.block), case.rtol


def _stderr(samples: torch.Tensor) -> float:
    return float(samples.std() / samples.numel() ** 0.5)


@pytest.mark.parametrize("matrix", list(MATRICES))
@pytest.mark.parametrize("name", FAMILIES)
def test_top_two_eigenvalues_of_a_block_equal_eigvalsh_of_the_dense_block(name, matrix):
    dense = _dense_block(name, matrix)
    op, rtol = _block_operator(name, matrix)
    pairs = top_eigenpairs(op, k=2, tol=1e-10)
    want = torch.linalg.eigvalsh(dense).flip(0)[:2]
    allowed = pairs.error_bounds + rtol * float(torch.linalg.norm(dense)) + 1e-12
    gap = (pairs.values - want).abs()
    assert bool((gap <= allowed).all()), f"{name} {matrix}: {pairs.values} vs {want}"


@pytest.mark.parametrize("name", FAMILIES)
def test_spectral_density_first_moment_equals_the_block_eigenvalue_mean(name):
    """With Rademacher probes z, each probe's Gauss quadrature is exact for the first
    moment after any number of steps (it gives zᵀAz / N), so the mean over P probes is
    Hutchinson's estimate of tr(A)/N: within 4 standard errors of the dense eigenvalue
    mean."""
    dense = _dense_block(name, "G")
    op, rtol = _block_operator(name, "G")
    n = dense.shape[0]
    quadrature = spectral_density(op, probes=6, steps=3, seed=0)
    per_probe = (quadrature.weights * quadrature.nodes).sum(dim=1)
    want = float(torch.linalg.eigvalsh(dense).mean())
    allowed = 4 * _stderr(per_probe) + rtol * float(torch.linalg.norm(dense)) / n ** 0.5
    assert abs(quadrature.trace() / n - want) <= allowed, f"{name}: {quadrature.trace() / n}"
    assert abs(float(per_probe.mean()) - quadrature.trace() / n) <= 1e-12 * abs(want)


@pytest.mark.parametrize("name", FAMILIES)
def test_spectral_density_nodes_are_eigenvalues_of_the_block_once_krylov_is_exhausted(name):
    dense = _dense_block(name, "G")
    op, rtol = _block_operator(name, "G")
    quadrature = spectral_density(op, probes=1, steps=dense.shape[0], seed=1)
    eigenvalues = torch.linalg.eigvalsh(dense)
    scale = float(torch.linalg.norm(dense))
    nodes, weights = quadrature.nodes.reshape(-1), quadrature.weights.reshape(-1)
    for node, weight in zip(nodes, weights, strict=True):
        if weight > 1e-8:
            distance = float((eigenvalues - node).abs().min())
            assert distance <= (rtol + 1e-8) * scale, f"{name}: node {float(node):.6g}"


@pytest.mark.parametrize("matrix", list(MATRICES))
@pytest.mark.parametrize("name", FAMILIES)
def test_hutchinson_trace_of_a_block_is_within_four_standard_errors(name, matrix):
    dense = _dense_block(name, matrix)
    op, rtol = _block_operator(name, matrix)
    estimate = hutchinson_trace(op, probes=16, seed=0)
    want = float(torch.trace(dense))
    allowed = 4 * estimate.stderr + rtol * float(torch.linalg.norm(dense)) * dense.shape[0] ** 0.5
    assert abs(estimate.value - want) <= allowed, f"{name} {matrix}: {estimate} vs {want}"


@pytest.mark.parametrize("name", ["llama_eager", "llama_sdpa"])
def test_dense_hessian_of_a_silu_llama_block_equals_the_autograd_hessian(name):
    case = make(name)
    oracle = Oracle(case.reference_model, case.loss_kind, case.data, case.block)
    result = hessian_of(Problem(case.model, case.loss, case.data, params=case.block))
    H, G = _dense_block(name, "H"), _dense_block(name, "G")
    for got, want, what in ((result.hessian, H, "H"), (result.gauss_newton, G, "G"),
                            (result.residual, H - G, "R = H - G")):
        error = relative_error(got, want)
        assert error <= case.rtol, f"{name}: {what} relative error {error:.3g}"
    assert oracle.theta.numel() == result.hessian.shape[0]
