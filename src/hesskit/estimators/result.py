"""What the estimators return: a value with its standard error, or eigenpairs.

Every result carries ``products``, the number of curvature-vector products (columns of
``op.matmat``) it cost: the unit in which matrix-free methods are compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hesskit.describe import number, tensor_summary, values_text


@dataclass(frozen=True)
class Estimate:
    """A stochastic estimate and its standard error.

    Attributes:
        value: the estimate: a float (a trace) or a tensor (a diagonal, shape ``[N]``).
        stderr: the standard error of ``value``, same form (the sample standard deviation of
            the per-probe estimates divided by √probes); 0 for a part computed exactly.
        products: curvature-vector products used.
    """

    value: float | Tensor
    stderr: float | Tensor
    products: int

    def __repr__(self) -> str:
        """``Estimate(18.28 ± 1.4, estimate, relative stderr 7.7%, products=60)``; an exact
        value (stderr 0) says ``exact``; a vector shows its length and range."""
        kind = "exact" if self.relative_stderr() == 0 else (
            f"estimate, relative stderr {self.relative_stderr():.2g}")
        if isinstance(self.value, Tensor):
            value = tensor_summary(self.value)
        else:
            value = f"{number(self.value)} ± {number(self.stderr)}"
        return f"Estimate({value}, {kind}, products={self.products})"

    def relative_stderr(self) -> float:
        """One number for the whole estimate: |stderr| / |value| (2-norms for a tensor).

        Returns ``inf`` for a zero value with a non-zero standard error, 0 when both are 0.
        """
        if isinstance(self.value, Tensor):
            num = float(torch.linalg.vector_norm(torch.as_tensor(self.stderr)))
            den = float(torch.linalg.vector_norm(self.value))
        else:
            num, den = abs(float(self.stderr)), abs(float(self.value))
        if den == 0:
            return 0.0 if num == 0 else math.inf
        return num / den


@dataclass(frozen=True)
class Eigenpairs:
    """Approximate eigenpairs A v_i ≈ θ_i v_i of a symmetric operator.

    Attributes:
        values: Ritz values θ, shape ``[k]``, ordered from the requested end of the spectrum
            (largest first for ``which="largest"``, smallest first for ``"smallest"``).
        vectors: Ritz vectors, orthonormal columns, shape ``[N, k]``; None when they were
            not asked for (``top_eigenpairs(..., return_vectors=False)``, its default).
        products: curvature-vector products used.
        residuals: ‖A v_i − θ_i v_i‖, shape ``[k]``. For a symmetric A some eigenvalue lies
            within ``residuals[i]`` of ``values[i]`` (Bauer-Fike / Weyl).
        converged: every pair met the requested tolerance.
        error_bounds: bounds on |θ_i − λ| for the eigenvalue λ nearest θ_i, shape ``[k]``:
            min(r_i, r_i² / gap_i) (Kato-Temple, gap estimated from the other Ritz values)
            for Lanczos; the residual itself for power iteration.
    """

    values: Tensor
    vectors: Tensor | None
    products: int
    residuals: Tensor
    converged: bool
    error_bounds: Tensor

    def __repr__(self) -> str:
        """``Eigenpairs(k=2 of N=1210, values=[2.452, 1.825], error ≤ [7e-10, 2e-05],
        converged, products=20)``: the values and their error bounds, not the vectors
        (``k=2 (vectors not kept)`` when they were not asked for)."""
        state = "converged" if self.converged else "NOT converged"
        size = (f" of N={self.vectors.shape[0]}" if self.vectors is not None
                else " (vectors not kept)")
        return (f"Eigenpairs(k={self.values.numel()}{size}, "
                f"values={values_text(self.values)}, error ≤ {values_text(self.error_bounds)}, "
                f"{state}, products={self.products})")
