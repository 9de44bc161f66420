"""Inputs and targets of any common form: a tensor, a tuple or list of them, or a dict.

A batch is ``(inputs, targets)``. Each side is a *tree*: a tensor, or a tuple / list / dict
whose entries are trees (tensors nested to any depth); entries that are not tensors (None,
numbers, strings) ride along untouched. The samples lie along the first dimension of every
tensor, so every tensor of a batch must have the same length n there.

How the model is called (:func:`model_arguments`):

* a tensor X                 → ``model(X)``
* a tuple or list (X1, X2)   → ``model(X1, X2)`` (positional arguments)
* a dict whose keys all name parameters of ``model.forward``
  ({"input_ids": ..., "attention_mask": ...} for a Hugging Face model)
                             → ``model(input_ids=..., attention_mask=...)`` (keyword arguments)
* any other dict {"a": Xa, ...} → ``model({"a": Xa, ...})`` (ONE argument, as torchvision
  detection models take it); a namedtuple is likewise one argument

What is taken as the network output z (:func:`network_output`): a tensor as it is; an
object with a ``logits`` attribute or key (a Hugging Face ``ModelOutput``, a dataclass, a
dict) its logits; other trees (a tuple of tensors) as they are. A 0-d tensor (a model that
returns its own loss) is refused: curvature needs the outputs per sample and the loss apart.

Targets are passed to the loss as they are. Every helper here costs one Python visit per
entry and no copy of the data (``select`` and ``to_device`` make views or device copies
only of the tensors).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from hesskit.errors import InvalidArgumentError

Tree = Any
"""A tensor, or a tuple / list / dict of trees (other leaves are carried along unchanged)."""


def named_tensors(tree: Tree, name: str = "inputs") -> Iterator[tuple[str, Tensor]]:
    """The tensors of ``tree`` in order, each with its path: ``inputs``, ``inputs[1]``,
    ``inputs['x2']``, ``inputs['pair'][0]``."""
    if isinstance(tree, Tensor):
        yield name, tree
    elif isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from named_tensors(value, f"{name}[{key!r}]")
    elif isinstance(tree, (tuple, list)):
        for position, value in enumerate(tree):
            yield from named_tensors(value, f"{name}[{position}]")


def map_tensors(tree: Tree, fn: Callable[[Tensor], Tensor]) -> Tree:
    """``tree`` with ``fn`` applied to every tensor; containers keep their type (a
    namedtuple stays a namedtuple, a dict keeps its key order)."""
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, Mapping):
        return type(tree)({key: map_tensors(value, fn) for key, value in tree.items()})
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # namedtuple
        return type(tree)(*(map_tensors(value, fn) for value in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(map_tensors(value, fn) for value in tree)
    return tree


def num_samples(tree: Tree, name: str = "inputs") -> int:
    """n, the common length of the first dimension of every tensor in ``tree``.

    Raises:
        InvalidArgumentError: ``tree`` holds no tensor, a 0-d tensor, or tensors of
            different lengths (the message names the first offending entry and its shape).
    """
    first: tuple[str, Tensor] | None = None
    for path, tensor in named_tensors(tree, name):
        if tensor.ndim == 0:
            raise InvalidArgumentError(
                f"{path} is a 0-d tensor; every tensor of a batch holds its samples along "
                "dimension 0, so pass it with shape [n, ...]"
            )
        if first is None:
            first = (path, tensor)
        elif tensor.shape[0] != first[1].shape[0]:
            raise InvalidArgumentError(
                f"{path} has shape {tuple(tensor.shape)}, {tensor.shape[0]} samples, but "
                f"{first[0]} has shape {tuple(first[1].shape)}, {first[1].shape[0]} samples; "
                "every tensor of a batch needs one entry per sample along dimension 0"
            )
    if first is None:
        raise InvalidArgumentError(
            f"{name} holds no tensor (got {type(tree).__name__}); pass a tensor, or a tuple, "
            "list or dict of tensors"
        )
    return int(first[1].shape[0])


def select(tree: Tree, index: Any) -> Tree:
    """``tree`` with every tensor indexed along the sample dimension: ``t[index]``.

    ``index`` is anything a tensor takes: an int (one sample, its dimension dropped, as
    ``torch.func.vmap`` sees it), a slice (a sub-batch), an index tensor, or ``None``
    (a new leading dimension: one sample back to a batch of one).
    """
    return map_tensors(tree, lambda t: t[index])


def to_device(tree: Tree, device: torch.device | str) -> Tree:
    """``tree`` with every tensor on ``device`` (no copy for tensors already there)."""
    return map_tensors(tree, lambda t: t.to(device))


def model_arguments(inputs: Tree, model: nn.Module | None = None) -> tuple[tuple, dict]:
    """``(args, kwargs)`` with which ``model(*args, **kwargs)`` receives ``inputs`` (see the
    module docstring): ``((X,), {})``, ``((X1, X2), {})``, ``((), {"input_ids": ...})`` or
    ``(({...},), {})``. Without ``model`` a dict is one argument."""
    if isinstance(inputs, (tuple, list)) and not hasattr(inputs, "_fields"):
        return tuple(inputs), {}
    if isinstance(inputs, Mapping) and model is not None and _names_parameters(model, inputs):
        return (), dict(inputs)
    return (inputs,), {}


def _names_parameters(model: nn.Module, inputs: Mapping) -> bool:
    """Every key of ``inputs`` is the name of a parameter of ``model.forward``."""
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return False
    named = {
        name for name, p in signature.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    return bool(inputs) and all(isinstance(key, str) and key in named for key in inputs)


def network_output(result: Any) -> Any:
    """The network output z of one forward pass's ``result`` (see the module docstring).

    Raises:
        InvalidArgumentError: the model returned a 0-d tensor, or an output whose
            ``logits`` is missing.
    """
    if not isinstance(result, Tensor):
        logits = result.get("logits") if isinstance(result, Mapping) else None
        logits = getattr(result, "logits", logits)
        if logits is not None or hasattr(result, "logits"):
            result = logits
            if result is None:
                raise InvalidArgumentError(
                    "the model returned an output whose logits is None; hesskit takes the "
                    "logits as the network output, so return them"
                )
    if isinstance(result, Tensor) and result.ndim == 0:
        raise InvalidArgumentError(
            "the model returned a 0-d tensor (a loss?), but curvature needs the network "
            "outputs with one row per sample and the loss apart: return the outputs (for a "
            "Hugging Face model, do not pass labels; hesskit reads .logits) and give the "
            "loss to Problem (e.g. hesskit.losses.CausalLMLoss())"
        )
    return result


def call_model(model: nn.Module, inputs: Tree) -> Any:
    """The network output of ``model`` on one batch's ``inputs`` in their form (a plain
    call: hooks, training-mode updates and all; hesskit's own passes use
    ``Problem.output``)."""
    args, kwargs = model_arguments(inputs, model)
    return network_output(model(*args, **kwargs))
