"""Markdown tables of a ``hesskit bench`` report.json: medians over seeds, at equal time and data.

Usage::

    python benchmarks/summarize_bench.py REPORT.json [REPORT.json ...] [--times 2,5,10]
        [--epochs 1,5,20]

Several reports of the same problem (runs of different methods made at different times, such
as the MNIST autoencoder's first-order and curvature benchmarks) are merged into one table;
a method that appears in two of them is refused rather than mixed.

Prints two tables:

1. per method, medians over its seeds of the final train/test error, steps, epochs and
   optimizer seconds, with the lr the tuning chose;
2. per method, the median over seeds of the training error at a few common optimizer times
   (seconds) and data passes (epochs).

"Error at time t" of one run is the training error of its last evaluated point with
``wall_time <= t`` (the report's points are where the bench evaluated the full training set,
every 1/40 of the budget); a run that never got that far (its last point is before t, or its
first after) gives no value, shown "–" when no seed has one. The same with ``epochs`` for
data passes. The last column names the method with the lowest median at each point, the
curvature-based and the first-order best side by side, so that the report's question (does
a curvature method beat the best first-order one at equal time / equal data?) reads off it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

FIRST_ORDER = frozenset({"adam", "sgd", "rmsprop"})
"""Registry names of the first-order baselines; every other method estimates curvature."""


def error_at(records: Sequence[dict], axis: str, point: float) -> float | None:
    """Training error of the last evaluated record with ``record[axis] <= point``, or
    ``None`` if the run did not reach ``point`` (its last record is below it)."""
    evaluated = [r for r in records if r.get("train_error") is not None]
    if not evaluated or evaluated[-1][axis] < point:
        return None
    before = [r for r in evaluated if r[axis] <= point]
    return float(before[-1]["train_error"]) if before else None


def median_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(present) if present else None


def fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def runs_by_method(report: dict) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {name: [] for name in report["optimizers"]}
    for run in report["runs"]:
        grouped[run["optimizer"]].append(run)
    return {name: runs for name, runs in grouped.items() if runs}


def final_table(report: dict) -> str:
    titles = report["titles"]
    lines = ["| method | lr chosen | final train | final test | steps | epochs | seconds | "
             "diverged |", "|---|---|---|---|---|---|---|---|"]
    for name, runs in runs_by_method(report).items():
        last = [run["records"][-1] for run in runs]
        lr = runs[0]["lr"]
        lines.append(
            f"| {titles[name]} | {'–' if lr is None else f'{lr:g}'} "
            f"| {fmt(median_or_none([r['final_train_error'] for r in runs]))} "
            f"| {fmt(median_or_none([r['final_test_error'] for r in runs]))} "
            f"| {statistics.median(rec['iteration'] for rec in last):g} "
            f"| {fmt(statistics.median(rec['epochs'] for rec in last), 3)} "
            f"| {fmt(statistics.median(rec['wall_time'] for rec in last), 3)} "
            f"| {sum(bool(r['diverged']) for r in runs)}/{len(runs)} |"
        )
    return "\n".join(lines)


def equal_budget_table(report: dict, times: Sequence[float], epochs: Sequence[float]) -> str:
    titles = report["titles"]
    grouped = runs_by_method(report)
    columns = [("wall_time", t, f"{t:g} s") for t in times] + \
              [("epochs", e, f"{e:g} ep") for e in epochs]
    medians = {name: [median_or_none([error_at(r["records"], axis, p) for r in runs])
                      for axis, p, _ in columns] for name, runs in grouped.items()}
    lines = ["| method | " + " | ".join(label for *_, label in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for name, values in medians.items():
        lines.append(f"| {titles[name]} | " + " | ".join(fmt(v) for v in values) + " |")
    for group, label in ((FIRST_ORDER, "best first-order"), (None, "best curvature-based")):
        cells = []
        for i in range(len(columns)):
            pool = {n: v[i] for n, v in medians.items()
                    if (n in FIRST_ORDER) == (group is not None) and v[i] is not None}
            best = min(pool, key=pool.get) if pool else None
            cells.append("–" if best is None else f"{titles[best]} {fmt(pool[best])}")
        lines.append(f"| *{label}* | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def merge_reports(reports: Sequence[dict]) -> dict:
    """One report with every method of ``reports`` (all of one problem), in their order."""
    problems = {report["problem"] for report in reports}
    if len(problems) != 1:
        raise SystemExit(f"the reports are of different problems: {sorted(problems)}")
    merged = {**reports[0], "optimizers": [], "titles": {}, "runs": []}
    seeds: list[int] = []
    for report in reports:
        for name in report["optimizers"]:
            if name in merged["optimizers"]:
                raise SystemExit(f"method {name!r} is in more than one report; pass one of them")
            merged["optimizers"].append(name)
        merged["titles"].update(report["titles"])
        merged["runs"].extend(report["runs"])
        seeds.extend(seed for seed in report["seeds"] if seed not in seeds)
    merged["seeds"] = seeds
    return merged


def floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, nargs="+")
    parser.add_argument("--times", type=floats, default=[2.0, 5.0, 10.0])
    parser.add_argument("--epochs", type=floats, default=[1.0, 5.0, 20.0])
    args = parser.parse_args(argv)
    report = merge_reports([json.loads(path.read_text()) for path in args.report])
    print(f"**{report['problem']}**: {report['error_name']}, medians over seeds "
          f"{', '.join(map(str, report['seeds']))}\n")
    print(final_table(report))
    print("\nTraining error at equal optimizer time (s) and equal data passes (epochs), "
          "median over seeds:\n")
    print(equal_budget_table(report, args.times, args.epochs))


if __name__ == "__main__":
    main()
