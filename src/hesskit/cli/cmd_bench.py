"""`hesskit bench`: compare optimizers on one problem under one budget; HTML + JSON report.

Each method runs the same budget (``--budget-seconds`` of optimizer time or
``--budget-epochs`` of data) on each seed. First-order learning rates are chosen from a
small grid per method: each lr runs ``--tune-fraction`` of the budget on the first seed and
the lowest final training error wins. Damped Newton runs only on small models. ``--jobs N``
runs N methods at once, each in its own process on 1/N of the torch threads. The report
(``report.html``, self-contained, and ``report.json``) goes to ``--out``; while it runs,
``report.partial.json`` holds the methods finished so far and each run's ``log.jsonl`` is
written as it goes, so an interrupted benchmark keeps what it measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hesskit.cli.options import (
    DATA_DIR_HELP,
    MAX_SEED,
    OPTIMIZER_NAMES,
    float_below,
    int_between,
    output_dir,
    problem_help,
    problem_name,
)

DEFAULT_OPTIMIZERS = "hf,newton,rmsprop,adam,sgd,lbfgs"
MAX_SEEDS = 1000
MAX_JOBS = 64
MAX_BUDGET_SECONDS = 7 * 24 * 3600.0
MAX_BUDGET_EPOCHS = 1e6
PARTIAL_NAME = "report.partial.json"
"""The report of the methods finished so far, rewritten (atomically) as each one ends and
removed once ``report.json`` is written: what an interrupted benchmark leaves."""
BENCH_FILES = ("report.json", "report.html", PARTIAL_NAME, "runs")
"""What makes a folder hold a benchmark (a new one there is refused)."""


def seed_list(text: str) -> tuple[int, ...]:
    """``"3"`` → seeds 0, 1, 2; ``"0,5"`` → seeds 0 and 5 (at most :data:`MAX_SEEDS`)."""
    try:
        if "," in text:
            seeds = tuple(int(part) for part in text.split(",") if part.strip())
        else:
            count = int(text)
            if count > MAX_SEEDS:
                raise argparse.ArgumentTypeError(
                    f"{text!r} seeds are too many: at most {MAX_SEEDS}")
            seeds = tuple(range(count))
    except ValueError:
        message = f"{text!r} is neither a count nor a list like 0,1,2"
        raise argparse.ArgumentTypeError(message) from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r} gives no seeds; pass a count >= 1 or a list")
    if len(seeds) > MAX_SEEDS:
        raise argparse.ArgumentTypeError(f"{text!r} lists more than {MAX_SEEDS} seeds")
    if any(not 0 <= seed <= MAX_SEED for seed in seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: every seed must lie in 0 .. 2**63 - 1")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a seed; list each seed once")
    return seeds


def optimizer_list(text: str) -> tuple[str, ...]:
    """``"hf,adam"`` → ("hf", "adam"); names are checked against the registry later."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names no optimizer; e.g. {DEFAULT_OPTIMIZERS}")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"{text!r} names {', '.join(twice)} twice; "
                                         "list each optimizer once")
    return names


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="compare optimizers on a problem; writes an HTML report",
        description=__doc__,
    )
    parser.add_argument("--problem", required=True, type=problem_name, help=problem_help())
    parser.add_argument("--optimizers", type=optimizer_list,
                        default=optimizer_list(DEFAULT_OPTIMIZERS),
                        help=f"comma-separated, from {', '.join(OPTIMIZER_NAMES)} "
                             f"(default {DEFAULT_OPTIMIZERS})")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget-seconds", type=float_below(MAX_BUDGET_SECONDS), metavar="SECONDS",
                        help="optimizer wall-clock seconds per run, up to a week (default 10)")
    budget.add_argument("--budget-epochs", type=float_below(MAX_BUDGET_EPOCHS), metavar="EPOCHS",
                        help=f"epochs of data per run (up to {MAX_BUDGET_EPOCHS:g})")
    parser.add_argument("--seeds", type=seed_list, default=(0,),
                        help="a count (3 → seeds 0,1,2) or a list (0,5); default 1")
    parser.add_argument("--tune-fraction", type=float_below(1.0), default=0.2,
                        help="share of the budget per lr while tuning, in (0, 1] (default 0.2)")
    parser.add_argument("--jobs", type=int_between(1, MAX_JOBS), default=1,
                        help="methods run at the same time, each in its own process on an "
                             "equal share of the torch threads (default 1: one after another)")
    parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                        help="how optimizer seconds are counted: wall (elapsed, default) or "
                             "process (CPU time of each run's process: fair when other work "
                             "shares the machine; one thread per job recommended)")
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument("--out", help="output folder (default hesskit-out/bench/<problem>); "
                                      "a folder that holds a benchmark is refused")
    parser.add_argument("--overwrite", action="store_true",
                        help="if --out holds a benchmark, move it aside to <out>.old-<time> "
                             "(never deleted) and start afresh")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hesskit.report.html import write_report
    from hesskit.report.schema import write_report_json
    from hesskit.run_folder import prepare_run_folder
    from hesskit.training.bench import BenchConfig, run_benchmark

    kind, value = (("epochs", args.budget_epochs) if args.budget_epochs is not None
                   else ("seconds", args.budget_seconds or 10.0))
    config = BenchConfig(
        problem=args.problem,
        optimizers=args.optimizers,
        budget_kind=kind, budget_value=value, seeds=args.seeds,
        tune_fraction=args.tune_fraction, data_dir=args.data_dir, jobs=args.jobs,
        clock=args.clock,
    )
    from hesskit.problems import build_model

    build_model(config.problem)  # unknown problem: one line before any work
    out = Path(args.out or Path("hesskit-out", "bench", config.problem))
    moved = prepare_run_folder(out, BENCH_FILES, overwrite=args.overwrite)
    if moved is not None:
        print(f"hesskit: note: moved the previous benchmark in {str(out)!r} to "
              f"{str(moved)!r}", file=sys.stderr, flush=True)
    out = output_dir(out)
    console = Console()
    partial = out / PARTIAL_NAME
    report = run_benchmark(config, runs_dir=out / "runs", progress=not args.no_progress,
                           announce=console.print,
                           on_progress=lambda report: write_report_json(report, partial))
    html_path, json_path = write_report(report, out)
    partial.unlink(missing_ok=True)
    console.print(results_table(report))
    for skipped in report.skipped:
        console.print(f"[yellow]note:[/] {skipped.reason}")
    print(f"JSON: {Path(json_path).resolve()}")  # plain print: a path is never wrapped
    print(f"HTML report: {Path(html_path).resolve()}")
    return 0


def results_table(report):
    """The final table (medians over seeds: final train/test error, steps, epochs,
    curvature products, optimizer seconds) as a rich Table."""
    from rich.table import Table

    from hesskit.report.html import summary_rows

    table = Table(title=f"{report.problem}: {report.error_name} (median over "
                        f"{len(report.seeds)} seed{'s' if len(report.seeds) > 1 else ''})")
    for column in ("method", "lr", "train", "test", "steps", "epochs", "products", "s"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in summary_rows(report):
        lr = "–" if row.lr is None else f"{row.lr:g}"
        table.add_row(row.title, lr, f"{row.train_error:.4g}", f"{row.test_error:.4g}",
                      f"{row.iterations:g}", f"{row.epochs:.3g}", f"{row.products:g}",
                      f"{row.seconds:.3g}")
    return table
