"""The primal passes of a proved chain, computed once per batch for every fast path.

For a :class:`~hesskit.engine.recorder.Chain` and one batch, :func:`primal_pass` keeps, for
every step from the first differentiated ``nn.Linear`` up to the output (per sample rows):

* Linear s = a Wᵀ + b: its input a ``[n, d_in]``, the weight W used, and the gradient of the
  batch loss in its output, g_s = ∂ℓ/∂s ``[n, d_out]``;
* elementwise a' = σ(s): σ′(s), σ″(s) (None when zero) and g_a' = ∂ℓ/∂a' ``[n, d]``, so that
  the residual σ″(s) ⊙ g_a' (the activation's share of R = H − G) is one product away;

plus the output z and g_z = ∂ℓ/∂z. The gradients come from one backward recursion written
out layer by layer (g_a = g_s W for a Linear, g_s = σ′ ⊙ g_a' for σ), which is what the
Hessian-vector product, the exact diagonals and the dense blocks all start from. Nothing
below the first differentiated layer is needed: no curvature reaches a parameter from there.

Cost: one forward pass (the recording) and one backward pass down to the first
differentiated layer; memory about three numbers per unit and sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from hesskit.engine.layers import ELEMENTWISE, LINEAR, elementwise_derivatives
from hesskit.engine.map_primal import MapPrimal, map_primal_pass
from hesskit.engine.recorder import Chain
from hesskit.losses import Loss


@dataclass
class LinearRecord:
    """s = a Wᵀ + b: input a ``[n, d_in]``, weight W, g_s = ∂ℓ/∂s ``[n, d_out]``, names."""

    weight: Tensor
    inputs: Tensor
    output_gradient: Tensor
    weight_name: str | None
    bias_name: str | None
    has_bias: bool

    @property
    def differentiated(self) -> bool:
        return self.weight_name is not None or self.bias_name is not None


@dataclass
class ActivationRecord:
    """a' = σ(s): σ′(s), σ″(s) (None when zero) and g_a' = ∂ℓ/∂a', each ``[n, d]``."""

    slope: Tensor
    second: Tensor | None
    output_gradient: Tensor

    def residual(self) -> Tensor | None:
        """σ″(s) ⊙ g_a' (None when σ″ = 0 or the product vanishes)."""
        if self.second is None:
            return None
        residual = self.second * self.output_gradient
        return residual if bool(residual.any()) else None


Record = LinearRecord | ActivationRecord


@dataclass
class Primal:
    """The kept primal quantities of one batch (records in call order)."""

    records: list[Record]
    outputs: Tensor
    output_gradient: Tensor


def primal_pass(
    chain: Chain, loss: Loss, targets: Tensor, params: Mapping[str, Tensor]
) -> Primal | MapPrimal:
    """The records of ``chain`` from its first differentiated Linear to the output.

    A chain with feature-map layers (convolutions, pooling, padding; proved in the diagonal
    table only) gets its :class:`~hesskit.engine.map_primal.MapPrimal` instead, which the
    exact diagonals take and the Hessian-vector product and dense blocks refuse.

    Args:
        chain: a proved chain, recorded with ``params``.
        loss: the batch loss ℓ (its reduction factor included in every gradient).
        targets: the batch targets.
        params: the differentiated parameters by name.
    """
    if not chain.flat:
        return map_primal_pass(chain, loss, targets, params)
    names = chain.linear_names(params)
    steps = chain.steps
    first = next(
        (i for i, s in enumerate(steps) if s.kind == LINEAR and any(names[id(s.module)])),
        None,
    )
    z = chain.output.detach()
    with torch.enable_grad():
        leaf = z.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss.value(leaf, targets), leaf)
    g = g.reshape(g.shape[0], -1)
    output_gradient = g
    records: list[Record] = []
    if first is None:
        return Primal(records, z, output_gradient)
    with torch.no_grad():
        for index in range(len(steps) - 1, first - 1, -1):
            step = steps[index]
            inputs = step.inputs.reshape(step.inputs.shape[0], -1)
            if step.kind == LINEAR:
                module = step.module
                weight_name, bias_name = names[id(module)]
                W = params[weight_name] if weight_name else module.weight.detach()
                records.append(LinearRecord(W, inputs, g, weight_name, bias_name,
                                            module.bias is not None))
                if index > first:
                    g = g @ W
            elif step.kind == ELEMENTWISE:
                _, slope, second = elementwise_derivatives(step.module, inputs)
                records.append(ActivationRecord(slope, second, g))
                g = slope * g
    return Primal(records[::-1], z, output_gradient)
