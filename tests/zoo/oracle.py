"""Reference matrices of the zoo cases, computed once per case from ``tests/reference.py``.

Nothing here imports hesskit: H, G and EF come from ``torch.autograd.functional`` on the
concatenated data (the total loss of a ``Problem`` is the loss on all samples at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import pytest
import torch
from torch import Tensor

from reference import autograd_gauss_newton, autograd_gradient, autograd_hessian, empirical_fisher
from zoo.models import ZOO, ZooCase

FLOAT64_RTOL = 1e-8
"""Relative tolerance of every exact float64 comparison with a reference."""


@dataclass(frozen=True)
class Reference:
    """The reference H, G, R = H − G, EF and ∇L of one zoo case at its initial parameters."""

    hessian: Tensor
    gauss_newton: Tensor
    empirical_fisher: Tensor
    gradient: Tensor

    @property
    def residual(self) -> Tensor:
        return self.hessian - self.gauss_newton


@cache
def reference(name: str) -> Reference:
    case = ZOO[name]()
    X, y = case.all_data()
    names = case.names
    H = autograd_hessian(case.model, case.loss, X, y, names)
    G = autograd_gauss_newton(case.model, case.loss, X, y, names)
    EF = empirical_fisher(case.model, case.per_sample_loss(), X, y, case.sample_weight(), names)
    g = autograd_gradient(case.model, case.loss, X, y, names)
    return Reference(0.5 * (H + H.T), 0.5 * (G + G.T), EF, g)


def relative_error(got: Tensor, want: Tensor) -> float:
    """‖got − want‖ / ‖want‖ (Frobenius), or ‖got‖ when want is zero."""
    got, want = got.to(want.dtype), want
    scale = float(torch.linalg.norm(want))
    diff = float(torch.linalg.norm(got - want))
    return diff / scale if scale > 0 else diff


def assert_relative(got: Tensor, want: Tensor, what: str, tol: float = FLOAT64_RTOL) -> None:
    """Fail with the relative error in the message when it exceeds ``tol``."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    error = relative_error(got, want)
    assert error <= tol, f"{what}: relative error {error:.3g} (tolerance {tol:g})"


def zoo_params(select=None) -> list:
    """``pytest.param(name)`` for every zoo case (``select(case)`` to filter), slow marked."""
    params = []
    for name, factory in ZOO.items():
        case: ZooCase = factory()
        if select is not None and not select(case):
            continue
        marks = [pytest.mark.slow] if case.slow else []
        params.append(pytest.param(name, id=name, marks=marks))
    return params


def probe_vectors(n: int, k: int, seed: int = 0) -> Tensor:
    """``[n, k]`` fixed Gaussian directions."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g, dtype=torch.float64)
