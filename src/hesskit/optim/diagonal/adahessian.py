"""AdaHessian (Yao et al., AAAI 2021): Adam with the Hutchinson diagonal of the Hessian.

Each step (or every ``update_each`` steps) draws a Rademacher probe z (±1 entries) and
forms D = |z ⊙ H z| from ONE Hessian-vector product, H = ∇²L(θ) of the closure's loss
(N×N; D is flat ``[N]``, an unbiased estimate of diag(H) before the absolute value). For
convolution kernels (parameters with ≥ 3 dimensions, ``[out, in, *kernel]``) D is averaged
over the kernel's spatial dimensions (the paper's spatial averaging, §3.3, Eq. 10). Then,
per parameter, with t the step count:

    m ← β₁ m + (1 − β₁) g,          v ← β₂ v + (1 − β₂) D ⊙ D,
    θ ← θ − lr · ( (m / (1 − β₁ᵗ)) / ((√v / √(1 − β₂ᵗ))^k + ε) + wd · θ ),

k the Hessian power (paper Eq. 12; k = 1 the published method). Weight decay is decoupled
(added to the step, not to the loss) as in the authors' code.

Defaults from the authors' released code (``amirgholami/adahessian``,
``instruction/adahessian.py``: ``Adahessian(lr=0.15, betas=(0.9, 0.999), eps=1e-4,
weight_decay=0, hessian_power=1)``; the same update there). Two details follow the code
where the paper is silent or differs: D is |H z| (= |z ⊙ H z| as |z| = 1), averaged
*after* the absolute value for kernels (the code's ``mean(hv.abs(), dim=[2, 3])``; the
paper's Eq. 10 averages the signed estimates, an average that the squaring in v then
makes positive); ``update_each`` (from davda54/ada-hessian, an option, default 1) reuses
the last D between estimates.

The Hessian-vector product: the closure's loss is differentiated once with
``create_graph=True`` and the gradient once more along z (reverse-over-reverse; the
authors' way). It shares the forward pass and the gradient with the step itself, so a step
costs about one gradient plus one Hessian-vector product: measured on an MLP about 1.8
gradients in all (README, "PyHessian-style"). ``hesskit.operators.hessian_operator``
would need a ``Problem``, a new linearisation per step (≈ 1 gradient) and its product
(1.35-1.8 gradients) besides the closure's gradient: about 3.4-3.8 gradients, so the
create-graph way is the cheaper one here, and it works for any loss the closure computes.
The closure runs inside :func:`hesskit.functional_view.twice_differentiable_kernels`
(attention through the MATH kernel, which has a double backward; nothing else of the model
changes), as hesskit's operators do.

Cost: about 1.8 gradients per estimate step, 1 gradient otherwise; memory 4 N numbers
(m, v, the last D, the gradient).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from hesskit.distributed import is_distributed
from hesskit.errors import InvalidArgumentError
from hesskit.estimators.probes import rademacher
from hesskit.functional_view import twice_differentiable_kernels
from hesskit.operators import CurvatureOperator, hessian_operator
from hesskit.optim.base import CurvatureOptimizer, summed_over_ranks
from hesskit.optim.closure_batch import parameter_names, watch_closure
from hesskit.optim.preconditioner_operators import adahessian_preconditioner
from hesskit.optim.safety import (
    DEFAULT_MAX_REJECTIONS,
    init_rejection_state,
    is_finite,
    record_acceptance,
    record_rejection,
)

STATE_KEY = "adahessian"
"""Key of the optimizer-wide state in :meth:`AdaHessian.state_dict`."""

LR = 0.15
"""Default learning rate (authors' code, ``Adahessian(lr=0.15)``)."""

BETAS = (0.9, 0.999)
"""Default (β₁, β₂) (authors' code; paper §3.4, the Adam values)."""

EPS = 1e-4
"""Default ε added to the denominator (authors' code, ``eps=1e-4``)."""

HESSIAN_POWER = 1.0
"""Default Hessian power k (authors' code ``hessian_power=1``; paper Eq. 12)."""


class AdaHessian(CurvatureOptimizer):
    """AdaHessian as a ``torch.optim.Optimizer`` (module docstring for the update).

    Args:
        params: parameters or parameter groups; each group may set ``lr``, ``betas``,
            ``eps``, ``weight_decay``, ``hessian_power``.
        lr, betas, eps, weight_decay, hessian_power: defaults of the groups.
        update_each: draw a new Hessian estimate every this many steps (1: every step).
        spatial_average: average D over the kernel dimensions of parameters with ≥ 3
            dimensions (convolution kernels), as the paper does.
        model, loss: optional, together: see below.
        seed: seed of the probes' generator (kept in the state dict: resumes exactly).
        max_rejections: consecutive non-finite steps before ``NonFiniteError``.
        distributed: sum the loss, gradient and Hessian product over the
            ``torch.distributed`` ranks; None (default): when a group of > 1 ranks exists.

    Data parallel: the closure returns this rank's share of the loss (as for Hessian-free);
    the probe z is drawn identically on every rank, and the loss, the gradient and H z are
    summed over the ranks in ONE all-reduce before D = |z ⊙ H z| is formed, so every rank
    takes the step of the whole batch (parameters bitwise equal across ranks).

    Given ``model=`` and ``loss=`` (the network and the loss module the closure calls), the
    closure is the ordinary one of every torch optimizer (it calls ``backward()``) and H z
    is one Hessian-vector product on the closure's batch, read from its calls
    (:class:`~hesskit.optim.closure_batch.ClosureBatch`; hesskit's evaluation: dropout as
    in eval mode). Without them the closure must recompute the loss and return it WITHOUT
    calling ``backward()``:
    AdaHessian differentiates it itself, twice on estimate steps (``create_graph``), and
    writes the gradient into ``.grad``. A closure that calls
    ``loss.backward(create_graph=True)`` (the authors' usage) works too. ``step`` returns
    the loss. A non-finite loss, gradient, estimate or step is rejected: parameters and
    state are left bitwise unchanged, the probes' generator is rewound to the start of the
    step (the probes are drawn before the estimate can be checked) and the rejection
    counted (``safety.py``). So a run with a rejected batch continues bitwise as the run
    without that batch.

    State: per parameter ``step``, ``exp_avg`` (m), ``exp_hessian_diag_sq`` (v), ``hessian``
    (the last D); optimizer-wide ``self.adahessian_state`` (state dict key
    ``"adahessian"``): ``steps``, ``estimates``, ``generator`` (the probes' RNG state),
    ``nonfinite_rejections``, ``consecutive_nonfinite``.
    """

    state_key = STATE_KEY
    state_attribute = "adahessian_state"

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = LR,
        betas: tuple[float, float] = BETAS,
        eps: float = EPS,
        weight_decay: float = 0.0,
        hessian_power: float = HESSIAN_POWER,
        *,
        model: nn.Module | None = None,
        loss: nn.Module | None = None,
        update_each: int = 1,
        spatial_average: bool = True,
        seed: int = 0,
        max_rejections: int = DEFAULT_MAX_REJECTIONS,
        distributed: bool | None = None,
    ) -> None:
        _check_settings(lr, betas, eps, weight_decay, hessian_power, update_each)
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "hessian_power": hessian_power}
        super().__init__(params, defaults)
        self._watch = watch_closure(model, loss, "AdaHessian",
                                    "neither (H z from the closure's own graph)")
        self._names = [] if model is None else parameter_names(model, self._params,
                                                                "AdaHessian")
        self.update_each = update_each
        self.spatial_average = spatial_average
        self.max_rejections = max_rejections
        self.generator = torch.Generator().manual_seed(seed)
        self._generator_at_start = self.generator.get_state()
        self.distributed = is_distributed() if distributed is None else (
            bool(distributed) and is_distributed())
        self.adahessian_state: dict[str, object] = {"steps": 0, "estimates": 0}
        init_rejection_state(self.adahessian_state)

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """One AdaHessian step; returns the closure's loss (see the class docstring)."""
        if closure is None:
            raise InvalidArgumentError(
                "AdaHessian.step needs a closure that recomputes and returns the loss "
                "(without backward()); call optimizer.step(closure)"
            )
        state = self.adahessian_state
        estimate = int(state["steps"]) % self.update_each == 0
        self._generator_at_start = self.generator.get_state()
        if self._watch is not None:
            loss, grads, products = self._watched_step(closure, estimate)
            if not is_finite(loss):
                return self._reject("the loss", loss)
        else:
            with torch.enable_grad(), twice_differentiable_kernels():
                loss = closure()
                if not is_finite(loss.detach()):
                    return self._reject("the loss", loss)
                grads = self._gradients(loss, create_graph=estimate)
                products = self._products(grads) if estimate else {}
        grads = {p: g.detach() for p, g in grads.items()}
        loss = loss.detach()
        if self.distributed:  # ONE all-reduce of the loss, the gradient and H z
            packed = {("g", p): g for p, g in grads.items()} | {
                ("Hz", p): hz for p, (_, hz) in products.items()}
            loss, packed = summed_over_ranks(loss, packed)
            grads = {p: packed[("g", p)] for p in grads}
            products = {p: (z, packed[("Hz", p)]) for p, (z, _) in products.items()}
        hessian = self._estimate(grads, products) if estimate else None
        for p, g in grads.items():
            p.grad = g
        if not is_finite(*grads.values(), *(hessian or {}).values()):
            return self._reject("the gradient or the Hessian estimate", loss)
        updates = self._updates(grads, hessian)
        if not is_finite(*(u[0] for u in updates.values())):
            return self._reject("the step", loss)
        self._commit(updates, hessian)
        state["steps"] = int(state["steps"]) + 1
        state["estimates"] = int(state["estimates"]) + (hessian is not None)
        record_acceptance(state)
        return loss.detach()

    def _watched_step(self, closure: Callable[[], Tensor], estimate: bool) -> tuple[
            Tensor, dict[Tensor, Tensor], dict[Tensor, tuple[Tensor, Tensor]]]:
        """With ``model=`` and ``loss=``: the loss and ``.grad`` of an ordinary closure (it
        calls ``backward()``), and on estimate steps H z on its batch by one Hessian-vector
        product of the ``Problem`` (:class:`~hesskit.optim.closure_batch.ClosureBatch`), z
        Rademacher drawn as in :meth:`_products`."""
        assert self._watch is not None
        loss = self._run_closure(closure)
        loss = loss.detach() if isinstance(loss, Tensor) else torch.tensor(float(loss))
        grads = {p: p.grad.detach() for p in self._params if p.grad is not None}
        if not (estimate and is_finite(loss)):
            return loss, grads, {}
        problem = self._watch.problem(self._names)
        probes = {p: rademacher(tuple(p.shape), self.generator, p.dtype, p.device)
                  for p in grads}
        by_name = dict(zip(self._names, self._params, strict=True))
        z = torch.cat([probes[by_name[n]].reshape(-1) if by_name[n] in probes
                       else torch.zeros(by_name[n].numel(), dtype=problem.dtype,
                                         device=problem.device)
                       for n in problem.layout.names])
        hz = problem.layout.unflatten(hessian_operator(problem).matvec(z))
        return loss, grads, {by_name[n]: (probes[by_name[n]], hz[n].detach().view_as(by_name[n]))
                             for n in problem.layout.names if by_name[n] in probes}

    def preconditioner(self, power: float = 1.0) -> CurvatureOperator:
        """P^power, P = diag((√v / √(1 − β₂ᵗ))^k) + ε after the last step, on the flat vector
        of all parameters (``param_groups`` order): the step was θ ← θ − lr(P⁻¹m̂ + wd·θ),
        m̂ = m/(1 − β₁ᵗ) (:func:`.adahessian_preconditioner`). Cost O(N)."""
        return adahessian_preconditioner(self, power)

    def _gradients(self, loss: Tensor, create_graph: bool) -> dict[Tensor, Tensor]:
        """∇L per parameter with a gradient (from ``.grad`` when the closure made it with
        ``create_graph=True``, else by differentiating the returned loss)."""
        params = self._params
        if all(p.grad is not None and p.grad.grad_fn is not None for p in params):
            return {p: p.grad for p in params}
        if loss.grad_fn is None:
            raise InvalidArgumentError(
                "the closure's loss has no graph (computed under no_grad?); return the loss "
                "from a closure that runs the model with gradients enabled"
            )
        try:
            grads = torch.autograd.grad(
                loss, params, create_graph=create_graph, allow_unused=True
            )
        except RuntimeError as error:
            raise InvalidArgumentError(
                "AdaHessian could not differentiate the closure's loss (did the closure call "
                "backward()? let it return the loss without backward(), or call "
                f"loss.backward(create_graph=True)): {error}"
            ) from None
        return {p: g for p, g in zip(params, grads, strict=True) if g is not None}

    def _products(self, grads: dict[Tensor, Tensor]) -> dict[Tensor, tuple[Tensor, Tensor]]:
        """(z, H z) per parameter from one Hessian-vector product, z Rademacher."""
        params = [p for p, g in grads.items() if g.grad_fn is not None]
        probes = [rademacher(tuple(p.shape), self.generator, p.dtype, p.device) for p in params]
        products = torch.autograd.grad(
            [grads[p] for p in params], params, grad_outputs=probes, allow_unused=True
        )
        return {p: (z, torch.zeros_like(p) if hz is None else hz.detach())
                for p, z, hz in zip(params, probes, products, strict=True)}

    def _estimate(
        self, grads: dict[Tensor, Tensor], products: dict[Tensor, tuple[Tensor, Tensor]]
    ) -> dict[Tensor, Tensor]:
        """D = |z ⊙ H z| per parameter, kernels spatially averaged (0 without a product)."""
        hessian = {p: torch.zeros_like(p) for p in grads}
        for p, (z, hz) in products.items():
            d = (z * hz).abs()
            if self.spatial_average and d.ndim >= 3:
                d = d.mean(dim=tuple(range(2, d.ndim)), keepdim=True).expand_as(d)
            hessian[p] = d
        return hessian

    def _updates(
        self, grads: dict[Tensor, Tensor], hessian: dict[Tensor, Tensor] | None
    ) -> dict[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """(new θ, new m, new v) per parameter, computed without touching any state."""
        updates = {}
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            power, lr = group["hessian_power"], group["lr"]
            for p in group["params"]:
                if p not in grads:
                    continue
                state = self.state[p]
                step = int(state.get("step", 0)) + 1
                d = hessian[p] if hessian is not None else state.get("hessian")
                if d is None:
                    d = torch.zeros_like(p)
                m = state.get("exp_avg", torch.zeros_like(p)) * beta1 + (1 - beta1) * grads[p]
                v = state.get("exp_hessian_diag_sq", torch.zeros_like(p)) * beta2
                v = v + (1 - beta2) * d * d
                bias1, bias2 = 1 - beta1**step, 1 - beta2**step
                denom = (v.sqrt() ** power) / math.sqrt(bias2) ** power + group["eps"]
                new = p.detach() - lr * (m / bias1 / denom + group["weight_decay"] * p.detach())
                updates[p] = (new, m, v)
        return updates

    @torch.no_grad()
    def _commit(
        self, updates: dict[Tensor, tuple[Tensor, Tensor, Tensor]],
        hessian: dict[Tensor, Tensor] | None,
    ) -> None:
        for p, (new, m, v) in updates.items():
            state = self.state[p]
            state["step"] = int(state.get("step", 0)) + 1
            state["exp_avg"], state["exp_hessian_diag_sq"] = m, v
            if hessian is not None:
                state["hessian"] = hessian[p]
            p.copy_(new)

    def _reject(self, what: str, loss: Tensor) -> Tensor:
        """Count the rejection and rewind the probes' generator to the start of the step: the
        probe drawn for a rejected step is drawn again by the next one, so a run with a
        rejected batch continues exactly as the run without it."""
        self.generator.set_state(self._generator_at_start)
        record_rejection(self.adahessian_state, what, self.max_rejections)
        return loss.detach()


def _check_settings(
    lr: float, betas: tuple[float, float], eps: float, weight_decay: float,
    hessian_power: float, update_each: int,
) -> None:
    problems = []
    if not lr >= 0:
        problems.append(f"lr must be ≥ 0, got {lr}")
    if not all(0 <= b < 1 for b in betas):
        problems.append(f"betas must lie in [0, 1), got {betas}")
    if not eps >= 0:
        problems.append(f"eps must be ≥ 0, got {eps}")
    if not weight_decay >= 0:
        problems.append(f"weight_decay must be ≥ 0, got {weight_decay}")
    if not 0 <= hessian_power <= 1:
        problems.append(f"hessian_power must lie in [0, 1] (authors' code), got {hessian_power}")
    if isinstance(update_each, bool) or not isinstance(update_each, int) or update_each < 1:
        problems.append(f"update_each must be an integer ≥ 1, got {update_each!r}")
    if problems:
        raise InvalidArgumentError("; ".join(problems))
