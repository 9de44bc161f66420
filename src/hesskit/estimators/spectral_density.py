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

Cost: P · m products, run as m ``matmat`` calls of P columns. The nodes and weights need
only T_m (eigenpairs of a tridiagonal matrix: ``scipy.linalg.eigh_tridiagonal``), so the
basis is optional:

* ``reorthogonalize=True`` (the default where the memory budget holds it): each recurrence
  keeps its basis and reorthogonalises against it (``recurrence.py``); T_m is then the
  exact Lanczos matrix to rounding and the rule is exactly Gauss. Memory about
  1.5 · P · (m + 1) · N numbers at its peak.
* ``reorthogonalize=False`` (the default where it does not): the plain three-term
  recurrence, as Ghorbani, Krishnan & Xiao
  ("An investigation into neural net optimization via Hessian eigenvalue density", ICML
  2019, §2.2, 90 steps at ImageNet scale) run it: q_{j−1}, q_j and A q_j only,
  :data:`THREE_TERM_VECTORS` · P N-vectors whatever m.

**What the loss of orthogonality does** (``reorthogonalize=False``). In floating point the
Lanczos vectors lose orthogonality as soon as a Ritz value converges (Paige 1976), and the
recurrence then finds the converged (outlying) eigenvalues again: T_m holds "ghost" copies
of them, so *counting nodes* near an outlier is meaningless. The rule stays a quadrature
rule for (nearly) the right measure: finite-precision Lanczos is exact Lanczos on a larger
matrix whose eigenvalues lie in tiny intervals about A's (Greenbaum 1989), and the Gauss
weights of a cluster of ghost copies add up to the weight (u_iᵀ v)² of the one eigenvalue
they copy (Greenbaum & Strakoš 1992). Hence the moments Σ_j τ_j θ_j^p still match
vᵀ A^p v up to rounding for p ≤ 2m − 1 (Knizhnerman 1996; Chen, Trogdon & Ubaru,
"Analysis of stochastic Lanczos quadrature for spectrum approximation", ICML 2021, §4) and
the smoothed density φ_σ moves by O(ε ‖A‖ / σ) at most, far below the probe-to-probe
spread. What is lost is only the exactness statement of the test above: the tests check
moments up to degree 2m − 1 to a relative 1e-8 · ‖A‖^p in float64
(``tests/estimators/test_slq_memory.py``), against 1e-9 with reorthogonalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor

from hesskit.describe import number
from hesskit.errors import InvalidArgumentError
from hesskit.estimators.probes import check_count, make_generator, rademacher
from hesskit.estimators.recurrence import (
    THREE_TERM_VECTORS,
    LanczosRecurrence,
    ThreeTermRecurrence,
    basis_vectors,
)
from hesskit.memory import check_vectors_fit, vector_bytes, vectors_that_fit
from hesskit.memory import format_bytes as _format_bytes
from hesskit.operators.base import CurvatureOperator
from hesskit.progress import Progress

"""N-vectors per probe of the recurrence without a basis: the start block, q_{j−1}, q_j,
A q_j and the next q while it is formed."""


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
    reorthogonalize: bool | None = None,
    memory_budget: int | str | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> SpectralQuadrature:
    """Run stochastic Lanczos quadrature: ``probes`` Rademacher probes, ``steps`` steps each.

    Args:
        op: the N×N symmetric operator A.
        probes: number P ≥ 1 of probe vectors.
        steps: Lanczos steps m per probe (capped at N; PyHessian uses 100, Ghorbani et al.
            90).
        reorthogonalize: keep each probe's basis and reorthogonalise against it (exact
            Gauss rules; 1.5 · P · (m + 1) N-vectors), or run the three-term recurrence
            alone (5 P N-vectors; ghost nodes, moments kept: see the module docstring).
            ``None`` (default): with the basis when the budget holds it, else without.
        memory_budget: bytes or a size like ``"2GB"``; default
            :func:`hesskit.memory.default_memory_budget`.
        generator: source of the probes; default a CPU generator seeded with ``seed``.
        seed: seed used when ``generator`` is None.
        progress: show a progress bar (None: only if it runs longer than 2 s).

    Returns:
        The quadrature rules; turn them into a curve with :func:`density_on_grid`.

    Raises:
        TooLargeError: before any product, when its vectors exceed the budget; the message
            names ``reorthogonalize=False`` or fewer probes.
    """
    check_count("probes", probes, 1)
    check_count("steps", steps, 1)
    steps = min(steps, op.shape[0])
    if reorthogonalize is None:
        reorthogonalize = quadrature_vectors(probes, steps, True) <= vectors_that_fit(
            op.shape[0], op.dtype, memory_budget)
    check_quadrature_fits(op, probes, steps, reorthogonalize, memory_budget)
    generator = make_generator(generator, seed)
    return lanczos_quadrature(  # the probes passed on, not held here: one N-vector each
        op, rademacher((op.shape[0], probes), generator, op.dtype, op.device), steps,
        reorthogonalize=reorthogonalize, memory_budget=memory_budget, progress=progress,
    )


def quadrature_vectors(probes: int, steps: int, reorthogonalize: bool) -> int:
    """N-vectors stochastic Lanczos quadrature holds at its peak (start block included)."""
    if reorthogonalize:
        return probes + basis_vectors(probes, steps)
    return THREE_TERM_VECTORS * probes


def check_quadrature_fits(
    op: CurvatureOperator,
    probes: int,
    steps: int,
    reorthogonalize: bool,
    memory_budget: int | str | None = None,
) -> int:
    """Refuse (``TooLargeError``) a quadrature whose vectors exceed the budget; bytes needed."""
    n = op.shape[0]
    room = vectors_that_fit(n, op.dtype, memory_budget)
    plain = quadrature_vectors(probes, steps, False)
    if reorthogonalize and plain <= room:
        instead = (
            f"pass reorthogonalize=False (it holds {plain} vectors, "
            f"{_format_bytes(plain * vector_bytes(n, op.dtype))}) or fewer probes or steps"
        )
    else:
        most = room // THREE_TERM_VECTORS
        instead = (
            f"use probes={most} with reorthogonalize=False, or a larger memory_budget"
            if most >= 1
            else "a single probe does not fit either; pass a larger memory_budget"
        )
    what = (
        f"spectral_density ({probes} probes x {steps} steps, "
        f"reorthogonalize={reorthogonalize})"
    )
    return check_vectors_fit(
        n, op.dtype, quadrature_vectors(probes, steps, reorthogonalize), what=what,
        instead=instead, memory_budget=memory_budget,
    )


def lanczos_quadrature(
    op: CurvatureOperator,
    start: Tensor,
    steps: int,
    *,
    reorthogonalize: bool = True,
    memory_budget: int | str | None = None,
    progress: bool | None = None,
) -> SpectralQuadrature:
    """The m-point Gauss quadrature rule of each start vector (columns of ``start [N, P]``).

    With ``reorthogonalize=False`` the rule is that of the finite-precision three-term
    recurrence (see the module docstring for what that changes).
    """
    probes = start.shape[1]
    check_quadrature_fits(op, probes, steps, reorthogonalize, memory_budget)
    if reorthogonalize:
        recurrence, run = LanczosRecurrence(op, start), _with_basis
    else:
        recurrence, run = ThreeTermRecurrence(op, start), _three_term
    del start  # the recurrence holds its normalised copy (the caller may hold the original)
    with Progress("spectral density", probes * steps, show=progress) as bar:
        alphas, betas, lengths, done_steps = run(recurrence, probes, steps, bar)
    nodes = torch.zeros(probes, steps, dtype=torch.float64)
    weights = torch.zeros_like(nodes)
    for p in range(probes):
        length = int(lengths[p])
        theta, S = eigh_tridiagonal(alphas[:length, p], betas[: length - 1, p])
        nodes[p, :length] = torch.from_numpy(theta)
        weights[p, :length] = torch.from_numpy(S[0] ** 2)
    return SpectralQuadrature(nodes, weights, probes * done_steps, op.shape[0])


def _with_basis(
    recurrence: LanczosRecurrence, probes: int, steps: int, bar: Progress
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """α, β ``[m, P]``, the length of each probe's rule, and the steps run (stored basis)."""
    lengths = np.full(probes, steps)
    done = torch.zeros(probes, dtype=torch.bool)
    for step in range(steps):
        recurrence.step()
        bar.advance(probes)
        newly = (recurrence.broke_down & ~done).numpy()
        lengths[newly] = step + 1
        done |= recurrence.broke_down
        if bool(done.all()):
            break
    alphas = torch.stack(recurrence.alphas).cpu().numpy()
    betas = torch.stack(recurrence.betas).cpu().numpy()
    return alphas, betas, lengths, recurrence.steps


def _three_term(
    recurrence: ThreeTermRecurrence, probes: int, steps: int, bar: Progress
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """As :func:`_with_basis`, by :class:`ThreeTermRecurrence` (no basis kept)."""
    for _ in range(steps):
        recurrence.step()
        bar.advance(probes)
        if bool(recurrence.done.all()):
            break
    lengths = np.where(recurrence.lengths < 0, recurrence.steps, recurrence.lengths)
    alphas = torch.stack(recurrence.alphas).numpy()
    betas = torch.stack(recurrence.betas).numpy()
    return alphas, betas, lengths, recurrence.steps


def _node_range(quadrature: SpectralQuadrature) -> tuple[float, float]:
    used = quadrature.weights > 0
    return float(quadrature.nodes[used].min()), float(quadrature.nodes[used].max())


def default_width(quadrature: SpectralQuadrature) -> float:
    """:func:`density_on_grid`'s default σ: :func:`width_for_range` of the node range."""
    return width_for_range(*_node_range(quadrature))


def width_for_range(low: float, high: float) -> float:
    """σ for nodes in [low, high]: 1% of the range (of max(1, |θ|) when all coincide)."""
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
