"""Sophia (Liu et al. 2023, "Sophia: A Scalable Stochastic Second-order Optimizer for
Language Model Pre-training"): momentum preconditioned by a clipped diagonal curvature.

Every k steps (steps 1, k + 1, 2k + 1, …) a diagonal estimate ĥ (flat ``[N]``) is drawn
and averaged, h ← β₂ h + (1 − β₂) ĥ (h₀ = 0); every step (paper Algorithm 3)

    θ ← θ − lr · wd · θ,    m ← β₁ m + (1 − β₁) g,
    θ ← θ − lr · clip(m / max(ρ h, ε), 1),         clip(x, 1) = max(min(x, 1), −1),

entrywise. Two estimators (:class:`SophiaEstimator`):

* Gauss-Newton-Bartlett (SophiaG, paper §2.3 Eq. 10 / Algorithm 2): targets ŷ drawn from
  the model's predictive distribution, ĝ = ∇_θ L̂(θ; ŷ) the gradient of the curvature
  problem's total loss on them (all its batches, and all ranks: summed in one all-reduce
  BEFORE squaring, as the authors' DDP code squares the synchronised gradient), and
  ĥ = ĝ ⊙ ĝ / c with c the total loss's reduction factor (w_b c_b, the same for every
  batch b of a plain mean). For the paper's mean cross-entropy c = 1/B and this is its
  B · ĝ ⊙ ĝ; 1/c is the general form (1/(B k) for a mean squared error over k outputs),
  which keeps E[ĥ] = diag(G) exactly (the cross terms of ĝĝᵀ have mean 0, Bartlett's
  identity). One gradient per estimate.
* Hutchinson (SophiaH, Algorithm 1): u ~ N(0, I) (the paper's Gaussian probe),
  ĥ = u ⊙ H u by ``hesskit.operators.hessian_operator`` on the curvature batch (E[ĥ] =
  diag(H)); negative entries give ρ h < ε, the denominator ε, so the step there is
  lr · sign(m) (the paper's handling). About 2.4-2.8 gradients per estimate (one
  linearisation and one product); the closure's own gradient is left as torch makes it.

Defaults from the authors' released code (``Liuhong99/Sophia`` at 195a786, ``sophia.py``:
``SophiaG(lr=1e-4, betas=(0.965, 0.99), rho=0.04, weight_decay=1e-1)``, the update
``ratio = (|m| / (rho · bs · h + 1e-15)).clamp(max=1)``, ``θ ← θ − lr · sign(m) · ratio``,
decoupled weight decay ``θ ← θ (1 − lr · wd)``; k = 10, paper §3 and the training
script's ``hess_interval``). There ``bs · h`` is our h (its ``hessian`` holds the EMA of
ĝ², the batch size applied at the step): the same update. ε = 1e-15 is the code's;
``max(ρh, ε)`` is the paper's form (the code adds ε; identical for ρh ≫ ε). The weight
decay is the one of the authors' GPT-2 runs, 0.2 (``config/train_gpt2_*_sophiag.py``:
``weight_decay = 2e-1``, with β₁ = 0.965, β₂ = 0.99, ``interval = 10``; ρ there 0.03-0.05),
not the class default 0.1. One difference from the training script: it estimates after
steps 10, 20, … (h = 0 for the first 10 steps, whose updates are then ±lr), this class
before steps 1, 11, 21, … (paper Algorithm 3); from step 11 on the two coincide.

Data parallel (``torch.distributed``): the closure returns this rank's share of the loss
(as for Hessian-free); loss and gradient are summed over the ranks in one all-reduce, and
the estimate on a distributed curvature ``Problem`` is summed as above (Hutchinson: the
probe is drawn identically on every rank and the Hessian product is summed by the
operator), so every rank takes the same step.

Cost: one gradient per step (the closure) plus one estimate every k steps.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from hesskit.distributed import all_reduce_sum, is_distributed
from hesskit.errors import InvalidArgumentError
from hesskit.estimators.probes import gaussian
from hesskit.operators import CurvatureOperator, hessian_operator
from hesskit.operators.kfac_factors import keyed_sample_targets
from hesskit.optim.base import CurvatureOptimizer, summed_over_ranks
from hesskit.optim.closure_batch import closure_or_given
from hesskit.optim.preconditioner_operators import sophia_preconditioner
from hesskit.optim.safety import (
    DEFAULT_MAX_REJECTIONS,
    init_rejection_state,
    is_finite,
    record_acceptance,
    record_rejection,
)
from hesskit.problem import Problem

STATE_KEY = "sophia"
"""Key of the optimizer-wide state in :meth:`Sophia.state_dict`."""

LR = 1e-4
"""Default learning rate (authors' code, ``SophiaG(lr=1e-4)``)."""

BETAS = (0.965, 0.99)
"""Default (β₁, β₂) (authors' code; paper §3, β₂ = 0.99)."""

RHO = 0.04
"""Default ρ, the paper's γ scaling h in the clip (authors' code, ``SophiaG(rho=0.04)``)."""

EPS = 1e-15
"""ε of max(ρh, ε) (authors' code: ``rho * bs * hess + 1e-15``)."""

WEIGHT_DECAY = 0.2
"""Default decoupled weight decay (authors' GPT-2 configs, ``weight_decay = 2e-1``; the
class default in their ``sophia.py`` is 1e-1)."""

INTERVAL = 10
"""k, steps between estimates (paper §3, k = 10; the code's ``hess_interval = 10``)."""


class SophiaEstimator(enum.Enum):
    """The diagonal curvature estimate Sophia preconditions with."""

    GAUSS_NEWTON_BARTLETT = "gnb"
    """ĝ²/c with ĝ the gradient on sampled targets: E = diag(G) (SophiaG)."""

    HUTCHINSON = "hutchinson"
    """u ⊙ H u with Gaussian u: E = diag(H) (SophiaH)."""


def gauss_newton_bartlett_diagonal(
    problem: Problem, generator: torch.Generator | None = None, *, seed: int | None = None
) -> Tensor:
    """ĝ ⊙ ĝ / c (flat ``[N]``), ĝ = Σ_b w_b ∇ℓ_b(ŷ_b) the gradient of the total loss on
    targets drawn from p(y | f(θ, X_b)) (summed over the ranks when distributed), c the
    total loss' reduction factor (module docstring); E[·] = diag(G) of the problem. With
    ``seed``, sample i's target is keyed by (seed, its global index) instead of drawn from
    ``generator``, so the estimate does not depend on the batching or the ranks.
    Cost: one gradient. Variance: Var ĥ_j = 2(E ĥ_j)² for a Gaussian ĝ_j (a squared
    mean-zero sum), so one draw is a rough estimate: Sophia averages it over time."""
    problem.loss.require_likelihood("the Gauss-Newton-Bartlett estimator")
    total = torch.zeros(problem.num_params, dtype=problem.dtype, device=problem.device)
    factor = 0.0  # Σ_b n_b w_b c_b: N times the total loss' reduction factor
    for batch in problem.batches():
        params = {n: p.detach().requires_grad_(True) for n, p in problem.parameters().items()}
        with torch.enable_grad():
            z = problem.output(params, batch.inputs)
            y = problem.loss.sample_targets(z.detach(), generator=generator) if seed is None else (
                keyed_sample_targets(problem.loss, z.detach(), batch.start, seed))
            loss = problem.loss.value(z, y)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        flat = problem.layout.flatten([
            torch.zeros_like(p) if g is None else g for g, p in zip(grads, params.values(),
                                                                     strict=True)
        ])
        total += batch.weight * flat
        factor += batch.num_samples * batch.weight * problem.loss.scale(z.detach(), y)
    if problem.distributed:
        packed = all_reduce_sum(torch.cat([total, total.new_tensor([factor])]))
        total, factor = packed[:-1], float(packed[-1])
    return total.square() / (factor / problem.num_data)


def hutchinson_gaussian_diagonal(problem: Problem, generator: torch.Generator) -> Tensor:
    """u ⊙ H u for one u ~ N(0, I) (flat ``[N]``); E[·] = diag(H). Cost: one Hessian
    product on the problem (≈ 2.4-2.8 gradients with its linearisation)."""
    u = gaussian((problem.num_params,), generator, problem.dtype, problem.device)
    return u * hessian_operator(problem).matvec(u)


class Sophia(CurvatureOptimizer):
    """Sophia as a ``torch.optim.Optimizer`` (module docstring for the update).

    Args:
        params: parameters or parameter groups (each may set ``lr``, ``betas``, ``rho``,
            ``eps``, ``weight_decay``); they must be parameters of the curvature problem's
            model.
        model, loss: the network and the loss module the closure calls; the estimate is
            then taken on the closure's batch (read from its calls,
            :class:`~hesskit.optim.closure_batch.ClosureBatch`), as the authors do.
        curvature: instead of ``model`` and ``loss``: called on estimate steps, returns
            the ``Problem`` (model, loss, the curvature batch) at the current parameters,
            e.g. ``lambda: Problem(model, loss, batch)``.
        estimator: :class:`SophiaEstimator` (default Gauss-Newton-Bartlett, SophiaG).
        lr, betas, rho, eps, weight_decay: defaults of the groups (module constants).
        interval: k, the steps between estimates.
        seed: seed of the estimator's generator (in the state dict: resumes exactly).
        max_rejections: consecutive non-finite steps before ``NonFiniteError``.
        distributed: sum the closure's loss and gradient over the ``torch.distributed``
            ranks (module docstring); None (default): when a group of > 1 ranks exists.
        keyed_targets: GNB's sampled targets keyed by (a per-estimate seed, the global
            sample index), so they do not depend on the sharding; None (default): keyed
            exactly when the curvature problem is distributed.

    The closure, as for any torch optimizer, clears the gradients, computes the loss, calls
    ``backward()`` and returns the loss; it is called once per step. ``step`` returns the
    loss. A non-finite loss, gradient, estimate or step is rejected: parameters, state and
    the estimator's generator bitwise unchanged, the rejection counted (``safety.py``), so
    the run continues as the run without the rejected batch.

    State: per parameter ``exp_avg`` (m), ``hessian`` (h); optimizer-wide
    ``self.sophia_state`` (state dict key ``"sophia"``): ``steps``, ``estimates``,
    ``generator``, ``nonfinite_rejections``, ``consecutive_nonfinite``.
    """

    state_key = STATE_KEY
    state_attribute = "sophia_state"

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = LR,
        *,
        model: nn.Module | None = None,
        loss: nn.Module | None = None,
        curvature: Callable[[], Problem] | None = None,
        estimator: SophiaEstimator = SophiaEstimator.GAUSS_NEWTON_BARTLETT,
        betas: tuple[float, float] = BETAS,
        rho: float = RHO,
        eps: float = EPS,
        weight_decay: float = WEIGHT_DECAY,
        interval: int = INTERVAL,
        seed: int = 0,
        max_rejections: int = DEFAULT_MAX_REJECTIONS,
        distributed: bool | None = None,
        keyed_targets: bool | None = None,
    ) -> None:
        if not (lr >= 0 and rho > 0 and eps > 0 and weight_decay >= 0
                and all(0 <= b < 1 for b in betas)):
            raise InvalidArgumentError(
                f"Sophia needs lr ≥ 0, rho > 0, eps > 0, weight_decay ≥ 0 and betas in "
                f"[0, 1); got lr={lr}, rho={rho}, eps={eps}, weight_decay={weight_decay}, "
                f"betas={betas}"
            )
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise InvalidArgumentError(f"interval must be an integer ≥ 1, got {interval!r}")
        defaults = {"lr": lr, "betas": betas, "rho": rho, "eps": eps,
                    "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self._watch, self.curvature = closure_or_given(
            model, loss, curvature, self._params, "Sophia",
            "curvature= (a function returning the Problem)", lambda problem: problem)
        self.estimator = SophiaEstimator(estimator)
        self.interval = interval
        self.max_rejections = max_rejections
        self.generator = torch.Generator().manual_seed(seed)
        self._generator_at_start = self.generator.get_state()
        self.distributed = is_distributed() if distributed is None else (
            bool(distributed) and is_distributed())
        self.keyed_targets = keyed_targets
        self.sophia_state: dict[str, object] = {"steps": 0, "estimates": 0}
        init_rejection_state(self.sophia_state)

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """One Sophia step; returns the closure's loss (see the class docstring)."""
        if closure is None:
            raise InvalidArgumentError(
                "Sophia.step needs a closure that clears the gradients, computes the loss, "
                "calls backward() and returns the loss; call optimizer.step(closure)"
            )
        state = self.sophia_state
        self._generator_at_start = self.generator.get_state()
        with torch.enable_grad():
            loss = self._run_closure(closure)
        loss = loss.detach() if isinstance(loss, Tensor) else torch.tensor(float(loss))
        grads = {p: p.grad.detach() for p in self._params if p.grad is not None}
        if self.distributed:
            loss, grads = summed_over_ranks(loss, grads)
        if not is_finite(loss, *grads.values()):
            return self._reject("the loss or its gradient", loss)
        estimate = None
        if int(state["steps"]) % self.interval == 0:
            estimate = self.estimate()
            if not is_finite(*estimate.values()):
                return self._reject("the curvature estimate", loss)
        updates = self._updates(grads, estimate)
        if not is_finite(*(u[0] for u in updates.values())):
            return self._reject("the step", loss)
        with torch.no_grad():
            for p, (new, m, h) in updates.items():
                self.state[p]["exp_avg"], self.state[p]["hessian"] = m, h
                p.copy_(new)
        state["steps"] = int(state["steps"]) + 1
        state["estimates"] = int(state["estimates"]) + (estimate is not None)
        record_acceptance(state)
        return loss

    def estimate(self) -> dict[Tensor, Tensor]:
        """ĥ per parameter on the problem ``curvature()`` returns (one draw; module
        docstring). Advances the generator."""
        problem = self.curvature()
        if self.estimator is SophiaEstimator.GAUSS_NEWTON_BARTLETT:
            keyed = problem.distributed if self.keyed_targets is None else self.keyed_targets
            seed = int(torch.randint(0, 2**62, (), generator=self.generator)) if keyed else None
            flat = gauss_newton_bartlett_diagonal(problem, self.generator, seed=seed)
        else:
            flat = hutchinson_gaussian_diagonal(problem, self.generator)
        pieces = problem.layout.unflatten(flat)
        names = {id(t): name for name, t in problem.model.named_parameters()}
        out = {}
        for p in self._params:
            name = names.get(id(p))
            if name not in pieces:
                raise InvalidArgumentError(
                    "a parameter of the optimizer is not among the curvature problem's "
                    f"parameters ({', '.join(problem.layout.names)}); build the Problem on "
                    "the model whose parameters Sophia optimizes"
                )
            out[p] = pieces[name].detach()
        return out

    def preconditioner(self, power: float = 1.0) -> CurvatureOperator:
        """P^power, P = diag(max(ρh, ε)) after the last step, on the flat vector of all
        parameters (``param_groups`` order): the step was θ ← θ(1 − lr·wd) − lr·clip(P⁻¹m, 1)
        entrywise (:func:`.sophia_preconditioner`). Cost O(N)."""
        return sophia_preconditioner(self, power)

    def _updates(
        self, grads: dict[Tensor, Tensor], estimate: dict[Tensor, Tensor] | None
    ) -> dict[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """(new θ, new m, new h) per parameter, computed without touching any state."""
        updates = {}
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr = group["lr"]
            for p in group["params"]:
                if p not in grads:
                    continue
                state = self.state[p]
                h = state.get("hessian", torch.zeros_like(p))
                if estimate is not None:
                    h = beta2 * h + (1 - beta2) * estimate[p]
                m = beta1 * state.get("exp_avg", torch.zeros_like(p)) + (1 - beta1) * grads[p]
                ratio = (m / torch.clamp(group["rho"] * h, min=group["eps"])).clamp(-1, 1)
                new = p.detach() * (1 - lr * group["weight_decay"]) - lr * ratio
                updates[p] = (new, m, h)
        return updates

    def _reject(self, what: str, loss: Tensor) -> Tensor:
        """Count the rejection and rewind the estimator's generator to the start of the step
        (the estimate draws before it can be checked): later steps draw as without it."""
        self.generator.set_state(self._generator_at_start)
        record_rejection(self.sophia_state, what, self.max_rejections)
        return loss
