"""Registry builders for the damped optimizers: Hessian-free, stochastic Hessian-free and
damped Newton (entries ``hf``, ``shf``, ``newton`` of
:data:`hesskit.training.optimizers.REGISTRY`).

L-BFGS, Hessian-free and damped Newton run full-batch by default (L-BFGS's curvature pairs
and line search assume a deterministic objective; Martens 2010 §4 computes HF's gradient
on large batches). Hessian-free follows Martens' released code (HFDemo ``nnet_train_2.m``):
the gradient batch is cut into chunks the size of the loop's curvature batch (a shuffled
partition, seed :data:`CHUNK_SEED`), and step k builds the Gauss-Newton operator G + wd·I
on chunk (k − 1) mod numchunks (line 940), so that the curvature sees every case of a full
batch in numchunks steps; ρ is measured on that chunk over the undamped model (lines
1340–1353); the preconditioner is [diag(EF) + wd + λ]^¾ of the gradient batch (line 1264).

Counting for the loop's epochs (it charges each product one pass over the curvature
batch): besides CG's products and ρ's one, each of ρ's two chunk-loss evaluations is
charged as one product (a pass over a chunk), and the preconditioner's per-sample pass
over the gradient batch (an extra pass here; Martens takes it from the gradient pass) as
numchunks products, one pass over the gradient batch's cases.

Stochastic Hessian-free (``shf``, :mod:`hesskit.optim.hessian_free.stochastic`) runs the same
step on gradient mini-batches that grow along the run, which it draws itself from the training set,
with the curvature on 1/10 of each; see :func:`build_stochastic_hessian_free` for how its cases
enter the epochs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from hesskit.distributed import shard_range, sum_over_ranks, world_size
from hesskit.operators.counting import CountingOperator
from hesskit.optim.hessian_free.chunks import CurvatureChunk, RoundRobinChunks, chunk_loss
from hesskit.optim.weight_cost import weight_cost_value
from hesskit.tensor_tree import num_samples, select
from hesskit.training.optimizers import OptimizerContext

CHUNK_SEED = 0
"""Seeds the one shuffle of the gradient batch's positions into curvature chunks (Martens
shuffles the data once, ``nnet_demo_2.m``)."""


class _ChunkSchedule:
    """Martens' round-robin curvature chunks over the positions of the gradient batch.

    The chunk size is the loop's curvature-batch size c, so numchunks = ⌈B / c⌉ for a
    gradient batch of B cases; the partition is rebuilt when B changes. Data parallel, the
    partition is of the GLOBAL batch (B and c summed over the ranks) and each rank takes the
    part of the chunk that lies in its contiguous shard (``shard_range``), so the chunk is
    the one a single process would use."""

    def __init__(self, context: OptimizerContext) -> None:
        self.context = context
        self.chunks: RoundRobinChunks | None = None
        self.local_size, self.offset = -1, 0

    def numchunks(self) -> int:
        return self._chunks().numchunks

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        """This rank's part of the chunk of step ``step`` (from 1) of the gradient batch."""
        chunks = self._chunks()
        indices = chunks.indices(step)
        if chunks.num_data != self.local_size:
            inside = (indices >= self.offset) & (indices < self.offset + self.local_size)
            indices = indices[inside] - self.offset
        return select(self.context.gradient_batch(), indices)

    def _chunks(self) -> RoundRobinChunks:
        local = num_samples(self.context.gradient_batch()[0])
        if self.chunks is None or local != self.local_size:
            curvature = num_samples(self.context.curvature_batch()[0])
            total, chunk = int(sum_over_ranks(local)), max(1, int(sum_over_ranks(curvature)))
            self.chunks = RoundRobinChunks(total, min(total, math.ceil(total / chunk)),
                                           seed=CHUNK_SEED)
            self.local_size = local
            self.offset = shard_range(total).start if world_size() > 1 else 0
        return self.chunks


def gauss_newton_curvature(
    context: OptimizerContext, schedule: _ChunkSchedule, step: Callable[[], int]
) -> Callable[[], CurvatureChunk]:
    """The callable HF calls each step: G + wd·I at the current θ on this step's chunk
    (wd·I is the Hessian of the weight cost (wd/2)‖θ‖²), its products counted, with the
    chunk's objective (loss + weight cost) for ρ, each evaluation charged as one product."""
    from hesskit.operators import damped, gauss_newton_operator
    from hesskit.problem import Problem

    def curvature() -> CurvatureChunk:
        problem = Problem(context.model, context.loss, schedule.batch(step()))
        operator = damped(gauss_newton_operator(problem), context.weight_decay)
        data_loss = chunk_loss(problem)

        def objective() -> Tensor:
            context.products.add(1)
            return data_loss() + weight_cost_value(context.model.parameters(),
                                                   context.weight_decay)

        return CurvatureChunk(context.products.track(CountingOperator(operator)), objective)

    return curvature


def build_hessian_free(context: OptimizerContext) -> torch.optim.Optimizer:
    """Martens' HF (module docstring): G on round-robin chunks of the gradient batch, ρ on
    the chunk over the undamped model, preconditioned by diag(EF) of the gradient batch plus
    wd (§4.7; HFDemo ``nnet_train_2.m`` line 1264). The closure already holds the weight
    cost, so HF's own ``weight_decay`` stays 0 and wd is built into G and the statistic.

    diag(EF) is accumulated in the closure's own backward pass where that is proved exact
    (``hesskit.optim.gradient_pass_preconditioner``: Linear chains), at no extra cases;
    elsewhere it is a separate per-sample pass over the gradient batch, charged as
    numchunks products (one pass over the gradient batch's cases)."""
    from hesskit.optim import HessianFree, LevenbergMarquardt
    from hesskit.optim.hessian_free.preconditioners import gradient_pass_preconditioner

    schedule = _ChunkSchedule(context)
    preconditioner = gradient_pass_preconditioner(
        context.model, context.loss, context.gradient_batch, shift=context.weight_decay,
        on_extra_pass=lambda: context.products.add(schedule.numchunks()),
    )
    optimizer = HessianFree(
        context.model.parameters(),
        curvature=lambda: curvature(),
        damping=LevenbergMarquardt(initial=context.initial_damping),
        preconditioner=preconditioner,
    )
    curvature = gauss_newton_curvature(context, schedule, lambda: int(optimizer.hf_state["steps"]))
    return optimizer


def build_stochastic_hessian_free(context: OptimizerContext) -> torch.optim.Optimizer:
    """Stochastic HF (:mod:`hesskit.optim.hessian_free.stochastic`) inside the training loop.

    The loop runs it full-batch: its batch is the training set, from which the optimizer draws
    its own growing mini-batches (the loop's closures, over the whole set, are not called).
    Its cases (``hf_state["cases"]``, every case through a gradient, a loss evaluation or a
    curvature product) are charged to the loop's epochs through the product counter, in units
    of the loop's curvature batch (the counter's unit); the remainder below one unit is
    carried to the next step, so the run's epochs are exact to within one curvature batch.
    The logged ``products`` of an ``shf`` run are therefore those units, not G·v products."""
    from hesskit.optim import LevenbergMarquardt
    from hesskit.optim.hessian_free.stochastic import StochasticHessianFree

    class LoopStochasticHessianFree(StochasticHessianFree):
        def training_data(self) -> tuple[object, object]:
            return context.gradient_batch()

        def step(self, closure: object = None, loss_closure: object = None) -> Tensor:
            loss = super().step()
            unit = max(1, num_samples(context.curvature_batch()[0]))
            units = int(self.hf_state["cases"]) // unit
            context.products.add(units - int(self.hf_state["charged_units"]))
            self.hf_state["charged_units"] = units
            return loss

    optimizer = LoopStochasticHessianFree(
        context.model, context.loss, (None, None),
        weight_decay=context.weight_decay,
        damping=LevenbergMarquardt(initial=context.initial_damping),
    )
    optimizer.hf_state["charged_units"] = 0
    return optimizer


def build_damped_newton(context: OptimizerContext) -> torch.optim.Optimizer:
    """Damped Newton with the exact dense Hessian of the objective on the gradient batch
    (H + wd·I); one build counts as N curvature-vector products (its cost in products)."""
    from hesskit.operators import hessian_operator
    from hesskit.optim import DampedNewton
    from hesskit.problem import Problem

    def hessian() -> Tensor:
        problem = Problem(context.model, context.loss, context.gradient_batch())
        matrix = hessian_operator(problem).to_dense()
        context.products.count += problem.num_params
        eye = torch.eye(problem.num_params, dtype=matrix.dtype, device=matrix.device)
        return matrix + context.weight_decay * eye

    return DampedNewton(context.model.parameters(), hessian=hessian)
