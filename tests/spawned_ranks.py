"""Gloo ranks for the data-parallel tests: a free port, and worker processes spawned beside
the single-process reference, joined within a deadline and never left running."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the rendezvous of one test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def spawned_ranks(worker: Callable, args: tuple, nprocs: int, deadline_s: float) -> Iterator[None]:
    """Spawn ``nprocs`` processes running ``worker(rank, *args)``; the body runs meanwhile
    (the single-process reference), then the ranks are joined. Fails the test when they do
    not finish within ``deadline_s`` of the body's end; kills any still alive."""
    context = mp.start_processes(worker, args=args, nprocs=nprocs, join=False,
                                 start_method="spawn")
    try:
        yield
        deadline = time.monotonic() + deadline_s
        while not context.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail(f"the {nprocs} ranks did not finish within {deadline_s} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join(5)
