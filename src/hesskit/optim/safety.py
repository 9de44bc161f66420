"""Parameter snapshots, and rejecting a step with a non-finite loss, gradient or product.

A second-order step multiplies errors: one NaN in a curvature product becomes NaN in every
parameter. The optimizers therefore keep an exact copy of the parameters at the start of a
step, check every quantity they use, and on a non-finite one *reject* the step: the
parameters are copied back bit for bit, the damping grows (smaller, safer steps next time)
and the rejection is counted. After ``max_rejections`` consecutive rejections the run cannot
recover by damping alone and :class:`~hesskit.errors.NonFiniteError` is raised.

The counters live in the optimizer-wide state dict under these keys:

* ``"nonfinite_rejections"``: rejections over the whole run;
* ``"consecutive_nonfinite"``: rejections since the last accepted step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, MutableMapping, Sequence

import torch
from torch import Tensor

from hesskit.errors import NonFiniteError

DEFAULT_MAX_REJECTIONS = 10
"""Consecutive non-finite steps tolerated before :class:`NonFiniteError` is raised."""


def is_finite(*values: Tensor | float | None) -> bool:
    """True when every tensor entry and float is finite (``None`` entries are skipped)."""
    for value in values:
        if value is None:
            continue
        if isinstance(value, Tensor):
            if not bool(torch.isfinite(value).all()):
                return False
        elif not math.isfinite(value):
            return False
    return True


def loss_value(loss: Tensor | float) -> float:
    """A closure's returned loss as a Python float (detached first)."""
    return float(loss.detach()) if isinstance(loss, Tensor) else float(loss)


def save_parameters(params: Iterable[Tensor]) -> list[Tensor]:
    """Exact copies of the parameters' values (for :func:`restore_parameters`)."""
    return [p.detach().clone() for p in params]


@torch.no_grad()
def restore_parameters(params: Iterable[Tensor], saved: Iterable[Tensor]) -> None:
    """Copy the saved values back into the parameters in place (bit-identical)."""
    for p, value in zip(params, saved, strict=True):
        p.copy_(value)


def flat_gradient(params: Sequence[Tensor]) -> Tensor:
    """The parameters' ``.grad`` concatenated into a flat ``[N]`` copy (zeros where None)."""
    return torch.cat(
        [
            (p.grad.detach() if p.grad is not None else torch.zeros_like(p)).reshape(-1)
            for p in params
        ]
    )


@torch.no_grad()
def move_parameters(
    params: Sequence[Tensor], start: Sequence[Tensor], direction: Tensor, step: float = 1.0
) -> None:
    """Set the parameters to start + step · direction (direction flat ``[N]``, params order).

    Always computed from the exact saved ``start``, so trial points do not accumulate
    rounding and a resumed run reproduces them bit for bit.
    """
    offset = 0
    for p, value in zip(params, start, strict=True):
        piece = direction[offset : offset + p.numel()].view_as(p).to(p.dtype)
        p.copy_(value + step * piece if step != 1.0 else value + piece)
        offset += p.numel()


def init_rejection_state(state: MutableMapping[str, object]) -> None:
    """Add the rejection counters to an optimizer-wide state dict."""
    state.setdefault("nonfinite_rejections", 0)
    state.setdefault("consecutive_nonfinite", 0)


def record_rejection(state: MutableMapping[str, object], what: str, max_rejections: int) -> None:
    """Count a non-finite rejection; raise once ``max_rejections`` happened in a row.

    Args:
        state: the optimizer-wide state (see the module docstring for the keys).
        what: which quantity was not finite, for the message (e.g. "the loss").
        max_rejections: the number of consecutive rejections that ends the run.

    Raises:
        NonFiniteError: on the ``max_rejections``-th consecutive rejection.
    """
    state["nonfinite_rejections"] = int(state["nonfinite_rejections"]) + 1
    state["consecutive_nonfinite"] = int(state["consecutive_nonfinite"]) + 1
    if state["consecutive_nonfinite"] >= max_rejections:
        raise NonFiniteError(
            f"{state['consecutive_nonfinite']} steps in a row were rejected because {what} was "
            "NaN or infinite; check the data, the model and the loss for non-finite values, "
            "or start from a larger damping."
        )


def record_acceptance(state: MutableMapping[str, object]) -> None:
    """An accepted step ends a run of rejections."""
    state["consecutive_nonfinite"] = 0
