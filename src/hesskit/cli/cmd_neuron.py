"""`hesskit neuron`: one ReLU neuron with MSE — its 2×2 Hessian and Newton on (w, b)."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from hesskit.atomic_write import write_text_atomically
from hesskit.cli.cmd_newton import json_output_path
from hesskit.cli.options import float_below, int_between, output_dir, seed
from hesskit.neuron import newton_neuron, synthetic_data

MAX_SAMPLES = 10_000_000
MAX_ITER = 1_000_000
MAX_COORDINATE = 1e100
"""The largest |w| and |b| accepted: E(w, b) squares w·x + b, so beyond about 1e154 it
overflows to infinity and the neuron looks dead at (nan, nan)."""
coordinate = float_below(MAX_COORDINATE, lowest=-MAX_COORDINATE, open_low=False)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "neuron",
        help="one ReLU neuron with MSE: closed-form Hessian and Newton on (w, b)",
        description=(
            "Data y = relu(1.5 x − 0.3) + 0.1·noise (seeded). Prints the 2×2 Hessian of "
            "E(w, b) = mean((relu(w x + b) − y)²) at the start and Newton's iterates on (w, b)."
        ),
    )
    parser.add_argument("--w0", type=coordinate, default=1.0,
                        help=f"start w, |w0| ≤ {MAX_COORDINATE:g} (default 1)")
    parser.add_argument("--b0", type=coordinate, default=0.0,
                        help=f"start b, |b0| ≤ {MAX_COORDINATE:g} (default 0)")
    parser.add_argument("--samples", type=int_between(1, MAX_SAMPLES), default=24,
                        help="n (default 24)")
    parser.add_argument("--seed", type=seed, default=0, help="data seed (default 0)")
    parser.add_argument("--max-iter", type=int_between(1, MAX_ITER), default=50,
                        help="most Newton steps (default 50)")
    parser.add_argument(
        "--b-fixed",
        type=coordinate,
        default=0.5,
        help="b at which --plot draws E(w) and d²E/dw² (default 0.5)",
    )
    parser.add_argument(
        "--plot", metavar="DIR", help="write neuron.png (E(w), d²E/dw², Newton path) into DIR"
    )
    parser.add_argument("--json", metavar="PATH",
                        help="also write Newton's outcome (status, message, last w, b) as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    folder = output_dir(args.plot, "--plot") if args.plot is not None else None
    json_path = json_output_path(args.json) if args.json is not None else None
    problem = synthetic_data(args.samples, seed=args.seed)
    hessian = problem.hessian(args.w0, args.b0)
    active = int(problem.active(args.w0, args.b0).sum())
    print(
        f"Hessian of E at (w, b) = ({args.w0:g}, {args.b0:g}), "
        f"{active} of {problem.num_samples} samples active:"
    )
    for row in hessian.tolist():
        print("  [" + "  ".join(f"{v:12.6g}" for v in row) + " ]")
    result = newton_neuron(problem, args.w0, args.b0, max_iter=args.max_iter)
    table = Table(title="Newton on (w, b)")
    for column in ("k", "w", "b", "E", "‖∇E‖", "active"):
        table.add_column(column, justify="right")
    for k, it in enumerate(result.iterates):
        table.add_row(
            str(k),
            f"{it.w:.10g}",
            f"{it.b:.10g}",
            f"{it.loss:.6g}",
            f"{it.gradient_norm:.3g}",
            str(it.num_active),
        )
    Console(width=120).print(table)
    print(f"status: {result.status.name}")
    print(result.message)
    if folder is not None:
        from hesskit.report.scalar_plots import plot_neuron

        print(f"wrote {plot_neuron(problem, result, args.b_fixed, folder / 'neuron.png')}")
    if json_path is not None:
        record = {"w0": args.w0, "b0": args.b0, "samples": problem.num_samples,
                  "status": result.status.value, "message": result.message,
                  "steps": len(result.iterates) - 1, "w": result.w, "b": result.b}
        write_text_atomically(json_path, json.dumps(record) + "\n")
        print(f"wrote {json_path}")
    return 0
