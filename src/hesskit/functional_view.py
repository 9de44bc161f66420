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
* **Dropout**, however it is called: ``nn.Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout``
  and ``FeatureAlphaDropout`` modules, the attention dropout of ``nn.MultiheadAttention``,
  and every functional form (``F.dropout``, ``F.dropout1d/2d/3d``, ``F.alpha_dropout``,
  ``F.feature_alpha_dropout``, ``torch.dropout`` and its relatives,
  ``F.scaled_dot_product_attention(dropout_p=...)``, ``F.rrelu(training=True)``), whatever
  flag the model passes (Hugging Face models pass ``self.training``-gated probabilities).
  With :attr:`DropoutMode.EVAL` (the default) they act as in eval mode: f is the
  deterministic network that dropout training averages over. The functional forms are
  switched by a ``TorchFunctionMode`` (:class:`_FixedFunction`) that sees every torch call
  of the forward pass.
* **Any other random operation** (``torch.rand``, ``randn``, ``bernoulli``, ``Tensor.uniform_``,
  ... in a custom ``forward``, such as stochastic depth) cannot be switched off: the same mode
  raises one ``InvalidArgumentError`` naming the operation and the module that called it.
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
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the torch convention
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.dropout import _DropoutNd
from torch.overrides import TorchFunctionMode

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
            stack.enter_context(twice_differentiable_kernels())
            stack.enter_context(_FixedFunction(model))
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
def twice_differentiable_kernels() -> Iterator[None]:
    """Inside the block, attention runs through kernels with a double backward: the MATH
    kernel of ``scaled_dot_product_attention`` and no ``nn.MultiheadAttention`` fast path.
    Nothing else of the model changes (dropout stays as the model's mode says), so an
    optimizer that differentiates a user's closure twice (AdaHessian) runs it in here."""
    with sdpa_kernel([SDPBackend.MATH]), _mha_fastpath_disabled():
        yield


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


def _return_input(args: tuple, kwargs: dict) -> Any:
    """Dropout in eval mode: the input itself, unchanged."""
    return args[0] if args else kwargs["input"]


def _without_attention_dropout(func: Callable, args: tuple, kwargs: dict) -> Any:
    """``scaled_dot_product_attention`` with ``dropout_p = 0`` (its 5th argument)."""
    if len(args) > 4:
        args = (*args[:4], 0.0, *args[5:])
    else:
        kwargs = {**kwargs, "dropout_p": 0.0}
    return func(*args, **kwargs)


def _not_training(position: int, keyword: str) -> Callable[[Callable, tuple, dict], Any]:
    """A rewrite that calls ``func`` with its training flag (argument ``position``, or
    ``keyword``) False: ``rrelu`` with the fixed slope (lower + upper) / 2,
    ``native_dropout`` returning its input."""

    def rewrite(func: Callable, args: tuple, kwargs: dict) -> Any:
        if len(args) > position:
            args = (*args[:position], False, *args[position + 1 :])
        else:
            kwargs = {**kwargs, keyword: False}
        return func(*args, **kwargs)

    return rewrite


_DROPOUT_FUNCTIONS: frozenset[Callable] = frozenset({
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    F.feature_alpha_dropout, torch.dropout, torch.dropout_, torch.alpha_dropout,
    torch.alpha_dropout_, torch.feature_dropout, torch.feature_dropout_,
    torch.feature_alpha_dropout, torch.feature_alpha_dropout_,
})
"""Every functional dropout: in eval mode each returns its input."""

_REWRITTEN: dict[Callable, Callable[[Callable, tuple, dict], Any]] = {
    F.scaled_dot_product_attention: _without_attention_dropout,
    F.rrelu: _not_training(3, "training"),
    F.rrelu_: _not_training(3, "training"),
    torch.rrelu: _not_training(3, "training"),
    torch.rrelu_: _not_training(3, "training"),
    torch.native_dropout: _not_training(2, "train"),
}

RANDOM_OPERATIONS: frozenset[Callable] = frozenset({
    torch.rand, torch.rand_like, torch.randn, torch.randn_like, torch.randint,
    torch.randint_like, torch.randperm, torch.bernoulli, torch.multinomial, torch.normal,
    torch.poisson, F.gumbel_softmax,
    torch.Tensor.bernoulli, torch.Tensor.bernoulli_, torch.Tensor.uniform_,
    torch.Tensor.normal_, torch.Tensor.exponential_, torch.Tensor.geometric_,
    torch.Tensor.cauchy_, torch.Tensor.log_normal_, torch.Tensor.random_,
    torch.Tensor.multinomial,
})
"""Random operations that no flag switches off: refused inside the functional view."""


class _FixedFunction(TorchFunctionMode):
    """Sees every torch call of the forward pass: functional dropout acts as in eval mode,
    and any other random operation is refused with the module that called it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._model = model

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DROPOUT_FUNCTIONS:
            return _return_input(args, kwargs)
        rewrite = _REWRITTEN.get(func)
        if rewrite is not None:
            return rewrite(func, args, kwargs)
        if func in RANDOM_OPERATIONS:
            raise _random_operation_error(func, self._model)
        return func(*args, **kwargs)


def _random_operation_error(func: Callable, model: nn.Module) -> InvalidArgumentError:
    name = getattr(func, "__name__", repr(func))
    owner = "Tensor" if getattr(torch.Tensor, name, None) is func else "torch"
    where = _calling_module(model)
    return InvalidArgumentError(
        f"the model's forward pass calls the random operation {owner}.{name}"
        f"{where}, which hesskit cannot switch off: curvature is defined for one fixed "
        "function; put that module in eval mode (model.eval() or module.eval()), or make the "
        "operation deterministic while hesskit evaluates the model"
    )


def _calling_module(model: nn.Module) -> str:
    """' in module NAME (Type), file:line' for the innermost module of ``model`` on the
    Python stack, or ''."""
    names = {id(m): name for name, m in model.named_modules()}
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        owner = frame.f_locals.get(code.co_varnames[0]) if code.co_argcount else None
        if owner is not None and id(owner) in names:
            name = names[id(owner)] or "model"
            return (f" in module {name!r} ({type(owner).__name__}, "
                    f"{code.co_filename}:{frame.f_lineno})")
        frame = frame.f_back
    return ""
