"""Spectral density of a curvature operator by stochastic Lanczos quadrature (SLQ).

The spectral density φ(t) = (1/N) Σ_i δ(t − λ_i) is estimated as PyHessian does (Yao et al.,
"PyHessian: Neural Networks Through the Lens of the Hessian", 2020, §3.3; Ghorbani, Krishnan &
Xiao 2019; Lin, Saad & Yang, "Approximating spectral densities of large matrices", 2016):

1. For each of P probes v (Rademacher, normalised), m Lanczos steps give T_m = S Θ Sᵀ.
   The nodes θ_j and weights τ_j = (e_1ᵀ s_j)² form an m-point Gauss quadrature rule for
   the measure Σ_i (u_iᵀ v)² δ(t − λ_i): Σ_j τ_j θ_j^p = vᵀ A^p v exactly for p ≤ 2m − 1.
   With E[(u_iᵀ v)²] = 1/N, each rule is an unbiased estimate of φ.
2. φ is smoothed with a Gaussian of width σ and averaged over probes on a grid:
   φ_σ(t) = (1/P) Σ_p Σ_j τ_pj g_σ(t − θ_pj), which integrates to 1.

Cost: P · m products, run as m ``matmat`` calls of P columns; memory P · m · N numbers
for the reorthogonalised bases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hesskit.describe import number
from hesskit.errors import InvalidArgumentError
from hesskit.estimators.lanczos import LanczosRecurrence
from hesskit.estimators.probes import check_count, make_generator, rademacher
from hesskit.operators.base import CurvatureOperator
from hesskit.progress import Progress


@dataclass(frozen=True)
class SpectralQuadrature:
    """Gauss quadrature rules, one per probe, for the spectral measure of A.

    Attributes:
        nodes: Ritz values θ_pj, float64 ``[P, m]`` (padded with 0 where a probe's Krylov
            space was exhausted early).
        weights: τ_pj = (e_1ᵀ s_pj)², float64 ``[P, m]``; each row sums to 1 (padding has 0).
        products: curvature-vector products used (P per Lanczos step).
        size: N, the order of A.
    """

    nodes: Tensor
    weights: Tensor
    products: int
    size: int

    def __repr__(self) -> str:
        """``SpectralQuadrature(N=1210, probes=4, steps=64, nodes in [a, b], trace ≈ t, …)``."""
        probes, steps = self.nodes.shape
        used = self.nodes[self.weights > 0]
        span = (f"nodes in [{number(used.min())}, {number(used.max())}]" if used.numel()
                else "no nodes")
        return (f"SpectralQuadrature(N={self.size}, probes={probes}, steps={steps}, {span}, "
                f"trace ≈ {number(self.trace())} (estimate), products={self.products})")

    def trace(self) -> float:
        """The trace estimate N · mean_p Σ_j τ_pj θ_pj (= mean of N vᵀAv for unit probes)."""
        return float(self.size * (self.weights * self.nodes).sum(dim=1).mean())


def spectral_density(
    op: CurvatureOperator,
    *,
    probes: int = 4,
    steps: int = 64,
    generator: torch.Generator | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> SpectralQuadrature:
    """Run stochastic Lanczos quadrature: ``probes`` Rademacher probes, ``steps`` steps each.

    Args:
        op: the N×N symmetric operator A.
        probes: number P ≥ 1 of probe vectors.
        steps: Lanczos steps m per probe (capped at N; PyHessian uses 100).
        generator: source of the probes; default a CPU generator seeded with ``seed``.
        seed: seed used when ``generator`` is None.
        progress: show a progress bar (None: only if it runs longer than 2 s).

    Returns:
        The quadrature rules; turn them into a curve with :func:`density_on_grid`.
    """
    check_count("probes", probes, 1)
    check_count("steps", steps, 1)
    generator = make_generator(generator, seed)
    start = rademacher((op.shape[0], probes), generator, op.dtype, op.device)
    return lanczos_quadrature(op, start, min(steps, op.shape[0]), progress=progress)


def lanczos_quadrature(
    op: CurvatureOperator, start: Tensor, steps: int, *, progress: bool | None = None
) -> SpectralQuadrature:
    """The m-point Gauss quadrature rule of each start vector (columns of ``start [N, P]``)."""
    probes = start.shape[1]
    recurrence = LanczosRecurrence(op, start)
    lengths = torch.full((probes,), steps, dtype=torch.long)
    done = torch.zeros(probes, dtype=torch.bool)
    with Progress("spectral density", probes * steps, show=progress) as bar:
        for step in range(steps):
            recurrence.step()
            bar.advance(probes)
            newly = recurrence.broke_down & ~done
            lengths[newly] = step + 1
            done |= recurrence.broke_down
            if bool(done.all()):
                break
    nodes = torch.zeros(probes, steps, dtype=torch.float64)
    weights = torch.zeros_like(nodes)
    for p in range(probes):
        alphas, betas = recurrence.tridiagonal(p)
        length = int(lengths[p])
        T = np.diag(alphas[:length])
        T += np.diag(betas[: length - 1], 1) + np.diag(betas[: length - 1], -1)
        theta, S = np.linalg.eigh(T)
        nodes[p, :length] = torch.from_numpy(theta)
        weights[p, :length] = torch.from_numpy(S[0] ** 2)
    return SpectralQuadrature(nodes, weights, probes * recurrence.steps, op.shape[0])


def _node_range(quadrature: SpectralQuadrature) -> tuple[float, float]:
    used = quadrature.weights > 0
    return float(quadrature.nodes[used].min()), float(quadrature.nodes[used].max())


def default_width(quadrature: SpectralQuadrature) -> float:
    """:func:`density_on_grid`'s default σ: 1% of the node range (of max(1, |θ|) when all
    nodes coincide)."""
    low, high = _node_range(quadrature)
    return 0.01 * (high - low if high > low else max(1.0, abs(high)))


def density_on_grid(
    quadrature: SpectralQuadrature,
    *,
    points: int = 1000,
    width: float | None = None,
    grid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The Gaussian-smoothed density φ_σ on a grid: ``(grid [G], density [G])``, float64.

    Args:
        quadrature: the rules from :func:`spectral_density`.
        points: grid size when ``grid`` is None.
        width: σ of the Gaussian kernel; default 1% of the node range (or of max(1, |θ|)
            when all nodes coincide).
        grid: evaluation points; default ``points`` equally spaced over the node range
            widened by 5σ on each side, so the density integrates to 1 on it.
    """
    low, high = _node_range(quadrature)
    sigma = default_width(quadrature) if width is None else float(width)
    if not (np.isfinite(sigma) and sigma > 0):
        raise InvalidArgumentError(f"width must be a finite number greater than 0, got {width!r}")
    if grid is None:
        check_count("points", points, 2)
        grid = torch.linspace(low - 5 * sigma, high + 5 * sigma, points, dtype=torch.float64)
    grid = grid.to(torch.float64)
    offsets = grid[:, None, None] - quadrature.nodes[None]  # [G, P, m]
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    density = (kernel * quadrature.weights[None]).sum(dim=2).mean(dim=1)
    return grid, density
