"""Exact curvature diagonals against one gradient, and Hutchinson's trace error.

The classifier of hesskit issue 4: ReLU MLP 784-256-256-10, cross-entropy, batch 512,
random data, float32, 2 threads. Times (median of repeats, in one process):

* one gradient (``Problem.gradient``), the unit: each method is timed alternately with a
  gradient and the median ratio reported (robust to load from other processes);
* the exact Hessian diagonal (layer-chain backpropagation; for ReLU it equals diag(G));
* the exact GGN and empirical-Fisher diagonals by backpropagation and by per-sample vmap;
* the same exact Hessian diagonal for a tanh network (σ″ terms present);
* Hutchinson's trace with 100 probes against the exact trace (if the Hessian operator
  exists), and BackPACK's DiagHessian (if BackPACK is importable);
* CNNs (``--only-cnn`` runs just these and updates the ``"cnn"`` entry of the JSON): the
  exact Hessian diagonal of Conv2d(1,8,3)-σ-MaxPool(2)-Conv2d(8,16,3)-σ-Flatten-
  Linear(1936,64)-σ-Linear(10) on 28×28 inputs, cross-entropy, float32, σ = ReLU (batch 64)
  and Tanh (batch 8: BackPACK's DiagHessian keeps 2·numel columns per σ″ term, about
  15 000 columns of 5408 numbers per sample at the first convolution, so batch 64 needs
  ~20 GB), against BackPACK's DiagHessian side by side: (hesskit, gradient, BackPACK,
  gradient) interleaved, each as the median ratio to its neighbouring gradient.

Run: ``.venv/bin/python benchmarks/diagonal.py [--only-cnn]``; writes
benchmarks/results/diagonal.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from hesskit.estimators.exact_diagonal import (
    diagonal,
    empirical_fisher_diagonal,
    gauss_newton_diagonal,
    hessian_diagonal,
)
from hesskit.models import mlp
from hesskit.problem import Problem

THREADS = 2
SIZES = (784, 256, 256, 10)
BATCH = 512
PROBES = 100
RESULTS = Path(__file__).parent / "results" / "diagonal.json"


def timed(fn, repeats: int) -> tuple[float, object]:
    """Fastest wall time of ``repeats`` calls (after one warm-up) and the last result.

    The minimum, not the median: the machine is shared, and contention only adds time.
    """
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def once(fn) -> tuple[float, object]:
    """Wall time of one call and its result."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def in_gradients(fn, gradient, repeats: int) -> tuple[float, float, object]:
    """Time ``fn`` and one gradient alternately; the fastest time and the median ratio.

    Alternating pairs make the ratio robust to load from other processes on the machine.
    """
    ratios, best, result = [], float("inf"), fn()
    gradient()
    for _ in range(repeats):
        t_fn, result = timed(fn, 1)
        t_grad, _ = timed(gradient, 1)
        ratios.append(t_fn / t_grad)
        best = min(best, t_fn)
    return best, statistics.median(ratios), result


def make_problem(activation: str, seed: int = 0) -> Problem:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = mlp(SIZES, activation)
    X = torch.randn(BATCH, SIZES[0], generator=generator)
    y = torch.randint(0, SIZES[-1], (BATCH,), generator=generator)
    return Problem(model, nn.CrossEntropyLoss(), (X, y))


def hutchinson_trace_error(problem: Problem, exact_trace: float) -> dict | None:
    try:
        from hesskit.estimators.trace import hutchinson_trace
        from hesskit.operators.hessian import hessian_operator
    except ImportError as error:
        return {"skipped": str(error)}
    errors, seconds = [], []
    for seed in range(5):
        start = time.perf_counter()
        estimate = hutchinson_trace(hessian_operator(problem), PROBES, seed=seed, progress=False)
        seconds.append(time.perf_counter() - start)
        errors.append(abs(estimate.value - exact_trace) / abs(exact_trace))
    return {"probes": PROBES, "seeds": 5, "relative_errors": errors,
            "seconds_min": min(seconds)}


def backpack_diag_hessian(problem: Problem, repeats: int) -> dict:
    try:
        from backpack import backpack, extend
        from backpack.extensions import DiagHessian
    except ImportError:
        return {"skipped": "backpack is not installed"}
    model, loss = extend(problem.model), extend(nn.CrossEntropyLoss())
    (X, y), = [(b.inputs, b.targets) for b in problem.batches()]

    def run():
        model.zero_grad()
        with backpack(DiagHessian()):
            loss(model(X), y).backward()

    seconds, _ = timed(run, repeats)
    return {"seconds": seconds}


CNN_BATCHES = {"relu": 64, "tanh": 8}
CNN_REPEATS = {"relu": 20, "tanh": 3}


def make_cnn_problem(activation: str, seed: int = 0) -> Problem:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), act(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3), act(), nn.Flatten(),
        nn.Linear(16 * 11 * 11, 64), act(), nn.Linear(64, 10),
    )
    n = CNN_BATCHES[activation]
    X = torch.randn(n, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (n,), generator=generator)
    return Problem(model, nn.CrossEntropyLoss(), (X, y))


def backpack_runner(problem: Problem):
    """BackPACK's DiagHessian on a copy of the model (``extend`` adds hooks in place)."""
    from backpack import backpack, extend
    from backpack.extensions import DiagHessian

    model, loss = extend(copy.deepcopy(problem.model)), extend(nn.CrossEntropyLoss())
    (X, y), = [(b.inputs, b.targets) for b in problem.batches()]

    def run() -> torch.Tensor:
        model.zero_grad()
        with backpack(DiagHessian()):
            loss(model(X), y).backward()
        return torch.cat([p.diag_h.reshape(-1) for p in model.parameters()])

    return run


def side_by_side(problem: Problem, repeats: int) -> dict:
    """(hesskit, gradient, BackPACK, gradient) interleaved; median ratios to the gradient."""
    try:
        backpack_run = backpack_runner(problem)
    except ImportError:
        backpack_run = None
    ours, grads, peers, ratio_ours, ratio_peer = [], [], [], [], []
    ours_diag = hessian_diagonal(problem)
    peer_diag = backpack_run() if backpack_run else None
    problem.gradient()
    for _ in range(repeats):
        t_ours, ours_diag = once(lambda: hessian_diagonal(problem))
        t_grad, _ = once(problem.gradient)
        ours.append(t_ours), grads.append(t_grad), ratio_ours.append(t_ours / t_grad)
        if backpack_run is not None:
            t_peer, peer_diag = once(backpack_run)
            t_grad, _ = once(problem.gradient)
            peers.append(t_peer), grads.append(t_grad), ratio_peer.append(t_peer / t_grad)
    record = {
        "batch": len(next(problem.batches()).targets),
        "method": diagonal(problem, "hessian").method.name,
        "repeats": repeats,
        "seconds_median": {"gradient": statistics.median(grads),
                           "hesskit": statistics.median(ours)},
        "in_gradients_median": {"hesskit": statistics.median(ratio_ours)},
    }
    if backpack_run is None:
        record["backpack"] = "skipped: backpack is not installed"
        return record
    record["seconds_median"]["backpack"] = statistics.median(peers)
    record["in_gradients_median"]["backpack"] = statistics.median(ratio_peer)
    record["backpack_over_hesskit_median"] = statistics.median(
        p / o for p, o in zip(peers, ours, strict=True))
    record["max_rel_diff_vs_backpack"] = float(
        (ours_diag - peer_diag).abs().max() / peer_diag.abs().max())
    return record


def cnn_record() -> dict:
    record = {"model": "Conv2d(1,8,3)-σ-MaxPool2d(2)-Conv2d(8,16,3)-σ-Flatten-Linear(1936,64)-"
                       "σ-Linear(64,10), 28x28 inputs, cross-entropy, float32"}
    for activation in ("relu", "tanh"):
        record[activation] = side_by_side(make_cnn_problem(activation),
                                          CNN_REPEATS[activation])
    return record


def environment() -> dict:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only-cnn", action="store_true",
                        help="run the CNN cases only and update their entry in the JSON")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help="torch threads (1 on a loaded machine: an OpenMP barrier "
                             "waits for a descheduled thread)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.only_cnn:
        record = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        record["cnn"] = {**cnn_record(), "environment": environment()}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(record["cnn"], indent=2))
        return
    relu, tanh = make_problem("relu"), make_problem("tanh")
    repeats = 10
    t_grad, _ = timed(relu.gradient, 20)
    t_grad_tanh, _ = timed(tanh.gradient, 20)
    t_hess, r_hess, diag_h = in_gradients(lambda: hessian_diagonal(relu), relu.gradient, repeats)
    t_ggn, r_ggn, diag_g = in_gradients(lambda: gauss_newton_diagonal(relu), relu.gradient,
                                        repeats)
    t_ef, r_ef, _ = in_gradients(lambda: empirical_fisher_diagonal(relu), relu.gradient, repeats)
    t_ggn_vmap, r_ggn_vmap, diag_g_vmap = in_gradients(
        lambda: gauss_newton_diagonal(relu, use_chain=False), relu.gradient, 1)
    t_ef_vmap, r_ef_vmap, _ = in_gradients(
        lambda: empirical_fisher_diagonal(relu, use_chain=False), relu.gradient, 1)
    t_hess_tanh, r_hess_tanh, _ = in_gradients(lambda: hessian_diagonal(tanh), tanh.gradient,
                                               repeats)
    exact_trace = float(diag_h.double().sum())
    record = {
        "benchmark": "exact curvature diagonals",
        "model": f"mlp {'-'.join(map(str, SIZES))} relu, cross-entropy, batch {BATCH}, float32",
        "seconds": {
            "gradient": t_grad,
            "hessian_diagonal_backprop": t_hess,
            "ggn_diagonal_backprop": t_ggn,
            "ef_diagonal_backprop": t_ef,
            "ggn_diagonal_per_sample_vmap": t_ggn_vmap,
            "ef_diagonal_per_sample_vmap": t_ef_vmap,
            "gradient_tanh": t_grad_tanh,
            "hessian_diagonal_backprop_tanh": t_hess_tanh,
        },
        "in_gradients": {
            "note": "median ratio over alternating (method, gradient) pairs",
            "hessian_diagonal_backprop": r_hess,
            "ggn_diagonal_backprop": r_ggn,
            "ef_diagonal_backprop": r_ef,
            "ggn_diagonal_per_sample_vmap": r_ggn_vmap,
            "ef_diagonal_per_sample_vmap": r_ef_vmap,
            "hessian_diagonal_backprop_tanh": r_hess_tanh,
            "backpack_diag_hessian_reported_in_issue": 15,
        },
        "checks": {
            "relu_hessian_equals_ggn_max_abs_diff": float((diag_h - diag_g).abs().max()),
            "ggn_backprop_vs_vmap_max_rel_diff": float(
                (diag_g - diag_g_vmap).abs().max() / diag_g.abs().max()
            ),
        },
        "exact_trace": exact_trace,
        "hutchinson_trace": hutchinson_trace_error(relu, exact_trace),
        "backpack": backpack_diag_hessian(relu, repeats),
        "cnn": cnn_record(),
        "environment": environment(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("seconds", "in_gradients", "checks",
                                             "hutchinson_trace", "backpack", "cnn")}, indent=2))


if __name__ == "__main__":
    main()
