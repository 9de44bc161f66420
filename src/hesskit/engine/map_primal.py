"""The primal records of a chain on feature maps (a CNN), for the exact diagonals.

A chain proved in :attr:`~hesskit.engine.layers.Table.DIAGONAL` that is not flat (it has a
convolution, pooling or padding, or activations on feature maps) keeps every value in its
own shape ``[n, C, *spatial]``. :func:`map_primal_pass` keeps, for every step from the first
differentiated layer (``nn.Linear`` or convolution) up to the output:

* its input x ``[n, *in_shape]`` (a convolution's weight gradient reads it unfolded) and the
  shape of its output;
* for a layer with parameters: the weight W in use and the names of W and b;
* for an elementwise σ: σ′(x) and σ″(x) (None when zero), shaped like x;
* for max-pooling: the arg-max of every window (the one input entry each output copies,
  the same indices PyTorch's backward uses, so ties are broken alike);

plus the output z and g_z = ∂ℓ/∂z shaped like z. Unlike :mod:`hesskit.engine.primal` no
gradient of an inner layer is kept: the curvature backpropagation
(:mod:`hesskit.engine.map_curvature`) carries g = ∂ℓ/∂x down as one extra column, and only
when a σ″ term needs it. Cost: the recording forward pass and one elementwise double
backward per activation (:func:`~hesskit.engine.layers.elementwise_derivatives`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional

from hesskit.engine.layers import ELEMENTWISE, PARAMETRIC_KINDS, elementwise_derivatives
from hesskit.engine.recorder import Chain
from hesskit.losses import Loss


@dataclass
class MapRecord:
    """One step of a feature-map chain with what its transposed Jacobian needs.

    Attributes:
        kind: the layer kind (:mod:`hesskit.engine.layers`).
        module: the module called.
        inputs: its input, ``[n, *in_shape]``.
        output_shape: the shape of one sample's output.
        weight: the weight in use (layers with parameters), else None.
        weight_name, bias_name: names of the differentiated weight and bias (else None).
        slope, second: σ′ and σ″ at the input (elementwise steps; σ″ None when zero).
        indices: arg-max of each max-pooling window, ``[n, C, *out_spatial]``.
    """

    kind: str
    module: nn.Module
    inputs: Tensor
    output_shape: torch.Size
    weight: Tensor | None = None
    weight_name: str | None = None
    bias_name: str | None = None
    slope: Tensor | None = None
    second: Tensor | None = None
    indices: Tensor | None = None


@dataclass
class MapPrimal:
    """The kept primal quantities of one batch of a feature-map chain (records in call order)."""

    records: list[MapRecord]
    outputs: Tensor
    output_gradient: Tensor


_MAX_POOL = {nn.MaxPool1d: functional.max_pool1d, nn.MaxPool2d: functional.max_pool2d}


def map_primal_pass(
    chain: Chain, loss: Loss, targets: Tensor, params: Mapping[str, Tensor]
) -> MapPrimal:
    """The records of ``chain`` from its first differentiated layer to the output.

    Args:
        chain: a chain proved in the diagonal table, recorded with ``params``.
        loss: the batch loss ℓ (its reduction factor included in the gradient).
        targets: the batch targets.
        params: the differentiated parameters by name.
    """
    names = chain.linear_names(params)
    steps = chain.steps
    first = next(
        (i for i, s in enumerate(steps) if s.kind in PARAMETRIC_KINDS and any(names[id(s.module)])),
        None,
    )
    z = chain.output.detach()
    with torch.enable_grad():
        leaf = z.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss.value(leaf, targets), leaf)
    records: list[MapRecord] = []
    if first is None:
        return MapPrimal(records, z, g)
    shapes = [step.inputs.shape[1:] for step in steps[1:]] + [z.shape[1:]]
    with torch.no_grad():
        for step, shape in zip(steps[first:], shapes[first:], strict=True):
            records.append(_record(step.kind, step.module, step.inputs, shape, names, params))
    return MapPrimal(records, z, g)


def _record(
    kind: str,
    module: nn.Module,
    inputs: Tensor,
    shape: torch.Size,
    names: Mapping[int, tuple[str | None, ...]],
    params: Mapping[str, Tensor],
) -> MapRecord:
    record = MapRecord(kind, module, inputs, shape)
    if kind in PARAMETRIC_KINDS:
        record.weight_name, record.bias_name = names[id(module)]
        name = record.weight_name
        record.weight = params[name] if name is not None else module.weight.detach()
    elif kind == ELEMENTWISE:
        _, record.slope, record.second = elementwise_derivatives(module, inputs)
    elif type(module) in _MAX_POOL:
        pool = _MAX_POOL[type(module)]
        _, record.indices = pool(inputs, module.kernel_size, module.stride, module.padding,
                                 module.dilation, module.ceil_mode, return_indices=True)
    return record
