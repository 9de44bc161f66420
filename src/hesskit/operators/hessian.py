"""The Hessian H = ∇²L(θ) = Σ_b w_b ∇²ℓ_b as a linear operator.

Two exact ways to multiply by one batch's Hessian, chosen per operator:

* ``HessianMethod.CHAIN`` (for models that the structural engine proves to be a chain of
  ``nn.Linear`` layers and elementwise activations, the common MLP): forward-over-reverse
  written by hand (:mod:`hesskit.engine.hessian_product`). The primal forward and backward
  passes are kept per batch; a product runs only the tangent passes, K vectors per matrix product.
  About 1.8 gradients on Martens' autoencoder and 1.35 on a small ReLU classifier, which is
  the multiply-add floor of an exact product through dense layers (see that module).
* ``HessianMethod.TORCH_FUNC`` (any other model): the gradient function θ ↦ ∇ℓ_b(θ) is
  differentiated once in reverse mode (``torch.func.vjp(torch.func.grad(ℓ_b))``,
  reverse-over-reverse): building it is one forward and one backward pass, kept in memory,
  and each product H_b v is one backward pass through the gradient's graph (about 1.4-1.85
  gradients on an MLP), K vectors under ``vmap``. A plain ``torch.autograd.grad`` through
  the kept graph was measured no faster (1.50 vs 1.36 gradients on the classifier of
  ``benchmarks/products.py``, 1.93 vs 1.85 on the autoencoder, one thread), and
  forward-over-reverse with ``torch.func`` re-runs the forward and backward passes on
  every product (``linearize(jacrev(ℓ))`` silently returns zeros on torch 2.13).

H is symmetric and in general indefinite.
"""

from __future__ import annotations

import enum

from torch import Tensor
from torch.func import grad, vjp

from hesskit.engine import ChainHessian, primal_pass, problem_chain
from hesskit.engine.dense_blocks import dense_chain, dense_matrix
from hesskit.errors import UnsupportedArchitectureError
from hesskit.memory import check_dense_fits
from hesskit.operators.base import ProblemOperator, apply_columns
from hesskit.operators.diagonals import exact_diagonal
from hesskit.problem import Batch, Problem

Params = dict[str, Tensor]


class HessianMethod(enum.Enum):
    """How a ``HessianOperator`` multiplies by a batch's Hessian."""

    CHAIN = "forward-over-reverse by hand through a chain of layers"
    TORCH_FUNC = "torch.func.vjp of torch.func.grad, kept per batch"


class _TorchFuncHessian:
    """One batch's v ↦ ∇²ℓ_b v by ``torch.func.vjp(grad(ℓ_b))``: works for any model. The
    outputs of its forward pass are checked against one more forward pass
    (``Problem.check_deterministic``)."""

    def __init__(self, problem: Problem, params: Params, batch: Batch) -> None:
        def batch_loss(p: Params) -> tuple[Tensor, Tensor]:
            outputs = problem.output(p, batch.inputs)
            return problem.loss.value(outputs, batch.targets), outputs.detach()

        _, self._transposed_hessian, outputs = vjp(
            grad(batch_loss, has_aux=True), params, has_aux=True
        )
        problem.check_deterministic(params, batch.inputs, outputs)

    def matmat(self, V: Params) -> Params:
        """∇²ℓ_b V for dicts of ``[K, *shape]`` (H = Hᵀ, so the vjp is the product)."""
        return apply_columns(lambda v: self._transposed_hessian(v)[0], V)


class HessianOperator(ProblemOperator):
    """H = Σ_b w_b ∇²_θ ℓ(f(θ, X_b), y_b): symmetric, not positive semi-definite.

    Args:
        problem: the model, loss and data.
        cache: keep each batch's linearization (primal passes, or the gradient's graph)
            between products. ``None`` (default) keeps them when the data have at most
            ``max_cached_batches`` batches; ``False`` rebuilds them on every product call
            (one forward and one backward pass per batch per call, memory of one batch).
        use_chain: ``None`` (default): the hand-written chain product where the model is a
            chain of supported layers, ``torch.func`` otherwise; ``True``: the chain
            product, or an ``UnsupportedArchitectureError`` at the first product;
            ``False``: ``torch.func``.

    Attributes:
        method: the ``HessianMethod`` in use, known after the first product (else None).
    """

    symmetric = True
    psd = False

    def __init__(
        self, problem: Problem, cache: bool | None = None, *, use_chain: bool | None = None
    ) -> None:
        super().__init__(problem, cache=cache)
        self.use_chain = use_chain
        self.method: HessianMethod | None = None if use_chain is not False else (
            HessianMethod.TORCH_FUNC
        )

    def _linearize(self, batch: Batch) -> ChainHessian | _TorchFuncHessian:
        if self.method is not HessianMethod.TORCH_FUNC:
            try:
                chain = problem_chain(self.problem, self.params, batch.inputs)
            except UnsupportedArchitectureError as error:
                if self.use_chain:
                    raise UnsupportedArchitectureError(
                        f"use_chain=True, but {error}; pass use_chain=None to fall back to "
                        "torch.func"
                    ) from None
                self.method = HessianMethod.TORCH_FUNC
            else:
                self.method = HessianMethod.CHAIN
                loss, targets = self.problem.loss, batch.targets
                primal = primal_pass(chain, loss, targets, self.params)
                return ChainHessian(primal, loss, targets, self.params)
        return _TorchFuncHessian(self.problem, self.params, batch)

    def _matmat_batch(self, batch: Batch, V: Params) -> Params:
        return self.per_batch(batch, self._linearize).matmat(V)

    def diagonal(self) -> Tensor:
        """diag(H) exactly, by per-sample curvature backpropagation through the chain the
        structural engine proves (about k backward passes per batch for k outputs).

        Raises:
            UnsupportedArchitectureError: the model is not a provable chain; the message
                names the estimator to use instead.
        """
        return exact_diagonal(self.problem, "hessian", params=self.params)

    def to_dense(self, chunk_size: int = 256) -> Tensor:
        """H as ``[N, N]``: the closed form for a proved Linear chain (≈ 2·n·N² flops),
        else N products. Checked against the memory budget first."""
        check_dense_fits(self.shape[0], self.dtype, what="the dense Hessian")
        if self.use_chain is not False:
            try:
                chain = dense_chain(self.problem, self.params)
            except UnsupportedArchitectureError:
                pass
            else:
                return dense_matrix(self.problem, "H", chain, self.params)
        return super().to_dense(chunk_size)

    def _restricted(self, problem: Problem) -> HessianOperator:
        return HessianOperator(problem, cache=self.cache, use_chain=self.use_chain)


def hessian_operator(
    problem: Problem, cache: bool | None = None, *, use_chain: bool | None = None
) -> HessianOperator:
    """The Hessian of the total loss of ``problem`` as a linear operator."""
    return HessianOperator(problem, cache=cache, use_chain=use_chain)
