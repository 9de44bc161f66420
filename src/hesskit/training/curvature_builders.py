"""Registry builders for the optimizers that estimate curvature: K-FAC, Sophia, AdaHessian,
Shampoo (entries ``kfac``, ``sophia``, ``sophia-h``, ``adahessian``, ``shampoo`` of
:data:`hesskit.training.optimizers.REGISTRY`).

Every run minimises the loop's objective ℓ + (wd/2)‖θ‖² (``loop.objective``), so each method
is built with its own decoupled weight decay OFF: the weight cost is already in the
closure's loss and gradient. (K-FAC, whose closure computes the data loss of its own
mini-batch, is given wd as its ``weight_decay``, which it adds to the objective in exactly
that form, §6.1.)

How each is driven by the loop, and what it is charged in the run's epochs:

* **K-FAC** runs full-batch in the loop (its batch is the training set S) and draws its own
  mini-batches of m_k cases without replacement (a seeded permutation, as stochastic HF),
  with m_k = min(m₁ exp((k − 1)/b), |S|) (Martens & Grosse 2015, §13;
  :class:`~hesskit.optim.kfac.steps.KFACBatchSchedule`), its statistics on the first
  τ₁ = 1/8 of each (``KFACSchedule.statistics_fraction``). Data parallel, the draw is of
  global positions (the same on every rank) and each rank takes those in its contiguous
  shard (``shard_range``), as Hessian-free's chunks do. The loop's closures are not called
  (K-FAC steps on a closure over its own mini-batch, from which it reads the batch); the
  cases K-FAC puts through the model (``kfac_state["cases"]``) are charged through the
  product counter in units of the loop's curvature batch, the remainder carried. lr = 1
  (the step size is chosen by the quadratic model). ``step`` returns the objective on its
  mini-batch (loss + weight cost). Reports λ.
* **Sophia** (``sophia``: Gauss-Newton-Bartlett, SophiaG; ``sophia-h``: Hutchinson) steps
  on the loop's closure; its estimate, every k = 10 steps, is on the gradient batch (the
  authors' code estimates on the current batch), charged as one product (GNB: one gradient)
  or two (Hutchinson: a linearisation and a product) over that batch.
* **AdaHessian** needs the loss without ``backward()`` (it differentiates twice): it takes
  the loop's ``loss_closure``; its Hessian-vector product is charged as one product.
* **Shampoo** steps on the loop's closure (one gradient); nothing else to charge.

K-FAC's and Sophia's sampled targets are keyed by the sample's global index
(``keyed_targets=True``), so a run draws the same targets however many ranks share it:
data parallel it follows the single-process run to rounding, except that K-FAC's
statistics come from the first τ₁ of each rank's shard of its mini-batch (another subset of
the same size than one process takes; its runs agree to ~1e-7, not to rounding).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hesskit.distributed import shard_range, sum_over_ranks
from hesskit.optim.sampling import draw_without_replacement
from hesskit.optim.weight_cost import weight_cost_value
from hesskit.tensor_tree import call_model, num_samples, select
from hesskit.training.optimizers import OptimizerContext

SAMPLER_SEED_BOUND = 2**31 - 1


def _seed() -> int:
    """A seed from torch's global generator (the loop seeds it with the run's seed)."""
    return int(torch.randint(0, SAMPLER_SEED_BOUND, ()).item())


def build_kfac(context: OptimizerContext) -> torch.optim.Optimizer:
    """K-FAC on its own scheduled mini-batches of the loop's (full) batch; module docstring."""
    from hesskit.optim.kfac.optimizer import KFAC
    from hesskit.optim.kfac.steps import KFACBatchSchedule

    batches = KFACBatchSchedule()

    class LoopKFAC(KFAC):
        def step(self, closure: object = None) -> Tensor:  # type: ignore[override]
            data = context.gradient_batch()
            state = self.kfac_state
            local = num_samples(data[0])
            total = int(sum_over_ranks(local))
            size = batches.size(int(state["steps"]) + 1, total)
            indices = draw_without_replacement(state, total, size)
            if total != local:  # data parallel: this rank's part of the global draw
                offset = shard_range(total).start
                indices = indices[(indices >= offset) & (indices < offset + local)] - offset
            inputs, targets = select(data, indices)
            share = len(indices) / size  # this rank's share of the mean (1 alone)

            def closure() -> Tensor:
                self.zero_grad()
                value = context.loss(call_model(context.model, inputs), targets) * share
                value.backward()
                return value

            cost = weight_cost_value(context.model.parameters(), context.weight_decay)
            state["batch_size"] = size
            loss = super().step(closure)
            unit = max(1, num_samples(context.curvature_batch()[0]))
            units = int(state["cases"]) // unit
            context.products.add(units - int(state["charged_units"]))
            state["charged_units"] = units
            return loss + cost

    optimizer = LoopKFAC(context.model.parameters(), model=context.model, loss=context.loss,
                         lr=1.0 if context.lr is None else context.lr,
                         weight_decay=context.weight_decay, seed=_seed(), keyed_targets=True)
    optimizer.kfac_state.update(
        sampler_generator=torch.Generator().manual_seed(_seed()).get_state(),
        sampler_permutation=torch.arange(0), sampler_cursor=0, charged_units=0, batch_size=0,
    )
    return optimizer


def build_sophia(context: OptimizerContext, hutchinson: bool = False) -> torch.optim.Optimizer:
    """Sophia on the loop's closure, its estimate on the gradient batch; module docstring."""
    from hesskit.optim.diagonal.sophia import Sophia, SophiaEstimator
    from hesskit.problem import Problem

    def curvature() -> Problem:
        context.products.add(2 if hutchinson else 1)
        return Problem(context.model, context.loss, context.gradient_batch())

    estimator = SophiaEstimator.HUTCHINSON if hutchinson else (
        SophiaEstimator.GAUSS_NEWTON_BARTLETT)
    return Sophia(context.model.parameters(), curvature=curvature, estimator=estimator,
                  lr=context.lr, weight_decay=0.0, seed=_seed(), keyed_targets=True)


def build_adahessian(context: OptimizerContext) -> torch.optim.Optimizer:
    """AdaHessian on the loop's loss-only closure; module docstring."""
    from hesskit.optim.diagonal.adahessian import AdaHessian

    class LoopAdaHessian(AdaHessian):
        def step(self, closure: object = None, loss_closure: object = None) -> Tensor:  # type: ignore[override]
            if int(self.adahessian_state["steps"]) % self.update_each == 0:
                context.products.add(1)
            return super().step(loss_closure)  # type: ignore[arg-type]

    return LoopAdaHessian(context.model.parameters(), lr=context.lr, weight_decay=0.0,
                          seed=_seed())


def build_shampoo(context: OptimizerContext) -> torch.optim.Optimizer:
    """Shampoo grafted onto Adam on the loop's closure; module docstring."""
    from hesskit.optim.shampoo.optimizer import Shampoo

    return Shampoo(context.model.parameters(), lr=context.lr, weight_decay=0.0)
