"""Block power (subspace) iteration with a Rayleigh-Ritz step: PyHessian's method, for comparison.

It finds the k eigenvalues of largest *magnitude*, k products per iteration, and converges
like (|λ_{k+1}| / |λ_i|)^t, so it needs many more products than Lanczos
(``lanczos.py``). Memory: 4k N-vectors (V, A V, the Ritz vectors Y and A Y).
"""

from __future__ import annotations

import torch

from hesskit.errors import NonFiniteError
from hesskit.estimators.lanczos import check_k, check_tol
from hesskit.estimators.probes import check_count, gaussian, make_generator
from hesskit.estimators.result import Eigenpairs
from hesskit.memory import check_vectors_fit
from hesskit.operators.base import CurvatureOperator
from hesskit.progress import Progress


def power_iteration(
    op: CurvatureOperator,
    k: int = 1,
    *,
    tol: float = 1e-3,
    max_products: int | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
    progress: bool | None = None,
    memory_budget: int | str | None = None,
) -> Eigenpairs:
    """The k eigenpairs of largest magnitude by block power iteration with Rayleigh-Ritz.

    Each iteration: W = A V (k products), Ritz pairs of Vᵀ W, residuals ‖A y_i − θ_i y_i‖
    from W at no extra cost, then V ← orth(A Y). Converges like (|λ_{k+1}| / |λ_i|)^t, so it
    needs many more products than Lanczos. It stops on the residual (Weyl) bound alone,
    r_i ≤ tol·|θ_i|: the block holds no Ritz value beyond the k-th to estimate a gap from.

    Args:
        op: the N×N symmetric operator A.
        k: number of eigenpairs, 1 ≤ k ≤ N.
        tol: stop when every residual ≤ tol · max(|θ_i|, ε^{2/3} max|θ|).
        max_products: product budget (default 100 k, as PyHessian's 100 iterations).
        generator: source of the Gaussian start block; default seeded with ``seed``.
        seed: seed used when ``generator`` is None.
        progress: show a progress bar (None: only if it runs longer than 2 s).
        memory_budget: bytes or a size like ``"2GB"`` for its 5k N-vectors (V, A V, Y,
            A Y and the QR's work); default :func:`hesskit.memory.default_memory_budget`.

    Raises:
        TooLargeError: before any product, when 5k N-vectors exceed the budget.
    """
    n = op.shape[0]
    k = check_k(k, n)
    tol = check_tol(tol)
    budget = 100 * k if max_products is None else max_products
    check_count("max_products", budget, k)
    check_vectors_fit(
        n, op.dtype, 5 * k, what=f"power iteration for k = {k}",
        instead="ask for fewer eigenpairs (k), or use top_eigenpairs with max_vectors",
        memory_budget=memory_budget,
    )
    generator = make_generator(generator, seed)
    V, _ = torch.linalg.qr(gaussian((n, k), generator, op.dtype, op.device))
    products = 0
    with Progress(f"power iteration ({k})", budget, show=progress) as bar:
        while True:
            W = op.matmat(V)
            products += k
            bar.advance(k)
            if not bool(torch.isfinite(W).all()):
                raise NonFiniteError(
                    "the operator returned a non-finite product; check the model and its loss"
                )
            H = V.T @ W
            theta, S = torch.linalg.eigh((H + H.T).to(torch.float64) / 2)
            order = torch.argsort(-theta.abs(), stable=True)
            theta, S = theta[order], S[:, order].to(op.dtype)
            Y, AY = V @ S, W @ S
            residuals = torch.linalg.vector_norm(AY - Y * theta.to(op.dtype), dim=0)
            floor = torch.finfo(op.dtype).eps ** (2 / 3) * float(theta.abs().max())
            limit = tol * torch.clamp(theta.abs(), min=floor).to(op.dtype)
            converged = bool((residuals <= limit).all())
            if converged or products + k > budget:
                break
            V, _ = torch.linalg.qr(AY if float(theta.abs().max()) > 0 else Y)
    residuals = residuals.cpu()
    return Eigenpairs(theta.to(op.dtype).cpu(), Y, products, residuals, converged, residuals)
