"""One page section per sub-command, drawn from what the command wrote into its folder.

Each ``*_section(folder)`` reads the files one sub-command wrote into its output folder
(JSON and PNGs; it never computes a derivative) and returns a :class:`pages.Section` with
one sentence of what it shows. A missing input becomes a visible note, never an exception,
so that a page is written even when one step of the demo failed. The pages that hold them
are built in :mod:`hesskit.report.tour`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from hesskit.report.pages import (
    Section,
    escape,
    figure,
    link,
    missing,
    paragraph,
    preformatted,
    table,
)
from hesskit.report.provenance import command_block

FigureList = Sequence[tuple[Path | str, str]]
"""(PNG path, caption) pairs, in page order."""
HESSIAN_CAPTIONS = {
    "hessian.png": "log10 |H| entry by entry, blocks ordered as the parameters.",
    "gauss_newton.png": "log10 |G|: the Gauss-Newton part of H (positive semi-definite).",
    "residual.png": "log10 |R|, R = H - G: the part that carries the second derivatives of "
    "the network.",
    "eigenvalues.png": "Eigenvalues of H, G and R, sorted (symmetric log scale).",
}
SPECTRUM_CAPTIONS = {
    "eigenvalues.png": "The top eigenvalues found by Lanczos. Each error bar is the residual "
    "‖Av − θv‖, which bounds the distance to a true eigenvalue; most are far smaller than "
    "the marker, so the largest is written in the corner.",
    "spectral_density.png": "Spectral density by stochastic Lanczos quadrature, smoothed by "
    "a Gaussian whose width σ is in the legend; the top eigenvalues are marked, and past "
    "the largest one the curve is only the smoothing's tail (dashed).",
    "block_spectra.png": "Each parameter block's own curvature (--per-block): the density of "
    "its diagonal block of the matrix (one SLQ probe) and its top eigenvalue. How far the "
    "blocks differ is the block heterogeneity of Zhang et al. (2024).",
}
ACTIVATION_COLUMNS = ("name", "parameters", "piecewise linear", "at the kink", "stationary points")


def activation_rows() -> list[tuple[str, str, str, str, str]]:
    """The registry of transfer functions as text cells, in :data:`ACTIVATION_COLUMNS`."""
    from hesskit.activations import ACTIVATION_NAMES, get_activation

    rows = []
    for activation in map(get_activation, ACTIVATION_NAMES):
        shown = [f"{k}={v:g}" for k, v in activation.parameters.items() if v is not None]
        rows.append(
            (
                activation.name,
                ", ".join(shown) or "—",
                "yes" if activation.piecewise_linear else "no",
                activation.kink_convention(),
                activation.stationary_points(),
            )
        )
    return rows


def figures_in(
    folder: Path, captions: dict[str, str], figures: FigureList | None = None
) -> list[str]:
    """Figures of ``folder``: ``figures`` if given, else the known files in ``captions``
    order, then any other PNG there (captioned by its file name)."""
    if figures is None:
        known = [(folder / name, caption) for name, caption in captions.items()]
        others = [
            (path, f"Figure {path.stem.replace('_', ' ')} written by the command.")
            for path in sorted(folder.glob("*.png"))
            if path.name not in captions
        ]
        figures = [(path, caption) for path, caption in known if path.is_file()] + others
    return [figure(Path(path), caption, key=f"{Path(path).parent.name}-{Path(path).stem}")
            for path, caption in figures]


def listed_figures(data: dict | None, folder: Path) -> list[tuple[Path, str]] | None:
    """The figures a JSON record lists, ``data["figures"] = [{"file", "caption"}]``, whose
    files exist in ``folder`` (None: the record lists none)."""
    listed = data.get("figures") if isinstance(data, dict) else None
    if not isinstance(listed, list):
        return None
    pairs = [
        (folder / item["file"], item["caption"])
        for item in listed
        if isinstance(item, dict) and {"file", "caption"} <= item.keys()
    ]
    return [(path, caption) for path, caption in pairs if path.is_file()]


def _json(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def activations_section(folder: Path) -> Section:
    """σ, σ′ and σ″ of every transfer function (activations.png) and the registry table."""
    parts = [table(ACTIVATION_COLUMNS, activation_rows(), text=True)]
    parts += figures_in(
        folder, {"activations.png": "σ, σ′ and σ″ of every transfer function on [-4, 4]."}
    ) or [missing("activations.png missing")]
    return Section(
        "Transfer functions",
        "Each activation with its first and second "
        "derivative, and what its kink and stationary points mean for Newton.",
        (*command_block(folder), *parts),
    )


def newton_section(folder: Path) -> Section:
    """Each ``newton_<name>.json`` (from ``hesskit newton --json``) with its figure."""
    parts = []
    for path in sorted(folder.glob("newton_*.json")):
        run = _json(path)
        if run is None:
            parts.append(missing(f"{path.name} unreadable"))
            continue
        parts.append(
            f"<h3>{escape(run['activation'])} from x0 = {run['x0']:g}: {escape(run['status'])}</h3>"
        )
        parts.append(
            paragraph(f"After {run['steps']} steps at x = {run['x']:.6g}. {run['message']}")
        )
        png = path.with_suffix(".png")
        if png.is_file():
            parts.append(
                figure(
                    png,
                    f"σ and σ′ of {run['activation']} around Newton's iterates, numbered in order.",
                )
            )
    return Section(
        "Newton's diagnoses",
        "What Newton's method x ← x − σ′(x)/σ″(x) concluded on single transfer functions, and why.",
        (*command_block(folder), *(parts or [missing("no newton_*.json in " + str(folder))])),
    )


def neuron_section(folder: Path) -> Section:
    """The ReLU neuron's Newton run (neuron.json) and neuron.png."""
    run = _json(folder / "neuron.json")
    parts = (
        []
        if run is None
        else [
            paragraph(
                f"Newton on (w, b) from ({run['w0']:g}, {run['b0']:g}) stopped with status "
                f"{run['status']} at (w, b) = ({run['w']:.6g}, {run['b']:.6g}). {run['message']}"
            )
        ]
    )
    parts += figures_in(
        folder,
        {
            "neuron.png": "E(w) at fixed b, its curvature d²E/dw² "
            "against w, and Newton's path on the contours of E."
        },
    )
    return Section(
        "One ReLU neuron",
        "A single ReLU neuron with a squared error: its "
        "curvature changes with w as samples switch on and off.",
        (*command_block(folder), *(parts or [missing("neuron.json and neuron.png missing")])),
    )


def _count(value: int) -> str:
    return f"{value:,}" if value else "–"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _structure_tables(data: dict) -> list[str]:
    """Eigenvalue counts, block norms and shares, zeros by reason (one column per reason,
    one row per block and matrix), and the legend of the reasons."""
    structure = data.get("structure", {})
    blocks = structure.get("blocks", [])
    explanations = structure.get("explanations", {})
    seen = {r for b in blocks for counts in b.get("zero_reasons", {}).values() for r in counts}
    reasons = [r for r in explanations if r in seen or r == "unexplained"]
    reasons += sorted(seen - set(explanations))
    spectra = data.get("spectra", {})
    eigen = [
        (k, f"{s['min']:.3e}", f"{s['max']:.3e}", s.get("num_negative"), s.get("num_zero"))
        for k, s in spectra.items()
    ]
    norms = [
        (
            f"{b['rows']} × {b['columns']}",
            "×".join(map(str, b["shape"])),
            f"{b['norm']:.2e}",
            _share(b.get("gauss_newton_share")),
            _share(b.get("residual_share")),
        )
        for b in blocks
    ]
    zeros = [
        (
            f"{b['rows']} × {b['columns']}" if part == next(iter(b["zeros"])) else "",
            part,
            _count(b["zeros"][part]),
            *(_count(b.get("zero_reasons", {}).get(part, {}).get(r, 0)) for r in reasons),
        )
        for b in blocks
        for part in b.get("zeros", {})
    ]
    legend = "".join(
        f"<dt>{escape(r.replace('_', ' '))}</dt><dd>{escape(explanations.get(r, r))}</dd>"
        for r in reasons
    )
    return [
        paragraph(
            f"N = {structure.get('num_params')} parameters, {structure.get('dtype')}, "
            f"built by {structure.get('method')}."
        ),
        table(("matrix", "smallest eigenvalue", "largest", "negative", "zero"), eigen),
        table(
            ("block", "shape", "‖H_b‖_F", "share of G", "share of R"),
            norms,
            caption="Each block's Frobenius norm and the shares of its squared norm in G and R.",
        ),
        table(
            ("block", "matrix", "zeros", *(r.replace("_", " ") for r in reasons)),
            zeros,
            caption="Exactly-zero entries of each block of H, G and R, and how many each "
            "reason explains (the legend below).",
        ),
        f"<dl>{legend}</dl>",
    ]


def hessian_section(folder: Path, figures: FigureList | None = None) -> Section:
    """The structure of H = G + R from ``structure.json`` and the figures of ``folder``.

    Args:
        folder: the ``--out`` folder of ``hesskit hessian``.
        figures: (PNG path, caption) pairs; default: those ``structure.json`` lists under
            ``"figures"``, else the known figures, then any other PNG there.
    """
    data = _json(folder / "structure.json")
    figures = listed_figures(data, folder) if figures is None else figures
    if isinstance(data, dict):
        parts = _structure_tables(data)
    else:
        parts = [missing(f"structure.json missing or unreadable in {folder}")]
    parts += figures_in(folder, HESSIAN_CAPTIONS, figures)
    return Section(
        "Structure of H = G + R",
        "The exact Hessian of a small network split into its Gauss-Newton part G and the "
        "rest R, with the reason for every exactly-zero entry.",
        (*command_block(folder), *parts),
    )


def spectrum_section(folder: Path) -> Section:
    """Eigenvalues, trace, diagonal and density from ``spectrum.json`` and its figures."""
    data = _json(folder / "spectrum.json")
    parts: list[str] = []
    if data is None:
        parts.append(missing(f"spectrum.json missing or unreadable in {folder}"))
    else:
        eig = data["eigenvalues"]
        state = "converged" if eig["converged"] else "not converged"
        parts.append(
            paragraph(
                f"{data['matrix']} of {data['num_params']} parameters on "
                f"{data['num_data']} samples; Lanczos used {eig['products']} "
                f"products ({state}, tol {eig['tol']:g})."
            )
        )
        parts.append(
            table(
                ("k", "eigenvalue", "residual"),
                [
                    (i + 1, f"{v:.6e}", f"{r:.1e}")
                    for i, (v, r) in enumerate(zip(eig["values"], eig["residuals"], strict=True))
                ],
            )
        )
        trace, diag, exact = data["trace"], data["diagonal"], data.get("exact")
        rows = [
            ("trace (Hutch++)", f"{trace['value']:.6g} ± {trace['stderr']:.2g}", trace["products"]),
            (
                "diagonal (exact)" if diag.get("method") == "exact"
                else f"diagonal (Hutchinson, {diag['probes']} probes)",
                f"min {diag['min']:.3g}, median {diag['median']:.3g}, max {diag['max']:.3g}",
                diag["probes"],
            ),
        ]
        if exact:
            rows.append(("exact trace", f"{exact['trace']:.6g}", "–"))
        parts.append(table(("estimate", "value", "products"), rows))
    parts += figures_in(folder, SPECTRUM_CAPTIONS)
    return Section(
        "Spectrum",
        "The top eigenvalues, trace and spectral density of the curvature matrix, matrix-free.",
        (*command_block(folder), *parts),
    )


def diagonal_section(folder: Path) -> Section:
    """RMSProp's √v against the exact diagonals (rmsprop_vs_curvature.json and .png)."""
    from hesskit.analysis.rmsprop import RMSPropAnalysis, summarize

    data = _json(folder / "rmsprop_vs_curvature.json")
    parts = (
        [missing(f"rmsprop_vs_curvature.json missing in {folder}")]
        if data is None
        else [preformatted("\n".join(summarize(RMSPropAnalysis.from_json(data))))]
    )
    parts += figures_in(
        folder,
        {
            "rmsprop_vs_curvature.png": "RMSProp's √v against the "
            "exact curvature diagonals along training: rank correlation, "
            "cosine and scale, and the last step entry by entry. A curve equal to another "
            "(|diag H| and diag G of a piecewise-linear network, whose R has a zero "
            "diagonal) is dashed and says so in the legend."
        },
    )
    return Section(
        "RMSProp against the true diagonal",
        "Whether RMSProp's √v tracks the curvature diagonal it is said to approximate.",
        (*command_block(folder), *parts),
    )


def bench_section(folder: Path, page_dir: Path) -> Section:
    """The benchmark's summary table and error curves, linking its full report.html."""
    from hesskit.errors import DataError
    from hesskit.report.html import HTML_NAME, JSON_NAME, summary_table
    from hesskit.report.plots import plot_error_curves
    from hesskit.report.schema import read_report_json

    try:
        report = read_report_json(folder / JSON_NAME)
    except DataError as error:  # a missing or invalid report is shown, not raised
        return Section(
            "Optimizer benchmark",
            "The benchmark did not leave a report.",
            (missing(f"{folder / JSON_NAME}: {error}"),),
        )
    parts = [summary_table(report)]
    png = plot_error_curves(report)
    if png is not None:
        parts.append(
            figure(
                png,
                f"{report.error_name.capitalize()} against wall-clock time "
                "and data passes, log scale; one line per seed.",
                key="bench",
            )
        )
    html_path = folder / HTML_NAME
    if html_path.is_file():
        relative = Path(os.path.relpath(html_path.resolve(), page_dir.resolve()))
        parts.append(
            paragraph("The full report, with damping, CG and the learning-rate search:")
            + link(relative.as_posix(), str(relative))
        )
    return Section(
        "Optimizer benchmark",
        f"Hessian-free against first-order methods on "
        f"{report.problem}, each with the same wall-clock budget.",
        (*command_block(folder), *parts),
    )
