"""The one abstraction for a curvature matrix: a symmetric N×N linear operator.

``CurvatureOperator`` supplies everything but the product itself: ``matvec`` / ``matmat`` /
``@`` for flat tensors and for parameter-shaped dicts or lists, ``to_dense``, ``to_scipy``,
``diagonal``, ``trace`` and ``block`` (the restriction to some parameters). A subclass
implements ``_matmat(V)`` on flat ``[N, K]`` tensors, and overrides ``diagonal`` or
``to_dense`` where it knows a cheaper exact way (the Hessian and Gauss-Newton operators do,
through the structural engine).

``ProblemOperator`` is the base of the matrices of a ``Problem`` (Hessian, Gauss-Newton,
Fisher): it sums per-batch products with the batch weights, so a subclass implements only
``_matmat_batch(batch, V)``. The operator is the matrix at the parameters it was built at;
build a new one after the parameters change. For a distributed ``Problem`` the per-rank
sums are added by ONE all-reduce of the ``[N, K]`` product per call, so every rank gets
the product of the matrix of all ranks' data (every rank must call it, with the same V).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor
from torch.func import vmap

from hesskit.compiled import parameter_name
from hesskit.describe import dtype_name, layout_text
from hesskit.distributed import all_reduce_sum
from hesskit.errors import InvalidArgumentError, UnsupportedArchitectureError
from hesskit.layout import ParameterLayout
from hesskit.memory import check_dense_fits
from hesskit.problem import Batch, Problem, accumulation_dtype

Vector = Tensor | Mapping[str, Tensor] | Sequence[Tensor]
T = TypeVar("T")


class CurvatureOperator(ABC):
    """A linear operator A: R^N → R^N on the flat parameter layout.

    Attributes:
        layout: the parameter layout of the vectors it acts on.
        symmetric: A = Aᵀ.
        psd: A is positive semi-definite (e.g. the Gauss-Newton matrix of a convex loss).
    """

    symmetric: bool = True
    psd: bool = False

    def __init__(self, layout: ParameterLayout, dtype: torch.dtype, device: torch.device) -> None:
        self.layout = layout
        self.dtype = dtype
        self.device = torch.device(device)

    @property
    def shape(self) -> tuple[int, int]:
        n = self.layout.num_params
        return (n, n)

    def __repr__(self) -> str:
        """One line: the kind of matrix, N, dtype, device, its properties and its blocks,
        e.g. ``HessianOperator(N=1210, float64, cpu, symmetric, blocks=[0.weight 16×64, …])``."""
        properties = [f"N={self.shape[0]}", dtype_name(self.dtype), str(self.device)]
        properties += [flag for flag, on in (("symmetric", self.symmetric), ("psd", self.psd))
                       if on]
        properties += [f"{key}={value}" for key, value in self._repr_fields().items()]
        blocks = layout_text(self.layout.names, self.layout.shapes)
        return f"{type(self).__name__}({', '.join(properties)}, blocks={blocks})"

    def _repr_fields(self) -> dict[str, object]:
        """What else ``repr`` shows (a subclass adds its own settings: damping, batches)."""
        return {}

    @abstractmethod
    def _matmat(self, V: Tensor) -> Tensor:
        """A V for a flat ``[N, K]`` tensor V (in the operator's dtype and device)."""

    def matvec(self, v: Vector) -> Vector:
        """A v, for v flat ``[N]`` or parameter-shaped (dict or list); returns the same form."""
        flat, form = self._to_flat(v, batch_dims=0)
        return self._from_flat(self._matmat(flat.unsqueeze(1)).squeeze(1), form, batch_dims=0)

    def matmat(self, V: Vector) -> Vector:
        """A V for K vectors: flat ``[N, K]``, or parameter-shaped ``[K, *shape]`` dict/list."""
        if isinstance(V, Tensor):
            self._check_flat(V, ndim=2)
            return self._matmat(V.to(self.dtype))
        flat, form = self._to_flat(V, batch_dims=1)
        return self._from_flat(self._matmat(flat.T).T, form, batch_dims=1)

    def __matmul__(self, x: Vector) -> Vector:
        if isinstance(x, Tensor) and x.ndim == 2:
            return self.matmat(x)
        return self.matvec(x)

    def to_dense(self, chunk_size: int = 256) -> Tensor:
        """The N×N matrix, built column block by column block (A applied to the identity).

        Cost: N products (``chunk_size`` at a time); memory N² entries, checked against the
        memory budget first (:func:`hesskit.memory.check_dense_fits`).

        Raises:
            TooLargeError: before anything is allocated, when N² entries exceed the budget.
        """
        n = self.shape[0]
        check_dense_fits(n, self.dtype, what=f"the dense {type(self).__name__}")
        dense = torch.empty(n, n, dtype=self.dtype, device=self.device)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            eye = torch.zeros(n, stop - start, dtype=self.dtype, device=self.device)
            eye[torch.arange(start, stop), torch.arange(stop - start)] = 1
            dense[:, start:stop] = self._matmat(eye)
        return dense

    def diagonal(self) -> Tensor:
        """diag(A) exactly, flat ``[N]``.

        An operator known only through its products has no exact diagonal cheaper than N
        products; this base version refuses and names the estimator. Subclasses with an
        exact method override it (explicit matrices, sums and dampings of such operators,
        the Gauss-Newton and empirical-Fisher operators, the Hessian of a proved chain).

        Raises:
            UnsupportedArchitectureError: no exact diagonal is available.
        """
        raise UnsupportedArchitectureError(
            f"{type(self).__name__} has no exact diagonal cheaper than its N = "
            f"{self.shape[0]} unit products; estimate it with "
            "hesskit.hutchinson_diagonal(op), or read op.to_dense().diagonal() when N is small"
        )

    def trace(self) -> float:
        """tr(A) = Σ_i A_ii exactly, from :meth:`diagonal` (same cost; raises as it does)."""
        return float(self.diagonal().sum())

    def block(self, names: Sequence[str]) -> CurvatureOperator:
        """The restriction P A Pᵀ of A to the parameters ``names`` (a principal submatrix).

        Its vectors live on those parameters only (in this operator's layout order). The
        generic restriction multiplies by the full A with zeros elsewhere (one full product
        per product); problem operators restrict the problem instead, which differentiates
        only those parameters (cheaper).
        """
        from hesskit.operators.algebra import BlockOperator

        return BlockOperator(self, names)

    def to_scipy(self) -> LinearOperator:
        """A ``scipy.sparse.linalg.LinearOperator`` for ``eigsh``, ``cg``, ``minres``."""
        dtype = torch.empty((), dtype=self.dtype).numpy().dtype

        def product(x: np.ndarray) -> np.ndarray:
            V = torch.as_tensor(np.asarray(x, dtype=dtype), device=self.device)
            column = V.ndim == 1
            out = self._matmat(V.reshape(self.shape[0], -1))
            out = out.detach().cpu().numpy()
            return out.ravel() if column else out

        return LinearOperator(
            self.shape, matvec=product, rmatvec=product, matmat=product, dtype=dtype
        )

    def _check_flat(self, V: Tensor, ndim: int) -> None:
        if V.ndim != ndim or V.shape[0] != self.shape[0]:
            expected = "[N]" if ndim == 1 else "[N, K]"
            raise InvalidArgumentError(
                f"expected a tensor shaped {expected} with N = {self.shape[0]}, "
                f"got {tuple(V.shape)}"
            )

    def _to_flat(self, v: Vector, batch_dims: int) -> tuple[Tensor, str]:
        if isinstance(v, Tensor):
            self._check_flat(v, ndim=1 + batch_dims)
            return v.to(self.dtype), "flat"
        form = "dict" if isinstance(v, Mapping) else "list"
        flat = self.layout.flatten(v, batch_dims=batch_dims).to(self.dtype)
        return flat, form

    def _from_flat(self, flat: Tensor, form: str, batch_dims: int) -> Vector:
        if form == "flat":
            return flat
        pieces = self.layout.unflatten(flat)
        return pieces if form == "dict" else list(pieces.values())


class MatrixOperator(CurvatureOperator):
    """An explicit symmetric matrix as an operator (for tests, and for small dense problems)."""

    def __init__(self, matrix: Tensor, layout: ParameterLayout | None = None, psd: bool = False):
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise InvalidArgumentError(f"expected a square matrix, got {tuple(matrix.shape)}")
        layout = layout or ParameterLayout(("x",), (torch.Size([matrix.shape[0]]),))
        super().__init__(layout, matrix.dtype, matrix.device)
        self.matrix = matrix
        self.psd = psd

    def _matmat(self, V: Tensor) -> Tensor:
        return self.matrix @ V

    def diagonal(self) -> Tensor:
        """The matrix's diagonal (read, exact)."""
        return self.matrix.diagonal().clone()

    def to_dense(self, chunk_size: int = 256) -> Tensor:
        """A copy of the matrix."""
        return self.matrix.clone()


class ProblemOperator(CurvatureOperator):
    """A curvature matrix of a ``Problem``: A = Σ_b w_b A_b over the batches.

    Subclasses implement ``_matmat_batch(batch, V)`` returning A_b V for parameter-shaped
    ``V`` (dict of ``[K, *shape]`` tensors) and may cache per-batch work (the linearization)
    with ``per_batch(batch, build)``, since the operator is fixed at the parameters it was
    built at.

    Args:
        problem: the model, loss and data.
        cache: keep per-batch work between products (memory: about one forward and one
            backward pass of activations per batch). ``None`` keeps it when the data have at
            most ``max_cached_batches`` batches; ``False`` rebuilds it on every call.
    """

    max_cached_batches: int = 16
    """With ``cache=None``, per-batch work is kept when the data have at most this many batches."""

    def __init__(self, problem: Problem, cache: bool | None = None) -> None:
        super().__init__(problem.layout, problem.dtype, problem.device)
        self.problem = problem
        self.params = {name: p.detach().clone() for name, p in problem.parameters().items()}
        check = getattr(problem, "check_finite_parameters", None)
        if check is not None:
            check(self.params)
        if cache is None:  # a stream may yield other batches (shuffled) on the next pass
            cache = not problem.streamed and problem.num_batches <= self.max_cached_batches
        self.cache = cache
        self._per_batch: dict[int, object] = {}

    def _repr_fields(self) -> dict[str, object]:
        return {"samples": self.problem.num_data, "batches": self.problem.num_batches,
                "cache": self.cache}

    def block(self, names: Sequence[str]) -> CurvatureOperator:
        """The same matrix of the problem restricted to the parameters ``names``: the
        principal submatrix, with only those parameters differentiated (cheaper than the
        generic restriction). The others stay at the values this operator was built at."""
        names = [parameter_name(name) for name in names]  # as before torch.compile
        unknown = sorted(set(names) - set(self.layout.names))
        if unknown:
            raise InvalidArgumentError(
                f"no parameters named {unknown} in this operator; known: "
                f"{', '.join(self.layout.names)}"
            )
        return self._restricted(self.problem.with_params(names))

    def _restricted(self, problem: Problem) -> ProblemOperator:
        """This kind of operator on ``problem`` (same options); subclasses with more
        constructor options override it."""
        return type(self)(problem, cache=self.cache)

    def per_batch(self, batch: Batch, build: Callable[[Batch], T]) -> T:
        """``build(batch)``, computed once per batch and kept when ``self.cache`` is on.

        With ``cache=False`` it is rebuilt on every call: memory stays at one batch's
        worth, at the price of one forward pass per batch per product call.
        """
        if not self.cache:
            return build(batch)
        if batch.index not in self._per_batch:
            self._per_batch[batch.index] = build(batch)
        return self._per_batch[batch.index]  # type: ignore[return-value]

    def clear_cache(self) -> None:
        """Drop the per-batch work kept so far (it is rebuilt on the next product)."""
        self._per_batch.clear()

    @abstractmethod
    def _matmat_batch(self, batch: Batch, V: dict[str, Tensor]) -> dict[str, Tensor]:
        """A_b V for one batch's loss (unweighted), V a dict of ``[K, *shape]`` tensors."""

    def _matmat(self, V: Tensor) -> Tensor:
        # torch.func transforms ignore an outer no_grad; it keeps the model's own parameters
        # that are not differentiated (requires_grad, outside ``params``) out of the result.
        with torch.no_grad():
            return self._summed_matmat(V)

    def _summed_matmat(self, V: Tensor) -> Tensor:
        pieces = self.layout.unflatten(V.T.contiguous())
        accumulate = accumulation_dtype(self.dtype)
        total = None
        for batch in self.problem.batches():
            product = self.layout.flatten(self._matmat_batch(batch, pieces), batch_dims=1)
            product = product.to(accumulate)
            if batch.weight != 1:
                product = product.mul_(batch.weight)
            total = product if total is None else total.add_(product)
        if total is None:  # a rank without data (distributed) contributes zero
            total = torch.zeros(V.shape[1], V.shape[0], dtype=accumulate, device=self.device)
        if self.problem.distributed:
            total = all_reduce_sum(total.contiguous())
        return total.T.to(self.dtype)


def apply_columns(
    product: Callable[[dict[str, Tensor]], dict[str, Tensor]],
    V: dict[str, Tensor],
    chunk_size: int | None = 32,
) -> dict[str, Tensor]:
    """Apply a one-vector ``product`` to each of the K columns of ``V`` (``[K, *shape]``).

    One vector is passed straight through; several are vectorized with ``torch.func.vmap``
    (``chunk_size`` columns at a time, to bound the memory of the batched intermediates).
    """
    if next(iter(V.values())).shape[0] == 1:
        out = product({name: t[0] for name, t in V.items()})
        return {name: t.unsqueeze(0) for name, t in out.items()}
    return vmap(product, chunk_size=chunk_size)(V)
