"""The front door to curvature diagonals: exact where hesskit can compute them, else an
estimate that says it is one.

The exact methods live with the operators (:mod:`hesskit.operators.diagonals`: per-sample
curvature backpropagated through a chain the structural engine proves, or per-sample
``vmap`` for G and the empirical Fisher on any model whose samples are independent); here
are the named functions and :func:`diagonal`, which falls back to Hutchinson's estimate
with its standard error and records which method it used and why.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hesskit.describe import number, tensor_summary
from hesskit.errors import InvalidArgumentError, UnsupportedArchitectureError
from hesskit.estimators.diagonal import hutchinson_diagonal
from hesskit.layout import ParameterLayout
from hesskit.operators import CurvatureOperator, MatrixOperator
from hesskit.operators.diagonals import backprop_diagonal, exact_diagonal, per_sample_diagonal
from hesskit.operators.matrices import Matrix, as_matrix, curvature_operator
from hesskit.problem import Problem

ELEMENT_BUDGET = 2**24
"""Largest per-sample intermediate (samples × N × columns) held at once by the vmap path."""


DiagonalKind = Matrix
"""Which curvature matrix (the one naming of :mod:`hesskit.operators.matrices`)."""


class DiagonalMethod(str, enum.Enum):
    """How a diagonal was computed."""

    BACKPROP = "exact: per-sample curvature backpropagated through the layer chain"
    PER_SAMPLE = "exact: per-sample vjp/grad with torch.func.vmap"
    MATRIX = "exact: read from the explicit matrix"
    OPERATOR = "exact: the operator's own exact diagonal"
    HUTCHINSON = "estimate: Hutchinson with Rademacher probes"


@dataclass(frozen=True)
class DiagonalResult:
    """A curvature diagonal, exact or estimated.

    Attributes:
        kind: the matrix (for an operator given directly: whatever it is; kind is None).
        method: how the values were computed.
        values: the diagonal, flat ``[N]``.
        stderr: standard error per entry, ``[N]`` (zeros when exact).
        products: curvature-vector products spent (0 for the exact methods).
        layout: the parameter layout of ``values``.
        fallback_reason: why no exact method applied (None when exact).
    """

    kind: DiagonalKind | None
    method: DiagonalMethod
    values: Tensor
    stderr: Tensor
    products: int
    layout: ParameterLayout
    fallback_reason: str | None = None

    @property
    def exact(self) -> bool:
        return self.method is not DiagonalMethod.HUTCHINSON

    def __repr__(self) -> str:
        """``DiagonalResult(ggn, exact: …, values [1210] min 0, median …, max …, trace …)``;
        an estimate adds its relative standard error and the products it cost."""
        kind = self.kind.value if self.kind is not None else "operator"
        text = f"DiagonalResult({kind}, {self.method.value}, values {tensor_summary(self.values)}"
        if self.exact:
            return f"{text}, trace {number(self.trace)})"
        norm = float(torch.linalg.vector_norm(self.values))
        relative = float(torch.linalg.vector_norm(self.stderr)) / norm if norm else math.inf
        return (f"{text}, trace ≈ {number(self.trace)}, relative stderr {relative:.2g}, "
                f"products={self.products})")

    @property
    def trace(self) -> float:
        """Σ_i values_i: the exact trace when exact, else Hutchinson's trace estimate."""
        return float(self.values.sum())

    @property
    def trace_stderr_bound(self) -> float:
        """Σ_i stderr_i, an upper bound of the trace's standard error (0 when exact).

        The entries share probes, so their errors are correlated; the standard deviation
        of a sum is at most the sum of the standard deviations.
        """
        return float(self.stderr.sum())

    def per_parameter(self) -> dict[str, Tensor]:
        """The values as tensors shaped like the parameters."""
        return self.layout.unflatten(self.values)


def hessian_diagonal(problem: Problem) -> Tensor:
    """diag(∇²L) exactly, flat ``[N]``, for a chain of supported layers.

    Cost per batch: one forward pass plus the backward recursion of the per-sample
    curvature (about k backward passes for ReLU networks with k outputs; more when smooth
    activations add σ″ terms).

    Raises:
        UnsupportedArchitectureError: the model is not such a chain; use :func:`diagonal`
            for an estimate.
    """
    return exact_diagonal(problem, "hessian")


def gauss_newton_diagonal(problem: Problem, *, use_chain: bool | None = None) -> Tensor:
    """diag(G) exactly, flat ``[N]``: Σ_b w_b Σ_i Σ_c (J_iᵀ S_i)[:, c]².

    Args:
        problem: the model, loss and data.
        use_chain: True: backpropagate through the layer chain (raises if unsupported);
            False: per-sample vmap (any model whose samples are independent); None: the
            chain where supported, else vmap.
    """
    return _exact(problem, DiagonalKind.GGN, use_chain)


def empirical_fisher_diagonal(problem: Problem, *, use_chain: bool | None = None) -> Tensor:
    """diag(EF) exactly, flat ``[N]``: Σ_b w_b c_b Σ_i g_i ⊙ g_i, g_i = ∇ℓ_i unscaled.

    Args:
        problem: the model, loss and data.
        use_chain: as in :func:`gauss_newton_diagonal`.
    """
    return _exact(problem, DiagonalKind.EF, use_chain)


def diagonal(
    target: Problem | CurvatureOperator,
    kind: DiagonalKind | str = DiagonalKind.HESSIAN,
    *,
    probes: int = 100,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> DiagonalResult:
    """The diagonal of a curvature matrix: exact where possible, else Hutchinson's estimate.

    Args:
        target: a ``Problem`` (then ``kind`` picks the matrix) or any curvature operator
            (its exact ``diagonal()`` where it has one, else estimated; ``kind`` is ignored).
        kind: ``"hessian"``, ``"ggn"``, ``"fisher"`` or ``"ef"`` (:class:`Matrix`).
        probes: Hutchinson probes (= products) when estimating.
        generator: random source of the probes; default seeded with ``seed``.
        seed: seed used when ``generator`` is None.

    Returns:
        A :class:`DiagonalResult` that records the method and, for an estimate, the
        standard error per entry and the reason no exact method applied.
    """
    if isinstance(target, CurvatureOperator):
        return _operator_diagonal(target, probes, generator, seed)
    if not isinstance(target, Problem):
        raise InvalidArgumentError(
            f"diagonal() takes a Problem or a CurvatureOperator, got {type(target).__name__}"
        )
    kind = _as_kind(kind)
    zeros = torch.zeros(target.num_params, dtype=target.dtype, device=target.device)
    try:
        values, method = _exact_with_method(target, kind, None)
        return DiagonalResult(kind, method, values, zeros, 0, target.layout)
    except UnsupportedArchitectureError as reason:
        estimate = hutchinson_diagonal(
            _operator_for(target, kind), probes, generator=generator, seed=seed
        )
        return DiagonalResult(kind, DiagonalMethod.HUTCHINSON, estimate.value, estimate.stderr,
                              estimate.products, target.layout, str(reason))


def _as_kind(kind: Matrix | str) -> Matrix:
    return as_matrix(kind)


def _exact(problem: Problem, kind: DiagonalKind, use_chain: bool | None) -> Tensor:
    return _exact_with_method(problem, kind, use_chain)[0]


def _exact_with_method(
    problem: Problem, kind: DiagonalKind, use_chain: bool | None
) -> tuple[Tensor, DiagonalMethod]:
    if kind is Matrix.FISHER:
        raise UnsupportedArchitectureError(
            "the Monte-Carlo Fisher's diagonal is estimated from its products (its exact "
            "expectation is the Gauss-Newton diagonal: kind='ggn')"
        )
    if use_chain is not False:
        try:
            return backprop_diagonal(problem, kind.value), DiagonalMethod.BACKPROP
        except UnsupportedArchitectureError:
            if use_chain or kind is DiagonalKind.HESSIAN:
                raise
    return per_sample_diagonal(problem, kind.value), DiagonalMethod.PER_SAMPLE


def _operator_diagonal(
    op: CurvatureOperator, probes: int, generator: torch.Generator | None, seed: int
) -> DiagonalResult:
    method = DiagonalMethod.MATRIX if isinstance(op, MatrixOperator) else DiagonalMethod.OPERATOR
    try:
        values = op.diagonal()
    except UnsupportedArchitectureError as reason:
        estimate = hutchinson_diagonal(op, probes, generator=generator, seed=seed)
        return DiagonalResult(None, DiagonalMethod.HUTCHINSON, estimate.value,
                              estimate.stderr, estimate.products, op.layout, str(reason))
    return DiagonalResult(None, method, values, torch.zeros_like(values), 0, op.layout)


def _operator_for(problem: Problem, kind: Matrix) -> CurvatureOperator:
    return curvature_operator(problem, kind)
