"""Independent references for the loss tests: torch's own losses and torch's autograd Hessian.

Nothing here imports hesskit: the Hessians come from ``torch.autograd.functional.hessian``
of torch's own loss functions, so a wrong closed form cannot hide in its reference.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.functional import hessian


def output_hessian(loss: Callable[[Tensor, Tensor], Tensor], z: Tensor, y: Tensor) -> Tensor:
    """∂²loss/∂z² on the flattened outputs, ``[z.numel(), z.numel()]``, by torch.autograd."""
    return hessian(lambda flat: loss(flat.reshape(z.shape), y), z.detach().reshape(-1))


def sample_blocks(full: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(per-sample diagonal blocks ``[n, k, k]``, the largest entry off those blocks)."""
    k = full.shape[0] // n
    grid = full.reshape(n, k, n, k)
    index = torch.arange(n)
    blocks = grid[index, :, index, :]
    off = grid.clone()
    off[index, :, index, :] = 0
    return blocks, off.abs().max()


def randn(shape: tuple[int, ...], generator: torch.Generator, scale: float = 1.0) -> Tensor:
    return scale * torch.randn(shape, generator=generator, dtype=torch.float64)


def rand(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64)


def class_indices(
    shape: tuple[int, ...], classes: int, generator: torch.Generator, ignore: int | None = None
) -> Tensor:
    """Random class indices; with ``ignore``, every third position and only those are it."""
    y = torch.randint(0, classes, shape, generator=generator)
    if ignore is not None:
        y = torch.where(y == ignore, (y + 1) % classes, y)
        y.view(-1)[::3] = ignore
    return y


def softmax_hessian_vector_decimal(z: Tensor, u: Tensor, digits: int = 60) -> Tensor:
    """(diag p − p pᵀ) u per row of z ``[n, C]``, p = softmax, in ``digits``-digit decimals.

    Slow and exact enough to judge float64: no cancellation survives 60 digits here.
    """
    D = decimal.Decimal
    rows = []
    with decimal.localcontext() as context:
        context.prec = digits
        for z_row, u_row in zip(z.double().tolist(), u.double().tolist(), strict=True):
            top = max(z_row)
            weights = [(D(x) - D(top)).exp() for x in z_row]
            total = sum(weights, D(0))
            p = [w / total for w in weights]
            mean = sum((pi * D(ui) for pi, ui in zip(p, u_row, strict=True)), D(0))
            rows.append([float(pi * (D(ui) - mean)) for pi, ui in zip(p, u_row, strict=True)])
    return torch.tensor(rows, dtype=torch.float64)
