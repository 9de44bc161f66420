"""The generalized Gauss-Newton matrix G = Σ_b w_b J_bᵀ H_ℓ J_b as a linear operator.

J_b = ∂f(θ, X_b)/∂θ is the Jacobian of the network outputs z_b = f(θ, X_b) (``[n k, N]``)
and H_ℓ = ∂²ℓ/∂z² the loss's Hessian in the outputs, in closed form from
``hesskit.losses`` (it includes the reduction factor c). G is symmetric, and positive
semi-definite when ℓ is convex in z (MSE, cross-entropy, BCE). Schraudolph (2002);
Martens (2010) §4.2.

Cost: building the linearization of a batch is one forward pass plus one backward pass
(kept in memory); each product G v after that is one J v and one Jᵀ u, about 1.3 gradients,
and re-runs no forward pass.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import linearize, vjp

from hesskit.engine.dense_blocks import dense_chain, dense_matrix
from hesskit.errors import InvalidArgumentError, UnsupportedArchitectureError
from hesskit.memory import check_dense_fits
from hesskit.operators.base import ProblemOperator, apply_columns
from hesskit.operators.diagonals import exact_diagonal
from hesskit.problem import Batch, Problem

Params = dict[str, Tensor]


class OutputLinearization:
    """The network outputs of one batch linearized at θ₀: z₀, v ↦ J v and u ↦ Jᵀ u.

    One ``torch.func.vjp`` of f(·, X) runs the only forward pass and gives Jᵀ u. J v comes
    one of two ways:

    * the vjp of the vjp function (the "double-vjp" trick): no second forward pass, nothing
      traced. The default for models without convolutions.
    * the tangent pass of ``torch.func.linearize`` (the primal values folded into a traced
      graph): for models with convolutions, because torch 2.13's double backward of a
      convolution also computes a weight term J v never uses (one extra convolution and
      two transposed copies per layer). Measured with ``benchmarks/architectures.py``:
      reused GGN products 1.45 → 1.05 gradients on the CNN, 2.50 → 1.35 on the residual
      net, at a one-off tracing cost of about 5-6 gradients per batch (it pays back after
      about 5-16 products: CG, Lanczos, Hessian-free). The traced map is checked once
      against the vjp (⟨z₀, J θ₀⟩ = ⟨Jᵀ z₀, θ₀⟩, one extra vjp) and dropped for the
      double-vjp when the check fails or the model cannot be traced (``linearize`` can
      silently return zeros on torch 2.13: ``../shared/pitfalls``).

    Args:
        problem: the model, loss and data.
        params: the parameters θ₀ by name.
        inputs: the batch inputs X.
        method: ``"auto"`` (linearize for models with convolutions), ``"double_vjp"`` or
            ``"linearize"`` (still falls back to the double-vjp if tracing fails).
    """

    METHODS = ("auto", "double_vjp", "linearize")

    def __init__(
        self, problem: Problem, params: Params, inputs: object, method: str = "auto"
    ) -> None:
        def output(p: Params) -> Tensor:
            return problem.output(p, inputs)

        self.outputs, self._transposed = vjp(output, params)
        self.outputs = self.outputs.detach()
        traced = method == "linearize" or (method == "auto" and _has_convolution(problem.model))
        self._tangent = _traced_tangent(output, params) if traced else None
        if self._tangent is not None and not self._adjoint_holds(params):
            self._tangent = None
        self.method = "linearize" if self._tangent is not None else "double_vjp"
        if self._tangent is None:
            _, self._forward = vjp(self._transposed, torch.zeros_like(self.outputs))

    def _adjoint_holds(self, params: Params) -> bool:
        """⟨z₀, J θ₀⟩ = ⟨Jᵀ z₀, θ₀⟩ for the traced J v against the vjp, to 1e-4 relative."""
        left = float((self.outputs * self._tangent(params)).sum())
        pullback = self._transposed(self.outputs)[0]
        right = float(sum((pullback[name] * p).sum() for name, p in params.items()))
        return right != 0.0 and abs(left - right) <= 1e-4 * (abs(left) + abs(right))

    def jacobian_vector(self, v: Params) -> Tensor:
        """J v for one parameter-shaped direction v; shaped like the outputs."""
        if self._tangent is not None:
            return self._tangent(v)
        return self._forward((v,))[0]

    def jacobian_transpose_vector(self, u: Tensor) -> Params:
        """Jᵀ u for one output-shaped u; parameter-shaped."""
        return self._transposed(u)[0]


def _has_convolution(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def _traced_tangent(output: Callable[[Params], Tensor], params: Params) -> Callable | None:
    try:
        with warnings.catch_warnings():  # torch.fx's constant folding warns on every trace
            warnings.filterwarnings("ignore", "Attempted to insert a get_attr", UserWarning)
            return linearize(output, params)[1]
    except Exception:
        return None


class LinearizedOutputOperator(ProblemOperator):
    """Base of the matrices Σ_b w_b J_bᵀ M_b J_b: keeps each batch's ``OutputLinearization``."""

    jacobian: str = "auto"
    """How J v is computed (``OutputLinearization`` methods); an instance may override it."""

    def linearization(self, batch: Batch) -> OutputLinearization:
        """The batch's cached (or fresh, with ``cache=False``) output linearization."""
        return self.per_batch(
            batch,
            lambda b: OutputLinearization(self.problem, self.params, b.inputs, self.jacobian),
        )


class GaussNewtonOperator(LinearizedOutputOperator):
    """G = Σ_b w_b J_bᵀ H_ℓ(z_b, y_b) J_b: symmetric, PSD iff the loss is convex in z.

    Args:
        problem: the model, loss and data.
        cache: keep each batch's linearization (its forward and backward graphs) between
            products. ``None`` (default) keeps them when the data have at most
            ``max_cached_batches`` batches; ``False`` rebuilds them on every product call
            (one forward pass per batch per call, memory of one batch).
        jacobian: how J v is computed: ``"auto"`` (traced ``linearize`` for models with
            convolutions, else the double-vjp), ``"double_vjp"`` or ``"linearize"``; see
            :class:`OutputLinearization`.
    """

    symmetric = True

    def __init__(
        self, problem: Problem, cache: bool | None = None, *, jacobian: str = "auto"
    ) -> None:
        super().__init__(problem, cache=cache)
        if jacobian not in OutputLinearization.METHODS:
            raise InvalidArgumentError(
                f"unknown jacobian method {jacobian!r}; use one of "
                f"{', '.join(OutputLinearization.METHODS)}"
            )
        self.jacobian = jacobian
        self.psd = bool(problem.loss.convex)

    def _matmat_batch(self, batch: Batch, V: Params) -> Params:
        lin = self.linearization(batch)
        loss, z, y = self.problem.loss, lin.outputs, batch.targets

        def product(v: Params) -> Params:
            u = loss.hessian_vector(z, y, lin.jacobian_vector(v))
            return lin.jacobian_transpose_vector(u)

        return apply_columns(product, V)

    def _restricted(self, problem: Problem) -> GaussNewtonOperator:
        return GaussNewtonOperator(problem, cache=self.cache, jacobian=self.jacobian)

    def diagonal(self) -> Tensor:
        """diag(G) exactly: through the proved chain (about k backward passes per batch),
        else per-sample ``vmap`` of vjps (any model whose samples are independent; n·k·N
        numbers per batch in chunks, far slower).

        Raises:
            UnsupportedArchitectureError: the model couples its samples (train-mode
                BatchNorm); the message names the estimator to use instead.
        """
        return exact_diagonal(self.problem, "ggn", params=self.params)

    def to_dense(self, chunk_size: int = 256) -> Tensor:
        """G as ``[N, N]``: the closed form for a proved Linear chain, else N products.
        Checked against the memory budget first."""
        check_dense_fits(self.shape[0], self.dtype, what="the dense Gauss-Newton matrix")
        try:
            chain = dense_chain(self.problem, self.params)
        except UnsupportedArchitectureError:
            return super().to_dense(chunk_size)
        return dense_matrix(self.problem, "G", chain, self.params)


def gauss_newton_operator(
    problem: Problem, cache: bool | None = None, *, jacobian: str = "auto"
) -> GaussNewtonOperator:
    """The generalized Gauss-Newton matrix of ``problem`` as a linear operator."""
    return GaussNewtonOperator(problem, cache=cache, jacobian=jacobian)
