"""Shampoo (Gupta, Koren & Singer 2018, ICML, Algorithm 1) with layer-wise grafting onto
Adam's step size (Anil, Gupta, Koren, Regan & Singer 2020, §3 and Appendix), as a
``torch.optim.Optimizer``.

Per parameter, at its step t (1, 2, …), with g its gradient (plus wd·θ for L2 decay):

    m ← β₁ m + (1 − β₁) g,                      m̂ = m / (1 − β₁ᵗ)
    graft (Adam): v ← β₂ᵍ v + (1 − β₂ᵍ) g ⊙ g,  a = m̂ / (√(v / (1 − β₂ᵍᵗ)) + εᵍ)

For a parameter of order ≥ 2 whose matricised sizes are both ≤ ``max_preconditioner_dim``
(X = p.reshape(rows, cols): ``[out, in]`` for ``nn.Linear``, ``[out, in·kh·kw]`` for a
convolution kernel), with G and M̂ the gradient and m̂ matricised:

    L ← β₂ L + (1 − β₂) G Gᵀ,   R ← β₂ R + (1 − β₂) Gᵀ G    (β₂ = 1: plain sums, L += G Gᵀ)
    at steps s, s + T, s + 2T, … (s = ``start_preconditioning_step``, T = ``update_freq``):
        L̃ = (L̂ + εI)^{-1/4},  R̃ = (R̂ + εI)^{-1/4},  L̂ = L / (1 − β₂ᵗ) (L itself for β₂ = 1)
    from step s on:  D = L̃ M̂ R̃,  grafted  d = (‖a‖ / ‖D‖) D      (before s: d = a)

and every other parameter (vectors such as biases; tensors with a dimension above
``max_preconditioner_dim``) takes the graft's direction d = a alone. Then

    θ ← (1 − lr·wd) θ − lr · d           (decoupled weight decay, the default)

So the step of every preconditioned layer has exactly the norm of Adam's step for that
layer, and Shampoo only chooses its direction. With a fixed preconditioner and graft
scale, L̃ M̂ R̃ is the β₁-average of L̃ G R̃: the first moment is momentum on the Shampoo
direction (the reference's "momentum/first moment separate from grafting").

The exponent −1/4 is Shampoo's −1/(2k) for an order-k tensor with k = 2: higher-order
tensors are matricised rather than given one factor per mode (a named choice, so that
every factor is a matrix root and P below is a Kronecker product of two factors).
ε is added to the bias-corrected statistics at every root (the paper's L₀ = εI, exactly
for β₂ = 1; :mod:`~hesskit.optim.shampoo.roots`).

Defaults: facebookresearch/optimizers (Shi et al. 2023, arXiv:2309.06497),
``distributed_shampoo/README.md`` "Example 2: Adam" (lr = 1e-3, betas = (0.9, 0.999),
epsilon = 1e-12, grafting_epsilon = 1e-8, grafting_beta2 = 0.999, precondition_frequency =
100, max_preconditioner_dim = 8192), and the ``DistributedShampoo`` constructor where the
example is silent (start_preconditioning_step = precondition_frequency; bias correction on;
use_decoupled_weight_decay = True). Deviations from it, each a named option or stated:
tensors with a dimension above the maximum use the graft alone (its
``LargeDimMethod.ADAGRAD``; its default is blocking, not implemented here); vectors use the
graft alone (as google-research ``scalable_shampoo/pytorch``: no preconditioner for
rank ≤ 1; the reference would precondition them with one full factor); no separate
heavy-ball ``momentum`` on top of β₁ (the reference's defaults to 0); roots at s + kT
(the reference's at multiples of T; the same when T divides s, as by default).

Warm-up: before step s every parameter takes the graft's step: steps 1 … s − 1 are exactly
Adam's (the default graft's), and with the default s = T = 100 a run of fewer than 100 steps
never uses Shampoo's preconditioner: it *is* Adam. The choice follows Anil et al. 2020
("Scalable second order optimization for deep learning", arXiv:2002.09018), whose
preconditioners are recomputed only every T steps and whose step length is grafted from a
diagonal method; their code (google-research ``scalable_shampoo``, ``distributed_shampoo``)
names the start ``start_preconditioning_step``: "When to start Shampoo update before which
diagonal update is used. This is because we dont have enough information to do stable
inverse." s = T is the ``DistributedShampoo`` default above. :attr:`Shampoo.warmup_steps`
is s − 1; ``repr`` shows s and T; ``start_preconditioning_step=1`` preconditions at once.

Weight decay is decoupled by default: the graft fixes each layer's step length, so an L2
term inside the gradient would be rescaled and rotated by the preconditioner and its
strength would depend on it; θ ← (1 − lr·wd)θ keeps wd meaning what it says (AdamW).
``decoupled_weight_decay=False`` adds wd·θ to the gradient instead (L2, the reference's
option), before every statistic.

Cost per step: one gradient (the closure), O(rows·cols·(rows + cols)) per preconditioned
layer; every T steps two float64 eigendecompositions per layer, O(rows³ + cols³). Memory:
m, v, and L, R, L̃, R̃ (2·rows² + 2·cols²) per preconditioned layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from hesskit.distributed import is_distributed
from hesskit.errors import InvalidArgumentError
from hesskit.layout import ParameterLayout
from hesskit.operators import CurvatureOperator
from hesskit.optim.base import CurvatureOptimizer, summed_over_ranks
from hesskit.optim.safety import (
    DEFAULT_MAX_REJECTIONS,
    init_rejection_state,
    is_finite,
    record_acceptance,
    record_rejection,
)
from hesskit.optim.shampoo.graft import Graft, graft_diagonal, graft_statistic
from hesskit.optim.shampoo.roots import MatrixBlock, inverse_root, preconditioner_operator

STATE_KEY = "shampoo"
"""Key of the optimizer-wide state in :meth:`Shampoo.state_dict`."""

LR = 1e-3
"""Default learning rate (facebookresearch/optimizers README, Example 2: Adam, lr=0.001)."""

BETAS = (0.9, 0.999)
"""Default (β₁, β₂): first moment and statistics' EMA (README Example 2, betas)."""

EPS = 1e-12
"""ε added to the statistics before each root (README Example 2, epsilon=1e-12)."""

GRAFT_EPS = 1e-8
"""εᵍ of Adam's graft denominator (README Example 2, grafting_epsilon=1e-08)."""

GRAFT_BETA2 = 0.999
"""β₂ᵍ of Adam's graft second moment (README Example 2, grafting_beta2=0.999)."""

UPDATE_FREQ = 100
"""T, steps between root recomputations (README Example 2, precondition_frequency=100)."""

MAX_PRECONDITIONER_DIM = 8192
"""Largest matricised dimension preconditioned (README Example 2, max_preconditioner_dim)."""

INVERSE_ROOT = 4
"""The root of each factor: −1/(2k) for order k = 2 (Gupta et al. 2018, Algorithm 1; the
reference's default exponent, −1/(2·order))."""


class Shampoo(CurvatureOptimizer):
    """Shampoo with grafting (module docstring for the update and its sources).

    Args:
        params: parameters or parameter groups (each may set ``lr``, ``betas``, ``eps``,
            ``weight_decay``, ``graft_eps``, ``graft_beta2``).
        lr, betas, eps, weight_decay: group defaults (module constants); β₂ may be 1
            (plain sums, the original paper).
        update_freq: T, steps between root recomputations.
        graft: a :class:`~hesskit.optim.shampoo.graft.Graft` or its value (``"adam"``,
            ``"adagrad"``, ``"sgd"``, ``"none"``).
        graft_eps, graft_beta2: εᵍ and β₂ᵍ of the graft (group defaults).
        start_preconditioning_step: s, the first step that uses Shampoo's direction (and
            computes roots); steps 1 … s − 1 are the graft's alone (module docstring,
            "Warm-up"); None: s = T (with the defaults, Shampoo is Adam for 99 steps).
        max_preconditioner_dim: matricised dimensions above it leave a parameter to the
            graft.
        decoupled_weight_decay: True θ ← (1 − lr·wd)θ; False wd·θ added to the gradient.
        max_rejections: consecutive non-finite steps before ``NonFiniteError``.
        distributed: sum the closure's loss and the gradients over the ``torch.distributed``
            ranks in one all-reduce before any statistic (hesskit's data-parallel convention,
            as :class:`~hesskit.optim.HessianFree` and :class:`~hesskit.optim.Sophia`: the
            closure returns this rank's share of the loss); None (default): when a group of
            > 1 ranks exists. Pass False when the gradients are already reduced (DDP).
            Everything else is a deterministic function of the summed gradients, so the
            ranks stay bitwise identical.

    The closure is optional (as for ``torch.optim.Adam``): given, it clears the gradients,
    computes the loss, calls ``backward()`` and returns the loss; ``step`` returns it. A
    non-finite loss, gradient, root or step is rejected: parameters and state bitwise
    unchanged, the rejection counted (``safety.py``).

    State: per parameter ``step``, ``exp_avg`` (m), ``graft_sq`` (v or Σg²), and for
    preconditioned ones ``left``, ``right`` (L, R) and ``left_root``, ``right_root``
    (L̃, R̃); optimizer-wide ``self.shampoo_state`` (state dict key ``"shampoo"``):
    ``steps``, ``root_refreshes``, ``nonfinite_rejections``, ``consecutive_nonfinite``.
    """

    state_key = STATE_KEY
    state_attribute = "shampoo_state"

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = LR,
        betas: tuple[float, float] = BETAS,
        eps: float = EPS,
        weight_decay: float = 0.0,
        update_freq: int = UPDATE_FREQ,
        graft: Graft | str = "adam",
        *,
        graft_eps: float = GRAFT_EPS,
        graft_beta2: float = GRAFT_BETA2,
        start_preconditioning_step: int | None = None,
        max_preconditioner_dim: int = MAX_PRECONDITIONER_DIM,
        decoupled_weight_decay: bool = True,
        max_rejections: int = DEFAULT_MAX_REJECTIONS,
        distributed: bool | None = None,
    ) -> None:
        start = update_freq if start_preconditioning_step is None else start_preconditioning_step
        _check_counts(update_freq=update_freq, start_preconditioning_step=start,
                      max_preconditioner_dim=max_preconditioner_dim)
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                    "graft_eps": graft_eps, "graft_beta2": graft_beta2}
        super().__init__(params, defaults)
        self.update_freq = update_freq
        self.start_preconditioning_step = start
        self.max_preconditioner_dim = max_preconditioner_dim
        self.graft = Graft(graft)
        self.decoupled_weight_decay = decoupled_weight_decay
        self.max_rejections = max_rejections
        self.distributed = is_distributed() if distributed is None else (
            bool(distributed) and is_distributed())
        self.shampoo_state: dict[str, object] = {"steps": 0, "root_refreshes": 0}
        init_rejection_state(self.shampoo_state)

    @property
    def warmup_steps(self) -> int:
        """s − 1: the first steps, each exactly the graft's (Adam's by default), before
        Shampoo's preconditioner is first used at step s (module docstring, "Warm-up")."""
        return self.start_preconditioning_step - 1

    def _repr_state(self) -> dict[str, object]:
        """T, s and the optimizer-wide counters, for the one-line ``repr``."""
        counters = {key: value for key, value in self.shampoo_state.items()
                    if isinstance(value, int | float)}
        return {"update_freq": self.update_freq,
                "start_preconditioning_step": self.start_preconditioning_step, **counters}

    def add_param_group(self, param_group: dict) -> None:
        """Torch's ``add_param_group``, with the group's settings checked."""
        super().add_param_group(param_group)
        _check_group(self.param_groups[-1], len(self.param_groups) - 1)

    def matrix_shape(self, p: Tensor) -> tuple[int, int] | None:
        """(rows, cols) of the matrix Shampoo preconditions for ``p``, or None when ``p``
        takes the graft alone (order < 2, or a matricised dimension above the maximum)."""
        if p.ndim < 2:
            return None
        rows, cols = p.shape[0], p.numel() // p.shape[0]
        if max(rows, cols) > self.max_preconditioner_dim:
            return None
        return rows, cols

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """One Shampoo step; returns the closure's loss (None without a closure)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            loss = loss.detach() if isinstance(loss, Tensor) else torch.tensor(float(loss))
        grads = {p: p.grad.detach() for p in self._params if p.grad is not None}
        if self.distributed:
            loss, grads = summed_over_ranks(
                torch.zeros(()) if loss is None else loss, grads)
        if not is_finite(loss, *grads.values()):
            return self._reject("the loss or its gradient", loss)
        updates, refreshes = {}, 0
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p in grads:
                        updates[p] = self._update(p, grads[p], group)
                        refreshes += bool(updates[p].pop("refreshed", False))
        if not is_finite(*(t for u in updates.values() for t in u.values()
                           if isinstance(t, Tensor))):
            return self._reject("a root or the step", loss)
        with torch.no_grad():
            for p, update in updates.items():
                p.copy_(update.pop("param"))
                self.state[p].update(update)
        state = self.shampoo_state
        state["steps"] = int(state["steps"]) + 1
        state["root_refreshes"] = int(state["root_refreshes"]) + refreshes
        record_acceptance(state)
        return loss

    def _update(self, p: Tensor, grad: Tensor, group: dict) -> dict[str, object]:
        """The new parameter and state of ``p`` (module docstring), without touching either."""
        state = self.state[p]
        beta1, beta2 = group["betas"]
        theta = p.detach()
        if not self.decoupled_weight_decay and group["weight_decay"] != 0:
            grad = grad + group["weight_decay"] * theta
        t = int(state.get("step", 0)) + 1
        m = beta1 * state.get("exp_avg", torch.zeros_like(p)) + (1 - beta1) * grad
        m_hat = m / (1 - beta1**t)
        graft_sq = graft_statistic(self.graft, state.get("graft_sq", torch.zeros_like(p)), grad,
                                   group["graft_beta2"])
        direction = m_hat / self._graft_diagonal(graft_sq, t, group)
        new: dict[str, object] = {"step": t, "exp_avg": m, "graft_sq": graft_sq}
        shape = self.matrix_shape(p)
        if shape is not None:
            new.update(self._statistics(state, grad.reshape(shape), beta2, t, group["eps"]))
            if t >= self.start_preconditioning_step:
                direction = self._shampoo_direction(m_hat.reshape(shape), new, direction)
                direction = direction.reshape(p.shape)
        decay = group["weight_decay"] if self.decoupled_weight_decay else 0.0
        new["param"] = theta * (1 - group["lr"] * decay) - group["lr"] * direction
        return new

    def _graft_diagonal(self, graft_sq: Tensor, t: int, group: dict) -> Tensor:
        return graft_diagonal(self.graft, graft_sq, t, group["graft_beta2"], group["graft_eps"])

    def _statistics(
        self, state: dict, G: Tensor, beta2: float, t: int, eps: float
    ) -> dict[str, object]:
        """New L, R, and the roots (recomputed at steps s + kT, else the previous ones)."""
        rows, cols = G.shape
        left = state.get("left", G.new_zeros(rows, rows))
        right = state.get("right", G.new_zeros(cols, cols))
        weight = 1.0 if beta2 == 1 else 1 - beta2
        left, right = beta2 * left + weight * (G @ G.T), beta2 * right + weight * (G.T @ G)
        new = {"left": left, "right": right}
        s = self.start_preconditioning_step
        if t >= s and (t - s) % self.update_freq == 0:
            correction = 1.0 if beta2 == 1 else 1 - beta2**t
            new["left_root"] = inverse_root(left / correction, INVERSE_ROOT, eps)
            new["right_root"] = inverse_root(right / correction, INVERSE_ROOT, eps)
            new["refreshed"] = True
        elif "left_root" in state:
            new["left_root"], new["right_root"] = state["left_root"], state["right_root"]
        return new

    def _shampoo_direction(self, M: Tensor, new: dict, graft: Tensor) -> Tensor:
        """D = L̃ M̂ R̃, rescaled to the graft's norm (unless the graft is none)."""
        D = new["left_root"] @ M @ new["right_root"]
        if self.graft is Graft.NONE:
            return D
        norm = torch.linalg.vector_norm(D)
        return torch.where(norm > 0, D * (torch.linalg.vector_norm(graft) / norm), D)

    def preconditioner(self, power: float = 1.0) -> CurvatureOperator:
        """The current preconditioner P (to the power ``power``) on the flat vector of all
        parameters (param_groups order, ``torch.cat([p.reshape(-1) ...])``).

        Shampoo's ungrafted direction is P⁻¹ m̂ (= P⁻¹ g on a first step or with β₁ = 0):
        on a parameter with roots P = L^{1/4} ⊗ R^{1/4} (row-major vec, so that
        P⁻¹ vec(M̂) = vec(L̃ M̂ R̃), with L, R the bias-corrected statistics + εI at the last
        recomputation); on every other parameter (graft-only ones, and preconditioned ones
        before their first roots) the graft's diagonal, √v̂ + εᵍ for Adam (√(Σg²) + εᵍ for
        AdaGrad; 1 for SGD and none). Symmetric positive-definite. The operator's layout
        names parameter i ``"param{i}"`` with preconditioned ones in their matricised
        shape ``(rows, cols)`` (the flat vector is the same).

        Args:
            power: 1 for P; −1 for P⁻¹; −1/2 for P^{-1/2} (any real power).
        """
        names, shapes, blocks, diagonals = [], [], [], []
        for group in self.param_groups:
            for p in group["params"]:
                name, state = f"param{len(names)}", self.state.get(p, {})
                shape = self.matrix_shape(p)
                names.append(name)
                shapes.append(torch.Size(shape if shape is not None else p.shape))
                t = int(state.get("step", 0))
                sq = state.get("graft_sq", torch.zeros_like(p))
                diagonals.append(self._graft_diagonal(sq, max(t, 1), group).reshape(-1))
                if "left_root" in state:
                    blocks.append(MatrixBlock(name, state["left_root"], state["right_root"]))
        layout = ParameterLayout(tuple(names), tuple(shapes))
        return preconditioner_operator(layout, blocks, torch.cat(diagonals), power)

    def _reject(self, what: str, loss: Tensor | None) -> Tensor | None:
        record_rejection(self.shampoo_state, what, self.max_rejections)
        return loss


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(f"{name} must be an integer ≥ 1, got {value!r}")


def _check_group(group: dict, index: int) -> None:
    values = [group["lr"], group["weight_decay"], group["eps"], group["graft_eps"],
              group["graft_beta2"], *group["betas"]]
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
        raise InvalidArgumentError(
            f"Shampoo's settings must be finite numbers; parameter group {index} has "
            f"{values} (lr, weight_decay, eps, graft_eps, graft_beta2, betas)"
        )
    beta1, beta2 = group["betas"]
    checks = {
        "lr ≥ 0": group["lr"] >= 0,
        "weight_decay ≥ 0": group["weight_decay"] >= 0,
        "eps > 0": group["eps"] > 0,
        "graft_eps > 0": group["graft_eps"] > 0,
        "betas[0] in [0, 1)": 0 <= beta1 < 1,
        "betas[1] in (0, 1]": 0 < beta2 <= 1,
        "graft_beta2 in (0, 1)": 0 < group["graft_beta2"] < 1,
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise InvalidArgumentError(
            f"Shampoo needs {', '.join(failed)} (parameter group {index}: lr={group['lr']}, "
            f"betas={group['betas']}, eps={group['eps']}, weight_decay="
            f"{group['weight_decay']}, graft_eps={group['graft_eps']}, graft_beta2="
            f"{group['graft_beta2']})"
        )

