"""`hesskit hessian`: the dense H = G + R of a small model, its structure and its spectrum."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from hesskit.cli.model_spec import add_model_options, problem_from_args
from hesskit.cli.options import output_dir
from hesskit.errors import InvalidArgumentError


def memory_size(text: str) -> int:
    from hesskit.dense.cost import parse_bytes

    try:
        return parse_bytes(text)
    except InvalidArgumentError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    except (OverflowError, ValueError):  # "1e400GB" is infinite
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite memory size") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "hessian",
        help="exact dense Hessian H = G + R of a small model: heatmaps, spectrum, structure",
        description="Build the exact Hessian H, its Gauss-Newton part G and the rest R; write "
        "heatmaps, an eigenvalue plot and a structure report (JSON and a table).",
    )
    add_model_options(parser)
    parser.add_argument("--out", default="hesskit-out/hessian", help="output folder")
    parser.add_argument(
        "--memory-budget",
        type=memory_size,
        default=None,
        help="memory the build may use, e.g. 2GB (default: half the available)",
    )
    parser.add_argument(
        "--estimate-only", action="store_true", help="print the cost estimate and stop"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hesskit.dense import estimate_cost, hessian_of, structure_report
    from hesskit.report.hessian_plots import plot_log_abs_heatmap, plot_spectra

    console = Console()
    problem = problem_from_args(args)
    estimate = estimate_cost(problem, split=True, memory_budget=args.memory_budget)
    console.print(estimate.summary())
    if args.estimate_only:
        return 0
    folder = output_dir(args.out)
    with console.status("building H, G and R"):
        result = hessian_of(problem, split=True, memory_budget=args.memory_budget)
    report = structure_report(result)
    names, offsets = list(result.layout.names), list(result.layout.offsets)
    titles = {"H": "Hessian H", "G": "Gauss-Newton G", "R": "residual R = H - G"}
    files = {"H": "hessian.png", "G": "gauss_newton.png", "R": "residual.png"}
    spectra = {}
    for part, title in titles.items():
        plot_log_abs_heatmap(
            result.matrix(part).cpu().numpy(), names, offsets, f"log|{title}|", folder / files[part]
        )
        spectra[part] = result.spectrum(part)
    plot_spectra(
        {k: s.values.cpu().numpy() for k, s in spectra.items()},
        {k: s.num_negative for k, s in spectra.items()},
        folder / "eigenvalues.png",
        linear_below=max(s.tolerance for s in spectra.values()) or None,
    )
    summary = {
        k: {key: v for key, v in s.to_dict().items() if key != "values"} for k, s in spectra.items()
    }
    payload = {"estimate": estimate.to_dict(), "spectra": summary, "structure": report.to_dict()}
    (folder / "structure.json").write_text(json.dumps(payload, indent=2))
    console.print(_table(report))
    for part, s in spectra.items():
        console.print(
            f"{part}: eigenvalues in [{float(s.values[0]):.3e}, {float(s.values[-1]):.3e}], "
            f"{s.num_negative} negative"
        )
    console.print(
        f"wrote {folder}/: hessian.png gauss_newton.png residual.png eigenvalues.png structure.json"
    )
    return 0


SHORT_REASONS = {
    "non_interacting_outputs": "outputs",
    "linear_in_layer": "linear",
    "separate_hidden_units": "units",
    "dead_unit": "dead",
    "zero_input_feature": "input",
    "unexplained": "UNEXPLAINED",
}


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _reasons(block) -> str:
    return "; ".join(
        f"{part} " + " ".join(f"{SHORT_REASONS.get(k, k)}:{v}" for k, v in reasons.items())
        for part, reasons in block.zero_reasons.items()
        if reasons
    )


def _table(report) -> Table:
    table = Table(title=f"structure of H = G + R (N = {report.num_params}, {report.method})")
    for column in ("block", "shape", "|H|", "G", "zeros H/G/R", "why zero"):
        table.add_column(column, overflow="fold")
    for block in report.blocks:
        table.add_row(
            f"{block.rows} x {block.columns}",
            f"{block.shape[0]}x{block.shape[1]}",
            f"{block.norm:.1e}",
            _share(block.gauss_newton_share),
            "/".join(str(block.zeros.get(p, "-")) for p in "HGR"),
            _reasons(block),
        )
    table.caption = "G: share of the block's squared norm in G. why zero: " + ", ".join(
        f"{short} = {name}" for name, short in SHORT_REASONS.items()
    )
    return table
