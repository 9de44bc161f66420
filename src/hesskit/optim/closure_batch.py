"""The mini-batch a training closure evaluates, read by watching the closure run.

``torch.optim``'s contract gives an optimizer a closure: it clears the gradients, computes
the loss, calls ``backward()`` and returns the loss. Optimizers that need more than the
gradient (K-FAC's factors and curvature products, Sophia's Gauss-Newton-Bartlett estimate,
Hessian-free's Gauss-Newton products, damped Newton's Hessian) need the batch as well.
:class:`ClosureBatch` reads it from the closure itself, so no ``set_batch`` call is needed:
while the closure runs, a forward pre-hook on the model records the arguments of its call
and a forward pre-hook on the loss module records its target.

What is proved before the batch is used, on every step: the closure called the model
exactly once and the loss exactly once, and the loss received the model's output itself
(or its ``logits``). Then ``Problem(model, loss, (inputs, targets))`` evaluates the same
function L(θ) = loss(model(inputs), targets) as the closure (up to dropout, which hesskit's
evaluations run as in eval mode: ``Problem``'s docstring). Anything else, for example a
closure that reshapes the logits before the loss or calls the model twice, is refused with
one clear line naming what to change; it is never guessed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from hesskit.errors import InvalidArgumentError
from hesskit.problem import Problem
from hesskit.tensor_tree import Tree, network_output


class ClosureBatch:
    """Records the ``(inputs, targets)`` of a closure's one model call and one loss call.

    Args:
        model: the network whose call is watched (a forward pre-hook on its root module).
        loss: the loss module the closure calls as ``loss(output, targets)``: a hesskit
            ``Loss`` or a torch loss module (an ``nn.Module``, so that its call can be
            watched).
        owner: the optimizer's name, for messages.

    The calls are checked when the batch is first read (:attr:`batch`), not when the
    closure returns: a step whose loss is not finite is rejected before its batch is
    needed, whatever the closure did.
    """

    def __init__(self, model: nn.Module, loss: nn.Module, owner: str) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidArgumentError(
                f"{owner} needs model= to be the torch.nn.Module the closure calls, got "
                f"{type(model).__name__}"
            )
        if not isinstance(loss, nn.Module):
            raise InvalidArgumentError(
                f"{owner} reads the batch from the closure's call of loss=, so loss must be "
                f"an nn.Module (a hesskit loss or a torch loss module such as "
                f"nn.CrossEntropyLoss()), got {type(loss).__name__}"
            )
        self.model, self.loss, self.owner = model, loss, owner
        self._batch: tuple[Tree, Tree] | None = None
        self._error: InvalidArgumentError | None = None

    @property
    def batch(self) -> tuple[Tree, Tree] | None:
        """The last closure's ``(inputs, targets)`` (None before the first closure).

        Raises:
            InvalidArgumentError: that closure did not call the model and the loss exactly
                once each, or passed the loss something other than the model's output.
        """
        if self._error is not None:
            raise self._error
        return self._batch

    def run(self, closure: Callable[[], Tensor]) -> Tensor:
        """Run ``closure`` (gradients enabled) and record its calls; returns its loss."""
        calls: list[tuple[tuple, dict]] = []
        outputs: list[Any] = []
        loss_calls: list[tuple[tuple, dict]] = []

        def model_pre(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            calls.append((args, kwargs))

        def model_post(_module: nn.Module, _args: tuple, _kwargs: dict, output: Any) -> None:
            outputs.append(output)

        def loss_pre(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            loss_calls.append((args, kwargs))

        handles = [
            self.model.register_forward_pre_hook(model_pre, with_kwargs=True),
            self.model.register_forward_hook(model_post, with_kwargs=True),
            self.loss.register_forward_pre_hook(loss_pre, with_kwargs=True),
        ]
        try:
            with torch.enable_grad():
                value = closure()
        finally:
            for handle in handles:
                handle.remove()
        try:  # read now (no reference to the output and its graph is kept), raise later
            self._batch, self._error = self._read(calls, outputs, loss_calls), None
        except InvalidArgumentError as error:
            self._batch, self._error = None, error
        return value

    def problem(self, params: list[str], **options: Any) -> Problem:
        """The ``Problem`` of the last closure's batch over the parameters ``params``."""
        if self.batch is None:
            raise InvalidArgumentError(
                f"{self.owner} has no batch yet: call optimizer.step(closure) with a closure "
                "that computes loss(model(inputs), targets)"
            )
        return Problem(self.model, self.loss, self.batch, params=params, **options)

    def _read(self, calls: list, outputs: list, loss_calls: list) -> tuple[Tree, Tree]:
        remedy = ("the closure must compute loss(model(inputs), targets) once per step "
                  "(loss= and model= as given to the optimizer)")
        if len(calls) != 1 or len(outputs) != 1:
            raise InvalidArgumentError(
                f"{self.owner} reads the batch from the closure, which called the model "
                f"{len(calls)} times; {remedy}"
            )
        if len(loss_calls) != 1:
            raise InvalidArgumentError(
                f"{self.owner} reads the batch from the closure, which called loss "
                f"{len(loss_calls)} times; {remedy}"
            )
        (args, kwargs), output = calls[0], outputs[0]
        loss_args, loss_kwargs = loss_calls[0]
        given = [*loss_args, *loss_kwargs.values()]
        if len(given) != 2:
            raise InvalidArgumentError(
                f"{self.owner}: the closure called loss with {len(given)} arguments; {remedy}"
            )
        received, targets = given
        if received is not output and received is not _logits(output):
            raise InvalidArgumentError(
                f"{self.owner}: the closure passed the loss something other than the model's "
                "output (or its logits), for example a reshaped view; its curvature is that "
                "of loss(model(inputs), targets), so move the reshaping into the model or "
                "use a hesskit loss that takes the output as it is (e.g. "
                "hesskit.losses.CausalLMLoss for language models)"
            )
        return _detached(self._inputs(args, kwargs)), _detached(targets)

    def _inputs(self, args: tuple, kwargs: dict) -> Tree:
        """The inputs as a ``Problem`` passes them back: one tensor, a tuple of positional
        arguments, or a dict of keyword arguments (``None`` keywords dropped)."""
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if not kwargs:
            return args[0] if len(args) == 1 else tuple(args)
        if args:
            try:
                bound = inspect.signature(self.model.forward).bind_partial(*args, **kwargs)
            except (TypeError, ValueError) as error:
                raise InvalidArgumentError(
                    f"{self.owner} cannot name the model's positional arguments ({error}); "
                    "call the model with keyword arguments only, or positional only"
                ) from None
            kwargs = {k: v for k, v in bound.arguments.items() if v is not None}
        bad = [k for k, v in kwargs.items() if not isinstance(v, Tensor)]
        if bad:
            raise InvalidArgumentError(
                f"{self.owner}: the closure called the model with non-tensor keyword "
                f"arguments ({', '.join(bad)}); hesskit passes the batch's tensors back to "
                "the model, so set such options in the model's config instead"
            )
        return kwargs


def _logits(output: Any) -> Any:
    try:
        return network_output(output)
    except InvalidArgumentError:
        return None


def _detached(tree: Any) -> Any:
    if isinstance(tree, Tensor):
        return tree.detach()
    if isinstance(tree, tuple | list):
        return type(tree)(_detached(t) for t in tree)
    if isinstance(tree, dict):
        return {k: _detached(v) for k, v in tree.items()}
    return tree


def parameter_names(model: nn.Module, params: list[Tensor], owner: str) -> list[str]:
    """The names in ``model`` of the optimizer's parameters, in the optimizer's order.

    Raises:
        InvalidArgumentError: a parameter is not one of ``model``'s.
    """
    by_id = {id(t): name for name, t in model.named_parameters()}
    names = [by_id.get(id(p)) for p in params]
    if None in names:
        raise InvalidArgumentError(
            f"every parameter given to {owner} must be a parameter of model=; pass "
            "model.parameters() (or groups of them)"
        )
    return names  # type: ignore[return-value]


def watch_closure(
    model: nn.Module | None, loss: nn.Module | None, owner: str, needs: str
) -> ClosureBatch | None:
    """A :class:`ClosureBatch` when both ``model`` and ``loss`` are given, None when
    neither is (the optimizer is then given ``needs`` another way).

    Raises:
        InvalidArgumentError: only one of them is given.
    """
    if model is None and loss is None:
        return None
    if model is None or loss is None:
        raise InvalidArgumentError(
            f"{owner} takes model= and loss= together (the batch is read from the "
            f"closure's calls of both), or {needs}"
        )
    return ClosureBatch(model, loss, owner)


def closure_or_given(
    model: nn.Module | None, loss: nn.Module | None, given: Any, params: list[Tensor],
    owner: str, needs: str, build: Callable[[Problem], Any],
) -> tuple[ClosureBatch | None, Any]:
    """What an optimizer's curvature comes from: ``given`` as it is (a callable or a
    ``Problem``), or, given ``model=`` and ``loss=``, a function returning ``build`` of the
    last closure's batch at the current parameters. Returns ``(watch, source)``; ``watch``
    is the :class:`ClosureBatch` to run the closure through (None for ``given``).

    Raises:
        InvalidArgumentError: both or neither, or only one of ``model`` and ``loss``.
    """
    watch = watch_closure(model, loss, owner, needs)
    if (watch is None) == (given is None):
        raise InvalidArgumentError(
            f"{owner} needs model= and loss= (the curvature of the closure's batch) or "
            f"{needs}, not both"
        )
    if watch is None:
        return None, given
    names = parameter_names(watch.model, params, owner)
    return watch, lambda: build(watch.problem(names))
