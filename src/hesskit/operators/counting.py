"""An operator that counts its products and their wall time (for tests and benchmarks)."""

from __future__ import annotations

import time

from torch import Tensor

from hesskit.operators.base import CurvatureOperator


class CountingOperator(CurvatureOperator):
    """The same matrix as ``operator``; counts products (one per column) and seconds.

    Attributes:
        products: matrix-vector products so far (a ``matmat`` with K columns counts K).
        calls: calls to the wrapped operator (a ``matmat`` counts once).
        seconds: wall time spent inside the wrapped operator.
    """

    def __init__(self, operator: CurvatureOperator) -> None:
        super().__init__(operator.layout, operator.dtype, operator.device)
        self.operator = operator
        self.reset()

    @property
    def symmetric(self) -> bool:  # type: ignore[override]
        return self.operator.symmetric

    @property
    def psd(self) -> bool:  # type: ignore[override]
        return self.operator.psd

    def _repr_fields(self) -> dict[str, object]:
        return {"of": type(self.operator).__name__, "products": self.products}

    def reset(self) -> None:
        """Set the counters back to zero."""
        self.products = 0
        self.calls = 0
        self.seconds = 0.0

    def _matmat(self, V: Tensor) -> Tensor:
        start = time.perf_counter()
        out = self.operator.matmat(V)
        self.seconds += time.perf_counter() - start
        self.products += V.shape[1]
        self.calls += 1
        return out

    def diagonal(self) -> Tensor:
        """The wrapped operator's exact diagonal (no products are counted: it uses none)."""
        return self.operator.diagonal()
