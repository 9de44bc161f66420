"""Second-order against first-order optimizers on one small ReLU autoencoder.

Trains the same autoencoder (same initial weights, same data) with DampedNewton, HessianFree
(Martens 2010: GGN, CG, preconditioner, backtracking, LM damping, line search), RMSProp,
Adam and SGD with momentum, each for a fixed wall-clock budget, and records the full
training loss against wall-clock time and against epochs. One epoch = one pass of gradient
data: every closure call of a second-order optimizer on the full batch counts 1 (HF calls it
several times per step, for backtracking and its line search); a mini-batch step batch/n.

The model is small enough for DampedNewton's dense Hessian (N ≈ 1.2k parameters). The loss
is Martens' per-case objective (``sample_mean``: squared error summed over the 64 pixels,
averaged over cases). HF uses the full training subset for the gradient and a rotating
quarter of it for curvature products (the paper's separate batches, §4.3 / §8).

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/optimizers.py [--seconds 15]``.
Writes ``benchmarks/results/optimizers.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from hesskit.errors import HesskitError
from hesskit.losses import MSELoss
from hesskit.models import mlp
from hesskit.operators.gauss_newton import gauss_newton_operator
from hesskit.optim import (
    CGSettings,
    DampedNewton,
    HessianFree,
    LevenbergMarquardt,
    martens_preconditioner,
)
from hesskit.problem import Problem

SIZES = [64, 8, 4, 8, 64]
NUM_SAMPLES = 512
MINI_BATCH = 64
RESULTS = Path(__file__).parent / "results" / "optimizers.json"


def load_data(seed: int) -> tuple[torch.Tensor, str]:
    """The first 512 digits (8×8 images scaled to [0, 1]); random data if unavailable."""
    try:
        from hesskit.data import load_dataset

        return load_dataset("digits").train_x[:NUM_SAMPLES], "digits"
    except (ImportError, HesskitError):
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(NUM_SAMPLES, 64, generator=gen), "random-uniform"


def full_loss(model: nn.Module, X: torch.Tensor, loss_fn: nn.Module) -> float:
    with torch.no_grad():
        return float(loss_fn(model(X), X))


def run_second_order(
    name: str, model: nn.Module, optimizer: torch.optim.Optimizer, X: torch.Tensor,
    loss_fn: nn.Module, seconds: float, before_step: Callable[[int], None] | None = None,
) -> dict:
    passes = 0  # full-data passes: the closure runs several times per step (line search)

    def closure() -> torch.Tensor:
        nonlocal passes
        passes += 1
        optimizer.zero_grad()
        loss = loss_fn(model(X), X)
        loss.backward()
        return loss

    log = {"time": [0.0], "epoch": [0.0], "loss": [full_loss(model, X, loss_fn)]}
    elapsed, step = 0.0, 0
    while elapsed < seconds:
        if before_step is not None:
            before_step(step)
        start = time.perf_counter()
        optimizer.step(closure)
        elapsed += time.perf_counter() - start
        step += 1
        log["time"].append(elapsed)
        log["epoch"].append(float(passes))
        log["loss"].append(full_loss(model, X, loss_fn))
    return _summary(name, log, step)


def run_first_order(
    name: str, model: nn.Module, optimizer: torch.optim.Optimizer, X: torch.Tensor,
    loss_fn: nn.Module, seconds: float, seed: int,
) -> dict:
    gen = torch.Generator().manual_seed(seed)
    log = {"time": [0.0], "epoch": [0.0], "loss": [full_loss(model, X, loss_fn)]}
    elapsed, step, epoch = 0.0, 0, 0
    while elapsed < seconds:
        order = torch.randperm(len(X), generator=gen)
        start = time.perf_counter()
        for rows in order.split(MINI_BATCH):
            optimizer.zero_grad()
            loss_fn(model(X[rows]), X[rows]).backward()
            optimizer.step()
            step += 1
        elapsed += time.perf_counter() - start
        epoch += 1
        log["time"].append(elapsed)
        log["epoch"].append(float(epoch))
        log["loss"].append(full_loss(model, X, loss_fn))
    return _summary(name, log, step)


def _summary(name: str, log: dict, steps: int) -> dict:
    print(
        f"{name:<14} steps {steps:>6}  epochs {log['epoch'][-1]:>7.0f}  "
        f"time {log['time'][-1]:6.1f} s  loss {log['loss'][0]:.4f} -> {log['loss'][-1]:.4f}"
    )
    return {"steps": steps, "final_loss": log["loss"][-1], **log}


def loss_at(log: dict, key: str, value: float) -> float:
    """The last recorded loss with log[key] ≤ value."""
    return min(
        (loss for loss, x in zip(log["loss"], log[key], strict=True) if x <= value),
        default=log["loss"][0],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="wall-clock per optimizer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    X, data_name = load_data(args.seed)
    loss_fn = MSELoss(reduction="sample_mean")
    torch.manual_seed(args.seed)
    initial = mlp(SIZES).state_dict()

    def fresh() -> nn.Module:
        model = mlp(SIZES)
        model.load_state_dict(initial)
        return model

    gradient_seconds = _gradient_seconds(fresh(), X, loss_fn)
    runs = {}

    model = fresh()
    newton = DampedNewton(
        model.parameters(),
        hessian=Problem(model, loss_fn, (X, X)),
        damping=LevenbergMarquardt(initial=1.0, floor=1e-4),
    )
    runs["damped_newton"] = run_second_order("DampedNewton", model, newton, X, loss_fn,
                                             2 * args.seconds)

    model = fresh()
    quarter = len(X) // 4
    hf = HessianFree(
        model.parameters(),
        curvature=lambda: None,  # replaced before every step: a rotating curvature batch
        damping=LevenbergMarquardt(initial=1.0),
        cg=CGSettings(max_iterations=50),
        preconditioner=martens_preconditioner(Problem(model, loss_fn, (X, X))),
    )

    def rotate_curvature_batch(step: int) -> None:
        rows = slice((step % 4) * quarter, (step % 4 + 1) * quarter)
        hf.curvature = lambda: gauss_newton_operator(Problem(model, loss_fn, (X[rows], X[rows])))

    runs["hessian_free"] = run_second_order("HessianFree", model, hf, X, loss_fn,
                                            args.seconds, rotate_curvature_batch)
    runs["hessian_free"]["curvature_products"] = hf.hf_state["curvature_products"]

    first_order = {
        "rmsprop": ("RMSProp", lambda p: torch.optim.RMSprop(p, lr=1e-3)),
        "adam": ("Adam", lambda p: torch.optim.Adam(p, lr=3e-3)),
        "sgd_momentum": ("SGD+momentum", lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9)),
    }
    for key, (name, make) in first_order.items():
        model = fresh()
        runs[key] = run_first_order(name, model, make(model.parameters()), X, loss_fn,
                                    args.seconds, args.seed)

    checkpoints = [args.seconds / 3, 2 * args.seconds / 3, args.seconds]
    print("\nloss at wall-clock time (s):", ", ".join(f"{t:.0f}" for t in checkpoints))
    for key, log in runs.items():
        print(f"  {key:<14}", "  ".join(f"{loss_at(log, 'time', t):.4f}" for t in checkpoints))
    print("loss at epochs: 5, 20, 100")
    for key, log in runs.items():
        print(f"  {key:<14}", "  ".join(f"{loss_at(log, 'epoch', e):.4f}" for e in (5, 20, 100)))

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "optimizers",
        "environment": {
            "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "threads": torch.get_num_threads(),
        },
        "config": {
            "data": data_name, "samples": len(X), "sizes": SIZES, "loss": "mse sample_mean",
            "seconds_per_optimizer": args.seconds, "newton_seconds": 2 * args.seconds,
            "mini_batch": MINI_BATCH, "seed": args.seed,
        },
        "gradient_seconds": gradient_seconds,
        "runs": runs,
    }, indent=1))
    print(f"\nwrote {RESULTS}")


def _gradient_seconds(model: nn.Module, X: torch.Tensor, loss_fn: nn.Module) -> float:
    """Median wall-clock of one full-batch gradient: the unit of cost for everything else."""
    times = []
    for _ in range(5):
        start = time.perf_counter()
        model.zero_grad()
        loss_fn(model(X), X).backward()
        times.append(time.perf_counter() - start)
    return sorted(times)[2]


if __name__ == "__main__":
    main()
