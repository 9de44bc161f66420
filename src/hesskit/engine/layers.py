"""The one table of layers the structural engine handles, and their elementwise derivatives.

Leaf modules are checked by exact type (a subclass may override ``forward``, so it is not
trusted). Two tables (:class:`Table`) say which fast paths a chain may take:

``Table.PRODUCT`` — the Hessian-vector product, the dense blocks and the exact diagonals:

* ``nn.Linear`` — s = a Wᵀ + b on ``[n, d]`` inputs;
* elementwise activations (:data:`ELEMENTWISE_MODULES`) — a' = σ(s) entry by entry, so the
  Jacobian is diag σ′(s) and the second derivative is diag σ″(s);
* pass-through modules (:data:`PASSTHROUGH_MODULES`) — ``Identity``, ``Flatten`` (keeping
  the sample dimension) and ``Dropout`` when it is inactive (eval mode or p = 0).

``Table.DIAGONAL`` — the exact diagonals only (:mod:`hesskit.engine.map_curvature`); all of
the above (activations on feature maps of any shape) and

* convolutions (:data:`CONV_MODULES`, ``groups=1``) — affine in input and weight;
* selections (:data:`SELECTION_MODULES`: max-pooling, constant padding) — every output
  entry is one input entry or a constant, so each Jacobian row is one-hot or zero
  (max-pooling is locally linear: the row picks the arg-max of its window);
* averages (:data:`AVERAGING_MODULES`: average pooling) — linear, dense rows.

σ′ and σ″ come from reverse-mode autodiff of the module itself
(:func:`elementwise_derivatives`): for an elementwise σ, ∂(Σ σ(x))/∂x = σ′(x) and
∂(Σ σ′(x))/∂x = σ″(x) exactly, with PyTorch's convention at a kink (ReLU: σ′(0) = 0; see
:mod:`hesskit.activations`, whose closed forms agree with it). One double backward of an
elementwise function costs a few elementwise passes, nothing next to the matrix products of
a layer, and it covers every module in the table with one rule: no second table of
closed forms to keep in step with this one.
"""

from __future__ import annotations

import enum

import torch
from torch import Tensor, nn

PIECEWISE_LINEAR_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.Hardsigmoid,
)
"""Elementwise modules with σ″ = 0 wherever σ″ exists (Hardsigmoid has no double backward
in torch, so its σ″ = 0 is taken from here, not from autodiff)."""

ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    *PIECEWISE_LINEAR_MODULES,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softsign,
    nn.Tanhshrink,
    nn.Hardswish,
    nn.LogSigmoid,
)
"""Activation modules without parameters that act entry by entry (diagonal Jacobian)."""

PASSTHROUGH_MODULES: tuple[type[nn.Module], ...] = (nn.Identity, nn.Flatten, nn.Dropout)
"""Modules that change no value of a sample (Dropout only while inactive)."""

CONV_MODULES: dict[type[nn.Module], int] = {nn.Conv1d: 1, nn.Conv2d: 2}
"""Convolutions (by their number of spatial dimensions)."""

SELECTION_MODULES: dict[type[nn.Module], int] = {
    nn.MaxPool1d: 1,
    nn.MaxPool2d: 2,
    nn.ZeroPad1d: 1,
    nn.ZeroPad2d: 2,
    nn.ConstantPad1d: 1,
    nn.ConstantPad2d: 2,
}
"""Modules whose Jacobian rows are one-hot or zero (by their number of spatial dimensions)."""

AVERAGING_MODULES: dict[type[nn.Module], int] = {
    nn.AvgPool1d: 1,
    nn.AvgPool2d: 2,
    nn.AdaptiveAvgPool1d: 1,
    nn.AdaptiveAvgPool2d: 2,
}
"""Linear modules without parameters (by their number of spatial dimensions)."""

LINEAR = "linear"
ELEMENTWISE = "elementwise"
PASSTHROUGH = "passthrough"
CONV = "conv"
SELECTION = "selection"
AVERAGING = "averaging"


class Table(enum.Enum):
    """Which layer kinds a recorded chain may contain, by the fast paths it is for."""

    PRODUCT = frozenset({LINEAR, ELEMENTWISE, PASSTHROUGH})
    """Hessian-vector products, dense blocks and diagonals: flat Linear chains."""
    DIAGONAL = frozenset({LINEAR, ELEMENTWISE, PASSTHROUGH, CONV, SELECTION, AVERAGING})
    """Exact diagonals only: also convolutions, pooling and padding on feature maps."""


PARAMETRIC_KINDS = frozenset({LINEAR, CONV})
"""Kinds whose modules hold parameters (a weight and an optional bias)."""


def layer_kind(module: nn.Module) -> str | None:
    """The module's kind (``"linear"``, ``"conv"``, ``"elementwise"``, ``"passthrough"``,
    ``"selection"``, ``"averaging"``) or None when no table has it."""
    kind = type(module)
    if kind is nn.Linear:
        return LINEAR
    if kind in PASSTHROUGH_MODULES:
        return PASSTHROUGH
    if kind in ELEMENTWISE_MODULES:
        return ELEMENTWISE
    if kind in CONV_MODULES:
        return CONV
    if kind in SELECTION_MODULES:
        return SELECTION
    if kind in AVERAGING_MODULES:
        return AVERAGING
    return None


def spatial_dims(module: nn.Module) -> int:
    """The number of spatial dimensions a conv, selection or averaging module acts on."""
    kind = type(module)
    return {**CONV_MODULES, **SELECTION_MODULES, **AVERAGING_MODULES}[kind]


def is_piecewise_linear(module: nn.Module) -> bool:
    """σ″ = 0 wherever it exists, so the module adds nothing to R = H − G."""
    return type(module) in PIECEWISE_LINEAR_MODULES


def elementwise_derivatives(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """σ(x), σ′(x) and σ″(x) of an elementwise module (σ″ None when it is zero).

    Two reverse passes through the module on a copy of x (an in-place module cannot touch
    the caller's tensor). Cost: about three elementwise passes over x.
    """
    with torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        value = module(leaf.clone() if getattr(module, "inplace", False) else leaf)
        (first,) = torch.autograd.grad(value.sum(), leaf, create_graph=True)
        second = None
        if not is_piecewise_linear(module) and first.requires_grad:
            (second,) = torch.autograd.grad(first.sum(), leaf, allow_unused=True)
    return value.detach(), first.detach(), None if second is None else second.detach()
