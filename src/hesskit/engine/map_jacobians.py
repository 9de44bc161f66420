"""Transposed Jacobians and weight-gradient squares of feature-map layers, on column stacks.

The curvature backpropagation of :mod:`hesskit.engine.map_curvature` keeps, per sample i,
m columns F_i = [F_i1 … F_im], each shaped like the layer output, stacked as ``[c, m,
*shape]`` for a chunk of c samples. Every layer of the diagonal table is linear in its
input, or locally linear (max-pooling), so the columns go down by the transposed Jacobian
at the recorded input, Jᵀ F_ic, and a layer with parameters adds, per column, the square
of its weight gradient for cotangent F_ic. Here are those maps, the fastest measured way
for each (``torch.func.vjp`` vmapped over the columns otherwise):

* convolution y = W ⋆ x + b: Jᵀ F is the input gradient of the convolution (a transposed
  convolution, ``torch.nn.grad.conv{1,2}d_input``, on the c·m columns as one batch);
  the weight gradient for F_ic is F_ic U_iᵀ with U_i = unfold(x_i) ``[C_in·k, L]`` (one
  batched matrix product), the bias gradient the spatial sum of F_ic;
* max-pooling: Jᵀ scatters each output entry to its window's arg-max (``scatter_add``);
* constant padding: Jᵀ crops (padding by the negated amounts);
* average pooling, and any other case (convolutions with padding modes other than zeros
  or ``padding="same"``): ``torch.func.vjp`` of the module, vmapped over the columns;
* ``nn.Linear``: Jᵀ F = F W; its diagonal needs only diag(Q) (no weight sharing);
* Flatten, Identity, eval Dropout: reshapes.

Cost of a transpose: m times one backward pass of the layer on the chunk; of the weight
squares of a convolution: m times one weight gradient (m·C_out·C_in·k·L multiply-adds per
sample), as in BackPACK's DiagHessian (Dangel, Kunstner & Hennig, ICLR 2020, §3), which
also writes the convolution on the unfolded input (im2col; Chellapilla, Puri & Simard,
"High performance convolutional neural networks for document processing", 2006).
Measured on a CPU, the direct forms beat ``vmap(vjp)`` by 1.6× (convolution) and 2.5×
(max-pooling scatter) on 200 columns.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap
from torch.nn import functional

from hesskit.engine.layers import AVERAGING, CONV, ELEMENTWISE, LINEAR, PASSTHROUGH, SELECTION
from hesskit.engine.map_primal import MapRecord

_CONV_INPUT = {1: torch.nn.grad.conv1d_input, 2: torch.nn.grad.conv2d_input}


def transpose_columns(record: MapRecord, columns: Tensor, part: slice) -> Tensor:
    """Jᵀ F for the samples ``part`` of the batch: ``[c, m, *out]`` → ``[c, m, *in]``."""
    c, m = columns.shape[:2]
    in_shape = record.inputs.shape[1:]
    kind, module = record.kind, record.module
    if kind == LINEAR:
        return columns @ record.weight
    if kind == PASSTHROUGH:
        return columns.reshape(c, m, *in_shape)
    if kind == CONV and _direct_conv(module):
        dims = len(in_shape) - 1
        flat = columns.reshape(c * m, *columns.shape[2:])
        out = _CONV_INPUT[dims]((c * m, *in_shape), record.weight, flat, module.stride,
                                module.padding, module.dilation)
        return out.view(c, m, *in_shape)
    if record.indices is not None:  # max-pooling
        channels = in_shape[0]
        index = record.indices[part].flatten(2)[:, None].expand(c, m, channels, -1)
        out = columns.new_zeros(c, m, channels, math.prod(in_shape[1:]))
        out.scatter_add_(-1, index, columns.reshape(c, m, channels, -1))
        return out.view(c, m, *in_shape)
    if kind == SELECTION:  # constant padding: the transpose crops
        return functional.pad(columns, [-p for p in module.padding])
    return _vjp_columns(_input_map(record), record.inputs[part], columns)


def transport_diagonal(record: MapRecord, diagonal: Tensor, part: slice) -> Tensor:
    """diag(Jᵀ diag(d) J) = Jᵀ d for a layer whose Jacobian rows are one-hot or zero.

    (Jᵀ diag(d) J)[p, q] = Σ_j d_j J_jp J_jq vanishes for p ≠ q when every row J_j has at
    most one non-zero entry, which is then 1; so the pending diagonal stays diagonal through
    max-pooling, padding and reshapes, at the cost of one transpose of one column.
    """
    assert record.kind in (SELECTION, PASSTHROUGH)
    return transpose_columns(record, diagonal[:, None], part)[:, 0]


def transposed_identity(record: MapRecord) -> Tensor:
    """E = Jᵀ I, ``[d_out, *in_shape]``, for a linear layer whose Jacobian is the same for
    every sample (Linear, convolution, average pooling): row j is Jᵀ e_j."""
    if record.kind == LINEAR:
        return record.weight
    d_out = math.prod(record.output_shape)
    eye = torch.eye(d_out, dtype=record.inputs.dtype, device=record.inputs.device)
    return transpose_columns(record, eye.view(1, d_out, *record.output_shape), slice(0, 1))[0]


def weight_squares(
    record: MapRecord, columns: Tensor | None, signs: Tensor | None,
    pending: Tensor | None, part: slice
) -> dict[str, Tensor]:
    """Σ_i Σ_c s_ic (∂(F_ic · y_i)/∂θ)² + Σ_i Σ_j d_ij (∂y_ij/∂θ)² for the weight and bias.

    Args:
        record: a Linear or convolution step.
        columns: the factor F at its output ``[c, m, *out]`` (or None).
        signs: the column signs ``[c, m]`` (None: all +1).
        pending: the pending diagonal d ``[c, *out]`` of Q (or None).
        part: the samples of the batch the chunk holds.
    """
    out: dict[str, Tensor] = {}
    if record.kind == LINEAR:
        diag_q = _signed_squares(columns, signs, pending)
        if record.weight_name is not None:
            out[record.weight_name] = diag_q.T @ record.inputs[part] ** 2
        if record.bias_name is not None:
            out[record.bias_name] = diag_q.sum(0)
        return out
    assert record.kind == CONV
    unfolded = _unfold(record, record.inputs[part])  # [c, K, L]
    c, channels = unfolded.shape[0], record.output_shape[0]
    shape = record.weight.shape
    if record.weight_name is not None:
        total = record.weight.new_zeros(channels, unfolded.shape[1])
        if columns is not None:
            m = columns.shape[1]
            per_column = columns.reshape(c, m * channels, -1) @ unfolded.transpose(1, 2)
            total += _signed_sum(per_column.view(c, m, channels, -1) ** 2, signs)
        if pending is not None:
            total += torch.einsum("col,ckl->ok", pending.reshape(c, channels, -1), unfolded**2)
        out[record.weight_name] = total.view(shape)
    if record.bias_name is not None:
        total = record.weight.new_zeros(channels)
        if columns is not None:
            m = columns.shape[1]
            sums = columns.reshape(c, m, channels, -1).sum(-1)
            total += _signed_sum(sums**2, signs)
        if pending is not None:
            total += pending.reshape(c, channels, -1).sum((0, 2))
        out[record.bias_name] = total
    return out


def scale_columns(record: MapRecord, columns: Tensor, part: slice) -> Tensor:
    """D F for an elementwise step, D = diag σ′(x)."""
    assert record.kind == ELEMENTWISE
    return columns * record.slope[part, None]


def _signed_squares(columns: Tensor | None, signs: Tensor | None, pending: Tensor | None) -> Tensor:
    """diag(Q_i) = Σ_c s_ic F_ic² + d_i per sample, ``[c, *shape]``."""
    if columns is None:
        return pending
    squares = columns**2
    total = squares.sum(1) if signs is None else torch.einsum("cm,cm...->c...", signs, squares)
    return total if pending is None else total + pending


def _signed_sum(squares: Tensor, signs: Tensor | None) -> Tensor:
    """Σ_i Σ_c s_ic squares[i, c, …] over the first two dimensions."""
    if signs is None:
        return squares.sum((0, 1))
    return torch.einsum("cm,cm...->...", signs, squares)


def _direct_conv(module: nn.Module) -> bool:
    return module.padding_mode == "zeros" and not isinstance(module.padding, str)


def _conv_pads(module: nn.Module, spatial: torch.Size) -> list[int]:
    """The explicit padding of a convolution in ``functional.pad`` order (last dim first)."""
    pads: list[int] = []
    for dim in range(len(spatial) - 1, -1, -1):
        if module.padding == "valid":
            left = right = 0
        elif module.padding == "same":
            total = module.dilation[dim] * (module.kernel_size[dim] - 1)
            left, right = total // 2, total - total // 2
        else:
            left = right = module.padding[dim]
        pads += [left, right]
    return pads


def _unfold(record: MapRecord, x: Tensor) -> Tensor:
    """The unfolded padded input of a convolution, ``[c, C_in·k, L]``."""
    module = record.module
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    padded = functional.pad(x, _conv_pads(module, x.shape[2:]), mode=mode)
    kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
    if padded.ndim == 3:  # Conv1d as a 2-D convolution of height 1
        padded = padded[:, :, None]
        kernel, dilation, stride = (1, *kernel), (1, *dilation), (1, *stride)
    return functional.unfold(padded, kernel, dilation=dilation, stride=stride)


def _input_map(record: MapRecord) -> Callable[[Tensor], Tensor]:
    """The step as a function of its input alone (a convolution with its weight in use)."""
    if record.kind == CONV:
        weight = record.weight
        return lambda t: functional_call(record.module, {"weight": weight}, (t,))
    assert record.kind in (AVERAGING, SELECTION)
    return record.module


def _vjp_columns(fn: Callable[[Tensor], Tensor], x: Tensor, columns: Tensor) -> Tensor:
    """Jᵀ F by ``torch.func.vjp`` of ``fn`` at x, vmapped over the columns (dimension 1)."""
    _, pullback = vjp(fn, x)
    return vmap(lambda column: pullback(column)[0], in_dims=1, out_dims=1)(columns)
