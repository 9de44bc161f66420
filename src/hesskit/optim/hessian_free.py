"""Hessian-free optimisation (Martens 2010, "Deep learning via Hessian-free optimization").

Each step minimises the damped quadratic model of the loss L around θ,

    q(p) = ∇Lᵀp + ½ pᵀ(B + λI)p,     B = Gauss-Newton G (default) or Hessian H,

approximately by conjugate gradient, using only products B v (never the N×N matrix), then
decides how far to go. One step is this recipe (each phase a method below, each piece a
small module that can be switched off for ablations):

1. loss and gradient on the gradient mini-batch (the closure);
2. CG on (B + λI) p = −∇L, B built once at θ on the curvature mini-batch (the operator
   caches its linearisation across all CG iterations), started from the previous solution
   times 0.95 (§4.5), preconditioned by [diag(EF) + λI]^0.75 (§4.7), stopped by the
   relative-progress rule (§4.4) or after 250 iterations;
3. backtracking: of the CG iterates kept at ceil(1.3^j) (§4.6), the one with the lowest loss;
4. Levenberg-Marquardt: λ ×3/2 if ρ < 1/4, ×2/3 if ρ > 3/4 (§4.1);
5. Armijo line search along the chosen iterate (c = 10⁻², shrink 0.8, 60 tries; Martens'
   code) — the step is rejected, parameters restored exactly, when no step size passes;
6. a NaN or Inf loss, gradient or curvature product rejects the step (see ``safety``).

Recipe for separate batches (as in the paper): let ``closure`` compute the loss on a large
gradient mini-batch, and ``curvature`` build B on a smaller subset (Martens: 1/10 of it)::

    def curvature():
        return gauss_newton_operator(Problem(model, loss_fn, (X[idx_small], Y[idx_small])))

Data parallel (``torch.distributed``): each rank holds a shard of both batches. The
objective, its gradient and every product are sums over samples, so HF all-reduces the
closure's [loss, gradient] in one collective, each trial loss in one, and the curvature
operator of a distributed ``Problem`` reduces its own products. CG, backtracking and the
damping rule then see identical numbers on every rank and take identical decisions: the
parameters stay bitwise identical across ranks. See the class docstring for the closure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from hesskit.distributed import all_reduce_sum, is_distributed
from hesskit.errors import InvalidArgumentError
from hesskit.operators.algebra import damped
from hesskit.operators.base import CurvatureOperator
from hesskit.optim.backtracking import ArmijoSearch, armijo_line_search, choose_iterate
from hesskit.optim.damping import (
    LevenbergMarquardt,
    levenberg_marquardt_update,
    loss_resolution,
    reduction_ratio,
)
from hesskit.optim.global_state import GlobalStateOptimizer
from hesskit.optim.preconditioners import DiagonalPreconditioner
from hesskit.optim.safety import (
    DEFAULT_MAX_REJECTIONS,
    flat_gradient,
    init_rejection_state,
    is_finite,
    loss_value,
    move_parameters,
    record_acceptance,
    record_rejection,
)
from hesskit.solvers.cg import CGResult, StopRule, conjugate_gradient, geometric_snapshots
from hesskit.solvers.result import Status

STATE_KEY = "hessian_free"
"""Key of the optimizer-wide state in :meth:`HessianFree.state_dict`."""


@dataclass(frozen=True)
class CGSettings:
    """The inner conjugate-gradient solve of each step.

    Attributes:
        max_iterations: iteration cap (Martens' autoencoder runs: 250).
        progress_tol: ε of the relative-progress stopping rule (§4.4: 5e-4).
        rtol: residual rule ‖r‖ ≤ rtol·‖∇L‖ (0: off, as in the paper, which relies on §4.4).
        snapshot_growth: γ, keep iterates ceil(γ^j) for backtracking (§4.6: 1.3).
        warm_start_decay: start CG from this times the previous solution (§4.5: 0.95; 0
            starts from zero).
    """

    max_iterations: int = 250
    progress_tol: float = 5e-4
    rtol: float = 0.0
    snapshot_growth: float = 1.3
    warm_start_decay: float = 0.95

    def __post_init__(self) -> None:
        if self.max_iterations < 1 or not 0 <= self.warm_start_decay <= 1:
            raise InvalidArgumentError(
                "need max_iterations ≥ 1 and 0 ≤ warm_start_decay ≤ 1, got "
                f"{self.max_iterations} and {self.warm_start_decay}"
            )


HF_DAMPING = LevenbergMarquardt()
HF_CG = CGSettings()
HF_LINE_SEARCH = ArmijoSearch()


class HessianFree(GlobalStateOptimizer):
    """Martens' Hessian-free optimizer as a ``torch.optim.Optimizer``.

    Args:
        params: the parameters, one group (their order must be the curvature operator's
            flat layout: pass ``model.parameters()`` and build B from the same model).
        curvature: returns B at the *current* parameters as a ``CurvatureOperator``, e.g.
            ``lambda: gauss_newton_operator(Problem(model, loss, curvature_batch))``;
            called once per step. B must be positive semi-definite for CG (the GGN of a
            convex loss is); with the Hessian, CG stops at negative curvature (§4.4).
        damping: λ and its Levenberg-Marquardt rule (``adapt=False`` to fix λ).
        cg: the CG settings, including the warm-start decay.
        preconditioner: a :class:`DiagonalPreconditioner` (``martens_preconditioner``), or
            None for plain CG.
        backtracking: choose among CG iterates (§4.6); False takes the last iterate.
        line_search: Armijo settings, or None to take the chosen iterate at step size 1
            (still rejected if its loss is not finite).
        max_rejections: consecutive non-finite steps before ``NonFiniteError``.
        distributed: sum the closure's loss and gradient over the ranks of the
            ``torch.distributed`` process group. ``None`` (default): when one with more than
            one rank is initialised.

    The closure, as for ``torch.optim.LBFGS``, must clear the gradients, compute the loss on
    the gradient mini-batch, call ``backward()`` and return the loss. It is called several
    times per step: once at θ (its gradient is used), and once per loss evaluation at trial
    points θ + t·p during backtracking and the line search (those gradients are ignored). It
    must therefore use the same data every time within a step. After ``step`` the
    parameters hold the accepted point; ``.grad`` holds the gradient of the last trial, not
    necessarily of the new parameters.

    ``step(closure, loss_closure)``: the optional ``loss_closure`` returns the same loss on
    the same data without calling ``backward()``; HF then evaluates trial points with it
    under ``torch.no_grad()``, a forward pass instead of a gradient. Measured on Martens'
    MNIST autoencoder with a 10,000-case batch (``benchmarks/hf_step.py``): a trial costs
    0.38 of a gradient, 2.7 trials a step, and a step 1.21× less time with the same iterates.

    Distributed, the closure returns this rank's SHARE of the objective, so that the shares
    sum to it over the ranks: ``Problem(..., shard).local_loss(θ)``, or for a torch loss
    that averages over samples ``hesskit.distributed.sample_fraction(len(X)) *
    loss_fn(model(X), y)``, with a term such as the weight cost (λ/2)‖θ‖² added on one rank
    only. (A closure that returns each rank's plain mean loss gets the objective times the
    number of ranks.) HF sums loss and gradient over the ranks; ``curvature`` must return
    the operator over all ranks (that of a distributed ``Problem``), and a preconditioner
    statistic the global diagonal (``martens_preconditioner`` of a distributed ``Problem``
    is). Every rank must start from identical parameters and call ``step`` together.

    State: per-parameter state is empty; the optimizer-wide state is ``self.hf_state`` and
    appears in :meth:`state_dict` under ``"hessian_free"`` with keys ``damping`` (λ),
    ``warm_start`` (the last CG solution, flat, or None), ``steps``, ``accepted_steps``,
    ``failed_line_searches``, ``nonfinite_rejections``, ``consecutive_nonfinite``,
    ``cg_iterations`` and ``curvature_products`` (totals), ``last_ratio`` (ρ),
    ``last_step_size`` and ``last_cg_status``.
    """

    global_state_key = STATE_KEY
    global_state_attribute = "hf_state"

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        *,
        curvature: Callable[[], CurvatureOperator],
        damping: LevenbergMarquardt = HF_DAMPING,
        cg: CGSettings = HF_CG,
        preconditioner: DiagonalPreconditioner | None = None,
        backtracking: bool = True,
        line_search: ArmijoSearch | None = HF_LINE_SEARCH,
        max_rejections: int = DEFAULT_MAX_REJECTIONS,
        distributed: bool | None = None,
    ) -> None:
        super().__init__(params, defaults={})
        if len(self.param_groups) != 1:
            raise InvalidArgumentError(
                "HessianFree takes one parameter group; pass model.parameters() or one list"
            )
        self.curvature = curvature
        self.damping = damping
        self.cg = cg
        self.preconditioner = preconditioner
        self.backtracking = backtracking
        self.line_search = line_search
        self.max_rejections = max_rejections
        self.distributed = is_distributed() if distributed is None else (
            bool(distributed) and is_distributed()
        )
        self.hf_state: dict[str, object] = {
            "damping": float(damping.initial),
            "warm_start": None,
            "steps": 0,
            "accepted_steps": 0,
            "failed_line_searches": 0,
            "cg_iterations": 0,
            "curvature_products": 0,
            "last_ratio": math.nan,
            "last_step_size": 0.0,
            "last_cg_status": "",
        }
        init_rejection_state(self.hf_state)

    def step(  # type: ignore[override]
        self, closure: Callable[[], Tensor], loss_closure: Callable[[], Tensor] | None = None
    ) -> float:
        """One Hessian-free step; returns the loss at the start of the step (as LBFGS).

        ``loss_closure`` (optional): the loss on the same batch without ``backward()``, for
        the trial points (see the class docstring).
        """
        closure, trial_closure, start = self._begin_step(closure, loss_closure)
        state = self.hf_state
        loss, gradient = self._loss_and_gradient(closure)
        if not is_finite(loss, gradient):
            return self._reject(start, "the loss or its gradient", loss)
        solve = self._solve(gradient)
        if solve.status is Status.NON_FINITE:
            return self._reject(start, "a curvature or preconditioner product", loss)
        direction, value, model_value = self._backtrack(solve, start, trial_closure)
        resolution = loss_resolution(loss, value, dtype_eps=torch.finfo(gradient.dtype).eps)
        state["last_ratio"] = reduction_ratio(value - loss, model_value, resolution)
        state["damping"] = levenberg_marquardt_update(
            state["last_ratio"], state["damping"], self.damping
        )
        step_size = self._line_search(direction, start, trial_closure, loss, gradient, value)
        state["last_step_size"] = step_size
        move_parameters(self._params, start, direction, step_size)
        if step_size > 0:
            state["accepted_steps"] += 1
            record_acceptance(state)
        elif not is_finite(value):
            record_rejection(state, "the loss at the proposed step", self.max_rejections)
        else:
            state["failed_line_searches"] += 1
        return loss

    # -- the phases of a step ------------------------------------------------------------

    def _loss_and_gradient(self, closure: Callable[[], Tensor]) -> tuple[float, Tensor]:
        """Phase 1: L(θ) and ∇L(θ); distributed, both summed in ONE all-reduce."""
        loss = loss_value(closure())
        gradient = flat_gradient(self._params)
        if not self.distributed:
            return loss, gradient
        packed = torch.cat([gradient.new_tensor([loss]), gradient])
        all_reduce_sum(packed)
        return float(packed[0]), packed[1:]

    def _trial_loss(self, closure: Callable[[], Tensor]) -> float:
        """L at the current (trial) parameters; distributed, summed over the ranks (in the
        parameters' dtype, as the loss at θ is, so that ρ and Armijo compare like with like)."""
        loss = loss_value(closure())
        if not self.distributed:
            return loss
        reference = self._params[0]
        total = torch.tensor([loss], dtype=reference.dtype, device=reference.device)
        return float(all_reduce_sum(total)[0])

    def _solve(self, gradient: Tensor) -> CGResult:
        """Phase 2: CG on (B + λI) p = −∇L from the decayed warm start (§4.4–4.7)."""
        state, settings = self.hf_state, self.cg
        damping = float(state["damping"])
        operator = self.curvature()
        if operator.shape[0] != gradient.numel():
            raise InvalidArgumentError(
                f"the curvature operator is {operator.shape[0]}×{operator.shape[0]} but the "
                f"optimizer has {gradient.numel()} parameters; build it from the same model"
            )
        damped_operator = damped(operator, damping)

        def damped_product(v: Tensor) -> Tensor:
            return damped_operator.matvec(v).to(v.dtype)

        inverse = None
        if self.preconditioner is not None:
            m = self.preconditioner.diagonal(damping).to(gradient.dtype)
            if not is_finite(m):
                return CGResult(torch.zeros_like(gradient), Status.NON_FINITE, 0, 0)
            inverse = lambda r: r / m  # noqa: E731 - a one-line M⁻¹

        warm = state["warm_start"]
        x0 = None
        if warm is not None and settings.warm_start_decay > 0:
            x0 = settings.warm_start_decay * warm.to(gradient)
        solve = conjugate_gradient(
            damped_product,
            -gradient,
            x0=x0,
            rtol=settings.rtol,
            maxiter=settings.max_iterations,
            M=inverse,
            stop=StopRule.MARTENS | StopRule.RESIDUAL,
            progress_tol=settings.progress_tol,
            snapshot_at=geometric_snapshots(settings.max_iterations, settings.snapshot_growth),
        )
        state["cg_iterations"] += solve.iterations
        state["curvature_products"] += solve.products
        state["last_cg_status"] = solve.status.name
        if solve.status is not Status.NON_FINITE:
            state["warm_start"] = solve.x.detach().clone()
        return solve

    def _backtrack(
        self, solve: CGResult, start: list[Tensor], trial_closure: Callable[[], Tensor]
    ) -> tuple[Tensor, float, float]:
        """Phase 3 (§4.6): the kept iterate with the lowest loss; returns it, L(θ+p), q(p)."""
        candidates = solve.snapshots if self.backtracking else solve.snapshots[-1:]

        def loss_at(candidate: tuple[int, Tensor]) -> float:
            move_parameters(self._params, start, candidate[1])
            return self._trial_loss(trial_closure)

        index, value, _ = choose_iterate(candidates, loss_at)
        iteration, direction = candidates[index]
        return direction, value, solve.model_values[iteration]

    def _line_search(
        self,
        direction: Tensor,
        start: list[Tensor],
        trial_closure: Callable[[], Tensor],
        loss: float,
        gradient: Tensor,
        value: float,
    ) -> float:
        """Phase 5: the Armijo step size along the chosen iterate (0 = reject)."""
        if not bool(torch.any(direction != 0)):
            return 0.0
        if self.line_search is None:
            return 1.0 if is_finite(value) else 0.0

        def loss_along(step: float) -> float:
            move_parameters(self._params, start, direction, step)
            return self._trial_loss(trial_closure)

        slope = float(gradient @ direction)
        result = armijo_line_search(
            loss_along, loss, slope, value_at_one=value, settings=self.line_search
        )
        return result.step_size

    def _reject(self, start: list[Tensor], what: str, loss: float) -> float:
        """Safety: as the base class (restore θ, grow λ, count), with no step taken."""
        self.hf_state["last_step_size"] = 0.0
        return super()._reject(start, what, loss)
