"""Sums over ``torch.distributed`` ranks, for data-parallel curvature and Hessian-free.

The gradient, every curvature-vector product and the loss are sums over samples, so with the
data sharded across ranks each rank computes its shard's part and one all-reduce adds them.
Everything else (conjugate gradient, Lanczos, random probes in parameter space) is computed
identically on every rank from identical inputs, so the ranks never drift apart.

When no process group is initialised (or it has one rank) every function here is a no-op,
so single-process code pays nothing.

Every collective of hesskit goes through :func:`all_reduce_sum` (or :func:`broadcast_`),
so :func:`collective_timer` can measure the time spent communicating (benchmarks), and so
that a collective that fails because a peer hung (no progress within the process group's
timeout, :data:`DEFAULT_COLLECTIVE_TIMEOUT_S` unless set) or crashed becomes one
:class:`~hesskit.errors.PeerLostError` naming the lost rank (:mod:`hesskit.peer_loss`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from hesskit.errors import InvalidArgumentError, PeerLostError
from hesskit.peer_loss import is_peer_failure, peer_lost, set_collective_timeout


def is_distributed() -> bool:
    """A process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


@dataclass
class CollectiveTimer:
    """Wall time and count of the collectives run while it is active (see
    :func:`collective_timer`). The time includes waiting for the slowest rank to arrive."""

    seconds: float = 0.0
    calls: int = 0
    floats: int = 0


_active_timer: CollectiveTimer | None = None


@contextmanager
def collective_timer() -> Iterator[CollectiveTimer]:
    """Time every hesskit collective inside the ``with`` block (CUDA is synchronised first,
    so the time is the collective's, not the queued kernels')."""
    global _active_timer
    previous, _active_timer = _active_timer, CollectiveTimer()
    try:
        yield _active_timer
    finally:
        _active_timer = previous


def _run_collective(tensor: Tensor, collective) -> None:
    if _active_timer is None:
        _guarded(collective, tensor)
        return
    if tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)
    started = time.perf_counter()
    _guarded(collective, tensor)
    if tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)
    _active_timer.seconds += time.perf_counter() - started
    _active_timer.calls += 1
    _active_timer.floats += tensor.numel()


def _guarded(collective, tensor: Tensor) -> None:
    """Run ``collective``; a hung or crashed peer becomes one :class:`PeerLostError`."""
    try:
        collective(tensor)
    except RuntimeError as error:  # gloo and NCCL raise DistBackendError (a RuntimeError)
        if is_peer_failure(error):
            raise peer_lost(error) from error
        raise


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all ranks, in place, with one collective; returns it.

    ``tensor`` must be contiguous (on CUDA for NCCL, on the CPU for gloo).
    """
    if is_distributed():
        _run_collective(tensor, lambda t: dist.all_reduce(t, op=dist.ReduceOp.SUM))
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


def max_over_ranks(value: float) -> float:
    """The largest of the ranks' values of a Python float (e.g. elapsed seconds, so that
    every rank takes the same decision from a time budget)."""
    if not is_distributed():
        return value
    total = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    _run_collective(total, lambda t: dist.all_reduce(t, op=dist.ReduceOp.MAX))
    return total.item()


def counts_per_rank(count: int) -> list[int]:
    """Every rank's ``count``, in rank order, with one all-reduce (``[count]`` alone when
    not distributed). Gives the global sample count and each rank's global offset."""
    if not is_distributed():
        return [count]
    counts = torch.zeros(world_size(), dtype=torch.float64, device=_collective_device())
    counts[rank()] = count
    all_reduce_sum(counts)
    return [int(c) for c in counts.tolist()]


def broadcast_(tensors: Sequence[Tensor], source: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``source``'s values (one flattened broadcast);
    e.g. to start every replica from the same parameters."""
    if not is_distributed() or not tensors:
        return
    with torch.no_grad():
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        _run_collective(flat, lambda t: dist.broadcast(t, src=source))
        for t, piece in zip(tensors, torch.split(flat, [t.numel() for t in tensors]), strict=True):
            t.copy_(piece.view_as(t))


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


def shard_of(items: Tensor) -> Tensor:
    """This rank's contiguous :func:`shard_range` share of ``items`` (all of them alone)."""
    part = shard_range(len(items))
    return items[part.start : part.stop]


def sample_fraction(num_local: int) -> float:
    """n_r / Σ_r n_r: the weight of this rank's mean loss in the mean over all ranks' samples.

    A closure for a distributed :class:`~hesskit.optim.HessianFree` returns this rank's
    *share* of the objective, ``sample_fraction(len(X)) * loss_fn(model(X), y)`` for a loss
    that averages over samples (1.0 when not distributed). One collective per call.
    """
    counts = counts_per_rank(num_local)
    return num_local / sum(counts)


DEFAULT_COLLECTIVE_TIMEOUT_S = 120.0
"""How long a collective may make no progress before every surviving rank stops with one
line naming the lost peer (``hesskit train --collective-timeout``; torch's own default is
30 minutes)."""


def init_from_environment(device: torch.device | str = "cpu",
                          timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S) -> bool:
    """Initialise the default process group from ``torchrun``'s environment variables.

    Does nothing (returns False) when ``WORLD_SIZE`` is unset or 1, or a group already
    exists. The backend is NCCL for a CUDA ``device`` (each process then uses GPU
    ``LOCAL_RANK``) and gloo on the CPU. ``timeout_s`` bounds every collective (and the
    rendezvous): a peer that hangs, or never arrives, ends the survivors with a
    :class:`~hesskit.errors.PeerLostError` after that long.

    Raises:
        PeerLostError: not every rank joined within ``timeout_s``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidArgumentError(
                "--device cuda was asked for but no CUDA GPU is visible; use --device cpu"
            )
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    set_collective_timeout(timeout_s)
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as error:  # DistStoreError: a rank never arrived
        raise PeerLostError(
            f"the process group did not form within {timeout_s:g} s "
            f"({str(error).splitlines()[0][:200]}); start every rank with the same "
            "rendezvous, or raise --collective-timeout") from None
    return True


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo reduces CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
