"""Data-parallel Hessian-free on torch.distributed: time per HF iteration with 1 and 2 processes.

Martens' MNIST autoencoder (784-1000-500-250-30 and mirrored decoder, 2.8 M parameters;
the synthetic CURVES autoencoder if the MNIST files are missing) takes a few Hessian-free
iterations on a FIXED gradient batch (default 2000 cases) with a curvature batch of its
first 500 cases, the Martens preconditioner, and exactly ``--cg-iterations`` CG iterations
(the progress rule off, so that every run does the same work). With P processes (gloo,
CPU) each takes its ``shard_range`` of both batches; every process uses ONE thread
(``torch.set_num_threads(1)``), so two processes use the machine's two cores where the
single process uses one: the speed-up is per core added, not per machine.

Reported per process count: seconds per HF iteration (median over the timed iterations,
after one warm-up) and the share of it spent inside hesskit's collectives (all-reduce of
the [loss, gradient], of every product, of the preconditioner diagonal and of each trial
loss, timed by ``hesskit.distributed.collective_timer``). A collective's time includes
waiting for the slower rank, so it also measures load imbalance. The machine may be shared
with other jobs; compare the two rows of one run, not runs on different days.

    .venv/bin/python benchmarks/distributed.py   # writes benchmarks/results/distributed.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hesskit.distributed import collective_timer, rank, sample_fraction, shard_of
from hesskit.operators import damped, gauss_newton_operator
from hesskit.optim import HessianFree
from hesskit.optim.hessian_free.optimizer import CGSettings
from hesskit.optim.hessian_free.preconditioners import martens_preconditioner
from hesskit.problem import Problem
from hesskit.training.bench import environment
from martens_problem import load_problem

RESULTS = Path(__file__).resolve().parent / "results" / "distributed.json"


def hf_iterations(settings: dict) -> dict:
    """Run the timed HF iterations in this process (rank-aware); returns rank 0's record."""
    problem = load_problem()
    model, loss_fn, wd = problem.model, problem.loss, problem.weight_decay
    X = problem.train[0][: settings["gradient_cases"]]
    Xl = shard_of(X)
    Xc = shard_of(X[: settings["curvature_cases"]])
    share = sample_fraction(len(Xl))

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = share * loss_fn(model(Xl), Xl)
        if rank() == 0:
            value = value + problem.penalty()
        value.backward()
        return value

    def curvature():
        return damped(gauss_newton_operator(Problem(model, loss_fn, (Xc, Xc))), wd)

    cg = CGSettings(max_iterations=settings["cg_iterations"], progress_tol=0.0)
    optimizer = HessianFree(model.parameters(), curvature=curvature, cg=cg,
                            preconditioner=martens_preconditioner(Problem(model, loss_fn,
                                                                          (Xl, Xl))))
    seconds, communication, calls, floats, losses = [], [], [], [], []
    for _ in range(settings["iterations"] + 1):  # the first is a warm-up
        with collective_timer() as timer:
            started = time.perf_counter()
            losses.append(float(optimizer.step(closure)))
            seconds.append(time.perf_counter() - started)
        communication.append(timer.seconds)
        calls.append(timer.calls)
        floats.append(timer.floats)
    timed = slice(1, None)
    per_iteration = statistics.median(seconds[timed])
    comm = statistics.median(communication[timed])
    return {
        "problem": problem.name,
        "num_params": sum(p.numel() for p in model.parameters()),
        "seconds_per_iteration": per_iteration,
        "communication_seconds_per_iteration": comm,
        "communication_share": comm / per_iteration,
        "collectives_per_iteration": statistics.median(calls[timed]),
        "floats_reduced_per_iteration": statistics.median(floats[timed]),
        "all_iteration_seconds": seconds,
        "losses": losses,
        "cg_iterations": optimizer.hf_state["cg_iterations"],
    }


def _worker(local_rank: int, processes: int, port: int, settings: dict, out: str) -> None:
    torch.set_num_threads(1)
    if processes > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                rank=local_rank, world_size=processes,
                                timeout=timedelta(seconds=600))
    try:
        record = hf_iterations(settings)
        record["processes"] = processes
        Path(out, f"rank{local_rank}.json").write_text(json.dumps(record))
    finally:
        if processes > 1:
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(processes: int, settings: dict) -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_worker, args=(processes, _free_port(), settings, out),
                           nprocs=processes, start_method="spawn")
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(processes)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", default="1,2", help="process counts to compare")
    parser.add_argument("--iterations", type=int, default=3, help="timed HF iterations")
    parser.add_argument("--gradient-cases", type=int, default=2000)
    parser.add_argument("--curvature-cases", type=int, default=500)
    parser.add_argument("--cg-iterations", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    settings = {"iterations": args.iterations, "gradient_cases": args.gradient_cases,
                "curvature_cases": args.curvature_cases, "cg_iterations": args.cg_iterations}
    rows = []
    for processes in (int(p) for p in args.processes.split(",")):
        ranks = run(processes, settings)
        row = dict(ranks[0])
        row["communication_share_per_rank"] = [r["communication_share"] for r in ranks]
        rows.append(row)
        print(f"{processes} process(es): {row['seconds_per_iteration']:.3f} s per HF iteration, "
              f"{100 * row['communication_share']:.1f}% in collectives "
              f"({row['collectives_per_iteration']:.0f} all-reduces), "
              f"losses {', '.join(f'{v:.4f}' for v in row['losses'])}", flush=True)
    base = rows[0]["seconds_per_iteration"]
    for row in rows:
        row["speedup_vs_first"] = base / row["seconds_per_iteration"]
    record = {
        "benchmark": "distributed",
        "description": __doc__.split("\n\n")[1].replace("\n", " "),
        "settings": settings,
        "threads_per_process": 1,
        "backend": "gloo (CPU, 127.0.0.1)",
        "rows": rows,
        "environment": environment(),
        "load_average_1_5_15_min_at_end": list(os.getloadavg()),
        "note": "the machine may be shared with other jobs while this runs",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
