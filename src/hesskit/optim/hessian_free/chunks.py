"""Curvature chunks: which data Hessian-free's curvature products (and its ρ) see each step.

Martens' released code (HFDemo ``nnet_train_2.m``, the ``numchunks`` argument documented in
its header and ``targetchunk = mod(epoch-1, numchunks)+1`` at line 940) partitions the
(once shuffled) training set into ``numchunks`` equal chunks and, at step k, builds the
curvature on chunk (k − 1) mod numchunks: each chunk is used once every ``numchunks`` steps
and the curvature sees all the data in ``numchunks`` steps. ``numchunks`` is 4 for CURVES
and 8 for MNIST in his demo (``nnet_demo_2.m``). The gradient, the backtracking and the line
search use the full training set; the reduction ratio ρ uses the curvature chunk (lines
1340–1350).

:class:`RoundRobinChunks` is that schedule; :class:`CurvatureChunk` is what Hessian-free's
``curvature`` callable returns to give ρ its numerator on the same chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from hesskit.distributed import all_reduce_sum
from hesskit.errors import InvalidArgumentError
from hesskit.operators.base import CurvatureOperator
from hesskit.problem import Problem


@dataclass(frozen=True)
class CurvatureChunk:
    """The curvature of one step and the objective on the data it was built on.

    Attributes:
        operator: B (Gauss-Newton G by default) at the current θ on the chunk, WITHOUT the
            weight decay the optimizer itself applies (its ``weight_decay`` argument).
        loss: the objective on the same chunk at the current parameters, without
            ``backward()`` (the optimizer calls it under ``torch.no_grad()``), WITHOUT the
            optimizer's weight decay (the optimizer adds it). Data parallel: the value over
            all ranks, identical on every rank (``Problem.total_loss`` of a distributed
            ``Problem`` is). ``None``: ρ's numerator falls back to the gradient batch.
    """

    operator: CurvatureOperator
    loss: Callable[[], Tensor | float] | None = None


class RoundRobinChunks:
    """A shuffled partition of n cases into ``numchunks`` chunks, visited in turn.

    Chunk sizes differ by at most one (``torch.tensor_split``); Martens' code requires
    ``numchunks`` to divide n (``nnet_train_2.m``: "Number of chunks doesn't divide number
    of training cases!"), where they are equal.

    Args:
        num_data: n, the number of cases to partition.
        numchunks: how many chunks (Martens: CURVES 4, MNIST 8).
        seed: seeds the one shuffle (a private generator; torch's global one is untouched).
            Martens shuffles the data once before training (``nnet_demo_2.m``: ``randperm``).

    >>> chunks = RoundRobinChunks(6, 3, seed=0)
    >>> sorted(torch.cat([chunks.indices(step) for step in (1, 2, 3)]).tolist())
    [0, 1, 2, 3, 4, 5]
    >>> torch.equal(chunks.indices(1), chunks.indices(4))
    True
    """

    def __init__(self, num_data: int, numchunks: int, *, seed: int = 0) -> None:
        if not 1 <= numchunks <= num_data:
            raise InvalidArgumentError(
                f"numchunks must lie between 1 and the number of cases ({num_data}), got "
                f"{numchunks}; Martens uses 4 for CURVES and 8 for MNIST"
            )
        self.num_data, self.numchunks, self.seed = num_data, numchunks, seed
        order = torch.randperm(num_data, generator=torch.Generator().manual_seed(seed))
        self.partition: tuple[Tensor, ...] = tuple(torch.tensor_split(order, numchunks))

    def index(self, step: int) -> int:
        """The chunk of optimizer step ``step`` (counted from 1): (step − 1) mod numchunks,
        HFDemo's ``targetchunk`` (``nnet_train_2.m`` line 940, there 1-based)."""
        if step < 1:
            raise InvalidArgumentError(f"steps are counted from 1, got {step}")
        return (step - 1) % self.numchunks

    def indices(self, step: int) -> Tensor:
        """The case indices of step ``step``'s chunk (a 1-D int64 tensor)."""
        return self.partition[self.index(step)]


def chunk_loss(problem: Problem) -> Callable[[], Tensor]:
    """The function θ ↦ L(θ) of ``problem`` at the model's current parameters, for
    :attr:`CurvatureChunk.loss`: over all ranks of a distributed problem (one all-reduce),
    and without ``Problem.total_loss``'s NaN check on the parameters (a trial point may be
    non-finite; the optimizer rejects it itself)."""

    def loss() -> Tensor:
        value = problem.local_loss()
        if not problem.distributed:
            return value
        return all_reduce_sum(value.detach().reshape(1)).reshape(())

    return loss
