"""Dense Hessian build: hesskit against torch.func.hessian, autograd.functional.hessian and a
loop of double-backward HVPs, side by side, in float64 on 2 threads.

Each (round, method) runs in a fresh subprocess: a warm-up build (not for the HVP loop, which
has nothing to warm up), then REPEATS timed builds (1 for the loop) whose median is the
round's time, and the peak resident memory above the process's baseline (VmHWM after
resetting it through /proc/self/clear_refs, minus VmRSS before the build). The methods take
turns, ROUNDS times, so that load from other processes hits them alike; reported are the
median over rounds and, per reference, the median over rounds of the same-round speed-up.
hesskit's time estimate (estimate_cost) is taken in each of its subprocesses before its
builds. Writes benchmarks/results/dense.json.

Run: .venv/bin/python benchmarks/dense.py
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import contextlib
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

THREADS = 2
ROUNDS = 3
REPEATS = 3
MODELS = {
    "relu_ce": {"sizes": [64, 32, 32, 10], "activation": "relu", "loss": "cross_entropy"},
    "tanh_mse": {"sizes": [64, 32, 32, 10], "activation": "tanh", "loss": "mse"},
}
METHODS = ["hesskit", "hesskit_split", "torch_func", "autograd_vectorize", "hvp_loop"]
SAMPLES = 256


def _problem(spec):
    from torch import nn

    from hesskit.models import mlp
    from hesskit.problem import Problem

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = mlp(spec["sizes"], spec["activation"]).double()
    X = torch.randn(SAMPLES, spec["sizes"][0], generator=generator, dtype=torch.float64)
    k = spec["sizes"][-1]
    if spec["loss"] == "cross_entropy":
        y, loss = torch.randint(0, k, (SAMPLES,), generator=generator), nn.CrossEntropyLoss()
    else:
        y, loss = torch.randn(SAMPLES, k, generator=generator, dtype=torch.float64), nn.MSELoss()
    return Problem(model, loss, (X, y))


def _builder(method, problem):
    """A function that builds H with ``method`` (all use hesskit's hand-written loss)."""
    from hesskit.dense import hessian_of

    layout, params = problem.layout, problem.parameters()
    theta = layout.flatten(params)
    X, y = next(problem.batches()).inputs, next(problem.batches()).targets

    def loss(flat):
        return problem.batch_loss(layout.unflatten(flat), X, y)

    if method == "hesskit":
        return lambda: hessian_of(problem, split=False).matrix()
    if method == "hesskit_split":
        return lambda: hessian_of(problem, split=True).matrix()
    if method == "torch_func":
        return lambda: torch.func.hessian(loss)(theta)
    if method == "autograd_vectorize":
        return lambda: torch.autograd.functional.hessian(loss, theta, vectorize=True)

    def loop():
        point = theta.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(loss(point), point, create_graph=True)
        H = torch.empty(len(theta), len(theta), dtype=theta.dtype)
        basis = torch.zeros_like(theta)
        for i in range(len(theta)):
            basis.zero_()
            basis[i] = 1
            (H[i],) = torch.autograd.grad(gradient, point, basis, retain_graph=True)
        return H

    return loop


def _status(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _worker(model_name, method, out_path):
    torch.set_num_threads(THREADS)
    problem = _problem(MODELS[model_name])
    build = _builder(method, problem)
    estimate = None
    if method.startswith("hesskit"):
        from hesskit.dense import estimate_cost

        estimate = estimate_cost(problem, split=method == "hesskit_split").seconds
    if method != "hvp_loop":  # warm-up; the loop has nothing to warm up and takes longest
        build()
    times, peaks = [], []
    for _ in range(1 if method == "hvp_loop" else REPEATS):
        matrix = None
        baseline = _status("VmRSS")
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
        started = time.perf_counter()
        matrix = build()
        times.append(time.perf_counter() - started)
        peaks.append(_status("VmHWM") - baseline)
    np.save(out_path, matrix.numpy())
    return {
        "seconds": statistics.median(times),
        "peak_bytes_above_baseline": max(peaks),
        "estimated_seconds": estimate,
    }


def _summarise(runs):
    """Median time and estimate, largest memory, over the rounds of one method."""
    estimates = [r["estimated_seconds"] for r in runs if r["estimated_seconds"] is not None]
    return {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "round_seconds": [r["seconds"] for r in runs],
        "peak_bytes_above_baseline": max(r["peak_bytes_above_baseline"] for r in runs),
        "estimated_seconds": statistics.median(estimates) if estimates else None,
    }


def main():
    results, environment = (
        {},
        {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": THREADS,
            "cpu": _cpu(),
            "dtype": "float64",
            "rounds": ROUNDS,
            "note": "timings taken on a shared machine (other engineers' jobs running); "
            "the ratios, measured side by side, are what matter",
        },
    )
    with tempfile.TemporaryDirectory() as scratch:
        for model_name in MODELS:
            runs, matrices = {method: [] for method in METHODS}, {}
            for round_ in range(ROUNDS):
                for method in METHODS:
                    path = Path(scratch) / f"{model_name}-{method}.npy"
                    output = subprocess.run(
                        [sys.executable, __file__, "--worker", model_name, method, str(path)],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                    run = json.loads(output.strip().splitlines()[-1])
                    runs[method].append(run)
                    matrices[method] = np.load(path)
                    print(
                        f"{model_name:9s} round {round_} {method:19s} {run['seconds']:7.3f} s  "
                        f"{run['peak_bytes_above_baseline'] / 1e6:8.1f} MB",
                        flush=True,
                    )
            rows = {method: _summarise(method_runs) for method, method_runs in runs.items()}
            n = matrices["hesskit"].shape[0]
            matrix_bytes = n * n * 8
            summary = {"num_params": n, "matrix_bytes": matrix_bytes, "methods": rows}
            for ours in ("hesskit", "hesskit_split"):
                t = rows[ours]["seconds"]

                def per_round(ref, ours=ours, runs=runs):
                    pairs = zip(runs[ref], runs[ours], strict=True)
                    return statistics.median(r["seconds"] / o["seconds"] for r, o in pairs)

                summary[ours] = {
                    "speedup_per_round_median": {
                        ref: per_round(ref)
                        for ref in ("torch_func", "autograd_vectorize", "hvp_loop")
                    },
                    "speedup_vs_torch_func": rows["torch_func"]["seconds"] / t,
                    "speedup_vs_autograd_vectorize": rows["autograd_vectorize"]["seconds"] / t,
                    "speedup_vs_hvp_loop": rows["hvp_loop"]["seconds"] / t,
                    "memory_over_matrix": rows[ours]["peak_bytes_above_baseline"] / matrix_bytes,
                    "estimate_over_actual": rows[ours]["estimated_seconds"] / t,
                    "max_abs_diff_vs_torch_func": float(
                        np.abs(matrices[ours] - matrices["torch_func"]).max()
                    ),
                    "max_abs_diff_vs_autograd": float(
                        np.abs(matrices[ours] - matrices["autograd_vectorize"]).max()
                    ),
                }
                s = summary[ours]
                diff = max(s["max_abs_diff_vs_torch_func"], s["max_abs_diff_vs_autograd"])
                print(
                    f"  {ours}: x{s['speedup_vs_torch_func']:.1f} vs torch.func, "
                    f"x{s['speedup_vs_autograd_vectorize']:.1f} vs autograd(vectorize), "
                    f"x{s['speedup_vs_hvp_loop']:.1f} vs HVP loop; "
                    f"memory {s['memory_over_matrix']:.2f}x matrix; "
                    f"estimate/actual {s['estimate_over_actual']:.2f}; max|diff| {diff:.1e}",
                    flush=True,
                )
            results[model_name] = summary
    path = Path(__file__).parent / "results" / "dense.json"
    path.write_text(
        json.dumps(
            {"environment": environment, "models": MODELS, "samples": SAMPLES, "results": results},
            indent=2,
        )
    )
    print(f"wrote {path}")


def _cpu():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(sys.argv[2], sys.argv[3], sys.argv[4])))
    else:
        main()
