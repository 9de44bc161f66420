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
from torch.func import jvp, linearize, vjp

from hesskit.engine.dense_blocks import dense_chain, dense_matrix
from hesskit.engine.purity import forward_mode_mismatch, in_place_operation
from hesskit.errors import InvalidArgumentError, UnsupportedArchitectureError
from hesskit.memory import check_dense_fits
from hesskit.operators.base import ProblemOperator, apply_columns
from hesskit.operators.diagonals import exact_diagonal
from hesskit.problem import Batch, Problem, nondeterministic_error

Params = dict[str, Tensor]


class OutputLinearization:
    """The network outputs of one batch linearized at θ₀: z₀, v ↦ J v and u ↦ Jᵀ u.

    One ``torch.func.vjp`` of f(·, X) runs the only forward pass and gives Jᵀ u. J v comes
    one of three ways, all exact; each is used only where it is shown to apply to the model
    at hand, for this batch:

    * ``"double_vjp"``: the vjp of the vjp function. No forward pass is re-run and nothing
      is traced. The default for models without convolutions.
    * ``"jvp"``: forward-mode AD (``torch.func.jvp``), which re-runs the forward pass with
      tangents: no tracing, so the first product is cheap (2.2-3.0 gradients with the vjp
      on the models of ``benchmarks/architectures.py``), and in-place
      operations in ``forward`` are handled exactly. At the first product one jvp along
      its first direction checks it: its primal outputs must equal z₀ bit for bit (the
      determinism check of this path), and it falls back to the double-vjp (same values,
      after ``Problem.check_deterministic``) where an operation has no forward-AD formula
      or where forward and reverse mode are known to disagree (an embedding's padding
      row: :func:`hesskit.engine.purity.forward_mode_mismatch`).
    * ``"linearize"``: the tangent pass of ``torch.func.linearize`` (the primal values
      folded into a traced graph), cheapest to reuse on convolutions (torch 2.13's double
      backward of a convolution also computes a weight term J v never uses). Tracing
      costs about 4-6 gradients, and the traced map is stateful when ``forward`` mutates a
      tensor in place, so it is taken only (a) after ``TRACE_AFTER`` products of this
      batch, (b) where one recorded forward pass is proved free of in-place operations
      (:func:`hesskit.engine.purity.in_place_operation`), and (c) once its tangent,
      evaluated twice, equals the forward-mode J v bit for bit. The same bitwise check is
      repeated on products 2^k, so a result checked once is not trusted for ever. Since
      the traced tangent is the forward-mode computation with its primal part folded,
      switching changes no bit of any product. Measured with
      ``benchmarks/architectures.py``: reused GGN products 1.6 → 1.0 gradients on the CNN,
      1.9 → 1.5 on the residual net.

    ``"auto"`` is forward-mode AD then the traced map for models with convolutions, the
    double-vjp otherwise.

    Args:
        problem: the model, loss and data.
        params: the parameters θ₀ by name.
        inputs: the batch inputs X.
        method: ``"auto"``, ``"double_vjp"``, ``"jvp"`` or ``"linearize"`` (forward-mode
            AD with tracing from the first product where (b) and (c) hold).
    """

    METHODS = ("auto", "double_vjp", "jvp", "linearize")
    TRACE_AFTER = 2
    """Forward-mode products of a batch before its tangent pass is traced (auto)."""

    def __init__(
        self, problem: Problem, params: Params, inputs: object, method: str = "auto"
    ) -> None:
        def output(p: Params) -> Tensor:
            return problem.output(p, inputs)

        self._output, self._params, self._model = output, params, problem.model
        self._check_deterministic = lambda: problem.check_deterministic(
            params, inputs, self.outputs
        )
        self.outputs, self._transposed = vjp(output, params)
        self.outputs = self.outputs.detach()
        convolutional = _has_convolution(problem.model)
        self._may_trace = method == "linearize" or (method == "auto" and convolutional)
        self._trace_after = 0 if method == "linearize" else self.TRACE_AFTER
        if method == "auto":
            method = "jvp" if convolutional else "double_vjp"
        self.method = "jvp" if method == "linearize" else method
        if self.method == "double_vjp":  # forward mode checks determinism at its first use
            self._check_deterministic()
        self.products = 0
        self._tangent: Callable | None = None
        self._forward: Callable | None = None
        self._pending: tuple[Params, Tensor] | None = None
        self.trace_refused: str | None = None
        """Why the traced map is not used, once that is known."""

    def prepare(self, v: Params) -> None:
        """Choose how J v is computed for the next product call, with its first direction
        ``v``: at the first call forward-mode AD is tried (and checked against z₀); later,
        tracing is attempted and the traced map re-checked as the class docstring says.
        Call once per product call, outside ``vmap``."""
        self.products += 1
        if self.method == "jvp" and self.products == 1:
            self._check_forward_mode(v)
        if self.method == "jvp" and self._may_trace and self.products > self._trace_after:
            self._may_trace = False
            self._trace(v)
        elif self.method == "linearize" and self.products & (self.products - 1) == 0:
            self._verify_trace(v)

    def _check_forward_mode(self, v: Params) -> None:
        """Forward mode applies: no module where it disagrees with reverse mode, a
        forward-AD formula for every operation, and the primal outputs of a jvp along the
        first direction equal to z₀ bit for bit (else the model is not one fixed
        function); otherwise the double-vjp."""
        reason = forward_mode_mismatch(self._model)
        if reason is None:
            try:
                outputs, tangent = jvp(self._output, (self._params,), (v,))
            except (NotImplementedError, RuntimeError) as error:
                if isinstance(error, RuntimeError) and "forward" not in str(error).lower():
                    raise
                reason = f"no forward-AD formula: {error}"
            else:
                if not torch.equal(outputs, self.outputs):
                    raise nondeterministic_error("a forward pass with tangents")
                self._pending = (v, tangent)  # the first product's own J v
        if reason is not None:
            self.method, self._may_trace = "double_vjp", False
            self.trace_refused = f"forward-mode AD unavailable: {reason}"
            self._check_deterministic()

    def _trace(self, v: Params) -> None:
        mutation = in_place_operation(lambda: self._output(self._params))
        if mutation is not None:
            self.trace_refused = f"forward changes a tensor in place ({mutation})"
            return
        self._tangent = _traced_tangent(self._output, self._params)
        if self._tangent is None:
            self.trace_refused = "torch.func.linearize could not trace the forward pass"
            return
        self.method = "linearize"
        self._verify_trace(v)

    def _verify_trace(self, v: Params) -> None:
        """The traced tangent, twice, equals forward-mode J v bit for bit; else dropped."""
        reference = jvp(self._output, (self._params,), (v,))[1]
        first, second = self._tangent(v), self._tangent(v)
        if not (torch.equal(first, reference) and torch.equal(second, reference)):
            self._tangent, self.method = None, "jvp"
            self.trace_refused = "the traced tangent pass disagreed with forward-mode AD"

    def jacobian_vector(self, v: Params) -> Tensor:
        """J v for one parameter-shaped direction v; shaped like the outputs."""
        if self._pending is not None and v is self._pending[0]:  # checked in prepare
            tangent, self._pending = self._pending[1], None
            return tangent
        if self.method == "linearize":
            return self._tangent(v)
        if self.method == "jvp":
            return jvp(self._output, (self._params,), (v,))[1]
        if self._forward is None:
            _, self._forward = vjp(self._transposed, torch.zeros_like(self.outputs))
        return self._forward((v,))[0]

    def apply(self, product: Callable[[Params], Params], V: Params) -> Params:
        """``product`` (built on :meth:`jacobian_vector`) on the K columns of ``V``
        (``[K, *shape]``), after :meth:`prepare` with the first column: one column is
        passed straight through, so the J v that ``prepare`` computed to check forward
        mode is the product's own (no second jvp); several are vmapped."""
        first = {name: t[0] for name, t in V.items()}
        self.prepare(first)
        if next(iter(V.values())).shape[0] == 1:
            return {name: t.unsqueeze(0) for name, t in product(first).items()}
        self._pending = None
        return apply_columns(product, V)

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
        jacobian: how J v is computed: ``"auto"`` (forward-mode AD, then a traced
            linearization where proved safe, for models with convolutions; else the
            double-vjp), ``"double_vjp"``, ``"jvp"`` or ``"linearize"``; see
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

        return lin.apply(product, V)

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
