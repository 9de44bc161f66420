"""The weight cost (wd/2)‖θ‖²: the L2 penalty every hesskit objective adds to the loss.

Martens' HFDemo adds ``0.5 * weightcost * (paramsp' * paramsp)`` to the objective over all
parameters, biases included (``nnet_train_2.m`` lines 786 and 1114); its gradient is wd·θ
and its curvature wd·I. hesskit computes the penalty here only, in two forms:

* :func:`weight_cost`: a 0-d tensor, differentiable in the parameters (objectives that are
  differentiated: the training loop's ``objective``);
* :func:`weight_cost_value`: a Python float at the current parameters, each tensor's
  ‖p‖² summed in double precision (what an optimizer compares losses with: ρ, line
  searches).

>>> import torch
>>> params = [torch.tensor([3.0, 4.0]), torch.tensor([[1.0]])]
>>> weight_cost_value(params, 0.1)
1.3
>>> float(weight_cost(params, 0.1))
1.3000000715255737
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def weight_cost(parameters: Iterable[Tensor], weight_decay: float) -> Tensor:
    """(wd/2) Σ_p ‖p‖² as a 0-d tensor in the parameters' dtype, with their graph."""
    return 0.5 * weight_decay * sum(p.square().sum() for p in parameters)


def weight_cost_value(parameters: Iterable[Tensor], weight_decay: float) -> float:
    """(wd/2) Σ_p ‖p‖² as a float, without a graph (0.0 for wd = 0)."""
    if weight_decay == 0:
        return 0.0
    with torch.no_grad():
        return 0.5 * weight_decay * sum(float(p.square().sum()) for p in parameters)
