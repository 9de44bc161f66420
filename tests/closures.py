"""The training closure of the torch.optim contract, for optimizers that read their batch
from it (K-FAC, and Sophia / Hessian-free / damped Newton given ``model=`` and ``loss=``)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from hesskit.tensor_tree import Tree, call_model


def batch_closure(optimizer, inputs: Tree, targets: Tree) -> Callable[[], Tensor]:
    """zero_grad; loss(model(inputs), targets); backward; return the loss — with the
    optimizer's own ``model`` and ``loss``."""

    def closure() -> Tensor:
        optimizer.zero_grad()
        value = optimizer.loss(call_model(optimizer.model, inputs), targets)
        value.backward()
        return value

    return closure
