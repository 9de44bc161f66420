"""Preconditioned sharpness λ_max(P⁻¹H) of an optimizer, and Adam's stability threshold.

For a preconditioned method θ ← θ − η P⁻¹ g the quantity that plays the role of the
sharpness λ_max(H) of gradient descent is the largest eigenvalue of P⁻¹H (Cohen et al.
2022, "Adaptive Gradient Methods at the Edge of Stability", arXiv:2207.14484, §2: the
"preconditioned sharpness"). P⁻¹H is not symmetric, but for SPD P it is similar to the
symmetric S H S with S = P^{-1/2} (P^{1/2}(P⁻¹H)P^{-1/2} = S H S), so

    λ_max(P⁻¹H) = λ_max(P^{-1/2} H P^{-1/2}),

which Lanczos (:func:`hesskit.estimators.top_eigenpairs`) finds from products with H and
two with S per step. For the preconditioners of hesskit's optimizers S is cheap: a
diagonal (Adam, RMSprop, AdaHessian, Sophia: O(N) per product) or Kronecker factors in
their eigenbases (K-FAC, Shampoo: Σ_layers O(out·in·(out + in))).

On a quadratic with Hessian H and P fixed, EMA momentum m ← β₁m + (1 − β₁)g with the step
θ ← θ − η P⁻¹m is stable iff every eigenvalue of P⁻¹H lies below
2(1 + β₁)/((1 − β₁)η), which is 38/η for β₁ = 0.9 (:func:`adam_stability_threshold`);
Cohen et al. observe full-batch Adam's preconditioned sharpness rise to that value and
hover there (adaptive edge of stability).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hesskit.analysis.preconditioner_adapters import preconditioner_of
from hesskit.compiled import parameter_name
from hesskit.errors import InvalidArgumentError
from hesskit.estimators.lanczos import top_eigenpairs
from hesskit.estimators.result import Eigenpairs
from hesskit.operators import CurvatureOperator
from hesskit.operators.powers import SandwichOperator, operator_power


def adam_stability_threshold(lr: float, beta1: float = 0.9) -> float:
    """2(1 + β₁)/((1 − β₁) η): the largest preconditioned sharpness λ_max(P⁻¹H) at which
    Adam's update, frozen P, is stable on a quadratic (module docstring); 38/η for the
    default β₁ = 0.9. It is the heavy-ball threshold (2 + 2β)/η of
    :func:`hesskit.monitor.stability_threshold` at the effective step (1 − β₁)η of EMA
    momentum. Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of
    Stability" (arXiv:2207.14484), who compare Adam's preconditioned sharpness with it.

    Raises:
        InvalidArgumentError: η ≤ 0 or β₁ outside [0, 1).
    """
    if not (lr > 0 and 0 <= beta1 < 1):
        raise InvalidArgumentError(f"the threshold needs lr > 0 and 0 ≤ beta1 < 1, got "
                                   f"lr={lr}, beta1={beta1}")
    return 2 * (1 + beta1) / ((1 - beta1) * lr)


def preconditioned_sharpness(
    preconditioner: torch.optim.Optimizer | CurvatureOperator,
    curvature: CurvatureOperator,
    *,
    params: Sequence[Tensor] | None = None,
    tol: float = 1e-6,
    max_products: int | None = None,
    seed: int = 0,
    start: Tensor | None = None,
    min_products: int | None = None,
    return_vectors: bool = False,
) -> Eigenpairs:
    """λ_max(P⁻¹H) = λ_max(P^{-1/2} H P^{-1/2}) by Lanczos (module docstring).

    Args:
        preconditioner: an optimizer after a step (hesskit's K-FAC, AdaHessian, Sophia,
            Shampoo, torch's SGD, Adam(W), RMSprop: P as
            :func:`hesskit.analysis.preconditioner_adapters.preconditioner_of` reads it), or
            P itself as an SPD operator on H's layout whose inverse square root
            :func:`hesskit.operators.operator_power` forms (diagonal, Kronecker, dense, or
            sums of them on disjoint parameters).
        curvature: H (N×N symmetric; e.g. ``hessian_operator(problem)``).
        params: for an optimizer, the parameter tensors in the order of H's layout;
            default: looked up by name in the model of H's problem (a problem operator),
            else the optimizer's parameters in ``param_groups`` order (their shapes must
            be those of H's layout).
        tol, max_products, seed: Lanczos settings (:func:`top_eigenpairs`).
        start, min_products, return_vectors: as for :func:`top_eigenpairs`: a warm start
            (e.g. the previous measurement's top eigenvector of P^{-1/2} H P^{-1/2}, which
            ``return_vectors=True`` returns), and the products before its stopping test is
            trusted.

    Returns:
        The top eigenpair of P^{-1/2} H P^{-1/2} (``values[0]`` the sharpness, with its
        error bound and ``converged``). Cost: the Lanczos products of H, two of P^{-1/2}
        each.

    Raises:
        InvalidArgumentError: P and H act on different numbers of parameters, the
            optimizer has no preconditioner (or no state yet), or its parameters cannot be
            matched to H's layout.
    """
    layout = curvature.layout
    if isinstance(preconditioner, CurvatureOperator):
        if preconditioner.shape != curvature.shape:
            raise InvalidArgumentError(
                f"P is {preconditioner.shape[0]}×{preconditioner.shape[0]} and H "
                f"{curvature.shape[0]}×{curvature.shape[0]}: build them on the same parameters"
            )
        inverse_sqrt = operator_power(preconditioner, -0.5)
    else:
        tensors = list(params) if params is not None else _parameters(preconditioner,
                                                                      curvature)
        inverse_sqrt = preconditioner_of(preconditioner, tensors, layout).inverse_sqrt
    sandwich = SandwichOperator(inverse_sqrt, curvature)
    return top_eigenpairs(sandwich, 1, tol=tol, max_products=max_products, seed=seed,
                          start=start, min_products=min_products,
                          return_vectors=return_vectors, progress=False)


def _parameters(optimizer: torch.optim.Optimizer,
                curvature: CurvatureOperator) -> list[Tensor]:
    """The optimizer's tensors in the order of H's layout (``params`` default above)."""
    layout = curvature.layout
    problem = getattr(curvature, "problem", None)
    if problem is not None:
        named = {parameter_name(n): p for n, p in problem.model.named_parameters()}
        if all(n in named for n in layout.names):
            return [named[n] for n in layout.names]
    own = [p for group in optimizer.param_groups for p in group["params"]]
    if [tuple(p.shape) for p in own] != [tuple(s) for s in layout.shapes]:
        raise InvalidArgumentError(
            "cannot match the optimizer's parameters to the curvature's layout "
            f"({', '.join(layout.names)}); pass params=[the tensors in that order]"
        )
    return own
