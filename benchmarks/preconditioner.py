"""How much curvature each optimizer's preconditioner sees, on the digits autoencoder.

Runs ``hesskit.training.preconditioner_run.preconditioner_analysis`` on the digits autoencoder
(64-32-8-32-64, Martens' sparse initialisation, seed 0, float64) for every optimizer of the
training registry that has a preconditioner adapter and is installed (SGD, RMSProp, Adam,
AdaHessian, Sophia with both estimators, K-FAC, Shampoo), each at its registry default lr
(no tuned lrs for this problem are recorded in benchmarks/results), all from the same
start on the same mini-batches of 128. Every ``--every`` steps it measures P against the
exact Gauss-Newton matrix of the step's batch: the condition numbers of P^-1/2 G P^-1/2
beside G's own (the top-k spread and with λ = ``--damping``), the cosine with the damped
Newton direction and the predicted-decrease ratios, per layer and for the whole model.

Shampoo keeps its registry defaults too: its first roots come at step 100
(precondition_frequency = start_preconditioning_step = 100), so its records before step
100 measure its Adam graft's diagonal.

Run (one thread; 275 s with the defaults below, measured on a 2-core machine shared with
other jobs):
``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/preconditioner.py``. Writes
benchmarks/results/preconditioner.json (with an environment record) and
benchmarks/results/preconditioner/ (preconditioner.png, preconditioner_layers.png,
report.txt).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import time
from pathlib import Path

import torch

from hesskit.analysis.preconditioner import AnalysisSettings
from hesskit.analysis.preconditioner_records import summarize
from hesskit.problems import make_problem
from hesskit.report.preconditioner_plots import plot_layers, plot_preconditioner_analysis
from hesskit.training.bench import environment
from hesskit.training.optimizers import REGISTRY
from hesskit.training.preconditioner_run import OptimizerChoice, preconditioner_analysis

PROBLEM = "digits-autoencoder"
OPTIMIZERS = ("sgd", "rmsprop", "adam", "adahessian", "sophia", "sophia-h", "kfac", "shampoo")
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=40)
    parser.add_argument("--damping", type=float, default=1e-3)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--max-products", type=int, default=60)
    parser.add_argument("--cg-maxiter", type=int, default=300)
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = [n for n in args.optimizers.split(",") if n in REGISTRY and REGISTRY[n].available]
    skipped = sorted(set(args.optimizers.split(",")) - set(names))
    settings = AnalysisSettings(damping=args.damping, top_k=args.top_k,
                                max_products=args.max_products, cg_maxiter=args.cg_maxiter)
    problem = make_problem(PROBLEM, seed=0, dtype=torch.float64)
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    mark = [started]

    def on_record(name: str, step: int) -> None:
        now = time.perf_counter()
        seconds[name] = seconds.get(name, 0.0) + now - mark[0]
        mark[0] = now
        print(f"{name:>10} step {step:>4}  {now - started:6.1f} s", flush=True)

    analysis = preconditioner_analysis(
        problem, [OptimizerChoice.from_registry(n) for n in names], steps=args.steps,
        every=args.every, batch_size=128, seed=0, settings=settings, on_record=on_record)
    total = time.perf_counter() - started
    folder = args.out / "preconditioner"
    folder.mkdir(parents=True, exist_ok=True)
    plot_preconditioner_analysis(analysis, folder / "preconditioner.png")
    plot_layers(analysis, folder / "preconditioner_layers.png")
    lines = summarize(analysis)
    (folder / "report.txt").write_text("\n".join(lines) + "\n")
    record = {
        "environment": environment(),
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/preconditioner.py "
                   f"--steps {args.steps} --every {args.every} --max-products "
                   f"{args.max_products} --cg-maxiter {args.cg_maxiter}",
        "note": ("the machine was shared with other jobs while this ran (2 cores); the "
                 "seconds are wall time of the whole analysis per optimizer (training and "
                 "measuring), not optimizer speed"),
        "skipped_optimizers": skipped,
        "seconds_per_optimizer": seconds,
        "seconds_total": total,
        "analysis": analysis.to_json(),
    }
    path = args.out / "preconditioner.json"
    path.write_text(json.dumps(record, indent=1, allow_nan=False) + "\n")
    for line in lines:
        print(line)
    print(f"wrote {path} and {folder}/ in {total:.0f} s")


if __name__ == "__main__":
    main()
