"""The graft: the diagonal method whose per-layer step length Shampoo takes.

Grafting (Agarwal, Anil, Hazan, Koren & Zhang 2020, arXiv:2002.11803; used by Anil et al.
2020 for Shampoo) runs a diagonal method M beside Shampoo on the same first moment m̂ and
rescales Shampoo's direction D of each layer to M's step length: d = (‖a‖ / ‖D‖) D with
a = m̂ / diag, diag the method's diagonal preconditioner (flat per parameter):

* Adam: v ← β₂ᵍ v + (1 − β₂ᵍ) g ⊙ g, diag = √(v / (1 − β₂ᵍᵗ)) + εᵍ;
* AdaGrad: v ← v + g ⊙ g, diag = √v + εᵍ;
* SGD and none: diag = 1 (none: no rescaling of D).

The formulas are those of facebookresearch/optimizers (``distributed_shampoo``:
``GraftingType.ADAM``, ``ADAGRAD``, ``SGD``, ``NONE``), whose grafts act on the
second moment only, the first moment m̂ being shared with Shampoo.

Before its ``start_preconditioning_step`` s, Shampoo takes the graft's step alone (the
warm-up, :mod:`hesskit.optim.shampoo.optimizer`); :func:`warmup_note` is the sentence reports print
for a run that never left it.
"""

from __future__ import annotations

import enum

import torch
from torch import Tensor


class Graft(enum.Enum):
    """The method whose per-layer step norm Shampoo's direction is rescaled to."""

    ADAM = "adam"
    """a = m̂ / (√v̂ + εᵍ), v the EMA of g² with β₂ᵍ, bias-corrected (the default)."""

    ADAGRAD = "adagrad"
    """a = m̂ / (√(Σ g²) + εᵍ)."""

    SGD = "sgd"
    """a = m̂."""

    NONE = "none"
    """No rescaling: d = D on preconditioned layers; a = m̂ on the others."""


def graft_statistic(graft: Graft, previous: Tensor, grad: Tensor, beta2: float) -> Tensor:
    """The graft's new second-moment statistic v (unchanged for SGD and none)."""
    if graft is Graft.ADAM:
        return beta2 * previous + (1 - beta2) * grad.square()
    if graft is Graft.ADAGRAD:
        return previous + grad.square()
    return previous


def graft_diagonal(graft: Graft, statistic: Tensor, step: int, beta2: float,
                   eps: float) -> Tensor:
    """The graft's diagonal preconditioner at step ``step`` (≥ 1): a = m̂ / diagonal."""
    if graft is Graft.ADAM:
        return (statistic / (1 - beta2**step)).sqrt() + eps
    if graft is Graft.ADAGRAD:
        return statistic.sqrt() + eps
    return torch.ones_like(statistic)


def warmup_note(title: str, steps: int, warmup_steps: int) -> str | None:
    """The sentence a report prints when a run of ``steps`` steps never left the warm-up
    (every step the graft's alone; :mod:`hesskit.optim.shampoo.optimizer`, "Warm-up"); None when it
    did."""
    if warmup_steps <= 0 or steps > warmup_steps:
        return None
    return (f"{title} ran {steps} steps, all in its warm-up (steps 1-{warmup_steps}; "
            f"start_preconditioning_step = {warmup_steps + 1}): every step was its graft's "
            "(Adam's for the Adam graft), so here it equals that method; run more than "
            f"{warmup_steps} steps to measure Shampoo")
