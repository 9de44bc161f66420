"""`hesskit spectrum`: top eigenvalues, trace, diagonal and spectral density of a curvature matrix.

Lanczos gives the top ``--top`` eigenvalues to relative residual ``--tol``; Hutch++ the
trace with its standard error; stochastic Lanczos quadrature the spectral density. The
diagonal is exact where ``estimators.exact_diagonal`` has an exact method (then the exact
trace is printed beside Hutch++'s), else Hutchinson's estimate with its standard error.
Writes ``spectrum.json``, ``spectral_density.png``, ``eigenvalues.png`` and the page
``index.html`` (all of it, one self-contained file) to ``--out``. An estimate that takes
a while shows its progress on stderr (a bar on a terminal, else a line every few seconds:
products so far, time left).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hesskit.atomic_write import write_text_atomically
from hesskit.cli.model_spec import add_model_options, problem_from_args
from hesskit.cli.options import float_below, int_between, memory_size, output_dir
from hesskit.errors import InvalidArgumentError
from hesskit.estimators import (
    block_spectra,
    default_width,
    density_on_grid,
    hutchinson_diagonal,
    hutchpp_trace,
    module_blocks,
    spectral_density,
    top_eigenpairs,
)
from hesskit.estimators.spectral_density import width_for_range
from hesskit.operators import gauss_newton_operator, hessian_operator

MATRICES = {
    "hessian": ("Hessian", hessian_operator),
    "ggn": ("Gauss-Newton", gauss_newton_operator),
}
MAX_PROBES = 1_000_000
MAX_DENSITY_STEPS = 100_000


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "spectrum",
        help="top eigenvalues, trace, diagonal and spectral density of the Hessian or GGN",
        description=__doc__.splitlines()[0],
    )
    add_model_options(parser)
    parser.add_argument("--matrix", choices=sorted(MATRICES), default="hessian",
                        help="curvature matrix (default hessian)")
    parser.add_argument("--top", type=int_between(1, MAX_PROBES), default=5,
                        help="number of top eigenvalues, at most the parameter count (default 5)")
    parser.add_argument("--tol", type=float_below(1.0, open_high=True), default=1e-3,
                        help="relative residual tolerance of the eigenpairs, in (0, 1) "
                             "(default 1e-3)")
    parser.add_argument("--probes", type=int_between(1, MAX_PROBES), default=60,
                        help="Hutch++ product budget and Hutchinson diagonal probes (default 60)")
    parser.add_argument("--density-probes", type=int_between(1, MAX_PROBES), default=4,
                        help="probes of the spectral density (default 4)")
    parser.add_argument("--density-steps", type=int_between(1, MAX_DENSITY_STEPS), default=64,
                        help="Lanczos steps per density probe (default 64)")
    parser.add_argument("--per-block", action="store_true",
                        help="also the top eigenvalues and density of each parameter block "
                             "(writes block_spectra.png)")
    parser.add_argument("--block-depth", type=int_between(1, 100), default=None,
                        help="blocks by the first DEPTH parts of the module path (e.g. 3 for "
                             "transformer.h.<i>); default every module its own block")
    parser.add_argument("--memory-budget", type=memory_size, default=None,
                        help="memory the estimators' vectors may use, e.g. 3GB (default: half "
                             "the available); past it Lanczos and the density keep no basis")
    parser.add_argument("--out", default="hesskit-out/spectrum",
                        help="output folder (default hesskit-out/spectrum)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    folder = output_dir(args.out)
    problem = problem_from_args(args)
    name, build = MATRICES[args.matrix]
    op = build(problem)
    n = problem.num_params
    if args.top > n:
        raise InvalidArgumentError(
            f"--top {args.top} asks for more eigenvalues than the {n} parameters have; use "
            f"--top {n} or fewer (or hesskit hessian for all of them)"
        )
    print(f"{name} of {n} parameters on {problem.num_data} samples (seed {args.seed})")
    top = args.top
    budget = args.memory_budget
    eig = top_eigenpairs(op, top, tol=args.tol, seed=args.seed, memory_budget=budget)
    state = "converged" if eig.converged else "NOT converged (raise the budget or --tol)"
    print(f"top {top} eigenvalues (Lanczos, tol {args.tol:g}, {eig.products} products, {state}):")
    pairs = zip(eig.values.tolist(), eig.residuals.tolist(), strict=True)
    for i, (value, residual) in enumerate(pairs):
        print(f"  {i + 1:2d}  {value: .6e}   residual {residual:.1e}")
    trace = hutchpp_trace(op, max(args.probes, 6), seed=args.seed, memory_budget=budget)
    print(f"trace: {trace.value:.6g} ± {trace.stderr:.2g} (Hutch++, {trace.products} products)")
    exact = _exact_diagonal(problem, args.matrix)
    if exact is None:  # no exact method: Hutchinson's estimate with its error
        probes = max(args.probes, 2)
        diag = hutchinson_diagonal(op, probes, seed=args.seed, memory_budget=budget)
        print(f"diagonal (Hutchinson, {probes} probes): {_summary(diag.value)}, "
              f"relative stderr {diag.relative_stderr():.2g}")
        diagonal = {"method": "hutchinson", "probes": probes, **_summary_dict(diag.value),
                    "relative_stderr": diag.relative_stderr()}
    else:  # exact, and cheaper than the estimate: no Hutchinson estimate beside it
        print(f"diagonal (exact): {_summary(exact)}; exact trace: {float(exact.sum()):.6g}")
        diagonal = {"method": "exact", "probes": 0, **_summary_dict(exact),
                    "relative_stderr": 0.0}
    quadrature = spectral_density(op, probes=args.density_probes, steps=args.density_steps,
                                  seed=args.seed, memory_budget=budget)
    width = default_width(quadrature)
    grid, density = density_on_grid(quadrature, width=width)
    print(f"spectral density: {args.density_probes} probes × {quadrature.nodes.shape[1]} "
          f"steps ({quadrature.products} products)")
    record = {
        "matrix": args.matrix,
        "num_params": n,
        "num_data": problem.num_data,
        "seed": args.seed,
        "eigenvalues": {"values": eig.values.tolist(), "residuals": eig.residuals.tolist(),
                        "products": eig.products, "converged": eig.converged, "tol": args.tol},
        "trace": {"method": "hutch++", "value": trace.value, "stderr": trace.stderr,
                  "products": trace.products},
        "diagonal": diagonal,
        "exact": None if exact is None else {"trace": float(exact.sum()), **_summary_dict(exact)},
        "density": {"grid": grid.tolist(), "density": density.tolist(), "width": width,
                    "nodes": quadrature.nodes.tolist(), "weights": quadrature.weights.tolist(),
                    "products": quadrature.products},
    }
    if args.per_block:
        record["blocks"] = _per_block(op, args, folder, name)
    _write(folder, record, name, grid, density, eig)
    return 0


def _per_block(op, args: argparse.Namespace, folder: Path, name: str) -> dict:
    """Each block's top eigenvalues and density: printed, plotted, and returned for the JSON."""
    from hesskit.report.spectrum_plots import plot_block_spectra

    spectra = block_spectra(op, module_blocks(op.layout.names, args.block_depth),
                            k=args.top, tol=args.tol, density_probes=1,
                            density_steps=args.density_steps, memory_budget=args.memory_budget,
                            seed=args.seed)
    print(f"per block (top {args.top} eigenvalues, density 1 probe × {args.density_steps} "
          "steps):")
    record, curves = {}, {}
    nodes = torch.cat([s.density.nodes[s.density.weights > 0] for s in spectra.values()])
    low, high = float(nodes.min()), float(nodes.max())
    width = width_for_range(low, high)  # one σ for all blocks
    grid = torch.linspace(low - 5 * width, high + 5 * width, 1000, dtype=torch.float64)
    for block, spectrum in spectra.items():
        values = spectrum.eigenpairs.values.tolist()
        state = "" if spectrum.eigenpairs.converged else "  NOT converged"
        print(f"  {block:<32} {spectrum.num_params:>10,} parameters  "
              f"top {values[0]: .4e}{state}")
        _, density = density_on_grid(spectrum.density, width=width, grid=grid)
        curves[block] = (grid.tolist(), density.tolist())
        record[block] = {"names": list(spectrum.names), "num_params": spectrum.num_params,
                         "values": values, "converged": spectrum.eigenpairs.converged,
                         "products": spectrum.eigenpairs.products + spectrum.density.products,
                         "nodes": spectrum.density.nodes.tolist(),
                         "weights": spectrum.density.weights.tolist()}
    path = plot_block_spectra(curves, {b: r["values"][0] for b, r in record.items()},
                              folder / "block_spectra.png", title=f"{name} per block")
    print(f"wrote {path}")
    return record


def _write(folder: Path, record: dict, name: str, grid, density, eig) -> None:
    from hesskit.report.spectrum_plots import plot_eigenvalues, plot_spectral_density

    json_path = folder / "spectrum.json"
    write_text_atomically(json_path, json.dumps(record) + "\n")
    largest = float(eig.values.max()) if eig.converged else None
    density_path = plot_spectral_density(
        grid.tolist(), density.tolist(), folder / "spectral_density.png",
        eigenvalues=eig.values.tolist(), largest=largest, width=record["density"]["width"],
        title=f"{name} spectral density (SLQ)",
    )
    eigen_path = plot_eigenvalues(eig.values.tolist(), eig.residuals.tolist(),
                                  folder / "eigenvalues.png", title=f"{name} top eigenvalues")
    from hesskit.report.tour import write_spectrum_page

    page = write_spectrum_page(folder)
    print(f"wrote {json_path}, {density_path} and {eigen_path}")
    print(f"page: {page.resolve()}")  # plain print: a path is never wrapped


def _exact_diagonal(problem, matrix: str) -> torch.Tensor | None:
    """The exact diagonal where ``estimators.exact_diagonal`` has an exact method, else None."""
    try:
        from hesskit.estimators.exact_diagonal import diagonal
    except ImportError:
        return None
    result = diagonal(problem, matrix, probes=2)
    return result.values if result.exact else None


def _summary(values: torch.Tensor) -> str:
    s = _summary_dict(values)
    return f"min {s['min']:.3g}, median {s['median']:.3g}, max {s['max']:.3g}"


def _summary_dict(values: torch.Tensor) -> dict[str, float]:
    return {"min": float(values.min()), "median": float(values.median()),
            "max": float(values.max())}
