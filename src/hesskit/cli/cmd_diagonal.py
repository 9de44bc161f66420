"""`hesskit diagonal`: exact curvature diagonals, and RMSProp's √v compared with them.

With ``--steps 0`` it prints the Hessian, Gauss-Newton and empirical-Fisher diagonals'
summary at the initial parameters. Otherwise it trains with ``--optimizer`` and writes
``rmsprop_vs_curvature.json`` and ``.png`` to ``--out``, then prints what the numbers are.
"""

from __future__ import annotations

import argparse
import json

import torch

from hesskit.analysis.rmsprop import diagonal_summary, rmsprop_curvature_analysis, summarize
from hesskit.cli.model_spec import add_model_options, problem_from_args
from hesskit.cli.options import (
    finite_float,
    non_negative_int,
    output_dir,
    positive_float,
    positive_int,
)

OPTIMIZERS = ("rmsprop", "adam", "sgd")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "diagonal",
        help="exact curvature diagonals; RMSProp's √v against them along training",
        description=__doc__.splitlines()[0],
    )
    add_model_options(parser)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="rmsprop",
                        help="optimizer to train with (default rmsprop)")
    parser.add_argument("--steps", type=non_negative_int, default=200,
                        help="training steps; 0 only prints the diagonals (default 200)")
    parser.add_argument("--every", type=positive_int, default=20,
                        help="compare every this many steps (default 20)")
    parser.add_argument("--lr", type=positive_float, default=1e-3,
                        help="learning rate (default 1e-3)")
    parser.add_argument("--alpha", type=finite_float, default=0.99,
                        help="RMSProp's α, also used for the g² average of other optimizers")
    parser.add_argument("--probes", type=positive_int, default=100,
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
    from hesskit.report.diagonal_plots import plot_rmsprop_analysis

    json_path = folder / "rmsprop_vs_curvature.json"
    json_path.write_text(json.dumps(analysis.to_json()) + "\n")
    png_path = plot_rmsprop_analysis(analysis, folder / "rmsprop_vs_curvature.png")
    for line in summarize(analysis):
        print(line)
    print(f"wrote {json_path} and {png_path}")
    return 0


def _optimizer(args: argparse.Namespace):
    if args.optimizer == "rmsprop":
        return lambda params: torch.optim.RMSprop(params, lr=args.lr, alpha=args.alpha)
    if args.optimizer == "adam":
        return lambda params: torch.optim.Adam(params, lr=args.lr)
    return lambda params: torch.optim.SGD(params, lr=args.lr)
