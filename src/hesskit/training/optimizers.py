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
on large batches); how Hessian-free, stochastic HF and damped Newton are driven and charged:
:mod:`hesskit.training.damped_builders`; K-FAC, Sophia, AdaHessian and Shampoo:
:mod:`hesskit.training.curvature_builders`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from hesskit.errors import InvalidArgumentError
from hesskit.operators.counting import CountingOperator
from hesskit.optim.shampoo.optimizer import UPDATE_FREQ as SHAMPOO_START

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


def _builder(module: str, name: str, **options: object) -> Callable[
        [OptimizerContext], torch.optim.Optimizer]:
    """The factory ``hesskit.training.<module>.<name>`` (``damped_builders``: Hessian-free,
    stochastic HF, damped Newton; ``curvature_builders``: K-FAC, Sophia, AdaHessian,
    Shampoo; how each is driven and charged), imported when first called (it imports this
    module)."""

    def build(context: OptimizerContext) -> torch.optim.Optimizer:
        builders = importlib.import_module(f"hesskit.training.{module}")
        return getattr(builders, name)(context, **options)

    return build



REGISTRY: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec(
            "hf", "Hessian-free", _builder("damped_builders", "build_hessian_free"),
            full_batch=True,
            products_on_curvature_batch=True, takes_loss_closure=True,
            requires=("hesskit.optim:HessianFree", "hesskit.operators:gauss_newton_operator"),
            diagnostics=_state_diagnostics("hf_state"),
        ),
        OptimizerSpec(
            "shf", "stochastic Hessian-free",
            _builder("damped_builders", "build_stochastic_hessian_free"), full_batch=True,
            products_on_curvature_batch=True,
            requires=("hesskit.optim.hessian_free.stochastic:StochasticHessianFree",),
            diagnostics=_state_diagnostics("hf_state"),
        ),
        OptimizerSpec(
            "newton", "damped Newton", _builder("damped_builders", "build_damped_newton"),
            full_batch=True, max_params=2000,
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
            "kfac", "K-FAC", _builder("curvature_builders", "build_kfac"),
            lr_grid=(1.0,), default_lr=1.0,
            full_batch=True, products_on_curvature_batch=True,
            requires=("hesskit.optim.kfac.optimizer:KFAC",
                      "hesskit.optim.kfac.steps:KFACBatchSchedule"),
            diagnostics=_state_diagnostics("kfac_state"),
        ),
        OptimizerSpec(
            "sophia", "Sophia (GNB)", _builder("curvature_builders", "build_sophia"),
            lr_grid=(3e-4, 1e-3, 3e-3, 1e-2, 3e-2), default_lr=1e-3,
            requires=("hesskit.optim.diagonal.sophia:Sophia",),
        ),
        OptimizerSpec(
            "sophia-h", "Sophia (Hutchinson)",
            _builder("curvature_builders", "build_sophia", hutchinson=True),
            lr_grid=(3e-4, 1e-3, 3e-3, 1e-2, 3e-2), default_lr=1e-3,
            requires=("hesskit.optim.diagonal.sophia:Sophia",),
        ),
        OptimizerSpec(
            "adahessian", "AdaHessian", _builder("curvature_builders", "build_adahessian"),
            lr_grid=(1e-2, 3e-2, 1e-1, 3e-1, 1.0), default_lr=0.15, takes_loss_closure=True,
            requires=("hesskit.optim.diagonal.adahessian:AdaHessian",),
        ),
        OptimizerSpec(
            "shampoo", "Shampoo (Adam graft)", _builder("curvature_builders", "build_shampoo"),
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
