"""``hesskit train --model module:function``: the user's (model, loss, data) as a training problem.

``train`` samples mini-batches by index, so the data is held in memory: one batch
``(inputs, targets)`` is used as it is, a list of batches (or a ``DataLoader``) is read once
and concatenated along the sample dimension. There is no separate test set: the reported
"train error" and "test error" are both the loss on all of the data (of the deterministic
network: dropout off, as everywhere in hesskit), and there is no weight cost. This module
only adapts; the training itself is :func:`hesskit.training.loop.train`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hesskit.batch_source import as_pair, is_single_batch
from hesskit.cli.model_spec import load_user_model
from hesskit.errors import InvalidArgumentError
from hesskit.functional_view import functional_mode
from hesskit.tensor_tree import Tree, call_model, num_samples


@dataclass
class UserTrainingProblem:
    """What ``hesskit.training.loop.train`` needs, from the user's (model, loss, data)."""

    name: str
    model: nn.Module
    loss: Any
    train: tuple[Tree, Tree]
    test: tuple[Tree, Tree]
    weight_decay: float = 0.0
    error_name: str = "loss on all the data"

    def error_fn(self, model: nn.Module, inputs: Tree, targets: Tree) -> float:
        """The loss on ``(inputs, targets)``: the error a user model is reported by, of the
        deterministic network (:func:`hesskit.functional_view.functional_mode`: dropout
        off, batch statistics without updating a buffer), so the report is reproducible
        and changes no state of the model."""
        with functional_mode(model):
            return float(self.loss(call_model(model, inputs), targets))


def user_training_problem(spec: str) -> UserTrainingProblem:
    """Load ``--model spec`` and hold its data in memory as one training set.

    Raises:
        InvalidArgumentError: the data is neither a batch nor batches of tensors.
        UserCodeError: the user's code raised.
    """
    model, loss, data = load_user_model(spec)
    batches = [data] if is_single_batch(data) else list(data)
    if not batches:
        raise InvalidArgumentError(f"--model {spec}: the data holds no batch")
    pairs = [as_pair(batch, position) for position, batch in enumerate(batches)]
    inputs = _concatenate([inputs for inputs, _ in pairs])
    targets = _concatenate([targets for _, targets in pairs])
    if num_samples(inputs) != num_samples(targets, "targets"):
        raise InvalidArgumentError(
            f"--model {spec}: the inputs hold {num_samples(inputs)} samples but the targets "
            f"{num_samples(targets, 'targets')}; give one target per sample"
        )
    return UserTrainingProblem(name=f"model {spec}", model=model, loss=loss,
                               train=(inputs, targets), test=(inputs, targets))


def _concatenate(trees: list[Tree]) -> Tree:
    """The trees joined along dimension 0, entry by entry (one tree returned as it is)."""
    first = trees[0]
    if len(trees) == 1:
        return first
    if isinstance(first, torch.Tensor):
        return torch.cat(trees)
    if isinstance(first, Mapping):
        return type(first)({key: _concatenate([tree[key] for tree in trees]) for key in first})
    if isinstance(first, (tuple, list)):
        return type(first)(_concatenate(list(parts)) for parts in zip(*trees, strict=True))
    return first
