"""`hesskit activations`: the transfer-function registry as a table, or plotted with --plot."""

from __future__ import annotations

import argparse

from rich import box
from rich.console import Console
from rich.table import Table

from hesskit.activations import ACTIVATION_NAMES, get_activation
from hesskit.cli.options import output_dir

WIDTH = 80
"""The table fits an 80-column terminal (words wrap inside cells, never numbers)."""


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


def run(args: argparse.Namespace) -> int:
    activations = [get_activation(name) for name in ACTIVATION_NAMES]
    if args.plot is not None:
        from hesskit.report.scalar_plots import plot_activations

        path = plot_activations(activations, output_dir(args.plot, "--plot") / "activations.png")
        print(f"wrote {path}")
        return 0
    Console(width=WIDTH).print(activation_table())
    return 0


def activation_table() -> Table:
    """The registry as a rich Table that fits :data:`WIDTH` columns (one parameter, one kink
    value a line; the stationary points wrap between words)."""
    from hesskit.report.sections import activation_rows

    table = Table(title="Transfer functions (closed-form σ, σ′, σ″)", box=box.SIMPLE_HEAD,
                  expand=True, pad_edge=False)
    table.add_column("name", no_wrap=True)
    table.add_column("parameters", no_wrap=True)
    table.add_column("p.l.", no_wrap=True)
    table.add_column("at the kink", width=16)
    table.add_column("stationary points", ratio=1)
    table.caption = "p.l.: piecewise linear (σ″ = 0 away from the kinks)"
    for name, parameters, linear, kink, stationary in activation_rows():
        table.add_row(name, parameters.replace(", ", "\n"), linear, kink.replace(", ", "\n"),
                      stationary)
    return table
