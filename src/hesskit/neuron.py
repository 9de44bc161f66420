"""One ReLU neuron under mean squared error: loss, gradient and 2×2 Hessian in closed form.

For data (xᵢ, yᵢ), i = 1…n, and the neuron ŷ = ReLU(w x + b), with zᵢ = w xᵢ + b,

    E(w, b) = (1/n) Σᵢ (ReLU(zᵢ) − yᵢ)².

Only *active* samples, A = {i : zᵢ > 0}, depend on (w, b) (ReLU′(0) = 0, PyTorch's
convention, so zᵢ = 0 counts as inactive). With residuals rᵢ = zᵢ − yᵢ on A:

    ∂E/∂w = (2/n) Σ_A rᵢ xᵢ            ∂E/∂b = (2/n) Σ_A rᵢ
    ∂²E/∂w² = (2/n) Σ_A xᵢ²    ∂²E/∂w∂b = (2/n) Σ_A xᵢ    ∂²E/∂b² = (2/n) |A|

ReLU″ = 0, so the Hessian has no residual term: it equals the Gauss–Newton matrix, is
positive semi-definite, and is piecewise constant in (w, b), jumping where a sample
crosses the kink (w = −b/xᵢ). It is singular when fewer than two distinct xᵢ are active.
On a fixed active set E is a least-squares quadratic, so Newton jumps to its minimiser in
one step and converges once the active set stops changing.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hesskit.errors import InvalidArgumentError

#: A Hessian whose smallest eigenvalue is below this fraction of its largest is singular.
SINGULAR_RTOL = 1e-12


@dataclass(frozen=True)
class ReluNeuronMSE:
    """E(w, b) of one ReLU neuron on data (x, y), both 1-D float tensors of length n ≥ 1."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.ndim != 1 or self.y.shape != self.x.shape or self.x.numel() == 0:
            raise InvalidArgumentError(
                f"x and y must be 1-D tensors of the same length ≥ 1, got shapes "
                f"{tuple(self.x.shape)} and {tuple(self.y.shape)}"
            )
        if not (torch.isfinite(self.x).all() and torch.isfinite(self.y).all()):
            raise InvalidArgumentError("x and y must be finite; remove NaN or infinite samples")

    @property
    def num_samples(self) -> int:
        return self.x.numel()

    def preactivation(self, w: float, b: float) -> Tensor:
        """zᵢ = w xᵢ + b, shape (n,)."""
        return w * self.x + b

    def active(self, w: float, b: float) -> Tensor:
        """Boolean mask of the active samples, zᵢ > 0."""
        return self.preactivation(w, b) > 0

    def loss(self, w: float, b: float) -> float:
        """E(w, b)."""
        prediction = torch.clamp(self.preactivation(w, b), min=0)
        return float(((prediction - self.y) ** 2).mean())

    def gradient(self, w: float, b: float) -> Tensor:
        """(∂E/∂w, ∂E/∂b), shape (2,)."""
        mask = self.active(w, b)
        x, residual = self.x[mask], (self.preactivation(w, b) - self.y)[mask]
        scale = 2.0 / self.num_samples
        return scale * torch.stack([(residual * x).sum(), residual.sum()])

    def hessian(self, w: float, b: float) -> Tensor:
        """The 2×2 Hessian [[E_ww, E_wb], [E_wb, E_bb]] (exists wherever no zᵢ = 0)."""
        x = self.x[self.active(w, b)]
        scale = 2.0 / self.num_samples
        count = torch.tensor(float(x.numel()), dtype=self.x.dtype)
        return scale * torch.stack(
            [torch.stack([(x * x).sum(), x.sum()]), torch.stack([x.sum(), count])]
        )

    def kinks_in_w(self, b: float) -> Tensor:
        """The w where d²E/dw² jumps for this b: w = −b/xᵢ (xᵢ ≠ 0), sorted."""
        nonzero = self.x[self.x != 0]
        return torch.sort(-b / nonzero).values


def synthetic_data(
    num_samples: int = 24,
    *,
    slope: float = 1.5,
    intercept: float = -0.3,
    noise: float = 0.1,
    seed: int = 0,
) -> ReluNeuronMSE:
    """Deterministic toy data: x uniform on [−2, 2], y = ReLU(slope·x + intercept) + noise·ε.

    ε is standard normal from ``torch.Generator().manual_seed(seed)``; float64 throughout.
    """
    if num_samples < 1:
        raise InvalidArgumentError(f"num_samples must be at least 1, got {num_samples}")
    generator = torch.Generator().manual_seed(seed)
    x = 4 * torch.rand(num_samples, generator=generator, dtype=torch.float64) - 2
    eps = torch.randn(num_samples, generator=generator, dtype=torch.float64)
    y = torch.clamp(slope * x + intercept, min=0) + noise * eps
    return ReluNeuronMSE(x, y)


class NeuronNewtonStatus(enum.Enum):
    """Why :func:`newton_neuron` stopped."""

    CONVERGED = "converged"
    SINGULAR_HESSIAN = "singular Hessian"
    MAX_ITERATIONS = "maximum iterations"


@dataclass(frozen=True)
class NeuronIterate:
    """One iterate of Newton on (w, b)."""

    w: float
    b: float
    loss: float
    gradient_norm: float
    num_active: int


@dataclass(frozen=True)
class NeuronNewtonResult:
    """Outcome of :func:`newton_neuron`: final (w, b), iterates, status and a sentence."""

    w: float
    b: float
    iterates: tuple[NeuronIterate, ...]
    status: NeuronNewtonStatus
    message: str

    @property
    def converged(self) -> bool:
        return self.status is NeuronNewtonStatus.CONVERGED


def _singular_reason(problem: ReluNeuronMSE, w: float, b: float, hessian: Tensor) -> str | None:
    """Why the Hessian at (w, b) is singular, or None when it is invertible."""
    eigenvalues = torch.linalg.eigvalsh(hessian)
    largest = float(eigenvalues[-1])
    if largest > 0 and float(eigenvalues[0]) > SINGULAR_RTOL * largest:
        return None
    active = int(problem.active(w, b).sum())
    if active == 0:
        return (
            f"the neuron is dead at (w, b) = ({w:.6g}, {b:.6g}): no sample has w·x + b > 0, "
            "so E is flat there (gradient and Hessian are 0); start where some samples are active"
        )
    return (
        f"the Hessian at (w, b) = ({w:.6g}, {b:.6g}) is singular (eigenvalues "
        f"{float(eigenvalues[0]):.3g}, {largest:.3g}): its {active} active sample(s) have "
        "fewer than two distinct x, so w and b cannot be told apart; start elsewhere"
    )


def newton_neuron(
    problem: ReluNeuronMSE,
    w0: float,
    b0: float,
    *,
    tol: float = 1e-10,
    max_iter: int = 50,
) -> NeuronNewtonResult:
    """Newton's method (w, b) ← (w, b) − H⁻¹ ∇E with the closed-form 2×2 Hessian.

    Stops with CONVERGED when the step is at most ``tol`` · (1 + ‖(w, b)‖) or the gradient
    is exactly zero, SINGULAR_HESSIAN (no crash, no division) when H is singular, and
    MAX_ITERATIONS after ``max_iter`` steps (e.g. when the active set keeps changing).
    """
    for name, value in (("w0", w0), ("b0", b0), ("tol", tol)):
        if not math.isfinite(value):
            raise InvalidArgumentError(f"{name} must be a finite number, got {value!r}")
    if max_iter < 0:
        raise InvalidArgumentError(f"max_iter must be ≥ 0, got {max_iter!r}")
    w, b = float(w0), float(b0)
    iterates: list[NeuronIterate] = []

    def stop(status: NeuronNewtonStatus, message: str) -> NeuronNewtonResult:
        return NeuronNewtonResult(w, b, tuple(iterates), status, message)

    last_step = math.inf
    while True:
        gradient = problem.gradient(w, b)
        grad_norm = float(torch.linalg.vector_norm(gradient))
        num_active = int(problem.active(w, b).sum())
        iterates.append(NeuronIterate(w, b, problem.loss(w, b), grad_norm, num_active))
        steps = len(iterates) - 1
        if last_step <= tol * (1 + math.hypot(w, b)) or (grad_norm == 0 and num_active > 0):
            return stop(
                NeuronNewtonStatus.CONVERGED,
                f"converged to the stationary point (w, b) = ({w:.10g}, {b:.10g}) after "
                f"{steps} steps: ‖∇E‖ = {grad_norm:.3g}, E = {iterates[-1].loss:.6g}, "
                f"{num_active} of {problem.num_samples} samples active.",
            )
        hessian = problem.hessian(w, b)
        reason = _singular_reason(problem, w, b, hessian)
        if reason is not None:
            return stop(NeuronNewtonStatus.SINGULAR_HESSIAN, reason[0].upper() + reason[1:] + ".")
        if steps >= max_iter:
            return stop(
                NeuronNewtonStatus.MAX_ITERATIONS,
                f"no convergence after {max_iter} steps: (w, b) = ({w:.6g}, {b:.6g}), "
                f"‖∇E‖ = {grad_norm:.3g}; the active set may keep changing, start elsewhere.",
            )
        step = -torch.linalg.solve(hessian, gradient)
        last_step = float(torch.linalg.vector_norm(step))
        w, b = w + float(step[0]), b + float(step[1])
