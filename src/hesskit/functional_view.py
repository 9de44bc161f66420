"""The model as a fixed, differentiable function while hesskit evaluates it.

Curvature is the second derivative of ONE function f(θ, X). Models as people write them
are not quite that: train-mode normalisation updates running statistics in place (which
``torch.func`` refuses: "mutate a captured Tensor"), dropout draws a new mask per call, and
the default CPU attention kernel has no double backward. :func:`functional_mode` turns a
model into that one function for the duration of a ``with`` block, and restores every
attribute it touched on exit, also when the block raises:

* **Normalisation in training mode** (``nn.BatchNorm*d``, ``SyncBatchNorm``,
  ``nn.InstanceNorm*d`` with ``track_running_stats=True``): the function normalises with the
  statistics of the batch it is given, as training does, and updates nothing:
  ``track_running_stats`` is set to False (and the running buffers hidden) inside the
  block, so ``running_mean``, ``running_var`` and ``num_batches_tracked`` stay bitwise
  unchanged. In eval mode the running statistics are constants of f. Train-mode BatchNorm
  couples the samples of a batch (:func:`couples_samples`), so per-sample quantities are
  not those of the batch function. ``SyncBatchNorm`` in a process group still averages its
  statistics over the ranks (a collective inside every forward pass).
* **Dropout** (``nn.Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout``,
  ``FeatureAlphaDropout`` modules, and the attention dropout of ``nn.MultiheadAttention``):
  with :attr:`DropoutMode.EVAL` (the default) they act as in eval mode: f is the
  deterministic network that dropout training averages over. ``torch.nn.functional.dropout``
  called inside a custom ``forward`` is not seen: use a module, or call ``model.eval()``.
* **Attention** through ``scaled_dot_product_attention``: the math kernel is selected
  (``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``; the flash and memory-efficient
  kernels have no double backward) and the ``nn.MultiheadAttention`` /
  ``nn.TransformerEncoderLayer`` fast path is switched off
  (``torch.backends.mha.set_fastpath_enabled(False)``; its fused kernel has no backward).
  Cost: the math kernel holds the n_q × n_k attention matrix per head in memory.

Any other buffer that the forward pass changes in place (a step counter, spectral-norm
power iterations in training mode) is caught on exit with an ``InvalidArgumentError``
naming it, since hesskit promises to leave the model's state unchanged.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.dropout import _DropoutNd

from hesskit.errors import InvalidArgumentError


class DropoutMode(enum.Enum):
    """How dropout modules in training mode act inside hesskit's evaluations."""

    EVAL = "eval"
    """As in eval mode: no units dropped, no rescaling (the deterministic network)."""


def as_dropout_mode(mode: DropoutMode | str) -> DropoutMode:
    """``mode`` as a :class:`DropoutMode` (its value as a string is accepted)."""
    try:
        return DropoutMode(mode)
    except ValueError:
        known = ", ".join(repr(m.value) for m in DropoutMode)
        raise InvalidArgumentError(f"unknown dropout mode {mode!r}; use one of {known}") from None


def couples_samples(model: nn.Module) -> bool:
    """One sample's output depends on the other samples of its batch: a BatchNorm normalises
    with batch statistics (training mode, or no running statistics)."""
    return any(
        isinstance(m, _BatchNorm) and (m.training or m.running_mean is None)
        for m in model.modules()
    )


@contextmanager
def functional_mode(
    model: nn.Module, *, dropout: DropoutMode | str = DropoutMode.EVAL
) -> Iterator[None]:
    """Inside the block, ``model`` is the fixed function f(θ, X) described in the module
    docstring. Re-entrant; not thread-safe (it sets module attributes and one global
    flag). Cost: one walk over ``model.modules()`` and its buffers on entry and exit."""
    as_dropout_mode(dropout)
    restore: list[tuple[object, str, object]] = []  # (owner, attribute or buffer key, old value)
    try:
        for module in model.modules():
            _make_fixed(module, restore)
        watched = [(name, b, b._version) for name, b in model.named_buffers()]
        with ExitStack() as stack:
            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
            stack.enter_context(_mha_fastpath_disabled())
            yield
        _check_unchanged(watched)
    finally:
        for owner, key, value in reversed(restore):
            if isinstance(owner, dict):
                owner[key] = value
            else:
                setattr(owner, key, value)


def _make_fixed(module: nn.Module, restore: list[tuple[object, str, object]]) -> None:
    if isinstance(module, _NormBase) and module.training and module.track_running_stats:
        restore.append((module, "track_running_stats", True))
        module.track_running_stats = False
        for key in ("running_mean", "running_var"):  # InstanceNorm passes them regardless
            if module._buffers.get(key) is not None:
                restore.append((module._buffers, key, module._buffers[key]))
                module._buffers[key] = None
    elif isinstance(module, _DropoutNd) and module.training:
        restore.append((module, "training", True))
        module.training = False
    elif isinstance(module, nn.MultiheadAttention) and module.training and module.dropout:
        restore.append((module, "dropout", module.dropout))
        module.dropout = 0.0


@contextmanager
def _mha_fastpath_disabled() -> Iterator[None]:
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def _check_unchanged(watched: list[tuple[str, torch.Tensor, int]]) -> None:
    for name, buffer, version in watched:
        if buffer._version != version:
            raise InvalidArgumentError(
                f"the model changed its buffer {name!r} in place during a hesskit forward "
                "pass; hesskit evaluates a fixed function and keeps only normalisation "
                "statistics unchanged for you: put that module in eval mode, or keep the "
                "state outside the model"
            )
