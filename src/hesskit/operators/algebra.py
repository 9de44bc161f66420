"""Operators built from operators: sums, scalings, damping A + λI, diagonal matrices and the
restriction of an operator to a block of its parameters.

All act on the flat ``[N, K]`` layout of their operands, which must share a layout.
``symmetric`` and ``psd`` follow from the operands (e.g. A + λI is PSD when A is and λ ≥ 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from hesskit.compiled import parameter_name
from hesskit.errors import InvalidArgumentError
from hesskit.layout import ParameterLayout
from hesskit.operators.base import CurvatureOperator


def _finite(value: float, name: str) -> float:
    if isinstance(value, Tensor):
        value = float(value)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be a finite number, got {value!r}")
    return float(value)


class ScaledOperator(CurvatureOperator):
    """α A for a scalar α."""

    def __init__(self, operator: CurvatureOperator, scale: float) -> None:
        super().__init__(operator.layout, operator.dtype, operator.device)
        self.operator = operator
        self.scale = _finite(scale, "scale")
        self.symmetric = operator.symmetric
        self.psd = operator.psd and self.scale >= 0

    def _repr_fields(self) -> dict[str, object]:
        return {"scale": self.scale, "of": type(self.operator).__name__}

    def _matmat(self, V: Tensor) -> Tensor:
        return self.scale * self.operator.matmat(V)

    def diagonal(self) -> Tensor:
        """α diag(A), exact when A's is."""
        return self.scale * self.operator.diagonal()


class SumOperator(CurvatureOperator):
    """A_1 + A_2 + … for operators on the same parameter layout."""

    def __init__(self, operators: Sequence[CurvatureOperator]) -> None:
        operators = list(operators)
        if not operators:
            raise InvalidArgumentError("SumOperator needs at least one operator; pass a list")
        first = operators[0]
        for other in operators[1:]:
            if other.shape != first.shape:
                raise InvalidArgumentError(
                    f"cannot add operators of shapes {first.shape} and {other.shape}; "
                    "build them on the same parameters"
                )
        super().__init__(first.layout, first.dtype, first.device)
        self.operators = operators
        self.symmetric = all(op.symmetric for op in operators)
        self.psd = all(op.psd for op in operators)

    def _repr_fields(self) -> dict[str, object]:
        return {"of": " + ".join(type(op).__name__ for op in self.operators)}

    def _matmat(self, V: Tensor) -> Tensor:
        total = self.operators[0].matmat(V)
        for op in self.operators[1:]:
            total = total + op.matmat(V)
        return total

    def diagonal(self) -> Tensor:
        """Σ diag(A_j), exact when every operand's is."""
        return sum(op.diagonal() for op in self.operators)


class DiagonalOperator(CurvatureOperator):
    """diag(d) for a flat vector d of length N (PSD when every d_i ≥ 0)."""

    def __init__(self, diagonal: Tensor, layout: ParameterLayout | None = None) -> None:
        if not isinstance(diagonal, Tensor) or diagonal.ndim != 1:
            raise InvalidArgumentError("the diagonal must be a 1-D tensor of length N")
        layout = layout or ParameterLayout(("x",), (torch.Size([diagonal.shape[0]]),))
        if layout.num_params != diagonal.shape[0]:
            raise InvalidArgumentError(
                f"the diagonal has {diagonal.shape[0]} entries for {layout.num_params} "
                "parameters; pass one entry per parameter"
            )
        super().__init__(layout, diagonal.dtype, diagonal.device)
        self.entries = diagonal
        self.psd = bool((diagonal >= 0).all())

    def _matmat(self, V: Tensor) -> Tensor:
        return self.entries.unsqueeze(1) * V

    def diagonal(self) -> Tensor:
        """d itself (a copy)."""
        return self.entries.clone()


class DampedOperator(CurvatureOperator):
    """A + λI (Levenberg-Marquardt / Tikhonov damping); λ may be changed in place."""

    def __init__(self, operator: CurvatureOperator, damping: float) -> None:
        super().__init__(operator.layout, operator.dtype, operator.device)
        self.operator = operator
        self.damping = damping
        self.symmetric = operator.symmetric

    def _repr_fields(self) -> dict[str, object]:
        return {"damping": self._damping, "of": type(self.operator).__name__}

    @property
    def damping(self) -> float:
        """λ."""
        return self._damping

    @damping.setter
    def damping(self, value: float) -> None:
        self._damping = _finite(value, "damping")

    @property
    def psd(self) -> bool:  # type: ignore[override]
        return self.operator.psd and self._damping >= 0

    def _matmat(self, V: Tensor) -> Tensor:
        return self.operator.matmat(V) + self._damping * V

    def diagonal(self) -> Tensor:
        """diag(A) + λ, exact when A's is."""
        return self.operator.diagonal() + self._damping


class BlockOperator(CurvatureOperator):
    """P A Pᵀ: A restricted to the parameters ``names`` (rows and columns of those only).

    Each product pads V with zeros to the full layout, multiplies by A and keeps the rows of
    ``names``: one product of A per product. Exact diagonal: A's, restricted.
    """

    def __init__(self, operator: CurvatureOperator, names: Sequence[str]) -> None:
        names = [parameter_name(name) for name in names]  # as before torch.compile
        unknown = sorted(set(names) - set(operator.layout.names))
        if unknown or not names:
            raise InvalidArgumentError(
                f"no parameters named {unknown or list(names)} in the operator; known: "
                f"{', '.join(operator.layout.names)}"
            )
        chosen = [n for n in operator.layout.names if n in set(names)]
        shapes = dict(zip(operator.layout.names, operator.layout.shapes, strict=True))
        super().__init__(
            ParameterLayout(tuple(chosen), tuple(shapes[n] for n in chosen)),
            operator.dtype, operator.device,
        )
        self.operator = operator
        self.index = torch.cat([
            torch.arange(operator.layout.slice(n).start, operator.layout.slice(n).stop)
            for n in chosen
        ]).to(operator.device)
        self.symmetric = operator.symmetric
        self.psd = operator.psd

    def _repr_fields(self) -> dict[str, object]:
        return {"of": type(self.operator).__name__}

    def _matmat(self, V: Tensor) -> Tensor:
        full = V.new_zeros(self.operator.shape[0], V.shape[1])
        full[self.index] = V
        return self.operator.matmat(full)[self.index]

    def diagonal(self) -> Tensor:
        """A's exact diagonal, restricted (raises as A's does)."""
        return self.operator.diagonal()[self.index]


def damped(operator: CurvatureOperator, damping: float) -> DampedOperator:
    """A + λI, with λ = ``damping`` (finite; PSD if A is and λ ≥ 0)."""
    return DampedOperator(operator, damping)
