"""`hesskit newton`: Newton's method on one transfer function, with its diagnosis."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hesskit.activations import ACTIVATION_NAMES, get_activation
from hesskit.atomic_write import write_text_atomically
from hesskit.cli.options import finite_float, int_between, output_dir
from hesskit.errors import InvalidArgumentError
from hesskit.newton import NewtonMode, diagnose_activation

MAX_ITER = 1_000_000


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "newton",
        help="run 1-D Newton on a transfer function and explain why it stops",
        description=(
            "Newton's method x ← x − σ′(x)/σ″(x) with the closed-form derivatives of one "
            "activation. Prints the iterates and a diagnosis (converged, zero curvature, no "
            "stationary point, negative curvature, ...). Exit 0 whenever it ran: a failure of "
            f"Newton is the answer. Activations: {', '.join(ACTIVATION_NAMES)}."
        ),
    )
    parser.add_argument("--activation", required=True, metavar="NAME", help="e.g. relu, sigmoid")
    parser.add_argument("--x0", required=True, type=finite_float, help="starting point")
    parser.add_argument(
        "--max-iter", type=int_between(0, MAX_ITER), default=50,
        help=f"most Newton steps, up to {MAX_ITER:,} (default 50)"
    )
    parser.add_argument(
        "--mode",
        choices=[m.value for m in NewtonMode],
        default=NewtonMode.MINIMIZE.value,
        help="minimize (stop where σ″ < 0) or stationary (any σ′ = 0); default minimize",
    )
    parser.add_argument("--plot", metavar="DIR", help="also write newton_<NAME>.png into DIR")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the diagnosis (status, message, last x) as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    activation = get_activation(args.activation)
    folder = output_dir(args.plot, "--plot") if args.plot is not None else None
    json_path = json_output_path(args.json) if args.json is not None else None
    result = diagnose_activation(activation.name, args.x0, max_iter=args.max_iter, mode=args.mode)
    table = Table(title=f"Newton on {activation.name} from x0 = {args.x0:g} ({args.mode})")
    for column in ("k", "x", "f(x)", "f′(x)", "f″(x)"):
        table.add_column(column, justify="right")
    for k, it in enumerate(result.iterates):
        table.add_row(str(k), f"{it.x:.12g}", f"{it.f:.6g}", f"{it.df:.6g}", f"{it.d2f:.6g}")
    Console(width=120).print(table)
    print(f"status: {result.status.name}")
    print(result.message)
    if folder is not None:
        from hesskit.report.scalar_plots import plot_newton

        print(f"wrote {plot_newton(activation, result, folder / f'newton_{activation.name}.png')}")
    if json_path is not None:
        record = {"activation": activation.name, "x0": args.x0, "mode": args.mode,
                  "status": result.status.value, "message": result.message,
                  "steps": len(result.iterates) - 1, "x": result.x}
        write_text_atomically(json_path, json.dumps(record) + "\n")
        print(f"wrote {json_path}")
    return 0


def json_output_path(text: str, option: str = "--json") -> Path:
    """``text`` as the path of a file to write: its folder is created; a folder is refused.

    Raises:
        InvalidArgumentError: ``text`` names an existing folder or an unwritable place.
    """
    path = Path(text)
    if path.is_dir():
        raise InvalidArgumentError(f"{option} {text!r} is a folder; give a file name such as "
                                   f"{str(path / 'result.json')!r}")
    output_dir(path.parent, option)
    return path
