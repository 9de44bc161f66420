"""CurvatureMonitor data parallel: 2 gloo ranks, each with its shard of the measurement
batch, against one process with the concatenated batch.

Claims: both ranks record the same sharpness and preconditioned sharpness of Adam (its
state the same on both ranks, as under DDP), equal to the single-process values on the
whole batch; only rank 0 writes its log. The ranks are killed after a deadline, so a hang
fails instead of blocking.
"""

from __future__ import annotations

import json
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from hesskit.distributed import shard_of
from hesskit.monitor import CurvatureMonitor
from spawned_ranks import free_port, spawned_ranks

RANKS = 2
DEADLINE_S = 120
NUM_SAMPLES = 9  # odd: the shards hold 5 and 4 samples
LOSS = nn.MSELoss()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(NUM_SAMPLES, 3, generator=g, dtype=torch.float64),
            torch.randn(NUM_SAMPLES, 2, generator=g, dtype=torch.float64))


def _measure(batch, log: Path | None) -> list[dict]:
    """Two measurements (cold, then warm) between Adam steps on the whole data; the Adam
    steps use no collective, so every rank's state is the same, as under DDP."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    X, Y = _data()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, eps=0.05)
    monitor = CurvatureMonitor(model, LOSS, batch, every=1, tol=1e-12, log=log)
    for _ in range(2):
        optimizer.zero_grad()
        LOSS(model(X), Y).backward()
        optimizer.step()
        monitor.step(optimizer)
    return monitor.records


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=RANKS, timeout=timedelta(seconds=DEADLINE_S))
    try:
        X, Y = _data()
        records = _measure((shard_of(X), shard_of(Y)), Path(out_dir) / f"log{rank}.jsonl")
        (Path(out_dir) / f"records{rank}.json").write_text(json.dumps(records))
    finally:
        dist.destroy_process_group()


def test_every_rank_records_the_single_process_values_and_only_rank_0_logs():
    with tempfile.TemporaryDirectory() as out_dir:
        with spawned_ranks(_worker, (free_port(), out_dir), RANKS, DEADLINE_S):
            single = _measure(_data(), None)
        out = Path(out_dir)
        ranks = [json.loads((out / f"records{r}.json").read_text()) for r in range(RANKS)]
        logged = [json.loads(line) for line in (out / "log0.jsonl").read_text().splitlines()]
        assert not (out / "log1.jsonl").exists()
    assert logged == ranks[0]
    first, second = ranks
    for ours, theirs, reference in zip(first, second, single, strict=True):
        assert ours["eigenvalues"] == theirs["eigenvalues"]
        assert ours["preconditioned_sharpness"] == theirs["preconditioned_sharpness"]
        assert ours["eigenvalues"][0] == pytest.approx(reference["eigenvalues"][0], rel=1e-9)
        assert ours["preconditioned_sharpness"] == pytest.approx(
            reference["preconditioned_sharpness"], rel=1e-9)
    assert [r["preconditioned"]["warm"] for r in first] == [False, True]
