"""`hesskit diagonal`: exact curvature diagonals, and RMSProp's √v compared with them.

With ``--steps 0`` it prints the Hessian, Gauss-Newton and empirical-Fisher diagonals'
summary at the initial parameters. Otherwise it trains with ``--optimizer`` and writes
``rmsprop_vs_curvature.json`` and ``.png`` to ``--out``, then prints what the numbers are.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from hesskit.analysis.rmsprop import diagonal_summary, rmsprop_curvature_analysis, summarize
from hesskit.atomic_write import write_text_atomically
from hesskit.cli.model_spec import add_model_options, problem_from_args
from hesskit.cli.options import float_below, int_between, output_dir
from hesskit.errors import NonFiniteError

OPTIMIZERS = ("rmsprop", "adam", "sgd")
MAX_STEPS = 10_000_000
MAX_PROBES = 1_000_000
MAX_LR = 1e6


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "diagonal",
        help="exact curvature diagonals; RMSProp's √v against them along training",
        description=__doc__.splitlines()[0],
    )
    add_model_options(parser)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="rmsprop",
                        help="optimizer to train with (default rmsprop)")
    parser.add_argument("--steps", type=int_between(0, MAX_STEPS), default=200,
                        help="training steps; 0 only prints the diagonals (default 200)")
    parser.add_argument("--every", type=int_between(1, MAX_STEPS), default=20,
                        help="compare every this many steps (default 20)")
    parser.add_argument("--lr", type=float_below(MAX_LR), default=1e-3,
                        help=f"learning rate, in (0, {MAX_LR:g}] (default 1e-3)")
    parser.add_argument("--alpha", type=float_below(1.0, open_high=True, open_low=False),
                        default=0.99,
                        help="RMSProp's α in [0, 1), also used for the g² average of other "
                             "optimizers (default 0.99)")
    parser.add_argument("--probes", type=int_between(1, MAX_PROBES), default=100,
                        help="Hutchinson probes where diag H cannot be exact (default 100)")
    parser.add_argument("--out", default="hesskit-out/diagonal",
                        help="output folder (default hesskit-out/diagonal)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    problem = problem_from_args(args)
    print(f"{problem.num_params} parameters, {problem.num_data} samples")
    if args.steps == 0:
        for line in diagonal_summary(problem, args.probes):
            print(line)
        return 0
    folder = output_dir(args.out)
    analysis = rmsprop_curvature_analysis(
        problem,
        optimizer=_optimizer(args),
        steps=args.steps,
        every=args.every,
        alpha=args.alpha,
        probes=args.probes,
        on_record=lambda step: print(f"  recorded step {step}/{args.steps}", flush=True),
    )
    _check_finite(analysis, args.lr)
    from hesskit.report.diagonal_plots import plot_rmsprop_analysis

    json_path = folder / "rmsprop_vs_curvature.json"
    write_text_atomically(json_path, json.dumps(analysis.to_json()) + "\n")
    png_path = plot_rmsprop_analysis(analysis, folder / "rmsprop_vs_curvature.png")
    for line in summarize(analysis):
        print(line)
    from hesskit.report.tour import write_diagonal_page

    page = write_diagonal_page(folder)
    print(f"wrote {json_path} and {png_path}")
    print(f"page: {page.resolve()}")  # plain print: a path is never wrapped
    return 0


def _check_finite(analysis, lr: float) -> None:
    """Refuse to write NaN statistics over all parameters (invalid JSON, empty plots)."""
    for comparison in analysis.comparisons:
        values = (comparison.cosine, comparison.scale)
        if comparison.layer == "all" and not all(math.isfinite(value) for value in values):
            raise NonFiniteError(
                f"the comparison of √v with {comparison.diagonal} over all parameters is NaN "
                f"or infinite at step {comparison.step}: the training overflowed; lower --lr "
                f"(now {lr:g})"
            )


def _optimizer(args: argparse.Namespace):
    if args.optimizer == "rmsprop":
        return lambda params: torch.optim.RMSprop(params, lr=args.lr, alpha=args.alpha)
    if args.optimizer == "adam":
        return lambda params: torch.optim.Adam(params, lr=args.lr)
    return lambda params: torch.optim.SGD(params, lr=args.lr)
