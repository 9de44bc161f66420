"""Small built-in networks: multilayer perceptrons from a list of layer sizes."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import nn

from hesskit.activations import get_activation
from hesskit.errors import InvalidArgumentError


def mlp(
    sizes: Sequence[int], activation: str = "relu", **activation_params: float
) -> nn.Sequential:
    """``Linear(sizes[0], sizes[1]) → σ → … → Linear(sizes[-2], sizes[-1])``.

    The activation σ follows every linear layer but the last. Modules are named ``"0"``,
    ``"1"``, … as in ``nn.Sequential``, so parameters read ``"2.weight"``.
    """
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise InvalidArgumentError(
            f"layer sizes {list(sizes)} must be at least two positive integers, e.g. 64,32,10"
        )
    act = get_activation(activation, **activation_params)
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(int(fan_in), int(fan_out)))
        if i < len(sizes) - 2:
            layers.append(act.module())
    return nn.Sequential(*layers)
