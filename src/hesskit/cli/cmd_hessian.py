"""`hesskit hessian`: the dense H = G + R of a small model, its structure and its spectrum."""

from __future__ import annotations

import argparse
import json

from rich import box
from rich.console import Console, Group
from rich.table import Table

from hesskit.atomic_write import write_text_atomically
from hesskit.cli.model_spec import add_model_options, problem_from_args
from hesskit.cli.options import memory_size, output_dir
from hesskit.errors import InvalidArgumentError


def parameter_pair(text: str) -> tuple[str, str]:
    rows, _, columns = text.partition(",")
    if not rows or not columns or "," in columns:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not ROWS,COLUMNS: two parameter names such as 0.weight,2.weight"
        )
    return rows, columns


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
    parser.add_argument(
        "--zoom", type=parameter_pair, default=None, metavar="ROWS,COLUMNS",
        help="the block drawn alone, e.g. 0.weight,2.weight (default: the diagonal block of "
        "the largest parameter)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hesskit.dense import estimate_cost, hessian_of, structure_report
    from hesskit.dense.structure import zero_reason_codes
    from hesskit.report.hessian_plots import hessian_figures

    console = Console()
    problem = problem_from_args(args)
    names = problem.layout.names
    for name in args.zoom or ():
        if name not in names:
            raise InvalidArgumentError(
                f"--zoom: no parameter {name!r}; choose from {', '.join(names)}"
            )
    estimate = estimate_cost(problem, split=True, memory_budget=args.memory_budget)
    console.print(estimate.summary())
    if args.estimate_only:
        return 0
    folder = output_dir(args.out)
    with console.status("building H, G and R"):
        result = hessian_of(problem, split=True, memory_budget=args.memory_budget)
    report = structure_report(result)
    spectra = {part: result.spectrum(part) for part in ("H", "G", "R")}
    zero_codes = {part: zero_reason_codes(result, part) for part in ("H", "G", "R")}
    with console.status("drawing the figures"):
        figures = hessian_figures(result, zero_codes, folder, zoom=args.zoom, spectra=spectra)
    summary = {
        k: {key: v for key, v in s.to_dict().items() if key != "values"} for k, s in spectra.items()
    }
    payload = {
        "estimate": estimate.to_dict(), "spectra": summary, "structure": report.to_dict(),
        "figures": [{"file": path.name, "caption": caption} for path, caption in figures],
    }
    write_text_atomically((folder / "structure.json"), json.dumps(payload, indent=2))
    from hesskit.report.tour import write_hessian_page

    page = write_hessian_page(folder, figures)
    console.print(_table(report))
    for part, s in spectra.items():
        console.print(
            f"{part}: eigenvalues in [{float(s.values[0]):.3e}, {float(s.values[-1]):.3e}], "
            f"{s.num_negative} negative"
        )
    console.print(
        f"wrote {folder}/: {' '.join(path.name for path, _ in figures)} structure.json"
    )
    print(f"page: {page.resolve()}")  # plain print: a path is never wrapped
    return 0


SHORT_REASONS = {
    "non_interacting_outputs": "outputs",
    "linear_in_layer": "linear",
    "separate_hidden_units": "units",
    "separate_units_in_layer": "within",
    "dead_unit": "dead",
    "zero_input_feature": "input",
    "disjoint_support": "support",
    "unexplained": "unexpl",
}
"""Column headers of the zero table; the legend below it gives the full reason."""


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _count(value: int) -> str:
    return str(value) if value else "-"


def _reasons(report) -> list[str]:
    """The reasons that occur in the report, in the report's order; unexplained always."""
    seen = {reason for block in report.blocks for r in block.zero_reasons.values() for reason in r}
    known = list(report.explanations)
    ordered = [r for r in known if r in seen or r == "unexplained"]
    return ordered + sorted(seen - set(known))


def _table(report) -> Group:
    """The structure report in two compact tables that fit 80 columns, and a legend.

    The first gives each block's shape, ‖H_b‖_F and the shares of G and R; the second,
    three rows per block (H, G, R), the exact zeros and how many each reason explains.
    Numbers never wrap; only the parameter names fold when they are very long.
    """
    title = f"structure of H = G + R (N = {report.num_params}, {report.method})"
    norms = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    norms.add_column("block", overflow="fold")
    for header in ("shape", "|H|_F", "G share", "R share"):
        norms.add_column(header, justify="right", no_wrap=True)
    for block in report.blocks:
        norms.add_row(
            f"{block.rows} x {block.columns}",
            f"{block.shape[0]}x{block.shape[1]}",
            f"{block.norm:.1e}",
            _share(block.gauss_newton_share),
            _share(block.residual_share),
        )
    reasons = _reasons(report)
    zeros = Table(title="exact zeros by reason", box=box.SIMPLE_HEAD, pad_edge=False)
    zeros.add_column("block", overflow="fold")
    zeros.add_column("", no_wrap=True)
    zeros.add_column("zeros", justify="right", no_wrap=True)
    for reason in reasons:
        zeros.add_column(SHORT_REASONS.get(reason, reason), justify="right", no_wrap=True)
    for block in report.blocks:
        labels = [block.rows, f" x {block.columns}", ""]
        parts = [p for p in "HGR" if p in block.zeros]
        for k, part in enumerate(parts):
            counts = block.zero_reasons.get(part, {})
            zeros.add_row(
                labels[k] if k < 2 else "",
                part,
                str(block.zeros[part]),
                *(_count(counts.get(reason, 0)) for reason in reasons),
                end_section=k == len(parts) - 1,
            )
    legend = Table.grid(padding=(0, 1))
    legend.add_column(no_wrap=True)
    legend.add_column(overflow="fold")
    legend.add_row("G/R share:", "the share of the block's squared norm in G and in R")
    for reason in reasons:
        legend.add_row(
            f"{SHORT_REASONS.get(reason, reason)}:", report.explanations.get(reason, reason)
        )
    return Group(norms, zeros, legend)
