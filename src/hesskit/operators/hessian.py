"""The Hessian H = ∇²L(θ) = Σ_b w_b ∇²ℓ_b as a linear operator.

Each batch's gradient function θ ↦ ∇ℓ_b(θ) is differentiated once in reverse mode
(``torch.func.vjp(torch.func.grad(ℓ_b))``, Pearlmutter 1994 / reverse-over-reverse):
building it is one forward and one backward pass, kept in memory, and each product H_b v
after that is one backward pass through the gradient's graph (about 1.8 gradients on an
MLP; no forward pass is re-run). H is symmetric and in general indefinite.

Why not forward-over-reverse: ``jvp(grad(ℓ))`` re-runs the forward and backward passes on
every product, and ``torch.func.linearize(jacrev(ℓ))`` silently returns zeros on torch
2.13; ``linearize(grad(ℓ))`` is correct but no faster than the vjp here, traces the model
twice and does not vectorize under ``vmap``.
"""

from __future__ import annotations

from torch import Tensor
from torch.func import grad, vjp

from hesskit.operators.base import ProblemOperator, apply_columns
from hesskit.problem import Batch, Problem

Params = dict[str, Tensor]


class HessianOperator(ProblemOperator):
    """H = Σ_b w_b ∇²_θ ℓ(f(θ, X_b), y_b): symmetric, not positive semi-definite.

    Args:
        problem: the model, loss and data.
        cache: keep each batch's differentiated gradient (its forward and backward graphs)
            between products. ``None`` (default) keeps them when the data have at most
            ``max_cached_batches`` batches; ``False`` rebuilds them on every product call
            (one forward and one backward pass per batch per call, memory of one batch).
    """

    symmetric = True
    psd = False

    def __init__(self, problem: Problem, cache: bool | None = None) -> None:
        super().__init__(problem, cache=cache)

    def _hessian_vector(self, batch: Batch):
        def batch_loss(params: Params) -> Tensor:
            return self.problem.batch_loss(params, batch.inputs, batch.targets)

        _, transposed_hessian = vjp(grad(batch_loss), self.params)
        return lambda v: transposed_hessian(v)[0]

    def _matmat_batch(self, batch: Batch, V: Params) -> Params:
        return apply_columns(self.per_batch(batch, self._hessian_vector), V)


def hessian_operator(problem: Problem, cache: bool | None = None) -> HessianOperator:
    """The Hessian of the total loss of ``problem`` as a linear operator."""
    return HessianOperator(problem, cache=cache)
