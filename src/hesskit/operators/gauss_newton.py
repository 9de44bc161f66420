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

import torch
from torch import Tensor
from torch.func import vjp

from hesskit.engine.dense_blocks import dense_chain, dense_matrix
from hesskit.errors import UnsupportedArchitectureError
from hesskit.memory import check_dense_fits
from hesskit.operators.base import ProblemOperator, apply_columns
from hesskit.operators.diagonals import exact_diagonal
from hesskit.problem import Batch, Problem

Params = dict[str, Tensor]


class OutputLinearization:
    """The network outputs of one batch linearized at θ₀: z₀, v ↦ J v and u ↦ Jᵀ u.

    One ``torch.func.vjp`` of f(·, X) runs the only forward pass and gives Jᵀ u. J v is
    the transpose of that linear map, obtained as the vjp of the vjp function (the
    "double-vjp" trick), so it needs no second forward pass either: ``torch.func.linearize``
    would trace f again, and forward-mode ``jvp`` would re-run the forward pass every call.
    """

    def __init__(self, problem: Problem, params: Params, inputs: Tensor) -> None:
        self.outputs, self._transposed = vjp(lambda p: problem.output(p, inputs), params)
        self.outputs = self.outputs.detach()
        _, self._forward = vjp(self._transposed, torch.zeros_like(self.outputs))

    def jacobian_vector(self, v: Params) -> Tensor:
        """J v for one parameter-shaped direction v; shaped like the outputs."""
        return self._forward((v,))[0]

    def jacobian_transpose_vector(self, u: Tensor) -> Params:
        """Jᵀ u for one output-shaped u; parameter-shaped."""
        return self._transposed(u)[0]


class LinearizedOutputOperator(ProblemOperator):
    """Base of the matrices Σ_b w_b J_bᵀ M_b J_b: keeps each batch's ``OutputLinearization``."""

    def linearization(self, batch: Batch) -> OutputLinearization:
        """The batch's cached (or fresh, with ``cache=False``) output linearization."""
        return self.per_batch(
            batch, lambda b: OutputLinearization(self.problem, self.params, b.inputs)
        )


class GaussNewtonOperator(LinearizedOutputOperator):
    """G = Σ_b w_b J_bᵀ H_ℓ(z_b, y_b) J_b: symmetric, PSD iff the loss is convex in z.

    Args:
        problem: the model, loss and data.
        cache: keep each batch's linearization (its forward and backward graphs) between
            products. ``None`` (default) keeps them when the data have at most
            ``max_cached_batches`` batches; ``False`` rebuilds them on every product call
            (one forward pass per batch per call, memory of one batch).
    """

    symmetric = True

    def __init__(self, problem: Problem, cache: bool | None = None) -> None:
        super().__init__(problem, cache=cache)
        self.psd = bool(problem.loss.convex)

    def _matmat_batch(self, batch: Batch, V: Params) -> Params:
        lin = self.linearization(batch)
        loss, z, y = self.problem.loss, lin.outputs, batch.targets

        def product(v: Params) -> Params:
            u = loss.hessian_vector(z, y, lin.jacobian_vector(v))
            return lin.jacobian_transpose_vector(u)

        return apply_columns(product, V)

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


def gauss_newton_operator(problem: Problem, cache: bool | None = None) -> GaussNewtonOperator:
    """The generalized Gauss-Newton matrix of ``problem`` as a linear operator."""
    return GaussNewtonOperator(problem, cache=cache)
