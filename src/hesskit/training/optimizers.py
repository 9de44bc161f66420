"""The optimizers a training run or benchmark can use: one registry, name → factory.

Every optimizer is a ``torch.optim.Optimizer`` driven the same way: ``step(closure)``,
where the closure recomputes the mini-batch objective (loss + weight decay) and its
gradient and may be called several times per step (L-BFGS's line search, Hessian-free's
backtracking). Hessian-free and damped Newton also take a ``loss_closure`` (the objective
without its gradient) for their trial points. Adding an optimizer is one
:class:`OptimizerSpec` in :data:`REGISTRY`.

Learning-rate grids (for ``hesskit bench``; half-decade spacing around the values that are
customary for each method, checked on the digits problems so that the best lr is inside
the grid rather than at its edge):

========  ==========================================  =========================
name      torch optimizer                             lr grid
========  ==========================================  =========================
adam      Adam (β = 0.9, 0.999)                       1e-3, 3e-3, 1e-2, 3e-2, 1e-1
rmsprop   RMSprop (α = 0.99, ε = 1e-8)                3e-4, 1e-3, 3e-3, 1e-2, 3e-2
sgd       SGD, Nesterov momentum 0.9                  3e-3, 1e-2, 3e-2, 1e-1, 3e-1
lbfgs     LBFGS, history 20, strong-Wolfe line search 1 (the line search sets the step)
========  ==========================================  =========================

L-BFGS takes one iteration per ``step`` (so that the log has a record per iteration) with
up to :data:`LBFGS_MAX_EVALUATIONS` loss evaluations for its line search. torch's default
budget, ``max_eval = max_iter · 5/4``, is a single evaluation for ``max_iter=1``: the
line search then gets none of its own, returns step size 0, and L-BFGS stalls for good at
a non-stationary point (seen on the digits autoencoder: the loss frozen at 27.149 for 290
steps; with 25 evaluations it keeps descending).

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
with the curvature on 1/10 of each; see :func:`_stochastic_hessian_free` for how its cases
enter the epochs.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from hesskit.distributed import shard_range, sum_over_ranks, world_size
from hesskit.errors import InvalidArgumentError
from hesskit.operators.counting import CountingOperator
from hesskit.optim.hessian_free.chunks import CurvatureChunk, RoundRobinChunks, chunk_loss
from hesskit.optim.shampoo.optimizer import UPDATE_FREQ as SHAMPOO_START
from hesskit.optim.weight_cost import weight_cost_value
from hesskit.tensor_tree import num_samples, select

CHUNK_SEED = 0
"""Seeds the one shuffle of the gradient batch's positions into curvature chunks (Martens
shuffles the data once, ``nnet_demo_2.m``)."""

LBFGS_MAX_EVALUATIONS = 25
"""Closure calls one L-BFGS step may make (1 at θ + up to 24 in the strong-Wolfe search;
torch's own line-search cap is 25)."""


class ProductCounter:
    """Counts a run's curvature-vector products across the operators built step by step.

    Each step's operator is a :class:`~hesskit.operators.CountingOperator`; ``track`` folds
    the previous one's tally into the total, so only the latest operator is kept alive.
    """

    def __init__(self, count: int = 0) -> None:
        self._base, self._latest = count, None

    @property
    def count(self) -> int:
        return self._base + (0 if self._latest is None else self._latest.products)

    @count.setter
    def count(self, value: int) -> None:
        self._base, self._latest = value, None

    def add(self, products: int) -> None:
        """Charge ``products`` passes over the curvature batch that were not operator products
        (ρ's chunk losses, the preconditioner's pass), keeping the latest operator tracked."""
        self._base += products

    def track(self, operator: CountingOperator) -> CountingOperator:
        self._base, self._latest = self.count, operator
        return operator


@dataclass(frozen=True)
class OptimizerContext:
    """What a factory may use to build an optimizer for one run.

    Attributes:
        model: the network being trained.
        loss: the problem's loss module (per mini-batch reduction as in the objective).
        weight_decay: wd in the objective ℓ + (wd/2)‖θ‖².
        lr: the learning rate (``None`` for methods without one).
        gradient_batch: returns the current gradient mini-batch ``(X, y)``.
        curvature_batch: returns the current curvature mini-batch ``(X, y)``, a subset of
            the gradient batch.
        products: the counter that curvature operators built for this run increment.
        initial_damping: λ at Hessian-free's first step (its Levenberg-Marquardt rule
            adapts it from there); 45 by default (``initlambda``, HFDemo ``nnet_train_2.m``
            line 116).
    """

    model: nn.Module
    loss: nn.Module
    weight_decay: float
    lr: float | None
    gradient_batch: Callable[[], tuple[Tensor, Tensor]]
    curvature_batch: Callable[[], tuple[Tensor, Tensor]]
    products: ProductCounter = field(default_factory=ProductCounter)
    initial_damping: float = 45.0


@dataclass(frozen=True)
class Diagnostics:
    """What a second-order optimizer reports after a step: λ and the running total of CG
    iterations (the loop logs the per-step difference)."""

    damping: float | None = None
    cg_iterations_total: int | None = None


def _no_diagnostics(optimizer: torch.optim.Optimizer) -> Diagnostics:
    return Diagnostics()


@dataclass(frozen=True)
class OptimizerSpec:
    """One entry of the registry.

    Attributes:
        name: the CLI name (``--optimizer NAME``).
        title: the name shown in reports.
        build: the factory ``context -> torch.optim.Optimizer``.
        lr_grid: learning rates ``hesskit bench`` tries (empty: the method has no lr).
        default_lr: the lr ``hesskit train`` uses without ``--lr``.
        full_batch: use the whole training set as the gradient batch by default.
        max_params: the largest model the method handles in reasonable time (``None``: any).
        products_on_curvature_batch: its curvature-vector products run on the curvature
            mini-batch (Hessian-free); otherwise on the gradient batch (damped Newton). A
            run counts each product as one pass over that batch's cases in its epochs.
        takes_loss_closure: its ``step(closure, loss_closure=...)`` evaluates trial points
            with a loss-only closure (a forward pass instead of a gradient).
        requires: ``"module:name"`` entries the method needs beyond torch.
        diagnostics: optimizer → :class:`Diagnostics` (λ, CG iterations so far).
        warmup_steps: the first steps that are another method's exactly (Shampoo: its
            Adam graft's before ``start_preconditioning_step``); a run no longer than this
            is reported with :func:`~hesskit.optim.shampoo.graft.warmup_note`.
    """

    name: str
    title: str
    build: Callable[[OptimizerContext], torch.optim.Optimizer]
    lr_grid: tuple[float, ...] = ()
    default_lr: float | None = None
    full_batch: bool = False
    max_params: int | None = None
    products_on_curvature_batch: bool = False
    takes_loss_closure: bool = False
    requires: tuple[str, ...] = ()
    diagnostics: Callable[[torch.optim.Optimizer], Diagnostics] = _no_diagnostics
    warmup_steps: int = 0

    @property
    def available(self) -> bool:
        """Whether the hesskit pieces it needs can be imported (Hessian-free, Newton)."""
        return all(_importable(requirement) for requirement in self.requires)


def _importable(requirement: str) -> bool:
    module, _, attribute = requirement.partition(":")
    try:
        return hasattr(importlib.import_module(module), attribute)
    except ImportError:
        return False


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


def _hessian_free(context: OptimizerContext) -> torch.optim.Optimizer:
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


def _stochastic_hessian_free(context: OptimizerContext) -> torch.optim.Optimizer:
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


def _damped_newton(context: OptimizerContext) -> torch.optim.Optimizer:
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


def _state_diagnostics(attribute: str) -> Callable[[torch.optim.Optimizer], Diagnostics]:
    """Read λ and the running CG-iteration total from the optimizer-wide state dict
    ``optimizer.<attribute>`` (``hf_state`` of HessianFree, ``newton_state`` of Newton)."""

    def read(optimizer: torch.optim.Optimizer) -> Diagnostics:
        state = getattr(optimizer, attribute)
        total = state.get("cg_iterations")
        return Diagnostics(
            damping=float(state["damping"]) if "damping" in state else None,
            cg_iterations_total=None if total is None else int(total),
        )

    return read


def _curvature_builder(name: str, **options: object) -> Callable[
        [OptimizerContext], torch.optim.Optimizer]:
    """The factory ``hesskit.training.curvature_builders.<name>`` (K-FAC, Sophia, AdaHessian,
    Shampoo: how each is driven and charged), imported when first called (it imports this
    module)."""

    def build(context: OptimizerContext) -> torch.optim.Optimizer:
        from hesskit.training import curvature_builders

        return getattr(curvature_builders, name)(context, **options)

    return build


REGISTRY: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec(
            "hf", "Hessian-free", _hessian_free, full_batch=True,
            products_on_curvature_batch=True, takes_loss_closure=True,
            requires=("hesskit.optim:HessianFree", "hesskit.operators:gauss_newton_operator"),
            diagnostics=_state_diagnostics("hf_state"),
        ),
        OptimizerSpec(
            "shf", "stochastic Hessian-free", _stochastic_hessian_free, full_batch=True,
            products_on_curvature_batch=True,
            requires=("hesskit.optim.hessian_free.stochastic:StochasticHessianFree",),
            diagnostics=_state_diagnostics("hf_state"),
        ),
        OptimizerSpec(
            "newton", "damped Newton", _damped_newton, full_batch=True, max_params=2000,
            takes_loss_closure=True,
            requires=("hesskit.optim:DampedNewton",),
            diagnostics=_state_diagnostics("newton_state"),
        ),
        OptimizerSpec(
            "rmsprop", "RMSProp",
            lambda c: torch.optim.RMSprop(c.model.parameters(), lr=c.lr, alpha=0.99, eps=1e-8),
            lr_grid=(3e-4, 1e-3, 3e-3, 1e-2, 3e-2), default_lr=1e-3,
        ),
        OptimizerSpec(
            "adam", "Adam",
            lambda c: torch.optim.Adam(c.model.parameters(), lr=c.lr),
            lr_grid=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1), default_lr=1e-3,
        ),
        OptimizerSpec(
            "sgd", "SGD (Nesterov)",
            lambda c: torch.optim.SGD(c.model.parameters(), lr=c.lr, momentum=0.9, nesterov=True),
            lr_grid=(3e-3, 1e-2, 3e-2, 1e-1, 3e-1), default_lr=1e-2,
        ),
        OptimizerSpec(
            "lbfgs", "L-BFGS",
            lambda c: torch.optim.LBFGS(
                c.model.parameters(), lr=c.lr, max_iter=1, max_eval=LBFGS_MAX_EVALUATIONS,
                history_size=20, line_search_fn="strong_wolfe",
            ),
            lr_grid=(1.0,), default_lr=1.0, full_batch=True,
        ),
        # The curvature-estimating methods (hesskit.training.curvature_builders: how each is
        # driven and charged). lr grids: K-FAC 1 (its step size comes from the quadratic
        # model, §7); Sophia's and Shampoo's steps are Adam-sized (clipped at lr per entry;
        # grafted onto Adam's norm), so Adam's half-decade grid, one step lower for Sophia
        # (its authors' lr is below AdamW's); AdaHessian's around its authors' 0.15.
        # Diagnostics: K-FAC reports λ; the others have no damping to report.
        OptimizerSpec(
            "kfac", "K-FAC", _curvature_builder("build_kfac"), lr_grid=(1.0,), default_lr=1.0,
            full_batch=True, products_on_curvature_batch=True,
            requires=("hesskit.optim.kfac.optimizer:KFAC",
                      "hesskit.optim.kfac.steps:KFACBatchSchedule"),
            diagnostics=_state_diagnostics("kfac_state"),
        ),
        OptimizerSpec(
            "sophia", "Sophia (GNB)", _curvature_builder("build_sophia"),
            lr_grid=(3e-4, 1e-3, 3e-3, 1e-2, 3e-2), default_lr=1e-3,
            requires=("hesskit.optim.diagonal.sophia:Sophia",),
        ),
        OptimizerSpec(
            "sophia-h", "Sophia (Hutchinson)",
            _curvature_builder("build_sophia", hutchinson=True),
            lr_grid=(3e-4, 1e-3, 3e-3, 1e-2, 3e-2), default_lr=1e-3,
            requires=("hesskit.optim.diagonal.sophia:Sophia",),
        ),
        OptimizerSpec(
            "adahessian", "AdaHessian", _curvature_builder("build_adahessian"),
            lr_grid=(1e-2, 3e-2, 1e-1, 3e-1, 1.0), default_lr=0.15, takes_loss_closure=True,
            requires=("hesskit.optim.diagonal.adahessian:AdaHessian",),
        ),
        OptimizerSpec(
            "shampoo", "Shampoo (Adam graft)", _curvature_builder("build_shampoo"),
            lr_grid=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1), default_lr=1e-3,
            requires=("hesskit.optim.shampoo.optimizer:Shampoo",),
            warmup_steps=SHAMPOO_START - 1,  # the Shampoo(...) of build_shampoo: s = T
        ),
    )
}
"""Every optimizer ``hesskit train``, ``bench`` and ``precondition`` know, by name: how to
build it and what its training loop needs (full batch, curvature batch, closures)."""


def get_optimizer_spec(name: str) -> OptimizerSpec:
    """The registry entry for ``name``.

    Raises:
        InvalidArgumentError: unknown name, or a method whose hesskit module is missing.
    """
    spec = REGISTRY.get(name)
    if spec is None:
        raise InvalidArgumentError(
            f"unknown optimizer {name!r}; choose one of {', '.join(REGISTRY)}"
        )
    if not spec.available:
        raise InvalidArgumentError(
            f"optimizer {name!r} needs {', '.join(spec.requires)}, which this installation "
            "lacks; "
            f"choose one of {', '.join(n for n, s in REGISTRY.items() if s.available)}"
        )
    return spec
