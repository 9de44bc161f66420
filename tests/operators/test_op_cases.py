"""Small float64 problems shared by the operator tests (this module holds no tests).

Each case pairs a hesskit loss with torch's own loss function, which the independent
references in ``tests/reference.py`` use, so the two sides share no loss code.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn
from torch.nn import functional

from hesskit import losses
from hesskit.problem import Problem

LOSSES = ("mse", "ce", "bce")
REDUCTIONS = ("mean", "sum", "sample_mean")


def torch_loss_fn(name: str, reduction: str):
    """torch's loss with the same reduction ("sample_mean" = sum / number of samples)."""
    base = {
        "mse": functional.mse_loss,
        "ce": functional.cross_entropy,
        "bce": functional.binary_cross_entropy_with_logits,
    }[name]
    if reduction == "sample_mean":
        return lambda z, y: base(z, y, reduction="sum") / z.shape[0]
    return lambda z, y: base(z, y, reduction=reduction)


def hesskit_loss(name: str, reduction: str) -> losses.Loss:
    cls = {"mse": losses.MSELoss, "ce": losses.CrossEntropyLoss, "bce": losses.BCEWithLogitsLoss}
    return cls[name](reduction=reduction)


def targets(name: str, n: int, k: int, generator: torch.Generator) -> Tensor:
    if name == "ce":
        return torch.randint(0, k, (n,), generator=generator)
    if name == "bce":
        return torch.rand(n, k, generator=generator, dtype=torch.float64)
    return torch.randn(n, k, generator=generator, dtype=torch.float64)


def small_model(sizes=(3, 4, 3), activation=nn.Tanh, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers).double()


def split(X: Tensor, y: Tensor, sizes: list[int]) -> list[tuple[Tensor, Tensor]]:
    """Batches of the given sizes, in order (e.g. [4, 3]: the last one smaller)."""
    return list(zip(X.split(sizes), y.split(sizes), strict=True))


def make_case(
    loss="mse", reduction="mean", batch_sizes=(4, 3), sizes=(3, 4, 3), seed=0, activation=nn.Tanh
):
    """(problem, model, torch loss fn, X, y) for a random float64 MLP."""
    model = small_model(sizes, activation, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    n = sum(batch_sizes)
    X = torch.randn(n, sizes[0], generator=generator, dtype=torch.float64)
    y = targets(loss, n, sizes[-1], generator)
    problem = Problem(model, hesskit_loss(loss, reduction), split(X, y, list(batch_sizes)))
    return problem, model, torch_loss_fn(loss, reduction), X, y
