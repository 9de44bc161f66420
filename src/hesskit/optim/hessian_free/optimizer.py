"""Hessian-free optimisation (Martens 2010, "Deep learning via Hessian-free optimization").

Each step minimises the damped quadratic model of the objective F around θ,

    q_λ(p) = ∇Fᵀp + ½ pᵀ(B + λI)p,     B = Gauss-Newton G (default) or Hessian H,

approximately by conjugate gradient, using only products B v (never the N×N matrix), then
decides how far to go. F is the closure's loss plus the weight cost Σ_g (wd_g/2)‖θ_g‖², and
B includes the weight cost's curvature wd_g. One step is this recipe (each phase a method
below, each piece a small module that can be switched for ablations); the defaults are the
settings of Martens' released code (HFDemo; lines of ``nnet_train_2.m`` / ``conjgrad_1.m``):

1. F and ∇F on the gradient batch (the closure; Martens: the full training set);
2. B built once at θ on the curvature chunk (``curvature``; Martens: chunk
   (k − 1) mod ``numchunks`` of a fixed shuffled partition, line 940, see ``chunks.py``);
   CG on (B + λI) p = −∇F from 0.95 × the previous solution (§4.5, line 1244),
   preconditioned by [diag(EF) + wd + λ]^¾ (§4.7, line 1264), stopped by the
   relative-progress rule (§4.4, ``conjgrad_1.m`` line 80) or after 250 iterations;
3. backtracking: of the CG iterates ⌈5·1.3^j⌉ and the last (``conjgrad_1.m`` lines 13–14,
   69–73), the one with the lowest F on the gradient batch (§4.6, lines 1315–1329);
4. ρ = [F_chunk(θ + p) − F_chunk(θ)] / q₀(p), on the curvature chunk, over the UNDAMPED
   model q₀(p) = ∇Fᵀp + ½ pᵀBp; −∞ when F_chunk rose (lines 1340–1353); then
   Levenberg-Marquardt: λ ×3/2 if ρ < 1/4 or NaN, ×2/3 if ρ > 3/4 (§4.1, lines 1391–1396),
   λ₀ = 45 (line 116);
5. Armijo line search along the chosen iterate (c = 10⁻², shrink 0.8, 60 tries; lines
   1361–1385); the step is rejected, parameters restored exactly, when none passes; the
   accepted move is θ_g + lr_g·t·p_g (lr = 1: Martens);
6. a NaN or Inf loss, gradient or curvature product rejects the step (see ``safety``).

:func:`hesskit.optim.hessian_free.martens.martens2010` (also ``HessianFree.martens2010``)
builds exactly this from a model, a loss and the training data.

Data parallel (``torch.distributed``): loss and gradient are summed over the ranks in one
all-reduce, so every rank takes identical decisions; see the class docstring.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from hesskit.distributed import all_reduce_sum, is_distributed
from hesskit.errors import InvalidArgumentError
from hesskit.operators.base import CurvatureOperator
from hesskit.operators.gauss_newton import gauss_newton_operator
from hesskit.optim.base import summed_over_ranks
from hesskit.optim.closure_batch import closure_or_given
from hesskit.optim.damping import (
    LevenbergMarquardt,
    levenberg_marquardt_update,
    loss_resolution,
    reduction_ratio,
)
from hesskit.optim.global_state import GlobalStateOptimizer
from hesskit.optim.hessian_free.backtracking import ArmijoSearch, armijo_line_search, choose_iterate
from hesskit.optim.hessian_free.chunks import CurvatureChunk
from hesskit.optim.hessian_free.preconditioners import DiagonalPreconditioner
from hesskit.optim.hessian_free.settings import HF_CG, HF_RATIO, CGSettings, RatioSettings
from hesskit.optim.hessian_free.solve import damped_cg, damped_product
from hesskit.optim.safety import (
    DEFAULT_MAX_REJECTIONS,
    flat_gradient,
    init_rejection_state,
    is_finite,
    loss_value,
    move_parameters,
    record_acceptance,
    record_rejection,
    restore_parameters,
)
from hesskit.solvers.cg import CGResult
from hesskit.solvers.result import Status

STATE_KEY = "hessian_free"
"""Key of the optimizer-wide state in :meth:`HessianFree.state_dict`."""


HF_DAMPING = LevenbergMarquardt()
"""λ₀ = 45 and Martens' rule (``nnet_train_2.m`` lines 100–116, 1391–1396)."""
HF_LINE_SEARCH = ArmijoSearch()
"""c = 10⁻², shrink 0.8, 60 tries (``nnet_train_2.m`` lines 1361–1385)."""

__all__ = ["STATE_KEY", "CGSettings", "HessianFree", "RatioSettings"]


class HessianFree(GlobalStateOptimizer):
    """Martens' Hessian-free optimizer as a ``torch.optim.Optimizer``.

    Args:
        params: the parameters, one or several groups; concatenated in group order they
            must be the curvature operator's flat layout (pass ``model.parameters()``, or
            groups that list the model's parameters in order, and build B from that model).
            A group may set ``lr`` and ``weight_decay``.
        model, loss: the network and the loss module the closure calls: B is then the
            Gauss-Newton matrix of the closure's batch (read from its calls,
            :class:`~hesskit.optim.closure_batch.ClosureBatch`) at the current parameters.
        curvature: instead of ``model`` and ``loss``: returns, at the *current*
            parameters, B as a ``CurvatureOperator`` or a
            :class:`~hesskit.optim.hessian_free.chunks.CurvatureChunk` (B and the objective
            on the data B was built on, for ρ's numerator); called once per step, after the
            step counter ``hf_state["steps"]`` has been advanced (chunk schedules read
            it). B excludes the weight decay given here (HF adds wd_g). It must be
            positive semi-definite for CG (the GGN of a convex loss is); with the Hessian,
            CG stops at negative curvature (§4.4).
        damping: λ and its Levenberg-Marquardt rule (``adapt=False`` to fix λ).
        cg: the CG settings, including the warm-start decay and the kept iterates.
        preconditioner: a :class:`DiagonalPreconditioner` (``martens_preconditioner``) of
            the loss's statistic (HF adds wd_g and λ), or None for plain CG.
        backtracking: choose among CG iterates (§4.6); False takes the last iterate.
        line_search: Armijo settings, or None to take the chosen iterate at step size 1
            (still rejected if its loss is not finite).
        ratio: how ρ is measured (:class:`RatioSettings`; default Martens').
        lr: default ``lr`` of the groups: the accepted step of group g is lr_g·t·p_g
            (1: Martens); a ``torch.optim.lr_scheduler`` changes it between steps.
        weight_decay: default ``weight_decay`` wd_g of the groups, added as (wd_g/2)‖θ_g‖² to
            the objective, wd_g θ_g to the gradient, wd_g to the curvature's diagonal and to
            the preconditioner's statistic (Martens' ``weightcost``, ``nnet_train_2.m`` lines
            1114, 1124, 1264). Leave it 0 when the closure already adds the weight cost.
        max_rejections: consecutive non-finite steps before ``NonFiniteError``.
        distributed: sum the closure's loss and gradient over the ranks of the
            ``torch.distributed`` process group. ``None`` (default): when one with more than
            one rank is initialised.

    The closure, as for ``torch.optim.LBFGS``, must clear the gradients, compute the loss on
    the gradient mini-batch, call ``backward()`` and return the loss. It is called several
    times per step: once at θ (its gradient is used), and once per loss evaluation at trial
    points θ + t·p during backtracking and the line search (those gradients are ignored). It
    must therefore use the same data every time within a step. After ``step`` the
    parameters hold the accepted point; ``.grad`` holds the closure's gradient (without the
    weight decay given here) at the last trial, not necessarily at the new parameters.
    ``step()`` without a closure raises ``InvalidArgumentError``.

    ``step(closure, loss_closure)``: the optional ``loss_closure`` returns the same loss on
    the same data without calling ``backward()``; HF then evaluates trial points with it
    under ``torch.no_grad()``, a forward pass instead of a gradient. Measured on Martens'
    MNIST autoencoder with a 10,000-case batch (``benchmarks/hf_step.py``): a trial costs
    0.38 of a gradient, 2.7 trials a step, and a step 1.21× less time with the same iterates.

    Distributed, the closure returns this rank's SHARE of the objective, so that the shares
    sum to it over the ranks: ``Problem(..., shard).local_loss(θ)``, or for a torch loss
    that averages over samples ``hesskit.distributed.sample_fraction(len(X)) *
    loss_fn(model(X), y)``, with a term such as the weight cost (λ/2)‖θ‖² added on one rank
    only (or given as ``weight_decay`` here, which HF adds once after the sum). HF sums loss
    and gradient over the ranks; ``curvature`` must return the operator (and chunk loss)
    over all ranks (those of a distributed ``Problem``), and a preconditioner statistic the
    global diagonal. Every rank must start from identical parameters and call ``step``
    together.

    State: per-parameter state is empty; the optimizer-wide state is ``self.hf_state`` and
    appears in :meth:`state_dict` under ``"hessian_free"`` with keys ``damping`` (λ),
    ``warm_start`` (the last CG solution, flat, or None), ``steps``, ``accepted_steps``,
    ``failed_line_searches``, ``nonfinite_rejections``, ``consecutive_nonfinite``,
    ``cg_iterations`` and ``curvature_products`` (totals; the latter includes ρ's product),
    ``last_ratio`` (ρ), ``last_step_size`` and ``last_cg_status``.
    """

    state_key = STATE_KEY
    state_attribute = "hf_state"

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1.0,
        *,
        model: nn.Module | None = None,
        loss: nn.Module | None = None,
        curvature: Callable[[], CurvatureOperator | CurvatureChunk] | None = None,
        damping: LevenbergMarquardt = HF_DAMPING,
        cg: CGSettings = HF_CG,
        preconditioner: DiagonalPreconditioner | None = None,
        backtracking: bool = True,
        line_search: ArmijoSearch | None = HF_LINE_SEARCH,
        ratio: RatioSettings = HF_RATIO,
        weight_decay: float = 0.0,
        max_rejections: int = DEFAULT_MAX_REJECTIONS,
        distributed: bool | None = None,
    ) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay)
        self._watch, self.curvature = closure_or_given(
            model, loss, curvature, self._params, type(self).__name__,
            "curvature= (a function returning B)", gauss_newton_operator)
        self.damping = damping
        self.cg = cg
        self.preconditioner = preconditioner
        self.backtracking = backtracking
        self.line_search = line_search
        self.ratio = ratio
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

    @classmethod
    def martens2010(cls, *args: object, **kwargs: object) -> HessianFree:
        """HFDemo's settings from a model, a loss and the data: see
        :func:`hesskit.optim.hessian_free.martens.martens2010` for the arguments."""
        from hesskit.optim.hessian_free.martens import martens2010

        return martens2010(*args, **kwargs)

    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Tensor] | None = None,
        loss_closure: Callable[[], Tensor] | None = None,
    ) -> Tensor:
        """One Hessian-free step.

        Returns:
            F(θ) at the start of the step (the closure's loss plus the weight decay given
            here), as a detached 0-d tensor in the parameters' dtype (``LBFGS`` returns its
            closure's first loss).
        """
        closure, trial_closure, start = self._begin_step(closure, loss_closure)
        loss = self._step(closure, trial_closure, start)
        reference = self._params[0]
        return torch.tensor(loss, dtype=reference.dtype, device=reference.device)

    def _step(
        self, closure: Callable[[], Tensor], trial_closure: Callable[[], Tensor],
        start: list[Tensor],
    ) -> float:
        state = self.hf_state
        loss, gradient = self._loss_and_gradient(closure)
        if not is_finite(loss, gradient):
            return self._reject(start, "the loss or its gradient", loss)
        chunk = self._curvature_chunk(gradient)
        solve = self._solve(gradient, chunk.operator)
        if solve.status is Status.NON_FINITE:
            return self._reject(start, "a curvature or preconditioner product", loss)
        direction, value, iteration = self._backtrack(solve, start, trial_closure)
        state["last_ratio"] = self._reduction_ratio(
            chunk, solve, iteration, direction, start, gradient, loss, value
        )
        state["damping"] = levenberg_marquardt_update(
            state["last_ratio"], state["damping"], self.damping
        )
        step_size = self._line_search(direction, start, trial_closure, loss, gradient, value)
        state["last_step_size"] = step_size
        move_parameters(self._params, start, self._scaled_step(direction), step_size)
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
        """Phase 1: F(θ) and ∇F(θ); distributed, the closure's part summed in ONE
        all-reduce, then the weight decay added once. A preconditioner that accumulates its
        statistic in this pass (``DiagonalPreconditioner.gradient_pass``) watches it."""
        if self.preconditioner is not None:
            with self.preconditioner.around_gradient():
                loss = loss_value(closure())
        else:
            loss = loss_value(closure())
        gradient = flat_gradient(self._params)
        if self.distributed:
            total, summed = summed_over_ranks(gradient.new_tensor(loss), {"g": gradient})
            loss, gradient = float(total), summed["g"]
        return self._with_weight_decay(loss, gradient)

    def _trial_loss(self, closure: Callable[[], Tensor]) -> float:
        """F at the current (trial) parameters; distributed, summed over the ranks (in the
        parameters' dtype, as the loss at θ is, so that ρ and Armijo compare like with like)."""
        loss = loss_value(closure())
        if self.distributed:
            reference = self._params[0]
            total = torch.tensor([loss], dtype=reference.dtype, device=reference.device)
            loss = float(all_reduce_sum(total)[0])
        return loss + self._weight_cost()

    def _curvature_chunk(self, gradient: Tensor) -> CurvatureChunk:
        """B at θ on this step's chunk (and the chunk's objective, when given)."""
        built = self.curvature()
        chunk = built if isinstance(built, CurvatureChunk) else CurvatureChunk(built)
        size = chunk.operator.shape[0]
        if size != gradient.numel():
            raise InvalidArgumentError(
                f"the curvature operator is {size}×{size} but the optimizer has "
                f"{gradient.numel()} parameters; build it from the same model"
            )
        return chunk

    def _shift(self, damping: float) -> Tensor | float:
        """wd + λ: a flat ``[N]`` tensor with weight decay, else the scalar λ."""
        if self._has_weight_decay():
            return self._per_element("weight_decay") + damping
        return damping

    def _solve(self, gradient: Tensor, operator: CurvatureOperator) -> CGResult:
        """Phase 2: CG on (B + wd + λI) p = −∇F from the decayed warm start
        (:func:`~hesskit.optim.hessian_free.solve.damped_cg`)."""
        state = self.hf_state
        shift = self._shift(float(state["damping"]))
        m = None if self.preconditioner is None else self.preconditioner.diagonal(shift)
        solve = damped_cg(operator, gradient, shift, self.cg, state["warm_start"], m)
        state["cg_iterations"] += solve.iterations
        state["curvature_products"] += solve.products
        state["last_cg_status"] = solve.status.name
        if solve.status is not Status.NON_FINITE:
            state["warm_start"] = solve.x.detach().clone()
        return solve

    def _backtrack(
        self, solve: CGResult, start: list[Tensor], trial_closure: Callable[[], Tensor]
    ) -> tuple[Tensor, float, int]:
        """Phase 3 (§4.6): the kept iterate with the lowest F; returns it, F(θ+p) and its
        CG iteration."""
        candidates = solve.snapshots if self.backtracking else solve.snapshots[-1:]

        def loss_at(candidate: tuple[int, Tensor]) -> float:
            move_parameters(self._params, start, candidate[1])
            return self._trial_loss(trial_closure)

        index, value, _ = choose_iterate(candidates, loss_at)
        iteration, direction = candidates[index]
        return direction, value, iteration

    def _reduction_ratio(
        self, chunk: CurvatureChunk, solve: CGResult, iteration: int, direction: Tensor,
        start: list[Tensor], gradient: Tensor, loss: float, value: float,
    ) -> float:
        """Phase 4: ρ = actual / predicted change as :attr:`ratio` says (HFDemo
        ``nnet_train_2.m`` lines 1340–1353 by default)."""
        if self.ratio.on_curvature_chunk and chunk.loss is not None:
            new, old = self._chunk_losses(chunk, direction, start)
        else:
            new, old = value, loss
        if self.ratio.undamped_model:
            product = damped_product(chunk.operator, 0.0)
            self.hf_state["curvature_products"] += 1
            predicted = float(gradient @ direction) + 0.5 * float(direction @ product(direction))
        else:
            predicted = solve.model_values[iteration]
        resolution = loss_resolution(old, new, dtype_eps=torch.finfo(gradient.dtype).eps)
        return reduction_ratio(new - old, predicted, resolution)

    @torch.no_grad()
    def _chunk_losses(
        self, chunk: CurvatureChunk, direction: Tensor, start: list[Tensor]
    ) -> tuple[float, float]:
        """F_chunk(θ + p) and F_chunk(θ) (the chunk loss plus the weight decay)."""
        move_parameters(self._params, start, direction)
        new = loss_value(chunk.loss()) + self._weight_cost()
        restore_parameters(self._params, start)
        old = loss_value(chunk.loss()) + self._weight_cost()
        return new, old

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
