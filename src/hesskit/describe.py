"""Short text for the ``repr`` of hesskit's objects: numbers, tensors, parameter layouts.

Operators, estimator results, solver results and optimizers describe themselves in one line
that says what they are (the matrix, N, dtype, the parameter blocks; the value, whether it
is exact or an estimate and its standard error) instead of printing ``<… object at 0x…>`` or
every entry of an N×k tensor. These helpers keep those lines alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

MAX_BLOCKS_SHOWN = 6
"""A layout with more parameter tensors lists this many, then says how many more."""
MAX_VALUES_SHOWN = 6
"""A vector with more entries (eigenvalues) lists this many, then says how many more."""


def number(value: float) -> str:
    """A float in 4 significant digits (``1.235e-05``, ``45``, ``0.3333``).

    >>> number(45.0), number(1 / 3), number(1.23456e-5)
    ('45', '0.3333', '1.235e-05')
    """
    return f"{float(value):.4g}"


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float64`` → ``float64``."""
    return str(dtype).removeprefix("torch.")


def shape_text(shape: Iterable[int]) -> str:
    """``(16, 64)`` → ``16×64``; a scalar's empty shape → ``scalar``."""
    dims = [str(int(d)) for d in shape]
    return "×".join(dims) if dims else "scalar"


def layout_text(names: Iterable[str], shapes: Iterable[Iterable[int]],
                limit: int = MAX_BLOCKS_SHOWN) -> str:
    """The blocks of a parameter layout: ``[0.weight 16×64, 0.bias 16, … 2 more]``."""
    parts = [f"{name} {shape_text(shape)}" for name, shape in zip(names, shapes, strict=True)]
    shown = parts[:limit]
    if len(parts) > limit:
        shown.append(f"… {len(parts) - limit} more")
    return "[" + ", ".join(shown) + "]"


def values_text(values: Tensor, limit: int = MAX_VALUES_SHOWN) -> str:
    """A short vector's entries: ``[2.452, 1.825]``; a longer one's first ``limit``."""
    flat = values.detach().reshape(-1).tolist()
    shown = [number(v) for v in flat[:limit]]
    if len(flat) > limit:
        shown.append(f"… {len(flat) - limit} more")
    return "[" + ", ".join(shown) + "]"


def tensor_summary(values: Tensor) -> str:
    """A long vector as its length and range: ``[1210] min -0.2, median 0, max 0.195``."""
    flat = values.detach().reshape(-1).to(torch.float64).cpu()
    if flat.numel() == 0:
        return "[0]"
    return (f"[{flat.numel()}] min {number(flat.min())}, median {number(flat.median())}, "
            f"max {number(flat.max())}")


def settings_text(settings: Mapping[str, object]) -> str:
    """``lr=1, weight_decay=0`` from a mapping; floats in 4 significant digits."""
    return ", ".join(f"{key}={number(value) if isinstance(value, float) else value}"
                     for key, value in settings.items())
