"""Softmax cross-entropy and the negative log-likelihood of log-probabilities.

Layout as ``torch.nn``: outputs z are ``[n, C, d1, ...]`` with the classes in dimension 1
(``[n, C]`` for plain classification, ``[n, C, T]`` for tokens, ``[n, C, H, W]`` for
segmentation); targets are class indices ``[n, d1, ...]`` or, for cross-entropy, class
probabilities shaped like z. Each position (sample i, spatial index d) is one term.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hesskit.errors import InvalidArgumentError
from hesskit.losses.base import Loss, ZeroCurvatureLoss


def softmax_hessian_vector(log_p: Tensor, u: Tensor) -> Tensor:
    """(diag p − p pᵀ) u along dimension 1 of ``log_p``, p = exp(log_p), in working precision.

    (Hu)_c = p_c (u_c − ū) with ū = Σ_j p_j u_j. Written as p_c ((u_c − u_m) + Σ_j p_j (u_m − u_j))
    with m the most probable class, the inner sum has no term of size |u| that cancels when
    p saturates (p_m → 1), so a float32 product keeps its relative accuracy where the naive
    p ⊙ (u − ū) loses all digits of its largest entries. u may carry leading dimensions.
    """
    dim = 1 + u.ndim - log_p.ndim
    p = log_p.exp()
    top = log_p.argmax(1, keepdim=True)
    top = top.reshape((1,) * (u.ndim - top.ndim) + top.shape)
    u_top = u.gather(dim, top.expand(*u.shape[:dim], 1, *u.shape[dim + 1 :]))
    difference = u - u_top
    shift = -(p * difference).sum(dim, keepdim=True)  # u_m − ū
    return p * (difference + shift)


def softmax_hessian_sqrt(log_p: Tensor) -> Tensor:
    """S = diag √p − p √pᵀ per position, ``[n, D, C, C]`` from log_p ``[n, C, D]``.

    S Sᵀ = diag p − 2 p pᵀ + p pᵀ (Σ p) = diag p − p pᵀ, the softmax Jacobian.

    The diagonal √p_c (1 − p_c) takes 1 − p_c as −expm1(log p_c), or for the most probable
    class as the sum of the others, so it does not round to zero when p saturates.
    """
    log_p = log_p.transpose(1, 2)  # [n, D, C]
    p = log_p.exp()
    top = torch.nn.functional.one_hot(log_p.argmax(-1), log_p.shape[-1]).bool()
    others = torch.where(top, 0, p).sum(-1, keepdim=True)
    complement = torch.where(top, others, -torch.expm1(log_p))
    root = p.sqrt()
    off_diagonal = -p.unsqueeze(-1) * root.unsqueeze(-2)
    eye = torch.eye(p.shape[-1], dtype=torch.bool, device=p.device)
    return torch.where(eye, torch.diag_embed(root * complement), off_diagonal)


def _positions(z: Tensor) -> Tensor:
    """``[n, C, d1, ...]`` → ``[n, C, D]``."""
    return z.reshape(z.shape[0], z.shape[1], -1)


class _IndexTargets:
    """Shared handling of class-index targets: ignored positions and class weights."""

    weight: Tensor | None
    ignore_index: int

    def _check_indices(self, z: Tensor, y: Tensor) -> None:
        if z.ndim < 2 or y.shape != (z.shape[0], *z.shape[2:]):
            raise InvalidArgumentError(
                f"{type(self).__name__}: class-index targets of shape {list(y.shape)} do not "
                f"fit outputs of shape {list(z.shape)} (classes in dimension 1); pass targets "
                f"[n, d1, ...] for outputs [n, C, d1, ...]"
            )

    def _index_count(self, y: Tensor) -> Tensor:
        """torch's ``"mean"`` count: non-ignored targets, or Σ weight[y_i] over them (0-d)."""
        valid = y != self.ignore_index
        if self.weight is None:
            return valid.sum()
        return torch.where(valid, self.weight[torch.where(valid, y, 0).long()], 0).sum()


class CrossEntropyLoss(_IndexTargets, Loss):
    """Softmax cross-entropy (``nn.CrossEntropyLoss``) with all of torch's options.

    At each position, with log p = log_softmax(z) over the classes, ℓ = −Σ_c t_c log p_c for
    an effective target vector t: for an index y (not ``ignore_index``),
    t = (1 − ε) w_y e_y + (ε/C) w; for probabilities q, t = w ⊙ ((1 − ε) q + ε/C)
    (ε = ``label_smoothing``, w = ``weight``, 1 when absent). Then, with s = Σ_c t_c,

        ∇ℓ = s p − t,      H_ℓ = c s (diag p − p pᵀ),      S = √(c s) (diag √p − p √pᵀ).

    ``"mean"`` divides by Σ_i w_{y_i} over non-ignored index targets (their number without
    weights), or by the number of positions for probability targets, exactly as torch.
    Costs: the product O(n C D); the factor is ``[n, C D, C D]`` (block diagonal over the
    D positions of a sample, so prefer ``hessian_vector`` for segmentation-sized D).

    ``sample_targets`` draws class indices from softmax(z) (the categorical likelihood);
    with label smoothing or class weights the sampled loss keeps them, so E[F̂] is close to,
    not equal to, G.
    """

    has_likelihood = True

    def __init__(
        self,
        reduction: str = "mean",
        *,
        weight: Tensor | None = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise InvalidArgumentError(f"label_smoothing must lie in [0, 1], got {label_smoothing}")
        self.register_buffer("weight", weight)
        self.ignore_index = int(ignore_index)
        self.label_smoothing = float(label_smoothing)
        self.convex = weight is None or bool((weight >= 0).all())

    @staticmethod
    def _is_probability(z: Tensor, y: Tensor) -> bool:
        return y.is_floating_point() and y.shape == z.shape

    def _mean_count(self, z: Tensor | None, y: Tensor | None) -> float | Tensor:
        if y is None:
            if self.weight is not None:
                raise InvalidArgumentError(
                    "CrossEntropyLoss with weight: the mean divides by Σ weight[y_i], so the "
                    "reduction factor needs the targets; call scale(z, y)"
                )
            return z.numel() / z.shape[1]
        as_probabilities = self._is_probability(z, y) if z is not None else y.is_floating_point()
        if as_probabilities:
            return y.numel() / y.shape[1]
        return self._index_count(y)

    def _elementwise(self, z: Tensor, y: Tensor) -> Tensor:
        log_p = torch.log_softmax(z, dim=1)
        if self._is_probability(z, y):
            return -(self._probability_mass(z, y) * log_p).sum(1)
        self._check_indices(z, y)
        valid = y != self.ignore_index
        safe = torch.where(valid, y, 0).long()
        terms = -log_p.gather(1, safe.unsqueeze(1)).squeeze(1)
        if self.weight is not None:
            terms = terms * self.weight[safe]
        if self.label_smoothing:
            class_weight = 1 if self.weight is None else self._class_weight(z)
            smooth = -(log_p * class_weight).sum(1)
            eps, C = self.label_smoothing, z.shape[1]
            terms = (1 - eps) * terms + (eps / C) * smooth
        return torch.where(valid, terms, 0)

    def _class_weight(self, z: Tensor) -> Tensor:
        return self.weight.reshape(1, -1, *([1] * (z.ndim - 2)))

    def _probability_mass(self, z: Tensor, y: Tensor) -> Tensor:
        """The effective target vector t for probability targets, shaped like z."""
        t = y
        if self.label_smoothing:
            t = y * (1 - self.label_smoothing) + self.label_smoothing / z.shape[1]
        return t if self.weight is None else t * self._class_weight(z)

    def _target_mass(self, z: Tensor, y: Tensor) -> Tensor:
        """s = Σ_c t_c per position, ``[n, d1, ...]`` (0 at ignored positions)."""
        if self._is_probability(z, y):
            return self._probability_mass(z, y).sum(1)
        self._check_indices(z, y)
        valid = y != self.ignore_index
        if self.weight is None:
            return valid.to(z.dtype)
        safe = torch.where(valid, y, 0).long()
        eps = self.label_smoothing
        mass = (1 - eps) * self.weight[safe] + eps * self.weight.mean()
        return torch.where(valid, mass, 0).to(z.dtype)

    def hessian_vector(self, z: Tensor, y: Tensor, u: Tensor) -> Tensor:
        log_p = torch.log_softmax(z, dim=1)
        mass = self.reduction_factor(z, y) * self._target_mass(z, y).unsqueeze(1)
        return mass * softmax_hessian_vector(log_p, u)

    def hessian_sqrt(self, z: Tensor, y: Tensor) -> Tensor:
        n, C = z.shape[:2]
        log_p = _positions(torch.log_softmax(z, dim=1))
        D = log_p.shape[-1]
        mass = self.reduction_factor(z, y) * self._target_mass(z, y).reshape(n, D, 1, 1)
        blocks = mass.sqrt() * softmax_hessian_sqrt(log_p)  # [n, D, C, C]
        if D == 1:
            return blocks[:, 0]
        eye = torch.eye(D, dtype=z.dtype, device=z.device)
        return torch.einsum("ndab,de->nadbe", blocks, eye).reshape(n, C * D, C * D)

    def sample_targets(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        log_p = _positions(torch.log_softmax(z.detach(), dim=1)).transpose(1, 2)
        flat_p = log_p.exp().reshape(-1, z.shape[1])
        draws = torch.multinomial(flat_p, 1, generator=generator)
        return draws.reshape(z.shape[0], *z.shape[2:])


class NLLLoss(_IndexTargets, ZeroCurvatureLoss):
    """Negative log-likelihood of log-probabilities (``nn.NLLLoss``): ℓ = −w_y z_y per position.

    ℓ is linear in its input z, so H_ℓ = 0 and the Gauss-Newton matrix of a model that ends
    in ``log_softmax`` is zero: the curvature lives in the log-softmax, which this view puts
    inside the network. Feed the logits to ``CrossEntropyLoss`` for a useful GGN (the same
    loss, with the softmax curvature in H_ℓ). ``weight`` and ``ignore_index`` as torch.
    """

    def __init__(
        self, reduction: str = "mean", *, weight: Tensor | None = None, ignore_index: int = -100
    ) -> None:
        super().__init__(reduction)
        self.register_buffer("weight", weight)
        self.ignore_index = int(ignore_index)

    def value(self, z: Tensor, y: Tensor) -> Tensor:
        return self.reduction_factor(z, y) * self._elementwise(z, y).sum()

    def _mean_count(self, z: Tensor | None, y: Tensor | None) -> float | Tensor:
        if y is not None:
            return self._index_count(y)
        if self.weight is not None:
            raise InvalidArgumentError(
                "NLLLoss with weight: the reduction factor needs the targets; call scale(z, y)"
            )
        return z.numel() / z.shape[1]

    def _elementwise(self, z: Tensor, y: Tensor) -> Tensor:
        self._check_indices(z, y)
        valid = y != self.ignore_index
        safe = torch.where(valid, y, 0).long()
        terms = -z.gather(1, safe.unsqueeze(1)).squeeze(1)
        if self.weight is not None:
            terms = terms * self.weight[safe]
        return torch.where(valid, terms, 0)

    def _likelihood_remedy(self) -> str:
        return (
            "use the empirical Fisher (empirical_fisher_operator), or feed logits to "
            "CrossEntropyLoss and use the Fisher or the Gauss-Newton matrix"
        )
