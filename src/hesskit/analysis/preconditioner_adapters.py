"""An optimizer's current preconditioner P as hesskit curvature operators: P, P⁻¹, P^{-1/2}.

The preconditioner of an optimizer is the symmetric positive-definite N×N matrix P whose
inverse turns a gradient into the optimizer's direction, d = −P⁻¹ g (before momentum,
clipping, grafting and the learning rate, which the step as taken includes). Each adapter
asks the optimizer for P after a step (hesskit's optimizers' ``preconditioner(power)``;
:func:`hesskit.optim.preconditioner_operators.torch_preconditioner` for torch's, which
reads their state), puts it on the analysed flat layout of the parameters
(``hesskit.layout``: their order, their names), and returns a :class:`Preconditioner`
holding P, P⁻¹ and P^{-1/2} as :class:`~hesskit.operators.CurvatureOperator` (products
cost O(N) for a diagonal, Σ_layers O(out·in·(out + in)) for Kronecker factors; no pass
over data).

==================  ===============================================================  ======
optimizer           P                                                                kind
==================  ===============================================================  ======
SGD (any momentum)  I                                                                I
RMSprop             diag(√v) + ε, v = ``square_avg`` (centered: √(v − ḡ²) + ε)       diag
Adam, AdamW         diag(√v̂) + ε, v̂ = ``exp_avg_sq`` / (1 − β₂ᵗ) (AMSGrad: the max)  diag
AdaHessian          diag((√v / √(1 − β₂ᵗ))^k) + ε, v = ``exp_hessian_diag_sq``        diag
Sophia              diag(max(ρ h, ε)), h = ``hessian``; its step clips P⁻¹m at 1       diag
K-FAC               per layer (A + πγI) ⊗ (G + γ/π I) from the cached eigenbases     Kron.
                    (``kfac_state["eigen"]``) and γ, so −P⁻¹∇h is exactly its Δ
                    (Martens & Grosse 2015, §6.3); uncovered parameters γ² I
any optimizer with  ``optimizer.preconditioner(power)`` → P^power (e.g. hesskit's       op.
``preconditioner``  Shampoo: L^{1/4} ⊗ R^{1/4} per matrix parameter, its graft's
                    diagonal elsewhere), on the flat vector in ``param_groups`` order
==================  ===============================================================  ======

For Adam the step is θ ← θ − lr · P⁻¹ m̂ (m̂ = ``exp_avg`` / (1 − β₁ᵗ)) exactly as
``torch.optim.Adam`` computes it (``denom = √v / √(1 − β₂ᵗ) + ε``); for RMSprop without
momentum θ ← θ − lr P⁻¹ g; AdaHessian θ ← θ − lr P⁻¹ m̂; K-FAC θ ← θ + lr(αΔ + μδ₀) with
Δ = −P⁻¹∇h.

Every P here is block-diagonal over the parameter tensors, so the restriction of P⁻¹ to a
layer is the inverse of P's restriction (:meth:`Preconditioner.block`). For an operator
from ``preconditioner(power)`` that is checked, not assumed (:func:`is_block_diagonal`).
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hesskit.errors import InvalidArgumentError
from hesskit.layout import ParameterLayout
from hesskit.operators import CurvatureOperator, DiagonalOperator, MatrixOperator
from hesskit.optim.preconditioner_operators import parameters as optimizer_parameters
from hesskit.optim.preconditioner_operators import torch_preconditioner


class PreconditionerKind(str, enum.Enum):
    """The structure of P."""

    IDENTITY = "identity"
    DIAGONAL = "diagonal"
    KRONECKER = "kronecker"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Preconditioner:
    """P at one step, with the operators the analysis applies.

    Attributes:
        description: what P is, in words (the table of the module docstring).
        kind: its structure; ``diagonal`` is diag(P) for the identity and diagonal kinds.
        matrix, inverse, inverse_sqrt: P, P⁻¹ and P^{-1/2} on the analysed layout.
    """

    description: str
    kind: PreconditionerKind
    matrix: CurvatureOperator
    inverse: CurvatureOperator
    inverse_sqrt: CurvatureOperator
    diagonal: Tensor | None = None
    block_diagonal: bool = True

    def block(self, names: Sequence[str]) -> Preconditioner:
        """P restricted to the parameters ``names``: P_ℓℓ, (P_ℓℓ)⁻¹ = (P⁻¹)_ℓℓ and
        (P_ℓℓ)^{-1/2} = (P^{-1/2})_ℓℓ, which hold when P is block-diagonal over the
        parameter tensors (module docstring).

        Raises:
            InvalidArgumentError: P couples parameters (``block_diagonal`` is false).
        """
        if not self.block_diagonal:
            raise InvalidArgumentError(
                f"{self.description} couples different parameters, so its layer blocks "
                "are not its inverse's; analyse the whole model only (per_layer=False, "
                "--no-layers)"
            )
        layout = self.matrix.layout
        diagonal = None
        if self.diagonal is not None:
            diagonal = torch.cat([self.diagonal[layout.slice(n)] for n in layout.names
                                  if n in set(names)])
        return Preconditioner(self.description, self.kind, self.matrix.block(names),
                              self.inverse.block(names), self.inverse_sqrt.block(names),
                              diagonal)


def diagonal_preconditioner(
    entries: Tensor, layout: ParameterLayout, description: str,
    kind: PreconditionerKind = PreconditionerKind.DIAGONAL,
) -> Preconditioner:
    """P = diag(d) for d > 0 (flat ``[N]``), with P⁻¹ = diag(1/d), P^{-1/2} = diag(d^{-1/2}).

    Raises:
        InvalidArgumentError: an entry of d is not positive and finite.
    """
    bad = ~(torch.isfinite(entries) & (entries > 0))
    if bool(bad.any()):
        where = layout.label(int(torch.nonzero(bad)[0]))
        raise InvalidArgumentError(
            f"{description}: entry {where} of the diagonal preconditioner is "
            f"{float(entries[bad][0]):.3g}, not positive; give the optimizer eps > 0"
        )
    return Preconditioner(
        description, kind, DiagonalOperator(entries, layout),
        DiagonalOperator(1 / entries, layout), DiagonalOperator(entries.rsqrt(), layout),
        entries.clone(),
    )


def matrix_preconditioner(matrix: Tensor, layout: ParameterLayout | None = None,
                          description: str = "an explicit matrix") -> Preconditioner:
    """P given as a dense symmetric positive-definite N×N matrix (tests, small problems):
    P^p = Q diag(λ^p) Qᵀ from one ``eigh``. Cost O(N³) once, O(N²) per product.

    Raises:
        InvalidArgumentError: P is not positive definite.
    """
    values, vectors = torch.linalg.eigh(matrix)
    if not bool((values > 0).all()):
        raise InvalidArgumentError(f"{description}: the preconditioner must be positive "
                                   f"definite; its smallest eigenvalue is {float(values[0]):.3g}")

    def power(exponent: float) -> MatrixOperator:
        return MatrixOperator((vectors * values.pow(exponent)) @ vectors.T, layout, psd=True)

    matrix_op = power(1.0)
    return Preconditioner(description, PreconditionerKind.OPERATOR, matrix_op,
                          power(-1.0), power(-0.5),
                          block_diagonal=is_block_diagonal(matrix_op))


def identity_preconditioner(layout: ParameterLayout, dtype: torch.dtype,
                            device: torch.device) -> Preconditioner:
    """P = I: SGD's (with or without momentum, which is not a preconditioner)."""
    ones = torch.ones(layout.num_params, dtype=dtype, device=device)
    return diagonal_preconditioner(ones, layout, "I (SGD)", PreconditionerKind.IDENTITY)


def _entries(operator: CurvatureOperator, optimizer: torch.optim.Optimizer,
             params: Sequence[Tensor]) -> Tensor:
    """diag(P) of a diagonal ``operator`` on the optimizer's flat vector (``param_groups``
    order), rearranged to ``params`` order (a parameter absent from the optimizer raises)."""
    diagonal, offset, where = operator.diagonal(), 0, {}
    for p in optimizer_parameters(optimizer):
        where[id(p)] = slice(offset, offset + p.numel())
        offset += p.numel()
    missing = [p for p in params if id(p) not in where]
    if missing:
        raise InvalidArgumentError(
            f"{type(optimizer).__name__} has no state for a parameter of shape "
            f"{tuple(missing[0].shape)}: read its preconditioner after a step that updated it"
        )
    return torch.cat([diagonal[where[id(p)]] for p in params])


def rmsprop_preconditioner(optimizer: torch.optim.RMSprop, params: Sequence[Tensor],
                           layout: ParameterLayout) -> Preconditioner:
    """RMSprop's diag(√v) + ε (centered: √(v − ḡ²) + ε), as torch computes ``avg``
    (:func:`hesskit.optim.preconditioner_operators.torch_preconditioner`)."""
    entries = _entries(torch_preconditioner(optimizer), optimizer, params)
    return diagonal_preconditioner(entries, layout, "diag(√v) + ε (RMSprop)")


def adam_preconditioner(optimizer: torch.optim.Adam, params: Sequence[Tensor],
                        layout: ParameterLayout) -> Preconditioner:
    """Adam's (and AdamW's) diag(√v̂) + ε with v̂ = v / (1 − β₂ᵗ), v = ``exp_avg_sq``
    (``max_exp_avg_sq`` with AMSGrad), as ``torch.optim.Adam`` forms its denominator
    (:func:`hesskit.optim.preconditioner_operators.torch_preconditioner`)."""
    entries = _entries(torch_preconditioner(optimizer), optimizer, params)
    return diagonal_preconditioner(entries, layout, "diag(√v̂) + ε (Adam)")


def adahessian_preconditioner(optimizer, params: Sequence[Tensor],
                              layout: ParameterLayout) -> Preconditioner:
    """AdaHessian's diag((√v / √(1 − β₂ᵗ))^k) + ε (``AdaHessian.preconditioner()``)."""
    entries = _entries(optimizer.preconditioner(), optimizer, params)
    return diagonal_preconditioner(entries, layout, "diag((√v̂)^k) + ε (AdaHessian)")


def sophia_preconditioner(optimizer, params: Sequence[Tensor],
                          layout: ParameterLayout) -> Preconditioner:
    """Sophia's diag(max(ρ h, ε)); its step is −lr·clip(P⁻¹ m, 1) (``Sophia.preconditioner()``)."""
    entries = _entries(optimizer.preconditioner(), optimizer, params)
    return diagonal_preconditioner(entries, layout, "diag(max(ρh, ε)) (Sophia)")


def kfac_preconditioner(optimizer, params: Sequence[Tensor],
                        layout: ParameterLayout) -> Preconditioner:
    """K-FAC's (A + πγI) ⊗ (G + γ/π I) per covered layer and γ²I elsewhere, from the
    eigendecompositions its last step used and that step's γ (``KFAC.preconditioner(power)``):
    then −P⁻¹∇h is its direction Δ (``optim/kfac/optimizer.py``, step 3). The operators are K-FAC's
    on its own parameter order, restricted to ``layout``'s names and reordered to it."""
    names = [n for n in optimizer.names if n in set(layout.names)]
    if sorted(names) != sorted(layout.names):
        raise InvalidArgumentError("the analysed parameters must be the ones K-FAC optimizes")

    def power(exponent: float) -> CurvatureOperator:
        op = optimizer.preconditioner(power=exponent)
        if len(names) != len(optimizer.names):
            op = op.block(names)
        return _Reordered(op, layout, names)

    return Preconditioner("(A + πγI) ⊗ (G + γ/πI) per layer, γ²I elsewhere (K-FAC)",
                          PreconditionerKind.KRONECKER, power(1.0), power(-1.0), power(-0.5))


class _Reordered(CurvatureOperator):
    """An operator on the flat vector in another parameter order (and with its own layout
    names), on ``layout``: Πᵀ A Π with Π the permutation from ``layout`` order to the
    operator's order (the identity when they agree)."""

    def __init__(self, operator: CurvatureOperator, layout: ParameterLayout,
                 order: Sequence[str]) -> None:
        super().__init__(layout, operator.dtype, operator.device)
        self.operator = operator
        self.index = torch.cat([
            torch.arange(layout.slice(n).start, layout.slice(n).stop) for n in order
        ]).to(operator.device)
        self.symmetric, self.psd = operator.symmetric, operator.psd
        self.same_order = list(order) == list(layout.names)

    def _matmat(self, V: Tensor) -> Tensor:
        if self.same_order:
            return self.operator.matmat(V)
        out = torch.empty_like(V)
        out[self.index] = self.operator.matmat(V[self.index].contiguous())
        return out


def operator_preconditioner(optimizer, params: Sequence[Tensor],
                            layout: ParameterLayout) -> Preconditioner:
    """P^power from ``optimizer.preconditioner(power)`` for power 1, −1 and −1/2 (on the
    flat vector in ``param_groups`` order, reordered to ``layout``), checked to be
    block-diagonal over the parameter tensors."""
    if "power" not in inspect.signature(optimizer.preconditioner).parameters:
        raise InvalidArgumentError(
            f"{type(optimizer).__name__}.preconditioner() takes no power; the analysis needs "
            "preconditioner(power) for P, P⁻¹ (power −1) and P^{-1/2} (power −1/2)"
        )
    by_id = {id(p): name for name, p in zip(layout.names, params, strict=True)}
    order = [by_id.get(id(p)) for g in optimizer.param_groups for p in g["params"]]
    if None in order or sorted(order) != sorted(layout.names):
        raise InvalidArgumentError("the analysed parameters must be the optimizer's own")
    operators = []
    for exponent in (1.0, -1.0, -0.5):
        op = optimizer.preconditioner(power=exponent)
        if not isinstance(op, CurvatureOperator) or op.shape[0] != layout.num_params:
            raise InvalidArgumentError(
                f"{type(optimizer).__name__}.preconditioner(power={exponent}) must return a "
                f"CurvatureOperator of size N = {layout.num_params}"
            )
        operators.append(_Reordered(op, layout, order))
    return Preconditioner(f"{type(optimizer).__name__}.preconditioner()",
                          PreconditionerKind.OPERATOR, *operators,
                          block_diagonal=is_block_diagonal(operators[0]))


def is_block_diagonal(operator: CurvatureOperator, seed: int = 0) -> bool:
    """Whether A has no entries between different parameter tensors: one ``matmat`` of K
    random columns, column j supported on parameter j; A is block-diagonal iff every
    product is 0 outside its column's parameter (with probability 1 over the draw; a leak
    above 1e-12 of the column's norm counts as coupling)."""
    layout = operator.layout
    generator = torch.Generator().manual_seed(seed)
    V = torch.zeros(layout.num_params, len(layout.names), dtype=operator.dtype)
    for j, name in enumerate(layout.names):
        part = layout.slice(name)
        V[part, j] = torch.randn(part.stop - part.start, generator=generator,
                                 dtype=operator.dtype)
    AV = operator.matmat(V.to(operator.device)).cpu()
    outside = V == 0
    for j in range(len(layout.names)):
        column = AV[:, j]
        leak = float(column[outside[:, j]].abs().max()) if bool(outside[:, j].any()) else 0.0
        if leak > 1e-12 * float(column.norm()):
            return False
    return True


def preconditioner_of(optimizer: torch.optim.Optimizer, params: Sequence[Tensor],
                      layout: ParameterLayout) -> Preconditioner:
    """The :class:`Preconditioner` of ``optimizer`` now, on ``layout`` (``params`` its
    tensors in layout order). hesskit's K-FAC, AdaHessian and Sophia and torch's Adam(W)
    and RMSprop by type (their operators, described as in the module docstring); any other
    optimizer with a ``preconditioner(power)`` method (Shampoo) through it.

    Raises:
        InvalidArgumentError: no adapter for this optimizer, or no state yet.
    """
    from hesskit.optim.diagonal.adahessian import AdaHessian
    from hesskit.optim.diagonal.sophia import Sophia
    from hesskit.optim.kfac.optimizer import KFAC

    adapters = ((KFAC, kfac_preconditioner), (AdaHessian, adahessian_preconditioner),
                (Sophia, sophia_preconditioner), (torch.optim.Adam, adam_preconditioner),
                (torch.optim.AdamW, adam_preconditioner),
                (torch.optim.RMSprop, rmsprop_preconditioner))
    for kind, adapter in adapters:
        if isinstance(optimizer, kind):
            return adapter(optimizer, params, layout)
    if inspect.ismethod(getattr(optimizer, "preconditioner", None)):
        return operator_preconditioner(optimizer, params, layout)
    if isinstance(optimizer, torch.optim.SGD):
        return identity_preconditioner(layout, params[0].dtype, params[0].device)
    raise InvalidArgumentError(
        f"no preconditioner adapter for {type(optimizer).__name__}; supported: SGD, "
        "RMSprop, Adam(W), AdaHessian, Sophia, K-FAC and any optimizer with a "
        "preconditioner(power) method returning a CurvatureOperator"
    )


def has_preconditioner(optimizer: torch.optim.Optimizer) -> bool:
    """Whether :func:`preconditioner_of` has an adapter for ``optimizer`` (no state read)."""
    from hesskit.optim.diagonal.adahessian import AdaHessian
    from hesskit.optim.diagonal.sophia import Sophia
    from hesskit.optim.kfac.optimizer import KFAC

    return inspect.ismethod(getattr(optimizer, "preconditioner", None)) or isinstance(
        optimizer, (KFAC, AdaHessian, Sophia, torch.optim.Adam, torch.optim.RMSprop,
                    torch.optim.SGD))
