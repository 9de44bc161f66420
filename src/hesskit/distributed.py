"""Sums over ``torch.distributed`` ranks, for data-parallel curvature and Hessian-free.

The gradient, every curvature-vector product and the loss are sums over samples, so with the
data sharded across ranks each rank computes its shard's part and one all-reduce adds them.
Everything else (conjugate gradient, Lanczos, random probes in parameter space) is computed
identically on every rank from identical inputs, so the ranks never drift apart.

When no process group is initialised (or it has one rank) every function here is a no-op,
so single-process code pays nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """A process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all ranks, in place, with one collective; returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_sums(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Sum several tensors over all ranks with ONE all-reduce of a flattened buffer.

    Returns new tensors shaped like the inputs (the inputs are left unchanged).
    """
    if not is_distributed():
        return list(tensors)
    flat = torch.cat([t.reshape(-1) for t in tensors])
    all_reduce_sum(flat)
    return [
        piece.reshape(t.shape)
        for piece, t in zip(torch.split(flat, [t.numel() for t in tensors]), tensors, strict=True)
    ]


def sum_over_ranks(value: float | int) -> float | int:
    """A Python number summed over all ranks (in float64, exact for counts below 2⁵³)."""
    if not is_distributed():
        return value
    total = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    all_reduce_sum(total)
    result = total.item()
    return int(result) if isinstance(value, int) else result


def shard_range(num_items: int, rank_index: int | None = None, ranks: int | None = None) -> range:
    """The contiguous, deterministic share of ``range(num_items)`` that a rank reads.

    The first ``num_items % ranks`` ranks get one item more; concatenating the shards of
    ranks 0, 1, … gives ``range(num_items)`` in order.
    """
    ranks = world_size() if ranks is None else ranks
    rank_index = rank() if rank_index is None else rank_index
    base, extra = divmod(num_items, ranks)
    start = rank_index * base + min(rank_index, extra)
    return range(start, start + base + (1 if rank_index < extra else 0))


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo reduces CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
