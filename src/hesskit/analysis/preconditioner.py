"""How much curvature an optimizer's preconditioner sees, along a training run.

Every ``every`` steps of a run (and at the last), on the step's mini-batch and at the
parameters before it, with G the Gauss-Newton matrix of the mini-batch objective
ℓ + (wd/2)‖θ‖² (G_loss + wd·I; hesskit's exact operator), g its gradient, P the optimizer's
preconditioner after the step (:mod:`preconditioner_adapters`) and λ a named damping:

* the spectrum of C = P^{-1/2} G P^{-1/2} beside that of G itself, by Lanczos
  (:func:`hesskit.estimators.lanczos.top_eigenpairs`, matrix-free). G is often singular
  (here the digits autoencoder's G on a batch of 128 has about half its eigenvalues 0), so
  its condition number is infinite. Two finite ones are reported: the spread of the top k,
  κ_k = μ₁/μ_k, and the condition number of the damped matrix P^{-1/2}(G + λI)P^{-1/2}
  (P = I for G's own: (λ_max + λ)/(λ_min + λ)). Both are invariant to the scale of P. The
  smallest end converges slowly where many eigenvalues cluster; the Ritz value is an upper
  bound, so an unconverged κ_λ is a lower bound (``damped_converged`` says which);
* the Newton direction d_N = −(G + λI)⁻¹ g by conjugate gradient, and for the optimizer's
  direction d (−P⁻¹g, and the step as taken) the cosine with d_N and the predicted decrease
  of m(d) = gᵀd + ½dᵀ(G + λI)d: at the best scale on d's line, m(α*d) = −(gᵀd)²/(2dᵀBd)
  (B = G + λI), and as taken, each divided by m(d_N) = min m (1: as good as Newton);
* for diagonal P, diag(P) against |diag H|, diag G, diag EF and √diag EF with the rank
  correlation, cosine and scale of :mod:`hesskit.analysis.rmsprop` (the loss's diagonals,
  as ``hesskit diagonal`` reports them: the weight cost's wd is not added to them).

Per layer (the parameters of one module) the same numbers on its own block: G_ll, P_ll
(P is block-diagonal over parameters, so (P_ll)⁻¹ = (P⁻¹)_ll), g_l, and the layer's part of
the step; the Newton direction is then the layer's own, −(G_ll + λI)⁻¹ g_l.

The run that trains each optimizer and records these numbers is a training concern:
:func:`hesskit.training.preconditioner_run.preconditioner_analysis` (this package imports
nothing from ``hesskit.training``; the data flow runs training → analysis).

The per-scope numbers: :mod:`preconditioner_scope`. Cost per record and scope: about 4
Lanczos runs of at most ``max_products`` products and one CG of at most ``cg_maxiter``
(each product ≈ 1.3 gradients on the batch), plus the diagonals (a few gradients) for
diagonal P.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from hesskit.analysis.preconditioner_adapters import (
    Preconditioner,
    PreconditionerKind,
    preconditioner_of,
)
from hesskit.analysis.preconditioner_records import MODEL, StepRecord
from hesskit.analysis.preconditioner_scope import AnalysisSettings, compare_scope
from hesskit.analysis.rmsprop import curvature_diagonals
from hesskit.layout import ParameterLayout
from hesskit.operators import damped, gauss_newton_operator
from hesskit.problem import Problem


def layer_groups(layout: ParameterLayout) -> list[tuple[str, list[str]]]:
    """The layers: parameters grouped by their module (the name before the last dot; a
    parameter of the root module is a layer of its own), in layout order."""
    groups: dict[str, list[str]] = {}
    for name in layout.names:
        module = name.rpartition(".")[0] or name
        groups.setdefault(module, []).append(name)
    return list(groups.items())


@contextmanager
def parameters_at(params: Sequence[Tensor], values: Sequence[Tensor]):
    """Parameters set to ``values`` inside the block, restored bit for bit after."""
    now = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, v in zip(params, values, strict=True):
            p.copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, v in zip(params, now, strict=True):
                p.copy_(v)


def record_step(
    model: torch.nn.Module, loss: torch.nn.Module, weight_decay: float, batch, step: int,
    value: float, optimizer: torch.optim.Optimizer, names: Sequence[str],
    before: Sequence[Tensor], settings: AnalysisSettings,
) -> tuple[StepRecord, Preconditioner]:
    """The numbers of the module docstring for one step just taken: P read from
    ``optimizer`` now, G and g of ``batch`` (objective ℓ + (wd/2)‖θ‖²) at the parameters
    ``before`` the step (``names`` the analysed parameters of ``model``, ``before`` their
    values in that order), the step the difference to now; per layer too when
    ``settings.per_layer``. Returns the record (``value`` its loss) and P."""
    named = dict(model.named_parameters())
    params = [named[n] for n in names]
    layout = ParameterLayout.from_tensors(dict(zip(names, params, strict=True)))
    P = preconditioner_of(optimizer, params, layout)
    theta = torch.cat([t.reshape(-1) for t in before])
    step_vector = torch.cat([p.detach().reshape(-1) for p in params]) - theta
    wd = float(weight_decay)
    with parameters_at(params, before):
        batch_problem = Problem(model, loss, batch, params=list(names))
        g = batch_problem.gradient() + wd * theta
        G = gauss_newton_operator(batch_problem)
        diagonals = None
        if P.kind is PreconditionerKind.DIAGONAL:
            diagonals, _ = curvature_diagonals(batch_problem, settings.probes)
        scopes = [compare_scope(MODEL, damped(G, wd), P, g, step_vector, settings, diagonals)]
        if settings.per_layer:
            for layer, group in layer_groups(layout):
                index = torch.cat([torch.arange(layout.slice(n).start, layout.slice(n).stop)
                                   for n in group])
                part = None if diagonals is None else {k: d[index]
                                                       for k, d in diagonals.items()}
                scopes.append(compare_scope(layer, damped(G.block(group), wd),
                                            P.block(group), g[index], step_vector[index],
                                            settings, part))
    return StepRecord(step, value, scopes), P


__all__ = [
    "AnalysisSettings",
    "compare_scope",
    "layer_groups",
    "parameters_at",
    "record_step",
]
