"""Transfer functions σ with their first and second derivatives σ′, σ″ in closed form.

Every formula is written by hand (no autograd), elementwise, for tensors of any shape; the
result has the dtype of the input (integer and boolean inputs are promoted to the default
floating dtype). Other modules build networks from :meth:`Activation.module` and use
:meth:`Activation.first` / :meth:`Activation.second` for curvature in closed form.

The kink convention
-------------------
ReLU, leaky ReLU and ELU are not differentiable at ``x == 0``: the one-sided derivatives
differ, so σ′(0) does not exist, and σ″(0) does not exist either (for ReLU and leaky ReLU
it is a Dirac mass, which no pointwise value represents). The value returned *at exactly*
``x == 0`` is therefore a convention, chosen by a parameter whose default is what
PyTorch's autograd returns (so a closed-form curvature agrees with ``torch.func`` on the
same network):

=============  =====================================  =================================
activation     σ′(0) (parameter ``at_kink``)           σ″(0) (parameter ``second_at_kink``)
=============  =====================================  =================================
relu           0 (the left derivative)                 0 (always; the Dirac mass is dropped)
leaky_relu     ``slope`` (the left derivative)         0 (always; the Dirac mass is dropped)
elu            ``alpha`` (the left derivative)         0 (the right derivative)
=============  =====================================  =================================

Example:
    >>> import torch
    >>> relu = get_activation("relu")
    >>> relu.first(torch.tensor([-1.0, 0.0, 2.0]))
    tensor([0., 0., 1.])
    >>> get_activation("relu", at_kink=0.5).first(torch.tensor(0.0))
    tensor(0.5000)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import ClassVar

import torch
from torch import Tensor, nn

from hesskit.errors import InvalidArgumentError

ModuleFactory = Callable[[], nn.Module]


def _as_float_tensor(x: Tensor | float) -> Tensor:
    """``x`` as a floating tensor (integers and booleans become the default dtype)."""
    x = torch.as_tensor(x)
    return x if x.is_floating_point() or x.is_complex() else x.to(torch.get_default_dtype())


def _normal_cdf(x: Tensor) -> Tensor:
    """Φ(x) = (1 + erf(x/√2))/2, the standard normal CDF."""
    return 0.5 * (1 + torch.erf(x / math.sqrt(2.0)))


def _normal_pdf(x: Tensor) -> Tensor:
    """φ(x) = e^(−x²/2)/√(2π), the standard normal density."""
    return torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _piecewise(
    x: Tensor, negative: Tensor | float, zero: float, positive: Tensor | float
) -> Tensor:
    """``negative`` where x < 0, ``zero`` where x == 0, ``positive`` where x > 0."""
    at_zero = torch.full_like(x, zero)
    return torch.where(x > 0, positive, torch.where(x < 0, negative, at_zero))


@dataclass(frozen=True)
class Activation:
    """A transfer function σ with σ′ and σ″ in closed form.

    Attributes:
        name: Registry name (see :data:`ACTIVATION_NAMES`).
        piecewise_linear: True when σ″ = 0 wherever it exists (identity, relu, leaky_relu);
            networks built from such σ have a Hessian equal to the Gauss–Newton matrix
            within each linear region of every layer but the loss.
    """

    name: str
    piecewise_linear: bool
    #: Where σ is not differentiable (``None``: smooth everywhere).
    kink: ClassVar[float | None] = None
    _module: ClassVar[ModuleFactory]
    _stationary: ClassVar[str]

    def value(self, x: Tensor) -> Tensor:
        """σ(x), elementwise."""
        raise NotImplementedError

    def first(self, x: Tensor) -> Tensor:
        """σ′(x), elementwise (at a kink: the documented convention)."""
        raise NotImplementedError

    def second(self, x: Tensor) -> Tensor:
        """σ″(x), elementwise (at a kink: the documented convention)."""
        raise NotImplementedError

    def module(self) -> nn.Module:
        """A ``torch.nn`` module computing σ, for building networks.

        Its autograd derivatives at a kink follow PyTorch's convention, i.e. this object's
        defaults; a non-default ``at_kink`` is not carried over to the module.
        """
        return self._module()

    @property
    def parameters(self) -> dict[str, float]:
        """The activation's parameters by name (empty when it has none)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    def kink_convention(self) -> str:
        """One line: the derivative values used at the kink, or that there is none."""
        if self.kink is None:
            return "smooth (no kink)"
        at = torch.tensor(self.kink, dtype=torch.float64)
        return f"σ′(0) = {self.first(at).item():g}, σ″(0) = {self.second(at).item():g}"

    def stationary_points(self) -> str:
        """One line: where σ′ = 0, which decides what Newton's method can do on σ."""
        return self._stationary


@dataclass(frozen=True)
class Identity(Activation):
    """σ(x) = x; σ′ = 1; σ″ = 0."""

    name: str = field(default="identity", init=False)
    piecewise_linear: bool = field(default=True, init=False)
    _module: ClassVar[ModuleFactory] = nn.Identity
    _stationary: ClassVar[str] = "none (σ′ = 1 everywhere)"

    def value(self, x: Tensor) -> Tensor:
        return _as_float_tensor(x).clone()

    def first(self, x: Tensor) -> Tensor:
        return torch.ones_like(_as_float_tensor(x))

    def second(self, x: Tensor) -> Tensor:
        return torch.zeros_like(_as_float_tensor(x))


@dataclass(frozen=True)
class ReLU(Activation):
    """σ(x) = max(x, 0); σ′ = 1 for x > 0, 0 for x < 0, ``at_kink`` at 0; σ″ = 0."""

    name: str = field(default="relu", init=False)
    piecewise_linear: bool = field(default=True, init=False)
    at_kink: float = 0.0
    kink: ClassVar[float | None] = 0.0
    _module: ClassVar[ModuleFactory] = nn.ReLU
    _stationary: ClassVar[str] = "every x < 0: a flat region of non-isolated minimisers"

    def value(self, x: Tensor) -> Tensor:
        return torch.clamp(_as_float_tensor(x), min=0)

    def first(self, x: Tensor) -> Tensor:
        x = _as_float_tensor(x)
        return _piecewise(x, 0.0, self.at_kink, 1.0).to(x.dtype)

    def second(self, x: Tensor) -> Tensor:
        return torch.zeros_like(_as_float_tensor(x))


@dataclass(frozen=True)
class LeakyReLU(Activation):
    """σ(x) = x for x > 0, ``slope``·x for x < 0; σ′(0) = ``at_kink`` (default: ``slope``)."""

    name: str = field(default="leaky_relu", init=False)
    piecewise_linear: bool = field(default=True, init=False)
    slope: float = 0.01
    at_kink: float | None = None
    kink: ClassVar[float | None] = 0.0

    def value(self, x: Tensor) -> Tensor:
        x = _as_float_tensor(x)
        return torch.where(x > 0, x, self.slope * x)

    def first(self, x: Tensor) -> Tensor:
        x = _as_float_tensor(x)
        at_kink = self.slope if self.at_kink is None else self.at_kink
        return _piecewise(x, self.slope, at_kink, 1.0).to(x.dtype)

    def second(self, x: Tensor) -> Tensor:
        return torch.zeros_like(_as_float_tensor(x))

    def module(self) -> nn.Module:
        return nn.LeakyReLU(self.slope)

    def stationary_points(self) -> str:
        if self.slope == 0:
            return "every x < 0: a flat region of non-isolated minimisers"
        if self.slope < 0:
            return "only the kink x = 0, a minimum where σ′ does not exist"
        return f"none (σ′ ≥ {self.slope:g} > 0 everywhere)"


@dataclass(frozen=True)
class ELU(Activation):
    """σ(x) = x for x > 0, α(eˣ − 1) for x ≤ 0; σ′ = α eˣ and σ″ = α eˣ for x < 0.

    At 0, σ′ = ``at_kink`` (default α, the left derivative; σ′ is continuous when α = 1)
    and σ″ = ``second_at_kink`` (default 0, the right derivative), both as in PyTorch.
    """

    name: str = field(default="elu", init=False)
    piecewise_linear: bool = field(default=False, init=False)
    alpha: float = 1.0
    at_kink: float | None = None
    second_at_kink: float = 0.0
    kink: ClassVar[float | None] = 0.0

    def _alpha_exp(self, x: Tensor) -> Tensor:
        """α eˣ on x ≤ 0 (x clamped so that eˣ never overflows on the unused branch)."""
        return self.alpha * torch.exp(torch.clamp(x, max=0))

    def value(self, x: Tensor) -> Tensor:
        x = _as_float_tensor(x)
        return torch.where(x > 0, x, self.alpha * torch.expm1(torch.clamp(x, max=0)))

    def first(self, x: Tensor) -> Tensor:
        x = _as_float_tensor(x)
        at_kink = self.alpha if self.at_kink is None else self.at_kink
        return _piecewise(x, self._alpha_exp(x), at_kink, 1.0)

    def second(self, x: Tensor) -> Tensor:
        x = _as_float_tensor(x)
        return _piecewise(x, self._alpha_exp(x), self.second_at_kink, 0.0)

    def module(self) -> nn.Module:
        return nn.ELU(self.alpha)

    def stationary_points(self) -> str:
        if self.alpha > 0:
            return "none at finite x (σ′ = α eˣ → 0 only as x → −∞)"
        if self.alpha == 0:
            return "every x < 0: a flat region of non-isolated minimisers"
        return "only the kink x = 0, a minimum where σ′ does not exist"


@dataclass(frozen=True)
class Sigmoid(Activation):
    """σ(x) = 1 / (1 + e⁻ˣ); σ′ = σ(1 − σ); σ″ = σ(1 − σ)(1 − 2σ)."""

    name: str = field(default="sigmoid", init=False)
    piecewise_linear: bool = field(default=False, init=False)
    _module: ClassVar[ModuleFactory] = nn.Sigmoid
    _stationary: ClassVar[str] = "none at finite x (σ′ → 0 only as x → ±∞)"

    def value(self, x: Tensor) -> Tensor:
        return torch.sigmoid(_as_float_tensor(x))

    def first(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(_as_float_tensor(x))
        return s * (1 - s)

    def second(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(_as_float_tensor(x))
        return s * (1 - s) * (1 - 2 * s)


@dataclass(frozen=True)
class Tanh(Activation):
    """σ(x) = tanh x; σ′ = 1 − tanh²x; σ″ = −2 tanh x (1 − tanh²x)."""

    name: str = field(default="tanh", init=False)
    piecewise_linear: bool = field(default=False, init=False)
    _module: ClassVar[ModuleFactory] = nn.Tanh
    _stationary: ClassVar[str] = "none at finite x (σ′ → 0 only as x → ±∞)"

    def value(self, x: Tensor) -> Tensor:
        return torch.tanh(_as_float_tensor(x))

    def first(self, x: Tensor) -> Tensor:
        t = torch.tanh(_as_float_tensor(x))
        return 1 - t * t

    def second(self, x: Tensor) -> Tensor:
        t = torch.tanh(_as_float_tensor(x))
        return -2 * t * (1 - t * t)


@dataclass(frozen=True)
class Softplus(Activation):
    """σ(x) = log(1 + eˣ); σ′ = sigmoid(x); σ″ = sigmoid(x)(1 − sigmoid(x)).

    The value is computed as ``logaddexp(x, 0)``, exact for all x; ``nn.Softplus`` (the
    module) switches to σ(x) = x above x = 20, a relative difference below e⁻²⁰.
    """

    name: str = field(default="softplus", init=False)
    piecewise_linear: bool = field(default=False, init=False)
    _module: ClassVar[ModuleFactory] = nn.Softplus
    _stationary: ClassVar[str] = "none at finite x (σ′ → 0 only as x → −∞)"

    def value(self, x: Tensor) -> Tensor:
        x = _as_float_tensor(x)
        return torch.logaddexp(x, torch.zeros_like(x))

    def first(self, x: Tensor) -> Tensor:
        return torch.sigmoid(_as_float_tensor(x))

    def second(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(_as_float_tensor(x))
        return s * (1 - s)


@dataclass(frozen=True)
class GELU(Activation):
    """σ(x) = x Φ(x) (exact erf form, Φ the normal CDF); σ′ = Φ + x φ; σ″ = φ (2 − x²)."""

    name: str = field(default="gelu", init=False)
    piecewise_linear: bool = field(default=False, init=False)
    _module: ClassVar[ModuleFactory] = nn.GELU  # approximate="none" by default: the erf form
    _stationary: ClassVar[str] = "one isolated minimum, x ≈ −0.7518 (where Φ(x) + x φ(x) = 0)"

    def value(self, x: Tensor) -> Tensor:
        x = _as_float_tensor(x)
        return x * _normal_cdf(x)

    def first(self, x: Tensor) -> Tensor:
        x = _as_float_tensor(x)
        return _normal_cdf(x) + x * _normal_pdf(x)

    def second(self, x: Tensor) -> Tensor:
        x = _as_float_tensor(x)
        return _normal_pdf(x) * (2 - x * x)


@dataclass(frozen=True)
class SiLU(Activation):
    """σ(x) = x s(x) with s = sigmoid; σ′ = s + x s(1 − s); σ″ = s(1 − s)(2 + x(1 − 2s))."""

    name: str = field(default="silu", init=False)
    piecewise_linear: bool = field(default=False, init=False)
    _module: ClassVar[ModuleFactory] = nn.SiLU
    _stationary: ClassVar[str] = "one isolated minimum, x ≈ −1.2785 (where σ′ = 0)"

    def value(self, x: Tensor) -> Tensor:
        x = _as_float_tensor(x)
        return x * torch.sigmoid(x)

    def first(self, x: Tensor) -> Tensor:
        x = _as_float_tensor(x)
        s = torch.sigmoid(x)
        return s + x * s * (1 - s)

    def second(self, x: Tensor) -> Tensor:
        x = _as_float_tensor(x)
        s = torch.sigmoid(x)
        return s * (1 - s) * (2 + x * (1 - 2 * s))


_REGISTRY: dict[str, type[Activation]] = {
    cls.name: cls for cls in (Identity, ReLU, LeakyReLU, ELU, Sigmoid, Tanh, Softplus, GELU, SiLU)
}

#: Names accepted by :func:`get_activation`, in display order.
ACTIVATION_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_activation(name: str, **params: float) -> Activation:
    """The activation called ``name`` with the given parameters.

    Args:
        name: One of :data:`ACTIVATION_NAMES` (case and ``-``/``_`` are not significant).
        **params: The activation's parameters: ``slope`` (leaky_relu), ``alpha`` (elu),
            ``at_kink`` (relu, leaky_relu, elu: σ′ at 0), ``second_at_kink`` (elu: σ″ at 0).
            Each must be a finite number (``None`` keeps a derived default).

    Raises:
        InvalidArgumentError: Unknown name, unknown parameter or non-finite value.
    """
    key = str(name).strip().lower().replace("-", "_")
    if key not in _REGISTRY:
        raise InvalidArgumentError(
            f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATION_NAMES)}"
        )
    cls = _REGISTRY[key]
    accepted = [f.name for f in fields(cls) if f.init]
    for param, value in params.items():
        if param not in accepted:
            known = ", ".join(accepted) if accepted else "none"
            raise InvalidArgumentError(
                f"activation {key!r} has no parameter {param!r}; its parameters are: {known}"
            )
        if value is not None and not (
            isinstance(value, (int, float)) and math.isfinite(float(value))
        ):
            raise InvalidArgumentError(
                f"parameter {param!r} of activation {key!r} must be a finite number, got {value!r}"
            )
    return cls(**{p: float(v) for p, v in params.items() if v is not None})
