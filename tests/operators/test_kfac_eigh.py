"""K-FAC's factor eigendecompositions never raise (issue 22): float64 on the symmetrised
factor, and a diagonal fallback when even that fails."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from closures import batch_closure
from hesskit.operators.kfac_factors import symmetric_eigh
from hesskit.optim.kfac.optimizer import KFAC
from hesskit.optim.kfac.steps import KFACSchedule


def raw_pixel_batches(seed: int = 3, n: int = 32) -> list[torch.Tensor]:
    """Two float32 batches of binary "pixels" in [0, 1], 40 % of the 784 columns always 0
    (raw MNIST has ~300 such columns); the mean of their two A factors makes float32
    LAPACK ``eigh`` fail to converge on this seed (found by a scan of seeds)."""
    g = torch.Generator().manual_seed(seed)
    live = torch.rand(784, generator=g) < 0.6
    return [(torch.rand(n, 784, generator=g) < 0.2).float() * live for _ in range(2)]


def input_factor(x: torch.Tensor) -> torch.Tensor:
    a = torch.cat([x, torch.ones(x.shape[0], 1)], 1)
    return a.T @ a / x.shape[0]


def test_kfac_steps_a_relu_mlp_on_raw_pixels_with_many_zero_columns():
    first, second = raw_pixel_batches()
    averaged = 0.5 * input_factor(first) + 0.5 * input_factor(second)  # K-FAC's ε₂ = 1/2
    assert int((averaged.abs().sum(1) == 0).sum()) > 250
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
    opt = KFAC(model.parameters(), model=model, loss=nn.CrossEntropyLoss(),
               schedule=KFACSchedule(statistics_fraction=1.0))
    labels = torch.arange(32) % 10
    for x in (first, second, first):
        opt_closure = batch_closure(opt, x, labels)
        assert torch.isfinite(opt.step(opt_closure))
    assert opt.kfac_state["nonfinite_rejections"] == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_decomposition_reconstructs_the_factor_to_float32_rounding():
    first, second = raw_pixel_batches()
    averaged = 0.5 * input_factor(first) + 0.5 * input_factor(second)
    values, vectors = symmetric_eigh(averaged)
    assert values.dtype == vectors.dtype == torch.float32
    rebuilt = (vectors.double() * values.double()) @ vectors.double().T
    reference = averaged.double()  # the float32 factor, its eigenvalues in [0, ~1]
    torch.testing.assert_close(rebuilt, reference, rtol=0, atol=1e-5)
    eye = torch.eye(785, dtype=torch.float64)
    torch.testing.assert_close(vectors.double().T @ vectors.double(), eye, rtol=0, atol=1e-5)


def test_when_float64_eigh_fails_too_the_fallback_is_the_diagonal(monkeypatch):
    def failing(matrix):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", failing)
    factor = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="2×2 factor failed in float64.*diagonal"):
        values, vectors = symmetric_eigh(factor)
    torch.testing.assert_close(values, torch.tensor([2.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(vectors, torch.eye(2, dtype=torch.float64))
    with pytest.warns(RuntimeWarning):
        values, vectors = symmetric_eigh(torch.full((2, 2), float("nan")))
    assert vectors.equal(torch.eye(2)) and values.isnan().all()
