"""`hesskit activations`: the transfer-function registry as a table, or plotted with --plot."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from hesskit.activations import ACTIVATION_NAMES, get_activation
from hesskit.cli.options import output_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "activations",
        help="list the transfer functions (σ, σ′, σ″ in closed form) or plot them",
        description=(
            "Without options: a table of the transfer functions, whether each is piecewise "
            "linear, the derivative values used at its kink, and its stationary points. "
            "With --plot DIR: one PNG with σ, σ′ and σ″ of every function."
        ),
    )
    parser.add_argument(
        "--plot", metavar="DIR", help="write activations.png into DIR (created if missing)"
    )
    parser.set_defaults(run=run)


def _parameters_text(parameters: dict[str, float | None]) -> str:
    shown = [f"{name}={value:g}" for name, value in parameters.items() if value is not None]
    return ", ".join(shown) or "—"


def run(args: argparse.Namespace) -> int:
    activations = [get_activation(name) for name in ACTIVATION_NAMES]
    if args.plot is not None:
        from hesskit.report.scalar_plots import plot_activations

        path = plot_activations(activations, output_dir(args.plot, "--plot") / "activations.png")
        print(f"wrote {path}")
        return 0
    table = Table(title="Transfer functions (closed-form σ, σ′, σ″)")
    for column in ("name", "parameters", "piecewise linear", "at the kink", "stationary points"):
        table.add_column(column)
    for activation in activations:
        table.add_row(
            activation.name,
            _parameters_text(activation.parameters),
            "yes" if activation.piecewise_linear else "no",
            activation.kink_convention(),
            activation.stationary_points(),
        )
    Console(width=140).print(table)
    return 0
