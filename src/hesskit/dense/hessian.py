"""The exact dense Hessian H of a small network's loss, split as H = G + R.

* H = ∇²_θ L(θ), the Hessian of the total loss L = Σ_b w_b ℓ(f(θ, X_b), y_b) of a
  :class:`~hesskit.problem.Problem`, ``[N, N]`` in the model's dtype;
* G = Σ_n J_nᵀ H_ℓ,n J_n, the generalized Gauss-Newton matrix (J_n the output Jacobian of
  sample n, H_ℓ,n the loss's Hessian in the outputs);
* R = H − G = Σ_n Σ_k (∂ℓ/∂z_nk) ∇²_θ z_nk, the part from the network's own second
  derivatives. G and R are computed separately (R is not a difference of two rounded
  matrices), so exact zeros stay exact.

The build is refused before any allocation if it would not fit the memory budget
(:mod:`hesskit.dense.cost`). Cost: ≈ 2·n·N² flops for a Linear chain, about four forward
passes per column otherwise.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(1, 1, bias=False)).double()
    >>> with torch.no_grad():
    ...     _ = model[0].weight.fill_(3.0)
    >>> X = torch.tensor([[2.0]], dtype=torch.float64)
    >>> result = hessian(model, nn.MSELoss(), (X, torch.zeros(1, 1, dtype=torch.float64)))
    >>> round(result.matrix().item(), 12)  # L = (w x)², so ∂²L/∂w² = 2 x² = 8
    8.0
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from hesskit.dense.builders import Method, Progress, fill, finish, groups, resolve
from hesskit.dense.cost import check_fits, default_chunk_size, memory_estimate
from hesskit.dense.spectrum import Spectrum, spectrum
from hesskit.errors import InvalidArgumentError
from hesskit.layout import ParameterLayout
from hesskit.problem import Data, Problem


class Part(enum.Enum):
    """Which of the three matrices."""

    HESSIAN = "H"
    GAUSS_NEWTON = "G"
    RESIDUAL = "R"


@dataclass
class DenseHessian:
    """H (and G, R when split) of a problem at the parameters it was built at.

    Attributes:
        layout: where each parameter lives in the rows and columns.
        hessian: H, ``[N, N]``.
        gauss_newton: G, or None when built without the split.
        residual: R, or None when built without the split.
        method: how it was computed.
        problem: the problem (model, loss, data) it was built from.
        parameters: the parameter values it was built at (detached copies).
    """

    layout: ParameterLayout
    hessian: Tensor
    gauss_newton: Tensor | None
    residual: Tensor | None
    method: Method
    problem: Problem = field(repr=False)
    parameters: dict[str, Tensor] = field(repr=False, default_factory=dict)

    def matrix(self, part: Part | str = Part.HESSIAN) -> Tensor:
        """The flat dense ``[N, N]`` matrix H, G or R."""
        part = _part(part)
        chosen = {
            Part.HESSIAN: self.hessian,
            Part.GAUSS_NEWTON: self.gauss_newton,
            Part.RESIDUAL: self.residual,
        }[part]
        if chosen is None:
            raise InvalidArgumentError(
                f"{part.value} was not computed; build with split=True to get G and R"
            )
        return chosen

    def block(self, rows: str, columns: str, part: Part | str = Part.HESSIAN) -> Tensor:
        """The ``[size(rows), size(columns)]`` block of two parameter tensors (a view)."""
        return self.matrix(part)[self.layout.slice(rows), self.layout.slice(columns)]

    def blocks(self, part: Part | str = Part.HESSIAN) -> dict[tuple[str, str], Tensor]:
        """Every block, keyed by ``(row parameter, column parameter)``."""
        names = self.layout.names
        return {(r, c): self.block(r, c, part) for r in names for c in names}

    def label(self, index: int) -> str:
        """The label of row/column ``index``, e.g. ``"layer2.weight[3, 1]"``."""
        return self.layout.label(index)

    def labels(self) -> list[str]:
        return self.layout.labels()

    def spectrum(self, part: Part | str = Part.HESSIAN) -> Spectrum:
        """All eigenvalues of H, G or R with the count of negative ones (O(N³))."""
        return spectrum(self.matrix(part), _part(part).value)


def hessian_of(
    problem: Problem,
    *,
    split: bool = True,
    method: Method | str = Method.AUTO,
    memory_budget: int | str | None = None,
    chunk_size: int | None = None,
    progress: Progress | None = None,
) -> DenseHessian:
    """The dense H (and G, R with ``split``) of a :class:`Problem` at its current parameters.

    Args:
        problem: model, loss and data (one batch or a list of batches of any sizes).
        split: also compute G and R (three N×N matrices instead of one).
        method: :class:`Method` (default: the fastest that applies).
        memory_budget: bytes (or ``"2GB"``) the build may use; default
            :func:`hesskit.dense.cost.default_memory_budget`.
        chunk_size: columns per chunk for the autodiff method.
        progress: called as ``progress(done, total)`` during the build.

    Raises:
        TooLargeError: before any allocation, if the build would exceed the budget.
    """
    estimate = memory_estimate(
        problem, split=split, memory_budget=memory_budget, chunk_size=chunk_size
    )
    check_fits(estimate)
    problem.check_finite_parameters()
    if chunk_size is not None and chunk_size < 1:
        raise InvalidArgumentError(f"chunk_size {chunk_size} must be at least 1")
    chosen = resolve(problem, method)
    n, dtype, device = problem.num_params, problem.dtype, problem.device
    at = {name: p.detach().clone() for name, p in problem.parameters().items()}
    itemsize = torch.empty((), dtype=dtype).element_size()
    chunk = chunk_size or default_chunk_size(n, itemsize)
    first = torch.zeros(n, n, dtype=dtype, device=device)
    second = torch.zeros(n, n, dtype=dtype, device=device) if split else first
    fill(problem, chosen, first, second, split, chunk, progress)
    ranges = groups(problem, chosen)
    finish(first, ranges)
    if not split:
        return DenseHessian(problem.layout, first, None, None, chosen, problem, at)
    finish(second, ranges)
    return DenseHessian(problem.layout, first + second, first, second, chosen, problem, at)


def hessian(
    model: nn.Module,
    loss: nn.Module,
    data: Data,
    params: Iterable[str] | None = None,
    *,
    split: bool = True,
    method: Method | str = Method.AUTO,
    memory_budget: int | str | None = None,
    chunk_size: int | None = None,
    progress: Progress | None = None,
) -> DenseHessian:
    """The dense H = G + R of ``loss(model(X), y)`` over ``data`` (see :func:`hessian_of`).

    Args:
        model: any ``nn.Module`` in float32 or float64.
        loss: ``nn.MSELoss``, ``nn.CrossEntropyLoss``, ``nn.BCEWithLogitsLoss`` or a
            ``hesskit.losses.Loss``.
        data: ``(inputs, targets)`` or a list of such batches (sizes may differ).
        params: names of the parameters (default: all that require grad).
        split: as for :func:`hessian_of` (also compute G and R).
        method: as for :func:`hessian_of`.
        memory_budget: as for :func:`hessian_of`.
        chunk_size: as for :func:`hessian_of`.
        progress: as for :func:`hessian_of`.

    Raises:
        TooLargeError: before any allocation, if the build would exceed the budget.
    """
    return hessian_of(
        Problem(model, loss, data, params),
        split=split,
        method=method,
        memory_budget=memory_budget,
        chunk_size=chunk_size,
        progress=progress,
    )


def _part(part: Part | str) -> Part:
    try:
        return Part(part.value if isinstance(part, Part) else part)
    except ValueError:
        raise InvalidArgumentError(f"unknown matrix {part!r}; use 'H', 'G' or 'R'") from None
