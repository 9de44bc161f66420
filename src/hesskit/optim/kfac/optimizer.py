"""K-FAC (Martens & Grosse 2015, ICML) for Linear, Conv1D, Embedding and Conv2d layers (tied
weights included), as a torch optimizer.

One iteration k on the mini-batch the closure evaluates (read from the closure's calls of
the model and the loss, :class:`~hesskit.optim.closure_batch.ClosureBatch`), with h(θ) = L(θ) +
Σ (η/2)‖θ‖² (weight decay η per group, part of the objective, §6.1):

1. the factors of every covered layer from the first τ₁ of the batch
   (:mod:`hesskit.operators.kfac_factors`; sampled targets by default: the Fisher),
   averaged A ← ε A + (1 − ε) A_batch with ε = min(1 − 1/k, 0.95) (§5);
2. on the first 3 iterations and every T₃: the factors' eigendecompositions (§8);
3. Δ = −F̆⁻¹ ∇h with factored Tikhonov damping, layer by layer
   (G + γ/π I)⁻¹ ∇_W̄ h (A + πγ I)⁻¹, π = √((tr A/dim A)/(tr G/dim G)) (§6.3);
   uncovered parameters (LayerNorm gains, biases outside a layer, ...): the damping alone,
   Δ = −∇h/γ² (the limit of zero factors; α below rescales it; never frozen);
4. α, μ minimise M(δ) = ½δᵀ(F + (λ + η)I)δ + ∇hᵀδ over δ = αΔ + μδ₀ (δ₀ the previous
   update), with F ``v`` the exact Gauss-Newton products of
   ``hesskit.operators.gauss_newton_operator`` on the batch (= the Fisher for the
   matching losses MSE, cross-entropy, BCE): ONE ``matmat`` of [Δ, δ₀] (§7);
5. every T₂ iterations γ is re-chosen among {γ, ω₂γ, γ/ω₂} by the lowest M(δ) (§6.6),
   their products in the same ``matmat``; γ₀ = √(λ₀ + η);
6. θ ← θ + lr·δ (lr = 1 the published method; a scheduler may change it);
7. every T₁ iterations λ by the Levenberg-Marquardt rule on ρ = (h(θ+δ) − h(θ)) /
   (M(δ) − M(0)), M without λ: λ ← ω₁λ if ρ > 3/4, λ/ω₁ if ρ < 1/4 (§6.5), within
   [floor, ceiling] (``KFACSchedule.damping_rule``, the shared ``LevenbergMarquardt``).

Constants: :class:`~hesskit.optim.kfac.steps.KFACSchedule`. The layers, found from the
model's modules, and their factors (expand/reduce for [n, ..., in] inputs, tied weights):
:mod:`hesskit.operators.kfac_layers`; :meth:`KFAC.coverage` lists them. The
mini-batch size schedule of §13, m_k = min(m₁ exp((k − 1)/b), |S|), is
:class:`~hesskit.optim.kfac.steps.KFACBatchSchedule`: this class takes the batch its
closure evaluates; ``hesskit train --optimizer kfac`` draws the batches by
that schedule (``hesskit.training.curvature_builders``). Not implemented from the paper:
the block-tridiagonal inverse (§4.3).

Cost per iteration: one gradient; the statistics (one forward and backward pass on τ₁
of the batch); one linearisation plus one matmat of 2 vectors (4 on γ iterations;
≈ 1 + 1.3·K gradients); every T₁ one forward pass for ρ; every refresh two eigh per layer.
``kfac_state["cases"]`` counts the cases through the model: n for the gradient, ⌈τ₁n⌉
for the statistics, n per curvature product and n for ρ's forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from hesskit.distributed import is_distributed
from hesskit.errors import InvalidArgumentError
from hesskit.operators import CurvatureOperator
from hesskit.operators.kfac_factors import (
    FactorEigen,
    FactorTargets,
    KroneckerFactors,
    LinearBlock,
    factor_dtype,
    factor_statistics,
    kfac_blocks,
)
from hesskit.operators.kfac_layers import KFACApproximation
from hesskit.optim.base import CurvatureOptimizer, summed_over_ranks
from hesskit.optim.closure_batch import ClosureBatch, parameter_names
from hesskit.optim.damping import loss_resolution, reduction_ratio
from hesskit.optim.kfac.products import (
    averaged_factors,
    coverage_table,
    curvature_products,
    damped_direction,
    factor_objects,
    plain_factors,
)
from hesskit.optim.kfac.steps import (
    KFACSchedule,
    QuadraticStep,
    quadratic_step,
)
from hesskit.optim.preconditioner_operators import kfac_preconditioner
from hesskit.optim.safety import (
    DEFAULT_MAX_REJECTIONS,
    init_rejection_state,
    is_finite,
    record_acceptance,
    record_rejection,
)
from hesskit.problem import Problem
from hesskit.tensor_tree import map_tensors, num_samples

STATE_KEY = "kfac"
"""Key of the optimizer-wide state in :meth:`KFAC.state_dict`."""


class KFAC(CurvatureOptimizer):
    """K-FAC over a model's parameters (module docstring for the iteration).

    Args:
        params: parameters or parameter groups of ``model`` (as for any torch optimizer,
            e.g. ``model.parameters()``); each group may set ``lr`` and ``weight_decay``
            (η).
        lr, weight_decay: group defaults.
        model: the network; its layers are found from its modules
            (``hesskit.operators.kfac_layers.kfac_blocks``).
        loss: the loss module the closure calls (a hesskit ``Loss`` or a torch loss
            module), convex in the outputs and, for sampled targets, a negative
            log-likelihood.
        targets: :class:`FactorTargets` of the G factors (default SAMPLED, the Fisher).
        schedule: the constants (:class:`KFACSchedule`, the paper's by default).
        seed: seed of the target sampling (in the state dict: resumes exactly).
        keyed_targets: draw each sample's sampled target from a generator keyed by (a
            per-step seed from ``seed``'s generator, the sample's global index), so that the
            draws do not depend on the batching or the ranks; None (default): keyed exactly
            when the batch is sharded over ``torch.distributed`` ranks.
        max_rejections: consecutive non-finite steps before ``NonFiniteError``.
        kfac_approx: ``"expand"`` (default) or ``"reduce"``, the factors of a Linear layer on
            ``[n, ..., in]`` inputs (Eschenhagen et al. 2023, §3;
            :mod:`hesskit.operators.kfac_layers`). Expand is the default: it is exact for a
            loss term per position (their §3.1), as in language models (GPT-2); reduce is
            exact only for positions pooled before the loss (§3.2), and cheaper.
        verbose: print :meth:`coverage` at construction.

    Usage, as for any torch optimizer::

        optimizer = KFAC(model.parameters(), model=model, loss=loss_fn)
        def closure():
            optimizer.zero_grad()
            value = loss_fn(model(inputs), targets)
            value.backward()
            return value
        optimizer.step(closure)

    The closure is required and called once per step; it must call the model once and
    ``loss`` once, on the model's output itself (or its ``logits``): K-FAC reads the batch
    from those calls (:class:`~hesskit.optim.closure_batch.ClosureBatch`, which refuses
    anything else with one line) for its statistics, curvature products and ρ.
    Data parallel (``torch.distributed``): each rank's closure evaluates its shard of the
    batch and returns its share of the loss (as for Hessian-free); the loss and gradient are
    summed in one all-reduce, the factors in one (``factor_statistics``), the curvature
    products and ρ's loss by the distributed ``Problem``; sampled targets are keyed by the
    global sample index, so every rank takes identical steps (parameters bitwise equal).
    Statistics on τ₁ < 1 use the first τ₁ of each rank's shard.
    ``step`` returns the loss. A non-finite loss, gradient, product, step or trial loss is
    rejected: parameters bitwise unchanged, factors and γ as before, the rejection
    counted; λ ← min(λ/ω₁, ceiling) when a tried step failed, λ kept when the batch's
    loss or gradient was not finite (a bad batch says nothing about the model, so the run
    continues exactly as the run without that batch).

    State: per parameter ``previous_update`` (δ₀); optimizer-wide ``self.kfac_state``
    (state dict key ``"kfac"``): ``steps``, ``damping`` (λ), ``gamma`` (γ), ``factors``,
    ``eigen``, ``generator``, ``last_ratio``, ``last_alpha``, ``last_mu``, ``cases`` (module
    docstring), and the rejection counters.
    """

    state_key = STATE_KEY
    state_attribute = "kfac_state"

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1.0,
        *,
        model: nn.Module,
        loss: nn.Module,
        weight_decay: float = 0.0,
        targets: FactorTargets = FactorTargets.SAMPLED,
        schedule: KFACSchedule | None = None,
        seed: int = 0,
        keyed_targets: bool | None = None,
        max_rejections: int = DEFAULT_MAX_REJECTIONS,
        kfac_approx: KFACApproximation | str = KFACApproximation.EXPAND,
        verbose: bool = False,
    ) -> None:
        if not (lr >= 0 and weight_decay >= 0):
            raise InvalidArgumentError(
                f"lr and weight_decay must be ≥ 0, got lr={lr}, weight_decay={weight_decay}"
            )
        self._watch = ClosureBatch(model, loss, "KFAC")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})
        self.model, self.loss = model, loss
        self.targets = FactorTargets(targets)
        self.schedule = schedule or KFACSchedule()
        self.max_rejections = max_rejections
        self.names = parameter_names(model, self._params, "KFAC")
        self.blocks: list[LinearBlock] = kfac_blocks(model, self.names)
        self.kfac_approx = KFACApproximation(kfac_approx)
        self.generator = torch.Generator().manual_seed(seed)
        self.keyed_targets = keyed_targets
        eta = max(g["weight_decay"] for g in self.param_groups)
        self.kfac_state: dict[str, object] = {
            "steps": 0, "damping": self.schedule.initial_damping, "factors": {}, "eigen": {},
            "gamma": math.sqrt(self.schedule.initial_damping + eta), "last_ratio": math.nan,
            "last_alpha": math.nan, "last_mu": math.nan, "cases": 0,
        }
        init_rejection_state(self.kfac_state)
        if verbose:
            print(self.coverage())

    def coverage(self) -> str:
        """A table of every parameter and how K-FAC treats it (:func:`coverage_table`)."""
        return coverage_table(self.names, self._params, self.blocks, self.kfac_approx)

    def __repr__(self) -> str:
        return f"{super().__repr__()}\n{self.coverage()}"

    def preconditioner(self, power: float = 1.0) -> CurvatureOperator:
        """P^power, P = (A + πγI) ⊗ (G + γ/πI) per layer, γ²I elsewhere, of the last step:
        its Δ = −P⁻¹∇h, its step lr(αΔ + μδ₀) (:func:`.kfac_preconditioner`)."""
        return kfac_preconditioner(self, power)

    def state_dict(self) -> dict:
        """The state dict with the factors and eigendecompositions as plain dicts of tensors
        and floats, so that it loads with ``torch.load(..., weights_only=True)``."""
        state = super().state_dict()
        state[STATE_KEY].update(plain_factors(state[STATE_KEY]))
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict saved by :meth:`state_dict`: resumes exactly."""
        super().load_state_dict(state_dict)
        self.kfac_state.update(factor_objects(self.kfac_state))

    def _problem(self, fraction: float = 1.0) -> Problem:
        """The problem of the closure's batch (its first ⌈fraction·n⌉ samples)."""
        if self._watch.batch is None:
            return self._watch.problem(self.names)  # raises: no batch yet
        inputs, targets = self._watch.batch
        if fraction < 1:
            n = max(1, math.ceil(fraction * num_samples(inputs)))
            inputs, targets = map_tensors(inputs, lambda t: t[:n]), map_tensors(
                targets, lambda t: t[:n])
        return Problem(self.model, self.loss, (inputs, targets), params=self.names)

    def _count(self, passes: float, problem: Problem) -> None:
        """Add ``passes`` passes over ``problem``'s local cases to ``kfac_state["cases"]``."""
        self.kfac_state["cases"] = int(self.kfac_state.get("cases", 0)) + round(
            passes * problem.local_num_data)

    def _flat(self, tensors: Iterable[Tensor]) -> Tensor:
        """Flat, in float64 for a float64 model, else float32 (``factor_dtype``; bfloat16
        models: :meth:`_move` casts the step back to each parameter's dtype)."""
        work = factor_dtype(self._params[0].dtype)
        return torch.cat([t.reshape(-1).to(work) for t in tensors])

    def _pieces(self, flat: Tensor) -> dict[str, Tensor]:
        out, offset = {}, 0
        for name, p in zip(self.names, self._params, strict=True):
            out[name] = flat[offset: offset + p.numel()].view_as(p)
            offset += p.numel()
        return out

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """One K-FAC iteration on the closure's batch; returns the loss."""
        if closure is None:
            raise InvalidArgumentError(
                "KFAC.step needs a closure that clears the gradients, computes "
                "loss(model(inputs), targets), calls backward() and returns the loss; "
                "call optimizer.step(closure)"
            )
        state = self.kfac_state
        iteration = int(state["steps"]) + 1
        loss, gradient = self._loss_and_gradient(closure)
        if not is_finite(loss, gradient):
            return self._reject("the loss or its gradient", loss, raise_damping=False)
        problem = self._problem()
        self._count(1, problem)
        theta = self._flat(p.detach() for p in self._params)
        eta = self._per_element("weight_decay", theta)
        h = float(loss) + 0.5 * float((eta * theta * theta).sum())
        grad_h = gradient + eta * theta
        factors = self._averaged_factors(iteration)
        eigen = self._eigen(factors, iteration)
        previous = self._flat(self.state[p].get("previous_update", torch.zeros_like(p))
                              for p in self._params)
        choice = self._choose(problem, eigen, grad_h, previous, eta, iteration)
        if choice is None:
            return self._reject("a curvature product or the step", loss)
        delta, gamma, model = choice
        applied = delta * self._per_element("lr", delta)
        if not is_finite(applied):
            return self._reject("the step", loss)
        start = [p.detach().clone() for p in self._params]
        self._move(start, applied)
        if iteration % self.schedule.damping_interval == 0:
            ratio = self._ratio(problem, h, grad_h, applied, delta, model, eta)
            if ratio is None:
                self._move(start, torch.zeros_like(applied))
                return self._reject("the loss after the step", loss)
            state["damping"] = self.schedule.damping_rule.updated(
                ratio, float(state["damping"]))
            state["last_ratio"] = ratio
        for p, piece in zip(self._params, self._pieces(applied).values(), strict=True):
            self.state[p]["previous_update"] = piece.clone()
        state.update(steps=iteration, gamma=gamma, factors=factors, eigen=eigen,
                     last_alpha=model[0].alpha, last_mu=model[0].mu)
        record_acceptance(state)
        return loss

    def _loss_and_gradient(self, closure: Callable[[], Tensor]) -> tuple[Tensor, Tensor]:
        """The closure's loss and flat gradient (zeros where ``.grad`` is None), summed over
        the ``torch.distributed`` ranks in one all-reduce; the batch recorded."""
        loss = self._run_closure(closure)
        loss = loss.detach() if isinstance(loss, Tensor) else torch.tensor(float(loss))
        gradient = self._flat((p.grad if p.grad is not None else torch.zeros_like(p)).detach()
                              for p in self._params)
        if not is_distributed():
            return loss, gradient
        loss, summed = summed_over_ranks(loss, {"gradient": gradient})
        return loss, summed["gradient"]

    def _averaged_factors(self, iteration: int) -> dict[str, KroneckerFactors]:
        statistics = self._problem(self.schedule.statistics_fraction)
        keyed = statistics.distributed if self.keyed_targets is None else self.keyed_targets
        seed = int(torch.randint(0, 2**62, (), generator=self.generator)) if (
            keyed and self.targets is FactorTargets.SAMPLED) else None
        stats = factor_statistics(statistics, self.blocks, self.targets, self.generator,
                                  seed=seed, approximation=self.kfac_approx)
        self._count(1, statistics)
        old: dict[str, KroneckerFactors] = self.kfac_state["factors"]  # type: ignore[assignment]
        return averaged_factors(old, stats, self.schedule.decay(iteration))

    def _eigen(self, factors: dict[str, KroneckerFactors], iteration: int) -> dict:
        cached: dict[str, FactorEigen] = self.kfac_state["eigen"]  # type: ignore[assignment]
        if cached and not self.schedule.refresh_inverses(iteration):
            return cached
        return {w: FactorEigen.of(f) for w, f in factors.items()}

    def _choose(
        self, problem: Problem, eigen: dict, grad_h: Tensor, previous: Tensor, eta: Tensor,
        iteration: int,
    ) -> tuple[Tensor, float, tuple[QuadraticStep, Tensor, Tensor]] | None:
        """δ and γ of lowest M among the γ candidates; None if a product is not finite."""
        gamma = float(self.kfac_state["gamma"])
        omega2 = self.schedule.omega2
        gammas = [gamma, omega2 * gamma, gamma / omega2] if (
            iteration % self.schedule.gamma_interval == 0) else [gamma]
        pieces = self._pieces(grad_h)  # Δ = −F̆_γ⁻¹ ∇h for each γ
        directions = [self._flat(damped_direction(self.blocks, eigen, pieces, g)[n]
                                 for n in self.names) for g in gammas]
        products = self._curvature_products(problem, [*directions, previous], eta)
        if not is_finite(*products, *directions):
            return None
        lam = float(self.kfac_state["damping"])
        best = None
        for g, d, fd in zip(gammas, directions, products[:-1], strict=False):
            q = quadratic_step(grad_h, d, previous, fd, products[-1], lam)
            if best is None or q.model_decrease < best[2][0].model_decrease:
                best = (q.alpha * d + q.mu * previous, g, (q, fd, products[-1]))
        return best

    def _curvature_products(self, problem: Problem, vectors: list[Tensor], eta: Tensor):
        """(F + ηI) u for each u (:func:`~hesskit.optim.kfac.products.curvature_products`)."""
        inputs = self._watch.batch[0] if self._watch.batch is not None else None
        out = curvature_products(problem, self.names, self._params, vectors, inputs)
        self._count(len(vectors), problem)
        return [self._flat([f]) + eta * v for f, v in zip(out, vectors, strict=True)]

    def _ratio(
        self, problem: Problem, h: float, grad_h: Tensor, applied: Tensor, delta: Tensor,
        model: tuple, eta: Tensor,
    ) -> float | None:
        """ρ = (h(θ + δ) − h(θ)) / (M(δ) − M(0)), M with F + ηI, without λ (§6.5); the
        parameters are at θ + δ. ``hesskit.optim.damping.reduction_ratio``: NaN (no
        information, λ kept) when the predicted decrease is within the loss's rounding (a
        converged run, or float32 near a minimum), −∞ when h rose. None when h(θ + δ) is
        not finite (the step is rejected)."""
        q, fd, fp = model
        if torch.equal(applied, delta):
            curvature = q.alpha * fd + q.mu * fp
        else:  # per-group learning rates: one more product for the applied step
            curvature = self._curvature_products(problem, [applied], eta)[0]
        predicted = 0.5 * float(applied.dot(curvature)) + float(grad_h.dot(applied))
        with torch.no_grad():
            local = problem.local_loss()
            new_loss = float(summed_over_ranks(local, {})[0] if problem.distributed else local)
        self._count(1, problem)
        theta = self._flat(p.detach() for p in self._params)
        new_h = new_loss + 0.5 * float((eta * theta * theta).sum())
        if not math.isfinite(new_h):
            return None
        eps = torch.finfo(self._params[0].dtype).eps
        return reduction_ratio(new_h - h, predicted, loss_resolution(h, new_h, dtype_eps=eps))

    @torch.no_grad()
    def _move(self, start: list[Tensor], step: Tensor) -> None:
        for p, s, piece in zip(self._params, start, self._pieces(step).values(), strict=True):
            p.copy_(s + piece)

    def _reject(self, what: str, loss: Tensor, *, raise_damping: bool = True) -> Tensor:
        """Count a rejection; λ ← min(λ/ω₁, ceiling) when a tried step failed, λ kept when
        the batch's own loss or gradient was not finite (no information about the model)."""
        state = self.kfac_state
        if raise_damping:
            state["damping"] = self.schedule.damping_rule.updated(
                -math.inf, float(state["damping"]))
        record_rejection(state, what, self.max_rejections)
        return loss
