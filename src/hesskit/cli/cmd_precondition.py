"""`hesskit precondition`: each optimizer's preconditioner P against the exact G along training.

Trains ``--problem`` (or ``--model``) with every optimizer of ``--optimizers`` from the same
start on the same mini-batches and, every ``--every`` steps, measures P against the
Gauss-Newton matrix G of the step's batch (``hesskit.analysis.preconditioner``): the
condition numbers of P^-1/2 G P^-1/2 beside G's own (the top-k spread, and with a damping
λ = ``--damping``), the cosine with the damped Newton direction and the ratio of predicted
decreases, per layer and for the whole model. Writes ``preconditioner.json``,
``preconditioner.png``, ``preconditioner_layers.png`` and ``report.txt`` to ``--out``.
While it runs, ``preconditioner.partial.json`` holds every measurement so far (same
schema), so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from hesskit.atomic_write import write_text_atomically
from hesskit.cli.model_spec import add_user_model_option
from hesskit.cli.options import (
    DATA_DIR_HELP,
    float_below,
    int_between,
    output_dir,
    positive_int,
    problem_help,
    problem_name,
    seed,
)

MAX_STEPS = 10_000_000
MAX_LR = 1e6
MAX_DAMPING = 1e12
MAX_TOP_K = 1000
MAX_PRODUCTS = 1_000_000
DEFAULT_OPTIMIZERS = "sgd,rmsprop,adam"
PARTIAL_NAME = "preconditioner.partial.json"
"""The measurements so far (same schema as ``preconditioner.json``), rewritten atomically
after each one and removed when the run ends: what an interrupted run leaves."""
PRECONDITION_FILES = ("preconditioner.json", PARTIAL_NAME, "report.txt", "preconditioner.png",
                      "preconditioner_layers.png")
"""What makes a folder hold measurements (a new run there is refused)."""
DEFAULT_PROBLEM = "digits-autoencoder"
DEFAULT_STEPS, DEFAULT_EVERY = 100, 50
"""The defaults finish in under 2 minutes of one CPU core on the digits autoencoder: 3
optimizers × 2 measurements (each a few Lanczos runs and a CG solve on G)."""


def optimizer_names(text: str) -> list[str]:
    """A comma-separated list of registry names, each once."""
    names = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not name for name in names):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of "
                                         "optimizer names such as adam,kfac")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r} names an optimizer twice")
    return names


def learning_rates(text: str) -> dict[str, float] | float:
    """One lr for all (``3e-3``) or ``name=lr`` pairs (``adam=3e-3,sgd=0.1``), each in
    (0, MAX_LR]."""
    parse = float_below(MAX_LR)
    if "=" not in text:
        return parse(text)
    rates = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"{text!r}: write name=lr pairs such as "
                                             "adam=3e-3,sgd=0.1, or one lr for all")
        rates[name.strip()] = parse(value)
    return rates


class MeasurementProgress:
    """``on_record``: one line per measurement with the overall position and time left,
    ``optimizer 2/3 (rmsprop), step 100/100, measurement 4/6, ~1 min left``."""

    def __init__(self, names: list[str], steps: int, every: int) -> None:
        from hesskit.progress import remaining_text

        self.names, self.steps, self.remaining_text = names, steps, remaining_text
        self.per_run = steps // every + (steps % every != 0)
        self.done = 0
        self.start = time.monotonic()

    def __call__(self, name: str, step: int) -> None:
        self.done += 1
        total = self.per_run * len(self.names)
        index = self.names.index(name) + 1
        left = self.remaining_text(time.monotonic() - self.start, self.done, total)
        print(f"  optimizer {index}/{len(self.names)} ({name}), step {step}/{self.steps}, "
              f"measurement {self.done}/{total}" + (f", {left}" if left else ""), flush=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "precondition",
        help="each optimizer's preconditioner against the exact Gauss-Newton matrix",
        description=__doc__,
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--problem", type=problem_name, default=DEFAULT_PROBLEM,
                      help=problem_help(f"a benchmark problem (default {DEFAULT_PROBLEM})"))
    add_user_model_option(what, extra="; instead of --problem")
    parser.add_argument("--optimizers", type=optimizer_names,
                        default=optimizer_names(DEFAULT_OPTIMIZERS),
                        help="registry names: sgd, rmsprop, adam, adahessian, sophia, "
                             f"sophia-h, kfac, shampoo (default {DEFAULT_OPTIMIZERS})")
    parser.add_argument("--lr", type=learning_rates, default=None,
                        help="one lr for all, or name=lr pairs (default: each optimizer's)")
    parser.add_argument("--steps", type=int_between(1, MAX_STEPS), default=DEFAULT_STEPS,
                        help=f"training steps per optimizer (default {DEFAULT_STEPS})")
    parser.add_argument("--every", type=int_between(1, MAX_STEPS), default=DEFAULT_EVERY,
                        help="measure every this many steps and at the last (default "
                             f"{DEFAULT_EVERY}); each measurement costs far more than a step")
    parser.add_argument("--batch-size", type=positive_int, default=128,
                        help="the mini-batch every optimizer steps on (default 128)")
    parser.add_argument("--seed", type=seed, default=0, help="initialisation and batch order")
    parser.add_argument("--damping", type=float_below(MAX_DAMPING), default=1e-3,
                        help="λ of G + λI (condition number, Newton direction; default 1e-3)")
    parser.add_argument("--top-k", type=int_between(1, MAX_TOP_K), default=5,
                        help="k of the top-k spread μ1/μk (default 5)")
    parser.add_argument("--max-products", type=int_between(1, MAX_PRODUCTS), default=200,
                        help="Lanczos' product budget per eigenvalue run (default 200)")
    parser.add_argument("--tol", type=float_below(1.0, open_high=True), default=1e-3,
                        help="Lanczos' relative eigenvalue tolerance in (0, 1) (default 1e-3)")
    parser.add_argument("--cg-maxiter", type=int_between(1, MAX_PRODUCTS), default=500,
                        help="iterations of the Newton direction's CG (default 500)")
    parser.add_argument("--probes", type=int_between(1, MAX_PRODUCTS), default=100,
                        help="Hutchinson probes where diag H cannot be exact (default 100)")
    parser.add_argument("--no-layers", action="store_true",
                        help="measure the whole model only, not each layer")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                        help="floating-point type of a --problem (default float64)")
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument("--out", default="hesskit-out/precondition",
                        help="output folder (default hesskit-out/precondition); a folder "
                             "that holds measurements is refused")
    parser.add_argument("--overwrite", action="store_true",
                        help="if --out holds measurements, move them aside to "
                             "<out>.old-<time> (never deleted) and start afresh")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from hesskit.analysis.preconditioner import AnalysisSettings
    from hesskit.analysis.preconditioner_records import summarize
    from hesskit.errors import InvalidArgumentError
    from hesskit.finite import check_training_data
    from hesskit.run_folder import prepare_run_folder
    from hesskit.training.preconditioner_run import OptimizerChoice, preconditioner_analysis

    rates = args.lr if isinstance(args.lr, dict) else {}
    unknown = sorted(set(rates) - set(args.optimizers))
    if unknown:
        raise InvalidArgumentError(f"--lr names {', '.join(unknown)}, which --optimizers does "
                                   "not; give lrs for the chosen optimizers only")
    choices = [OptimizerChoice.from_registry(
        name, rates.get(name) if isinstance(args.lr, dict) else args.lr)
        for name in args.optimizers]
    settings = AnalysisSettings(
        damping=args.damping, top_k=args.top_k, tol=args.tol, max_products=args.max_products,
        cg_maxiter=args.cg_maxiter, per_layer=not args.no_layers, probes=args.probes,
        seed=args.seed)
    moved = prepare_run_folder(args.out, PRECONDITION_FILES, overwrite=args.overwrite)
    if moved is not None:
        print(f"hesskit: note: moved the previous measurements in {args.out!r} to "
              f"{str(moved)!r}", file=sys.stderr, flush=True)
    folder = output_dir(args.out)
    if args.model:
        from hesskit.cli.user_training import user_training_problem

        problem = user_training_problem(args.model)
    else:
        from hesskit.problems import make_problem

        problem = make_problem(args.problem, seed=args.seed, data_dir=args.data_dir,
                               dtype=getattr(torch, args.dtype))
    check_training_data(problem)
    partial = folder / PARTIAL_NAME

    def keep(analysis, name: str, step: int) -> None:
        write_text_atomically(partial, json.dumps(analysis.to_json(), allow_nan=False) + "\n")

    analysis = preconditioner_analysis(
        problem, choices, steps=args.steps, every=args.every, batch_size=args.batch_size,
        seed=args.seed, settings=settings, on_progress=keep,
        on_record=MeasurementProgress(args.optimizers, args.steps, args.every),
    )
    from hesskit.report.preconditioner_plots import plot_layers, plot_preconditioner_analysis

    json_path = folder / "preconditioner.json"
    write_text_atomically(json_path, json.dumps(analysis.to_json(), allow_nan=False) + "\n")
    written = [json_path, plot_preconditioner_analysis(analysis, folder / "preconditioner.png")]
    layers = plot_layers(analysis, folder / "preconditioner_layers.png")
    written += [layers] if layers is not None else []
    lines = summarize(analysis)
    write_text_atomically((folder / "report.txt"), "\n".join(lines) + "\n")
    written.append(folder / "report.txt")
    for line in lines:
        print(line)
    partial.unlink(missing_ok=True)
    print("wrote " + ", ".join(str(path) for path in written))
    return 0
