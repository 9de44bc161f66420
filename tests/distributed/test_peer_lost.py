"""A lost peer under ``torch.distributed`` (gloo): the survivor stops with one line.

Two processes run ``hesskit train`` data parallel (Hessian-free, a tiny model, collective
timeout 3 s). Once rank 0 has logged a few iterations, rank 1 is stopped (SIGSTOP: it hangs
without closing its connections) or killed (SIGKILL: a crash). Rank 0 must then end by
itself with exit code 2 and exactly one line on stderr naming rank 1 and saying which of
the two happened, not "a bug in hesskit", and never wait for torch's 30-minute default.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from user_models import TANH_MLP

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

MODEL = TANH_MLP

TIMEOUT_S = 3
BOUND_S = 60
"""The survivor must be gone within this long after the signal (it needs the 3 s timeout
and the interpreter's shutdown); without the fix it waits 30 minutes."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_ranks(tmp_path: Path) -> tuple[list[subprocess.Popen], Path]:
    model = tmp_path / "peer_model.py"
    model.write_text(textwrap.dedent(MODEL))
    out, port = tmp_path / "out", free_port()
    processes = []
    for rank in range(2):
        env = {**os.environ, "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        env.pop("HESSKIT_TRACEBACK", None)
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "hesskit", "train", "--model", f"{model}:make",
             "--optimizer", "hf", "--time-limit", "120", "--batch-size", "16",
             "--checkpoint-every", "1", "--no-progress", "--collective-timeout",
             str(TIMEOUT_S), "--out", str(out)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return processes, out / "log.jsonl"


def wait_for_iterations(log: Path, processes: list[subprocess.Popen], count: int) -> None:
    deadline = time.monotonic() + BOUND_S
    while not (log.is_file() and len(log.read_text().splitlines()) > count):
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            errors = [p.communicate(timeout=5)[1] if p.poll() is not None else "" for p in
                      processes]
            pytest.fail(f"the ranks did not start training: {errors}")
        time.sleep(0.05)


@pytest.mark.parametrize(("how", "said"), [(signal.SIGSTOP, "the peer hung or was stopped"),
                                           (signal.SIGKILL, "crashed or was killed")],
                         ids=["stopped", "killed"])
def test_the_survivor_names_the_lost_rank_in_one_line_and_stops(how, said, tmp_path):
    processes, log = start_ranks(tmp_path)
    try:
        wait_for_iterations(log, processes, 3)
        os.kill(processes[1].pid, how)
        _, err = processes[0].communicate(timeout=BOUND_S)
    finally:
        for process in processes:
            process.kill()
            process.communicate()
    lines = err.strip().splitlines()
    assert processes[0].returncode == 2, err
    assert len(lines) == 1, err
    assert "rank 0 lost rank 1" in lines[0] and said in lines[0], err
    assert "--resume" in lines[0] and "bug in hesskit" not in err
    if how == signal.SIGSTOP:
        assert f"for {TIMEOUT_S} s" in lines[0]


def test_a_rank_that_never_arrives_is_one_line_after_the_timeout(monkeypatch):
    import torch.distributed as dist

    from hesskit.distributed import init_from_environment
    from hesskit.errors import PeerLostError

    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(PeerLostError, match=r"did not form within 1 s .*1/2 clients joined"):
        init_from_environment("cpu", timeout_s=1)
    assert not dist.is_initialized()
