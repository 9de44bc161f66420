"""The Edge of Stability (Cohen et al., ICLR 2021) on 5,000 MNIST images, measured with
``hesskit.monitor.CurvatureMonitor``.

Cohen, Kaur, Li, Kolter and Talwalkar, "Gradient Descent on Neural Networks Typically
Occurs at the Edge of Stability": under full-batch gradient descent with step size η the
sharpness λ_max(H) rises (progressive sharpening) until it reaches 2/η, then hovers at or
just above 2/η while the loss keeps falling, non-monotonically. Their Figure 1 uses a
5,000-example subset of CIFAR-10 and the square loss; CIFAR-10 is not available offline
here, so this uses the first 5,000 MNIST training images (``../shared/data/mnist``, pixels
in [0, 1], centred by the subset's mean image) with the same kind of network: fully
connected, two hidden layers of 200 units, tanh (their main figure) or ReLU, PyTorch's
default initialisation, and the square loss ½‖f(x) − e_y‖² averaged over examples
(their loss; ``nn.MSELoss`` would divide by the 10 classes as well).

For each activation and step size: full-batch gradient descent for ``--steps`` steps, the
sharpness on the whole subset every ``--every`` steps (Lanczos, warm-started, tol 1e-3,
a cold start every 10 measurements), the loss at every step. Written (rewritten after
each run, so an interrupted sweep keeps the runs it finished): JSON with the
trajectories, the Lanczos products of each measurement and whether it was warm, and an
environment record; a figure (loss and sharpness against step, log scales, 2/η dashed);
and a summary per run: sharpness at the start, the first step it reaches 2/η, the median
ratio sharpness / (2/η) over all measurements from then on and over the last half of
them, the fraction of steps at which the loss rose (overall and after reaching 2/η), and
the products per measurement, warm and cold. The overhead of tracking is measured too:
the same run's training steps alone against the steps plus the measurements, in wall
time and in process CPU time (the latter is less disturbed by other jobs on the machine).

``--optimizer adam`` (Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of
Stability"): full-batch ``torch.optim.Adam`` (``--beta1 --beta2 --eps``) instead of GD; the
monitor then also records the preconditioned sharpness λ_max(P⁻¹H), P = diag(√v̂) + ε
(torch's Adam denominator), against 2(1 + β₁)/((1 − β₁)η) = 38/η for β₁ = 0.9, and the
summary fields (first step at the threshold, ratios after it, ...) refer to that pair; the
plain sharpness is kept too. Written to ``edge_of_stability_adam.json`` and ``.png`` (the
GD files are left alone). ``--max-seconds`` ends each run after that much wall time.

On MNIST the sharpening is much slower than on CIFAR-10: with the paper-like default
step sizes (2/η = 100, 50, 25) the sharpness stays near 5 after 1,500 steps, so the run
in ``results/edge_of_stability`` uses larger step sizes (``--runs``); see its README.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/edge_of_stability.py --threads 1
      [--steps 3000 --every 10 --lrs 0.02,0.04,0.08 --activations tanh,relu]
      [--runs tanh:0.2,relu:0.5,tanh:0.3,tanh:0.5] [--print-every 100] [--out DIR]
      [--optimizer adam --beta1 0.9 --beta2 0.999 --eps 1e-7 --max-seconds 1380]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy is imported

import argparse
import datetime
import itertools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

RESULTS = Path(__file__).parent / "results" / "edge_of_stability"
THREADS = 2
SAMPLES = 5000
WIDTH = 200
DTYPE = torch.float32
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def square_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """½‖f(x) − e_y‖² averaged over the examples (Cohen et al.'s square loss)."""
    return 0.5 * ((outputs - targets) ** 2).sum(dim=1).mean()


def mnist_subset(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from hesskit.data.mnist import load_mnist

    data = load_mnist(data_dir)
    X = data.train_x[:SAMPLES].to(DTYPE)
    X = X - X.mean(dim=0)
    Y = nn.functional.one_hot(data.train_y[:SAMPLES], 10).to(DTYPE)
    return X, Y


def network(activation: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, WIDTH), ACTIVATIONS[activation](),
                         nn.Linear(WIDTH, WIDTH), ACTIVATIONS[activation](),
                         nn.Linear(WIDTH, 10)).to(DTYPE)


def run(activation: str, lr: float, X: torch.Tensor, Y: torch.Tensor,
        args: argparse.Namespace) -> dict:
    from hesskit.monitor import CurvatureMonitor

    model = network(activation, args.seed)
    adam = args.optimizer == "adam"
    if adam:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(args.beta1, args.beta2),
                                     eps=args.eps)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    monitor = CurvatureMonitor(model, square_loss, (X, Y), every=args.every, tol=1e-3)
    losses, train_seconds, train_cpu = [], 0.0, 0.0
    began, began_cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        monitor.step(optimizer)
        start, start_cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad()
        loss = square_loss(model(X), Y)
        loss.backward()
        optimizer.step()
        train_seconds += time.perf_counter() - start
        train_cpu += time.process_time() - start_cpu
        losses.append(float(loss.detach()))
        if args.print_every and len(losses) % args.print_every == 0:
            last = monitor.records[-1]
            extra = ""
            if adam and last.get("preconditioned_sharpness") is not None:
                extra = (f", preconditioned {last['preconditioned_sharpness']:.4g} "
                         f"(38/η = {last['preconditioned_threshold']:.4g})")
            print(f"  {activation} η = {lr:g} step {len(losses)}: loss {losses[-1]:.4g}, "
                  f"sharpness {last['eigenvalues'][0]:.4g} (2/η = {2 / lr:g}){extra} at step "
                  f"{last['step']}, {time.perf_counter() - began:.0f} s", flush=True)
        if not torch.isfinite(loss):
            break
        if args.max_seconds and time.perf_counter() - began > args.max_seconds:
            print(f"  stopping after {len(losses)} steps: --max-seconds {args.max_seconds:g} "
                  "reached", flush=True)
            break
    total, total_cpu = time.perf_counter() - began, time.process_time() - began_cpu
    steps = [r["step"] for r in monitor.records]
    sharpness = [r["eigenvalues"][0] for r in monitor.records]
    threshold = 2 / lr
    record = {"optimizer": args.optimizer}
    if adam:
        # The quantity compared with a threshold is λ_max(P⁻¹H) against 2(1 + β₁)/((1 − β₁)η);
        # None at step 0 (Adam has no state, hence no P, before its first step).
        record.update({
            "beta1": args.beta1, "beta2": args.beta2, "eps": args.eps,
            "plain_sharpness_threshold": threshold,
            "preconditioned_sharpness": [r.get("preconditioned_sharpness")
                                         for r in monitor.records],
            "preconditioned_products": [r["preconditioned"].get("products")
                                        for r in monitor.records],
            "preconditioned_converged": [r["preconditioned"].get("converged")
                                         for r in monitor.records],
            "first_moment_correction": [r["preconditioned"].get("first_moment_correction")
                                        for r in monitor.records]})
        threshold = monitor.records[-1]["preconditioned_threshold"]
        pairs = [(s, v) for s, v in zip(steps, record["preconditioned_sharpness"], strict=True)
                 if v is not None]
    else:
        pairs = list(zip(steps, sharpness, strict=True))
    tracked = [v for _, v in pairs]
    reached = next((s for s, v in pairs if v >= threshold), None)
    record.update({
        "activation": activation, "lr": lr, "threshold": threshold, "losses": losses,
        "steps": steps, "sharpness": sharpness,
        "products": [r["products"] for r in monitor.records],
        "warm": [r["warm"] for r in monitor.records],
        "converged": [r["converged"] for r in monitor.records],
        "measure_seconds_each": [r["seconds"] for r in monitor.records],
        "train_seconds": train_seconds, "measure_seconds": total - train_seconds,
        "overhead": (total - train_seconds) / train_seconds,
        "train_cpu_seconds": train_cpu, "measure_cpu_seconds": total_cpu - train_cpu,
        "overhead_cpu": (total_cpu - train_cpu) / train_cpu,
        "sharpness_at_start": sharpness[0], "tracked_at_start": tracked[0],
        "tracked_at_start_step": pairs[0][0], "first_step_at_threshold": reached,
        "tracked_peak": max(tracked), "final_tracked": tracked[-1],
        "tracked_peak_step": pairs[max(range(len(tracked)), key=tracked.__getitem__)][0],
    })
    if reached is not None:
        after = [v for s, v in pairs if s >= reached]
        record["ratio_after"] = statistics.median(v / threshold for v in after)
        record["ratio_after_range"] = [min(after) / threshold, max(after) / threshold]
        record["measurements_after"] = len(after)
        tail = after[len(after) // 2:]
        record["ratio_last_stretch"] = statistics.median(v / threshold for v in tail)
        record["ratio_last_stretch_range"] = [min(tail) / threshold, max(tail) / threshold]
        rises_after = sum(b > a for a, b in itertools.pairwise(losses[reached:]))
        record["loss_rise_fraction_after"] = rises_after / max(len(losses) - reached - 1, 1)
    rises = sum(b > a for a, b in itertools.pairwise(losses))
    record["loss_rises"] = rises
    record["loss_rise_fraction"] = rises / max(len(losses) - 1, 1)
    products = {kind: [r["products"] for r in monitor.records if r["warm"] is warm]
                for kind, warm in (("warm", True), ("cold", False))}
    record["products_per_measurement"] = {
        kind: {"count": len(p), "mean": statistics.fmean(p) if p else None,
               "median": statistics.median(p) if p else None,
               "max": max(p) if p else None} for kind, p in products.items()}
    record["train_seconds_per_step"] = train_seconds / len(losses)
    record["measure_seconds_per_measurement"] = (total - train_seconds) / len(monitor.records)
    record["loss_first_last"] = [losses[0], losses[-1]]
    return record


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if records and records[0].get("optimizer") == "adam":
        plot_adam(records, path, plt)
        return

    activations = list(dict.fromkeys(r["activation"] for r in records))  # in run order
    fig, axes = plt.subplots(2, len(activations), figsize=(6 * len(activations), 7),
                             squeeze=False)
    for column, activation in enumerate(activations):
        top, bottom = axes[0, column], axes[1, column]
        for i, r in enumerate(x for x in records if x["activation"] == activation):
            color = f"C{i}"
            top.plot(r["losses"], color=color, label=f"η = {r['lr']:g}")
            bottom.plot(r["steps"], r["sharpness"], color=color, label=f"η = {r['lr']:g}")
            bottom.axhline(r["threshold"], color=color, linestyle="--", linewidth=0.8,
                           label=f"2/η = {r['threshold']:.3g}")
        top.set_title(f"{activation} network, 5k MNIST, full-batch GD")
        top.set_ylabel("train loss (square)")
        top.set_yscale("log")
        bottom.set_ylabel("sharpness λ_max(H); dashed: 2/η")
        bottom.set_yscale("log")
        bottom.set_xlabel("step")
        top.legend()
        bottom.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_adam(records: list[dict], path: Path, plt: object) -> None:
    """Adam runs: loss; λ_max(P⁻¹H) with 38/η dashed; λ_max(H) (one column per activation)."""
    activations = list(dict.fromkeys(r["activation"] for r in records))
    fig, axes = plt.subplots(3, len(activations), figsize=(6.5 * len(activations), 10),
                             squeeze=False, sharex="col")
    for column, activation in enumerate(activations):
        top, middle, bottom = axes[:, column]
        for i, r in enumerate(x for x in records if x["activation"] == activation):
            color, label = f"C{i}", f"η = {r['lr']:g}"
            top.plot(r["losses"], color=color, label=label)
            pre = [(s, v) for s, v in zip(r["steps"], r["preconditioned_sharpness"],
                                          strict=True) if v is not None]
            middle.plot(*zip(*pre, strict=True), color=color, label=label)
            middle.axhline(r["threshold"], color=color, linestyle="--", linewidth=0.8,
                           label=f"38/η = {r['threshold']:.3g}")
            bottom.plot(r["steps"], r["sharpness"], color=color, label=label)
        top.set_title(f"{activation} network, 5k MNIST, full-batch Adam\n"
                      f"(β₁ = {records[0]['beta1']:g}, β₂ = {records[0]['beta2']:g}, "
                      f"ε = {records[0]['eps']:g})")
        top.set_ylabel("train loss (square)")
        top.set_yscale("log")
        middle.set_ylabel("preconditioned sharpness λ_max(P⁻¹H)\ndashed: 2(1+β₁)/((1−β₁)η)")
        middle.set_yscale("log")
        bottom.set_ylabel("sharpness λ_max(H)")
        bottom.set_yscale("log")
        bottom.set_xlabel("step")
        top.legend()
        middle.legend(fontsize="small", ncol=2)
        bottom.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--lrs", default="0.02,0.04,0.08")
    parser.add_argument("--activations", default="tanh,relu")
    parser.add_argument("--runs", default=None,
                        help="activation:lr pairs in this order, e.g. tanh:0.2,relu:0.5 "
                             "(instead of every --activations × --lrs)")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                        help="sgd: full-batch GD, sharpness against 2/η; adam: full-batch "
                             "torch.optim.Adam, preconditioned sharpness against 38/η "
                             "(results in edge_of_stability_adam.json/.png)")
    parser.add_argument("--beta1", type=float, default=0.9)
    parser.add_argument("--beta2", type=float, default=0.999)
    parser.add_argument("--eps", type=float, default=1e-7)
    parser.add_argument("--max-seconds", type=float, default=0,
                        help="end each run after this much wall time (0: after --steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--print-every", type=int, default=0,
                        help="print progress every this many steps (0: only per run)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for the JSON and figure")
    parser.add_argument("--data-dir", default=str(Path(__file__).parents[2] / "shared" / "data"))
    parser.add_argument("--replot", action="store_true",
                        help="only redraw the figure from the JSON in --out")
    args = parser.parse_args()
    if args.replot:
        out = Path(args.out)
        saved = json.loads((out / f"{stem(args)}.json").read_text())
        plot(saved["runs"], out / f"{stem(args)}.png")
        return
    torch.set_num_threads(args.threads)
    X, Y = mnist_subset(Path(args.data_dir))
    records = []
    load_at_start = os.getloadavg()
    if args.runs:
        pairs = [(a, float(lr)) for a, lr in (x.split(":") for x in args.runs.split(","))]
    else:
        pairs = [(a, float(lr)) for a in args.activations.split(",")
                 for lr in args.lrs.split(",")]
    for activation, lr in pairs:
        record = run(activation, lr, X, Y, args)
        records.append(record)
        print(f"{activation:>5} η = {lr:<6g} {'preconditioned ' * (args.optimizer == 'adam')}"
              f"sharpness {record['tracked_at_start']:.3g} "
              f"→ reaches threshold = {record['threshold']:.3g} at step "
              f"{record['first_step_at_threshold']}; last-stretch ratio "
              f"{record.get('ratio_last_stretch', float('nan')):.3f}; loss "
              f"{record['loss_first_last'][0]:.3g} → {record['loss_first_last'][1]:.3g} "
              f"({record['loss_rises']} rises); tracking overhead "
              f"{100 * record['overhead']:.0f} %", flush=True)
        write(records, args, load_at_start)


def stem(args: argparse.Namespace) -> str:
    """The results' file name: the GD results are not overwritten by Adam runs."""
    return "edge_of_stability" if args.optimizer == "sgd" else "edge_of_stability_adam"


def write(records: list[dict], args: argparse.Namespace, load_at_start: tuple) -> None:
    """The JSON and the figure of the runs so far (rewritten after each run)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    environment = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "torch_threads": args.threads,
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(), "steps": args.steps, "every": args.every,
        "seed": args.seed, "runs": args.runs, "samples": SAMPLES, "width": WIDTH,
        "dtype": str(DTYPE), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "argv": sys.argv[1:], "optimizer": args.optimizer, "max_seconds": args.max_seconds,
    }
    if args.optimizer == "adam":
        environment.update(beta1=args.beta1, beta2=args.beta2, eps=args.eps)
    (out / f"{stem(args)}.json").write_text(
        json.dumps({"environment": environment, "runs": records}) + "\n")
    plot(records, out / f"{stem(args)}.png")
    print(f"wrote {out}/{stem(args)}.json and .png")


if __name__ == "__main__":
    main()
