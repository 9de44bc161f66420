"""Matrices whose answers are known, for the estimator tests (``from known_spectra import ...``).

* :func:`with_spectrum`: Q diag(λ) Qᵀ with a seeded random orthogonal Q, so eigenvalues,
  trace (Σλ) and spectral density are known by construction;
* :class:`CountingMatrix`: an explicit matrix that counts the products an estimator used;
* :func:`classifier_hessian`, :func:`regression_hessian`: the exact Hessian of a tiny tanh
  network, from ``reference.autograd_hessian`` (independent of hesskit's operators).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hesskit.operators.base import MatrixOperator
from reference import autograd_hessian


class CountingMatrix(MatrixOperator):
    """Counts the columns it multiplies: the products an estimator really used."""

    def __init__(self, matrix: Tensor) -> None:
        super().__init__(matrix)
        self.products = 0

    def _matmat(self, V: Tensor) -> Tensor:
        self.products += V.shape[1]
        return super()._matmat(V)


def with_spectrum(eigenvalues: Sequence[float] | Tensor, seed: int = 0) -> Tensor:
    """Q diag(λ) Qᵀ for a random orthogonal Q (float64), Q from the QR of a seeded N×N draw."""
    values = torch.as_tensor(eigenvalues, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(
        torch.randn(len(values), len(values), generator=generator, dtype=torch.float64)
    )
    return Q @ torch.diag(values) @ Q.T


def classifier_hessian() -> Tensor:
    """H of a 3 → 5 → 3 tanh classifier under cross-entropy on 16 samples (float64)."""
    model, X = _tanh_network(hidden=5, outputs=3)
    y = torch.randint(0, 3, (16,))
    return autograd_hessian(model, nn.functional.cross_entropy, X, y)


def regression_hessian() -> Tensor:
    """H of a 3 → 4 → 2 tanh regressor under the mean squared error on 16 samples (float64)."""
    model, X = _tanh_network(hidden=4, outputs=2)
    y = torch.randn(16, 2, dtype=torch.float64)
    return autograd_hessian(model, nn.functional.mse_loss, X, y)


def _tanh_network(hidden: int, outputs: int) -> tuple[nn.Module, Tensor]:
    """Seeds torch's global generator with 0, then draws the model and X ~ N(0, 1) [16, 3]."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, outputs)).double()
    return model, torch.randn(16, 3, dtype=torch.float64)
