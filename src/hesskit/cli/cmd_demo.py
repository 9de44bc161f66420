"""``hesskit demo``: the main job — a tour of hesskit on bundled data, in a few minutes.

It runs the other sub-commands in turn (the CLI stays a thin layer: each step is exactly
what a user could type) and writes every plot and report under one output folder:

1. transfer functions and their first and second derivatives;
2. Newton's method on single transfer functions, and why it fails there;
3. one ReLU neuron with a squared-error objective, whose curvature does vary with w;
4. the exact Hessian of a small ReLU network on the digits, split H = G + R, with its
   structure report;
5. its top eigenvalues and spectral density, matrix-free;
6. RMSProp's √v against the exact curvature diagonals along a short training run;
7. a short benchmark of Hessian-free against RMSProp, Adam and SGD on a digits autoencoder.

It ends with one self-contained page, ``<out>/index.html``, holding every section
(:func:`hesskit.report.tour.write_tour_page`), and prints its path.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console

from hesskit.cli.options import float_below, output_dir

DEMO_FILES = ("index.html", "bench")
"""What makes a folder hold a tour (its page, and the benchmark, which refuses to overwrite
a finished one): a new tour there is refused unless ``--overwrite`` moves it aside."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the tour of hesskit on bundled data (the main job)",
        description=__doc__,
    )
    parser.add_argument(
        "--out", default="hesskit-demo", help="output folder (default hesskit-demo); a folder "
        "that holds a finished tour is refused"
    )
    parser.add_argument(
        "--overwrite", action="store_true",
        help="if --out holds a tour, move it aside to <out>.old-<time> (never deleted) first",
    )
    parser.add_argument(
        "--bench-seconds",
        type=float_below(24 * 3600.0),
        default=20.0,
        help="wall-clock budget per optimizer and seed in the benchmark, up to a day "
        "(default 20)",
    )
    parser.set_defaults(run=run)


def steps(out: Path, bench_seconds: float) -> list[tuple[str, list[str]]]:
    """The demo as (title, hesskit argv) pairs."""
    return [
        (
            "Transfer functions and their derivatives",
            ["activations", "--plot", str(out / "activations")],
        ),
        *(
            (f"Newton's method on {name}: {why}",
             ["newton", "--activation", name, "--x0", x0, "--plot", str(out / "newton"),
              "--json", str(out / "newton" / f"newton_{name}.json")])
            for name, x0, why in (("relu", "1.5", "zero curvature"),
                                  ("sigmoid", "-1", "no stationary point"),
                                  ("tanh", "-1", "no stationary point"))
        ),
        (
            "One ReLU neuron with a squared error: curvature that varies with w",
            ["neuron", "--plot", str(out / "neuron"),
             "--json", str(out / "neuron" / "neuron.json")],
        ),
        (
            "Exact Hessian of a small ReLU network on the digits, H = G + R",
            [
                "hessian",
                "--layers",
                "64,12,10",
                "--activation",
                "relu",
                "--samples",
                "256",
                "--out",
                str(out / "hessian"),
            ],
        ),
        (
            "Top eigenvalues and spectral density, matrix-free",
            [
                "spectrum",
                "--layers",
                "64,32,10",
                "--samples",
                "512",
                "--top",
                "5",
                "--out",
                str(out / "spectrum"),
            ],
        ),
        (
            "RMSProp's √v against the exact curvature diagonals",
            [
                "diagonal",
                "--layers",
                "64,12,10",
                "--samples",
                "256",
                "--steps",
                "100",
                "--every",
                "25",
                "--out",
                str(out / "diagonal"),
            ],
        ),
        (
            "Hessian-free against RMSProp, Adam and SGD on a digits autoencoder",
            [
                "bench",
                "--problem",
                "digits-autoencoder",
                "--optimizers",
                "hf,rmsprop,adam,sgd",
                "--budget-seconds",
                f"{bench_seconds:g}",
                "--seeds",
                "1",
                "--out",
                str(out / "bench"),
            ],
        ),
    ]


def run(args: argparse.Namespace) -> int:
    from hesskit.cli.main import main  # imported here: main imports this module
    from hesskit.run_folder import prepare_run_folder

    moved = prepare_run_folder(args.out, DEMO_FILES, overwrite=args.overwrite)
    if moved is not None:
        print(f"hesskit: note: moved the previous tour in {args.out!r} to {str(moved)!r}",
              file=sys.stderr, flush=True)
    out = output_dir(args.out)
    console = Console()
    started = time.perf_counter()
    failures = []
    for number, (title, argv) in enumerate(steps(out, args.bench_seconds), start=1):
        console.rule(f"[bold]{number}. {title}")
        console.print(f"[dim]$ hesskit {' '.join(argv)}")
        if argv[0] == "hessian":
            console.print("[dim]the estimate below is the build of H, G and R; the eigenvalues, "
                          "heatmaps and page come on top")
        step_started = time.perf_counter()
        if main(argv) != 0:
            failures.append(title)
        elif argv[0] == "bench":  # main notes the page commands' lines; the demo notes this one
            from hesskit.report.provenance import record_command

            record_command(out / "bench", argv, f"benchmark problem {argv[2]}")
        console.print(f"[dim]step {number} took {time.perf_counter() - step_started:.0f} s")
    from hesskit.report.tour import write_tour_page

    page = write_tour_page(out)
    console.rule()
    console.print(
        f"Demo finished in {time.perf_counter() - started:.0f} s; outputs in {out.resolve()}"
    )
    for title in failures:
        console.print(f"[red]step failed: {title}")
    print(f"The whole tour on one page: {page.resolve()}")  # plain print: never wrapped
    return 1 if failures else 0
