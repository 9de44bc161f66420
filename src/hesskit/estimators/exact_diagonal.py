"""Exact diagonals (and so exact traces) of the Hessian, Gauss-Newton and empirical Fisher.

For the total loss L(θ) = Σ_b w_b c_b Σ_{i∈b} ℓ_i(θ) (c_b the batch's reduction factor,
w_b its weight, ℓ_i the unscaled per-sample loss):

* empirical Fisher, EF = Σ_b w_b c_b Σ_i g_i g_iᵀ with g_i = ∇ℓ_i (unscaled), so
  diag(EF) = Σ_b w_b c_b Σ_i g_i ⊙ g_i. With "mean" reduction over one batch this is
  (1/n) Σ_i g_i g_iᵀ, the usual (1/n)-normalised empirical Fisher;
* Gauss-Newton, G = Σ_b w_b Σ_i J_iᵀ S_i S_iᵀ J_i (S_i from ``Loss.hessian_sqrt``, c_b
  included), so diag(G) = Σ_b w_b Σ_i Σ_c (J_iᵀ S_i)[:, c]²: m backward passes per batch
  for m = ``hessian_sqrt`` columns (the output dimension k);
* Hessian: exact only for a proved chain of supported layers (``hesskit.engine.curvature``).

Two exact methods: backpropagation of per-sample curvature through a chain of layers
(cheapest; ``hesskit.engine.curvature``), and, for GGN and EF on any model whose samples are
independent (no batch statistics), ``torch.func.vmap`` of per-sample vjp / grad. The
latter materialises n·m·N numbers per batch (m = 1 for EF), so it is far slower: for the
784-256-256-10 classifier with batch 512 it cost thousands of gradients against under ten
for backpropagation (benchmarks/diagonal.py).
:func:`diagonal` is the front door: exact where possible, else Hutchinson's estimate with
its standard error, and it says which it used.

For a distributed ``Problem`` each rank sums over its own samples and one all-reduce of the
N-vector adds the ranks' parts, so every rank gets the diagonal over all the data.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import grad, vjp, vmap

from hesskit.distributed import all_reduce_sum
from hesskit.engine import chain_diagonal, primal_pass, problem_chain
from hesskit.errors import InvalidArgumentError, UnsupportedArchitectureError
from hesskit.layout import ParameterLayout
from hesskit.operators.base import CurvatureOperator, MatrixOperator
from hesskit.problem import Batch, Problem

ELEMENT_BUDGET = 2**24
"""Largest per-sample intermediate (samples × N × columns) held at once by the vmap path."""


class DiagonalKind(str, enum.Enum):
    """Which curvature matrix: Hessian, Gauss-Newton (GGN) or empirical Fisher (EF)."""

    HESSIAN = "hessian"
    GGN = "ggn"
    EF = "ef"


class DiagonalMethod(str, enum.Enum):
    """How a diagonal was computed."""

    BACKPROP = "exact: per-sample curvature backpropagated through the layer chain"
    PER_SAMPLE = "exact: per-sample vjp/grad with torch.func.vmap"
    MATRIX = "exact: read from the explicit matrix"
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
    try:
        return _backprop_diagonal(problem, DiagonalKind.HESSIAN)
    except UnsupportedArchitectureError as reason:
        raise UnsupportedArchitectureError(
            f"no exact Hessian diagonal: {reason}; use hesskit.diagonal(problem) for a "
            "Hutchinson estimate with its standard error"
        ) from None


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
            (exact for a ``MatrixOperator``, else estimated; ``kind`` is ignored).
        kind: ``"hessian"``, ``"ggn"`` or ``"ef"``.
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
        estimate = _hutchinson(_operator_for(target, kind), probes, generator, seed)
        return DiagonalResult(kind, DiagonalMethod.HUTCHINSON, estimate.value, estimate.stderr,
                              estimate.products, target.layout, str(reason))


def _as_kind(kind: DiagonalKind | str) -> DiagonalKind:
    try:
        return DiagonalKind(kind)
    except ValueError:
        known = ", ".join(k.value for k in DiagonalKind)
        raise InvalidArgumentError(f"unknown diagonal kind {kind!r}; use one of {known}") from None


def _exact(problem: Problem, kind: DiagonalKind, use_chain: bool | None) -> Tensor:
    return _exact_with_method(problem, kind, use_chain)[0]


def _exact_with_method(
    problem: Problem, kind: DiagonalKind, use_chain: bool | None
) -> tuple[Tensor, DiagonalMethod]:
    if use_chain is not False:
        try:
            return _backprop_diagonal(problem, kind), DiagonalMethod.BACKPROP
        except UnsupportedArchitectureError:
            if use_chain or kind is DiagonalKind.HESSIAN:
                raise
    return _per_sample_diagonal(problem, kind), DiagonalMethod.PER_SAMPLE


def _backprop_diagonal(problem: Problem, kind: DiagonalKind) -> Tensor:
    params = problem.parameters()
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    for batch in problem.batches():
        chain = problem_chain(problem, params, batch.inputs)
        primal = primal_pass(chain, problem.loss, batch.targets, params)
        parts = chain_diagonal(primal, problem.loss, batch.targets, kind.value)
        for name, part in parts.items():
            total[name] += batch.weight * part
    return _summed_over_ranks(problem, problem.layout.flatten(total))


def _summed_over_ranks(problem: Problem, local: Tensor) -> Tensor:
    """A per-sample sum over this rank's data, summed over the ranks (one all-reduce)."""
    return all_reduce_sum(local.contiguous()) if problem.distributed else local


def _per_sample_diagonal(problem: Problem, kind: DiagonalKind) -> Tensor:
    for name, module in problem.model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise UnsupportedArchitectureError(
                f"no exact diagonal for this model: {name!r} normalises with batch statistics "
                "in training mode, which couples the samples; call model.eval() or use a "
                "Hutchinson estimate"
            )
    params = problem.parameters()
    total = torch.zeros(problem.num_params, dtype=problem.dtype, device=problem.device)
    for batch in problem.batches():
        total += batch.weight * _per_sample_batch(problem, params, batch, kind)
    return _summed_over_ranks(problem, total)


def _per_sample_batch(problem: Problem, params: dict, batch: Batch, kind: DiagonalKind) -> Tensor:
    loss, X, y = problem.loss, batch.inputs, batch.targets
    if kind is DiagonalKind.EF:
        with torch.no_grad():
            c = loss.scale(problem.output(params, X))

        def sample_loss(p: dict, x: Tensor, t: Tensor) -> Tensor:
            z = problem.output(p, x[None])
            return loss.value(z, t[None]) / loss.scale(z)

        def squares(p: dict, x: Tensor, t: Tensor) -> dict:
            return {n: g**2 for n, g in grad(sample_loss)(p, x, t).items()}

        per_sample, columns, weight = squares, 1, c
    else:
        with torch.no_grad():
            factor = loss.hessian_sqrt(problem.output(params, X), y)  # [n, k, m]

        def sample_columns(p: dict, x: Tensor, s: Tensor) -> dict:
            _, pullback = vjp(lambda q: problem.output(q, x[None]).reshape(-1), p)
            (cols,) = vmap(pullback)(s.T)
            return {n: (col**2).sum(0) for n, col in cols.items()}

        per_sample, columns, weight, y = sample_columns, factor.shape[-1], 1.0, factor
    chunk = max(1, ELEMENT_BUDGET // (problem.num_params * columns))
    total = torch.zeros(problem.num_params, dtype=problem.dtype, device=problem.device)
    for start in range(0, len(X), chunk):
        parts = vmap(per_sample, in_dims=(None, 0, 0))(
            params, X[start : start + chunk], y[start : start + chunk]
        )
        total += problem.layout.flatten({n: t.sum(0) for n, t in parts.items()})
    return weight * total


def _operator_diagonal(
    op: CurvatureOperator, probes: int, generator: torch.Generator | None, seed: int
) -> DiagonalResult:
    if isinstance(op, MatrixOperator):
        values = op.matrix.diagonal().clone()
        return DiagonalResult(None, DiagonalMethod.MATRIX, values, torch.zeros_like(values), 0,
                              op.layout)
    estimate = _hutchinson(op, probes, generator, seed)
    return DiagonalResult(None, DiagonalMethod.HUTCHINSON, estimate.value, estimate.stderr,
                          estimate.products, op.layout,
                          "an operator's entries can only be probed through products")


def _hutchinson(op: CurvatureOperator, probes: int, generator, seed: int):
    from hesskit.estimators.diagonal import hutchinson_diagonal

    return hutchinson_diagonal(op, probes, generator=generator, seed=seed)


def _operator_for(problem: Problem, kind: DiagonalKind) -> CurvatureOperator:
    if kind is DiagonalKind.HESSIAN:
        from hesskit.operators.hessian import hessian_operator

        return hessian_operator(problem)
    if kind is DiagonalKind.GGN:
        from hesskit.operators.gauss_newton import gauss_newton_operator

        return gauss_newton_operator(problem)
    from hesskit.operators.fisher import empirical_fisher_operator

    return empirical_fisher_operator(problem)
