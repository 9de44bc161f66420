"""Each optimizer's current preconditioner P as a curvature operator, read from its state.

The preconditioner of an optimizer is the symmetric positive-definite N×N matrix P whose
inverse turns a gradient into the optimizer's direction, d = −P⁻¹ g, before momentum,
clipping, grafting and the learning rate (which the step as taken includes). Each function
here returns P^p (p = 1: P; −1: P⁻¹; −1/2: P^{-1/2}) as a
:class:`~hesskit.operators.CurvatureOperator` on the flat vector of ALL the optimizer's
parameters in ``param_groups`` order (``torch.cat([p.reshape(-1) ...])``); hesskit's
optimizers expose it as ``optimizer.preconditioner(power)``, and
:func:`torch_preconditioner` does it for ``torch.optim`` Adam, AdamW, RMSprop and SGD.
Read it after a step: it is the P of that step (its state as the step left it).

==========  ==============================================================  ============
optimizer   P                                                               its step
==========  ==============================================================  ============
SGD         I                                                               −lr·m
RMSprop     diag(√v) + ε, v = ``square_avg`` (centered: √(v − ḡ²) + ε)       −lr·P⁻¹g
Adam(W)     diag(√v̂) + ε, v̂ = ``exp_avg_sq``/(1 − β₂ᵗ) (AMSGrad: its max)    −lr·P⁻¹m̂
AdaHessian  diag((√v / √(1 − β₂ᵗ))^k) + ε, v = ``exp_hessian_diag_sq``         −lr·P⁻¹m̂
Sophia      diag(max(ρh, ε)), h = ``hessian``                                −lr·clip(P⁻¹m, 1)
K-FAC       (A + πγI) ⊗ (G + γ/πI) per covered layer, γ²I elsewhere          lr(αΔ + μδ₀),
                                                                            Δ = −P⁻¹∇h
Shampoo     L^{1/4} ⊗ R^{1/4} per matrix parameter, the graft's diagonal     its own method
==========  ==============================================================  ============

(m̂ the bias-corrected first moment, = g with β₁ = 0; decoupled weight decay is not part
of P.) A diagonal P^p costs O(N) to build and apply. K-FAC's reuses the eigenbases of its
last step (``kfac_state["eigen"]``, refreshed every T₃) and that step's γ, so that −P⁻¹∇h
is exactly its Δ (Martens & Grosse 2015, §6.3): per layer
(Q_A diag((λ_A + πγ)^p) Q_Aᵀ) ⊗ (Q_G diag((λ_G + γ/π)^p) Q_Gᵀ), a product costing
O(out·in·(out + in)); building it two m×m matrix products per factor.

The operators' layouts: K-FAC names each parameter as the model does; the others
``"param{i}"`` (i its position in ``param_groups`` order, as Shampoo does).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from hesskit.errors import InvalidArgumentError
from hesskit.layout import ParameterLayout
from hesskit.operators import CurvatureOperator, DiagonalOperator, KFACOperator, SumOperator
from hesskit.operators.kfac_factors import KroneckerFactors, covered_names


def parameters(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """Every parameter of every group, in ``param_groups`` order (the flat vector's)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def optimizer_layout(optimizer: torch.optim.Optimizer) -> ParameterLayout:
    """The layout of the flat parameter vector: ``"param{i}"`` with p_i's shape."""
    params = parameters(optimizer)
    return ParameterLayout(tuple(f"param{i}" for i in range(len(params))),
                           tuple(p.shape for p in params))


def group_states(optimizer: torch.optim.Optimizer) -> Iterator[tuple[dict, dict]]:
    """(group, state) of each parameter in ``param_groups`` order.

    Raises:
        InvalidArgumentError: a parameter has no state (no step has updated it yet).
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                raise InvalidArgumentError(
                    f"{type(optimizer).__name__} has no state for a parameter of shape "
                    f"{tuple(p.shape)}: read its preconditioner after a step that updated it"
                )
            yield group, state


def diagonal_power(entries: Tensor, layout: ParameterLayout, power: float,
                   what: str) -> DiagonalOperator:
    """diag(d)^p = diag(d^p) for the flat diagonal d (``[N]``) of a preconditioner.

    Raises:
        InvalidArgumentError: p ≠ 1 and an entry of d is not positive and finite (then P
            has no such power; ``what`` names the optimizer in the message).
    """
    if power != 1:
        bad = ~(torch.isfinite(entries) & (entries > 0))
        if bool(bad.any()):
            raise InvalidArgumentError(
                f"{what}: entry {layout.label(int(torch.nonzero(bad)[0]))} of the diagonal "
                f"preconditioner is {float(entries[bad][0]):.3g}, not positive; give the "
                "optimizer eps > 0"
            )
        entries = entries.pow(power)
    return DiagonalOperator(entries, layout)


def _flat(pieces: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in pieces])


def adahessian_preconditioner(optimizer, power: float = 1.0) -> DiagonalOperator:
    """AdaHessian's P^p, P = diag((√v / √(1 − β₂ᵗ))^k) + ε per parameter (v =
    ``exp_hessian_diag_sq``, t its ``step``, k the group's ``hessian_power``): its step is
    θ ← θ − lr(P⁻¹ m̂ + wd·θ), m̂ = m/(1 − β₁ᵗ) (``optim/diagonal/adahessian.py``). O(N)."""
    pieces = []
    for group, state in group_states(optimizer):
        k = group["hessian_power"]
        correction = math.sqrt(1 - group["betas"][1] ** int(state["step"]))
        pieces.append(state["exp_hessian_diag_sq"].sqrt() ** k / correction**k + group["eps"])
    return diagonal_power(_flat(pieces), optimizer_layout(optimizer), power, "AdaHessian")


def sophia_preconditioner(optimizer, power: float = 1.0) -> DiagonalOperator:
    """Sophia's P^p, P = diag(max(ρh, ε)) (h = ``hessian``, the averaged estimate): its
    step is θ ← θ(1 − lr·wd) − lr·clip(P⁻¹m, 1) entrywise (``optim/diagonal/sophia.py``). O(N)."""
    pieces = [torch.clamp(group["rho"] * state["hessian"], min=group["eps"])
              for group, state in group_states(optimizer)]
    return diagonal_power(_flat(pieces), optimizer_layout(optimizer), power, "Sophia")


def kfac_preconditioner(optimizer, power: float = 1.0) -> CurvatureOperator:
    """K-FAC's P^p, P = (A + πγI) ⊗ (G + γ/πI) per covered layer (in the K-FAC operator's
    convention V̄ ↦ G V̄ A on [W b]) and γ²I on the other parameters, from the eigenbases
    and γ of its last step (module docstring): then −P⁻¹∇h is that step's Δ and the step
    was lr(αΔ + μδ₀) (``optim/kfac/optimizer.py``, steps 3-4). The layout has the model's names.

    Raises:
        InvalidArgumentError: K-FAC has taken no step yet (no factors).
    """
    state = optimizer.kfac_state
    eigen, gamma = state["eigen"], float(state["gamma"])
    if not eigen:
        raise InvalidArgumentError("K-FAC has no factors yet: read its preconditioner after "
                                   "a step")
    params = parameters(optimizer)
    layout = ParameterLayout(tuple(optimizer.names), tuple(p.shape for p in params))
    like = params[0]
    factors = {}
    for block in optimizer.blocks:
        e = eigen[block.weight]
        a = (e.A_values + e.pi * gamma).pow(power)
        g = (e.G_values + gamma / e.pi).pow(power)
        factors[block.weight] = KroneckerFactors((e.A_vectors * a) @ e.A_vectors.T,
                                                 (e.G_vectors * g) @ e.G_vectors.T)
    covered = covered_names(optimizer.blocks)
    rest = torch.cat([
        torch.full((size,), 0.0 if name in covered else gamma ** (2 * power),
                   dtype=like.dtype, device=like.device)
        for name, size in zip(layout.names, layout.sizes, strict=True)
    ])
    kron = KFACOperator(layout, optimizer.blocks, factors, like.dtype, like.device)
    return SumOperator([kron, DiagonalOperator(rest, layout)])


def torch_preconditioner(optimizer: torch.optim.Optimizer,
                         power: float = 1.0) -> DiagonalOperator:
    """P^p of a ``torch.optim`` optimizer, as torch forms its denominator:

    * Adam, AdamW: diag(√v̂) + ε, v̂ = v/(1 − β₂ᵗ), v = ``exp_avg_sq`` (``max_exp_avg_sq``
      with AMSGrad); step −lr·P⁻¹m̂ (AdamW's decoupled decay aside);
    * RMSprop: diag(√v) + ε, v = ``square_avg`` (centered: v − ḡ², ḡ = ``grad_avg``);
      step −lr·P⁻¹g without momentum;
    * SGD (any momentum): I (no state needed).

    Cost O(N).

    Raises:
        InvalidArgumentError: another optimizer, or no state yet.
    """
    layout = optimizer_layout(optimizer)
    if isinstance(optimizer, torch.optim.SGD):
        like = parameters(optimizer)[0]
        ones = torch.ones(layout.num_params, dtype=like.dtype, device=like.device)
        return DiagonalOperator(ones, layout)
    pieces = []
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        for group, state in group_states(optimizer):
            v = state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"]
            correction = 1 - group["betas"][1] ** float(state["step"])
            pieces.append(v.sqrt() / math.sqrt(correction) + group["eps"])
    elif isinstance(optimizer, torch.optim.RMSprop):
        for group, state in group_states(optimizer):
            v = state["square_avg"]
            if group["centered"]:
                v = v - state["grad_avg"] ** 2
            pieces.append(v.sqrt() + group["eps"])
    else:
        raise InvalidArgumentError(
            f"no preconditioner for {type(optimizer).__name__}; torch_preconditioner reads "
            "Adam, AdamW, RMSprop and SGD (hesskit's optimizers have .preconditioner())"
        )
    return diagonal_power(_flat(pieces), layout, power, type(optimizer).__name__)
