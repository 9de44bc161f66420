"""Stochastic Hessian-free: Martens' HF step on gradient mini-batches that grow along the run.

Full-batch Hessian-free (``hessian_free.py``) pays a pass over the whole training set for its
gradient and for every trial point of its backtracking and line search, each step. On a CPU
that is what makes it slow per second. Stochastic HF keeps the step and changes the data:

1. step k draws a gradient mini-batch of b_k cases without replacement (a fresh seeded
   permutation of the training set each time the previous one runs out), with

       b_k = min(n, ⌈b₀ · γ^(k−1)⌉)                     (:class:`BatchGrowth`),

   so that early steps are cheap and noisy and later ones approach full-batch HF, whose
   gradient accuracy the end of a run needs. Sources, and what each one fixes:

   * Martens & Sutskever (2012), "Training deep and recurrent networks with Hessian-free
     optimization", in Neural Networks: Tricks of the Trade, 2nd ed., LNCS 7700, ch. 20,
     §20.12 (mini-batching): gradient and curvature on mini-batches, the curvature batch a
     subset of the gradient batch, and larger batches as the optimisation proceeds. No
     formula or constants for the growth are taken from it (the chapter's text was not
     available offline; this summary and the section number, which other HF
     implementations cite, await a check against it);
   * Kiros (2013), "Training neural networks with stochastic Hessian-free optimization",
     ICLR, arXiv:1301.3641: HF with "gradient and curvature mini-batches independent of
     the dataset size" (abstract), i.e. FIXED sizes (γ = 1 here), with short CG runs per
     mini-batch. His per-data-set batch sizes and curvature fraction are in the paper's
     experiments section, which hesskit could not consult offline; no constant here is
     taken from it;
   * the geometric form b_{k+1} ≈ γ·b_k is the growth rule of Friedlander & Schmidt (2012,
     "Hybrid deterministic-stochastic methods for data fitting", SIAM J. Sci. Comput.
     34(3), A1380–A1405), compared by Byrd, Chin, Nocedal & Wu (2012, "Sample size selection
     in optimization methods for machine learning", Math. Program. 134) with their variance
     test.

   b₀ (:data:`SHF_INITIAL_BATCH`) and γ (:data:`SHF_BATCH_GROWTH`) are hesskit's, measured
   on the digits autoencoder (``benchmarks/hf_fidelity.py``): no paper fixes them;
2. the curvature batch is the first c_k = ⌈f · b_k⌉ cases of that (already random) gradient
   batch (Kiros 2013 and Byrd et al. 2012: curvature on a subsample of the gradient sample;
   f = :data:`SHF_CURVATURE_FRACTION`);
3. then exactly Hessian-free's step on that batch (:class:`~hesskit.optim.HessianFree`):
   Gauss-Newton G on the curvature batch, CG from 0.95 × the previous solution (across
   batches: Kiros' "δ-momentum"), preconditioner [diag(EF) + wd + λ]^¾ on the gradient batch,
   backtracking over the iterates ⌈5·1.3^j⌉ and Armijo line search on the gradient batch,
   ρ on the curvature batch over the undamped model and Levenberg-Marquardt λ from λ₀ = 45.
   Two defaults differ: the CG cap (:data:`SHF_MAX_CG_ITERATIONS`; a noisy small-batch model
   is not worth 250 iterations, and Kiros 2013 runs short CG per mini-batch), and CG runs
   without Martens' preconditioner (``preconditioner=True`` restores it): on the digits
   autoencoder it made the run to objective ≤ 16.3 take 1,874 epochs instead of 708
   (γ = 1.01; measured when its statistic still took a separate per-sample pass, counted in
   those epochs; it now comes from the gradient's backward pass on Linear chains).

Cost per step, in cases through the model (``hf_state["cases"]``, counted exactly): b_k per
closure call (the gradient, and a forward pass per backtracking / line-search trial), with
``preconditioner=True`` b_k more for its per-sample pass where diag(EF) cannot be taken from
the gradient's own backward pass (:mod:`hesskit.estimators.gradient_squares`; on a Linear
chain it can, at no extra cases), c_k per curvature product (CG's and ρ's) and c_k per
chunk-loss evaluation of ρ (two).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hesskit.errors import InvalidArgumentError
from hesskit.operators.counting import CountingOperator
from hesskit.operators.gauss_newton import gauss_newton_operator
from hesskit.optim.damping import LevenbergMarquardt
from hesskit.optim.hessian_free.backtracking import ArmijoSearch
from hesskit.optim.hessian_free.chunks import CurvatureChunk, chunk_loss
from hesskit.optim.hessian_free.optimizer import HF_DAMPING, HF_LINE_SEARCH, HessianFree
from hesskit.optim.hessian_free.preconditioners import gradient_pass_preconditioner
from hesskit.optim.hessian_free.settings import CGSettings
from hesskit.optim.sampling import draw_without_replacement
from hesskit.problem import Problem
from hesskit.tensor_tree import call_model, num_samples, select

__all__ = ["SHF_CG", "BatchGrowth", "StochasticHessianFree"]

SHF_INITIAL_BATCH = 128
"""b₀: the first gradient batch, the mini-batch of the first-order runs it is compared with
(``hesskit.training.loop.DEFAULT_BATCH_SIZE``); hesskit's choice, see the module docstring."""
SHF_BATCH_GROWTH = 1.012
"""γ: the batch grows 1.2% a step, so it doubles every ⌈ln 2 / ln 1.012⌉ = 59 steps and a
128-case batch reaches the 1,438 digits at step 204; hesskit's choice, tuned on the digits
autoencoder (1 thread, one seed, CG cap 25, no preconditioner; epochs to objective ≤ 16.3:
γ = 1.012 614, 1.01 708, 1.02 1,032; with the preconditioner, 1.01 1,874). The figure is
sensitive to the settings (CG cap 20 or 30 instead of 25 at γ = 1.01: 1,321 and 813).
Friedlander & Schmidt (2012) grow 10% an iteration."""
SHF_CURVATURE_FRACTION = 0.1
"""f: the curvature batch is 1/10 of the gradient batch. hesskit's choice: Martens 2010 §4.3
computes the curvature on a fraction of the gradient data (his released code uses 1/numchunks:
CURVES 1/4, MNIST 1/8), Martens & Sutskever 2012 §20.12 on a subset of the gradient batch;
1/10 is the DEFAULT_CURVATURE_FRACTION of ``hesskit train`` for problems without Martens'
numchunks."""
SHF_MAX_CG_ITERATIONS = 25
"""CG cap per mini-batch (Martens' full-batch cap is 250, HFDemo ``nnet_train_2.m`` line
1255); hesskit's choice, measured on the digits autoencoder (γ = 1.01: objective ≤ 16.3 in
708 epochs with 25, 813 with 30, 1,321 with 20, 2,058 with 50, 2,086 with 10)."""

SHF_CG = CGSettings(max_iterations=SHF_MAX_CG_ITERATIONS)
"""Martens' CG settings (``hf_settings.py``) with the cap :data:`SHF_MAX_CG_ITERATIONS`."""


@dataclass(frozen=True)
class BatchGrowth:
    """The gradient batch size of step k (from 1): b_k = min(n, max, ⌈b₀ · γ^(k−1)⌉).

    Attributes:
        initial: b₀ (:data:`SHF_INITIAL_BATCH`).
        growth: γ ≥ 1 per step (:data:`SHF_BATCH_GROWTH`; 1 keeps b₀ for good).
        maximum: an upper bound below n (``None``: n, the full training set).

    >>> [BatchGrowth(100, 1.5).size(k, 400) for k in (1, 2, 3, 4, 5)]
    [100, 150, 225, 338, 400]
    """

    initial: int = SHF_INITIAL_BATCH
    growth: float = SHF_BATCH_GROWTH
    maximum: int | None = None

    def __post_init__(self) -> None:
        if self.initial < 1 or not (math.isfinite(self.growth) and self.growth >= 1):
            raise InvalidArgumentError(
                f"need initial ≥ 1 and a finite growth ≥ 1, got {self.initial} and "
                f"{self.growth}; a batch schedule may only grow"
            )
        if self.maximum is not None and self.maximum < self.initial:
            raise InvalidArgumentError(
                f"maximum ({self.maximum}) is below the initial batch ({self.initial}); "
                "raise it or pass maximum=None for the full training set"
            )

    def size(self, step: int, num_data: int) -> int:
        """b_k for step ``step`` (counted from 1) on a training set of ``num_data`` cases."""
        if step < 1:
            raise InvalidArgumentError(f"steps are counted from 1, got {step}")
        cap = num_data if self.maximum is None else min(num_data, self.maximum)
        exponent = (step - 1) * math.log(self.growth)
        if exponent > math.log(cap):  # past the cap: avoid overflowing γ^(k−1)
            return cap
        return min(cap, math.ceil(self.initial * math.exp(exponent) - 1e-9))


def curvature_size(batch_size: int, fraction: float) -> int:
    """c = ⌈f · b⌉, at least 1 and at most b: the curvature batch of a gradient batch of b."""
    return min(batch_size, max(1, math.ceil(fraction * batch_size - 1e-9)))


class StochasticHessianFree(HessianFree):
    """Hessian-free on growing gradient mini-batches that it draws itself (module docstring).

    Args:
        model: the network; ``loss(model(X), y)`` must be the per-case MEAN loss (λ₀ = 45
            is for that normalisation, as in :func:`hesskit.optim.martens2010`).
        loss: the loss module.
        data: the training set ``(inputs, targets)`` (any form :mod:`hesskit.tensor_tree`
            knows).
        batches: the gradient-batch schedule.
        curvature_fraction: f, the curvature batch's share of the gradient batch, in (0, 1].
        weight_decay: wd, the weight cost (wd/2)‖θ‖² added to the objective, its gradient,
            the curvature and the preconditioner (Martens' ``weightcost``).
        seed: seeds the mini-batch order (a private generator whose state is in
            :meth:`state_dict`; torch's global one is untouched).
        damping: λ₀ and the Levenberg-Marquardt rule (Martens' by default).
        cg: CG settings (:data:`SHF_CG`).
        preconditioner: Martens' [diag(EF) + wd + λ]^¾ on the gradient batch, diag(EF)
            from the gradient's backward pass where proved (else one more per-sample pass
            over the batch a step, counted); False (default, see the module docstring):
            plain CG.
        line_search: Armijo settings (Martens'), or None.

    ``step()`` takes no closure: the optimizer evaluates the objective on its own batch
    (calling ``model`` and ``loss``), once with its gradient and once per trial point.
    ``hf_state`` holds HessianFree's keys plus ``batch_size`` and ``curvature_size`` (of
    the last step), ``cases`` (every case through the model so far, see the module
    docstring) and the sampler: ``sampler_generator`` (its state), ``sampler_permutation``
    and ``sampler_cursor``; all of it round-trips through :meth:`state_dict`, so that a
    resumed run draws the same batches and ends bit-identical.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        data: tuple[object, object],
        *,
        batches: BatchGrowth = BatchGrowth(),
        curvature_fraction: float = SHF_CURVATURE_FRACTION,
        weight_decay: float = 0.0,
        seed: int = 0,
        damping: LevenbergMarquardt = HF_DAMPING,
        cg: CGSettings = SHF_CG,
        preconditioner: bool = False,
        line_search: ArmijoSearch | None = HF_LINE_SEARCH,
    ) -> None:
        if not 0 < curvature_fraction <= 1:
            raise InvalidArgumentError(
                f"curvature_fraction must lie in (0, 1], got {curvature_fraction}; "
                f"Kiros and Martens use a small share such as {SHF_CURVATURE_FRACTION}"
            )
        super().__init__(
            model.parameters(),
            curvature=self._curvature,
            damping=damping,
            cg=cg,
            preconditioner=gradient_pass_preconditioner(
                model, loss, lambda: self._batch, on_extra_pass=self._charge_extra_pass
            ) if preconditioner else None,
            line_search=line_search,
            weight_decay=weight_decay,
            distributed=False,
        )
        self.model, self.loss, self.data = model, loss, data
        self.batches, self.curvature_fraction = batches, curvature_fraction
        self._batch: tuple[object, object] | None = None
        self._curvature_batch: tuple[object, object] | None = None
        self._operators: list[CountingOperator] = []
        self.hf_state.update({
            "batch_size": 0,
            "curvature_size": 0,
            "cases": 0,
            "sampler_generator": torch.Generator().manual_seed(seed).get_state(),
            "sampler_permutation": torch.arange(0),
            "sampler_cursor": 0,
        })

    def training_data(self) -> tuple[object, object]:
        """The training set the batches are drawn from (``data``)."""
        return self.data

    def step(  # type: ignore[override]
        self, closure: object = None, loss_closure: object = None
    ) -> Tensor:
        """One Hessian-free step on the next gradient batch.

        Returns:
            F(θ) on this step's gradient batch at the start of the step (the batch loss
            plus the weight cost), a detached 0-d tensor.

        Raises:
            InvalidArgumentError: a closure was given (this optimizer draws its own data).
        """
        if closure is not None or loss_closure is not None:
            raise InvalidArgumentError(
                "StochasticHessianFree draws its own mini-batches from `data` and computes "
                "their loss itself; call step() without a closure"
            )
        data = self.training_data()
        step = int(self.hf_state["steps"]) + 1
        size = self.batches.size(step, num_samples(data[0]))
        self._batch = select(data, self._draw(size))
        curvature = curvature_size(size, self.curvature_fraction)
        self._curvature_batch = select(self._batch, slice(0, curvature))
        self.hf_state["batch_size"], self.hf_state["curvature_size"] = size, curvature
        self._operators = []
        try:
            loss = super().step(self._closure, self._loss_closure)
        finally:
            products = sum(operator.products for operator in self._operators)
            self.hf_state["cases"] += products * curvature
            self._operators, self._batch, self._curvature_batch = [], None, None
        return loss

    # -- data --------------------------------------------------------------------------

    def _draw(self, size: int) -> Tensor:
        """``size`` indices without replacement: the next ones of the current permutation,
        or of a fresh one when too few remain (drop-last, as ``BatchSampler``;
        :func:`~hesskit.optim.sampling.draw_without_replacement`)."""
        num_data = num_samples(self.training_data()[0])
        return draw_without_replacement(self.hf_state, num_data, size)

    def _batch_loss(self) -> Tensor:
        """``loss(model(X), y)`` on this step's gradient batch (without the weight cost,
        which HessianFree adds), counting its cases."""
        inputs, targets = self._batch  # type: ignore[misc]
        self.hf_state["cases"] += num_samples(inputs)
        return self.loss(call_model(self.model, inputs), targets)

    def _closure(self) -> Tensor:
        self.zero_grad()
        value = self._batch_loss()
        value.backward()
        return value

    def _loss_closure(self) -> Tensor:
        return self._batch_loss()

    # -- curvature and preconditioner ---------------------------------------------------

    def _curvature(self) -> CurvatureChunk:
        """G on the curvature batch at θ, its products counted, with the batch's loss for ρ
        (each evaluation counted as c cases)."""
        problem = Problem(self.model, self.loss, self._curvature_batch)
        operator = CountingOperator(gauss_newton_operator(problem))
        self._operators.append(operator)
        data_loss = chunk_loss(problem)
        size = int(self.hf_state["curvature_size"])

        def objective() -> Tensor:
            self.hf_state["cases"] += size
            return data_loss()

        return CurvatureChunk(operator, objective)

    def _charge_extra_pass(self) -> None:
        """diag(EF) of the gradient batch took a separate per-sample pass over it (its
        backward-pass squares were not proved exact for this model): b_k cases."""
        self.hf_state["cases"] += int(self.hf_state["batch_size"])
