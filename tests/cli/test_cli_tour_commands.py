"""The commands the tour runs: activations at 80 columns, newton/neuron --json, spectrum's
progress lines and page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from hesskit import progress
from hesskit.activations import get_activation
from hesskit.cli.cmd_activations import WIDTH, activation_table
from hesskit.cli.main import main
from hesskit.neuron import newton_neuron, synthetic_data
from hesskit.newton import diagnose_activation
from hesskit.report.sections import activation_rows

NUMBER = re.compile(r"[−-]?\d+(?:\.\d+)?")


def test_activation_table_fits_80_columns_and_never_splits_a_number():
    console = Console(width=WIDTH, record=True)
    console.print(activation_table())
    text = console.export_text()
    assert WIDTH == 80 and max(map(len, text.splitlines())) <= 80
    printed = set(NUMBER.findall(text))
    for row in activation_rows():
        for cell in row:
            assert set(NUMBER.findall(cell)) <= printed, cell
        assert row[0] in text


@pytest.mark.parametrize(("name", "x0"), [("relu", 1.5), ("tanh", -1.0)])
def test_newton_json_records_the_diagnosis(tmp_path, capsys, name, x0):
    path = tmp_path / "sub" / "run.json"
    assert main(["newton", "--activation", name, "--x0", str(x0), "--json", str(path)]) == 0
    record = json.loads(path.read_text())
    expected = diagnose_activation(get_activation(name).name, x0, max_iter=50, mode="minimize")
    assert record == {"activation": name, "x0": x0, "mode": "minimize",
                      "status": expected.status.value, "message": expected.message,
                      "steps": len(expected.iterates) - 1, "x": expected.x}
    assert f"status: {expected.status.name}" in capsys.readouterr().out


def test_neuron_json_records_newtons_outcome(tmp_path):
    path = tmp_path / "neuron.json"
    assert main(["neuron", "--json", str(path)]) == 0
    record = json.loads(path.read_text())
    expected = newton_neuron(synthetic_data(24, seed=0), 1.0, 0.0, max_iter=50)
    assert (record["status"], record["message"]) == (expected.status.value, expected.message)
    assert (record["w"], record["b"]) == (expected.w, expected.b)


@pytest.mark.parametrize("command", [["newton", "--activation", "relu", "--x0", "1"],
                                     ["neuron"]])
def test_json_path_that_is_a_folder_or_unwritable_is_one_line_exit_2(tmp_path, capsys, command):
    assert main([*command, "--json", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a folder" in err and len(err.splitlines()) == 1
    assert main([*command, "--json", "/proc/hesskit-none/run.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write" in err and "--json" in err and len(err.splitlines()) == 1


def test_spectrum_prints_progress_lines_whose_counts_match_its_json(tmp_path, monkeypatch,
                                                                    capsys):
    monkeypatch.setattr(progress, "live_display_visible", lambda stderr=False: False)
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    out = tmp_path / "s"
    assert main(["spectrum", "--layers", "64,3,10", "--samples", "24", "--top", "2",
                 "--probes", "6", "--density-steps", "16", "--out", str(out)]) == 0
    record = json.loads((out / "spectrum.json").read_text())
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    finals = {line.split(":")[0]: line for line in lines}  # the last line of each
    assert set(finals) == {"Lanczos (largest 2)", "Hutch++ trace", "spectral density"}
    lanczos = record["eigenvalues"]["products"]
    assert re.search(rf": {lanczos}/\d+ products", finals["Lanczos (largest 2)"])
    assert f"{record['trace']['products']}/6 products" in finals["Hutch++ trace"]
    assert f"{record['density']['products']}/" in finals["spectral density"]
    assert record["diagonal"]["method"] == "exact"  # no Hutchinson estimate beside it
    assert "Hutchinson" not in captured.out
    assert (out / "index.html").is_file()
    assert f"page: {(out / 'index.html').resolve()}" in captured.out


def test_demo_steps_parse_and_fill_every_folder_the_tour_page_reads(tmp_path):
    from hesskit.cli.cmd_demo import steps
    from hesskit.cli.main import build_parser
    from hesskit.report.tour import TOUR_FOLDERS

    parser = build_parser()
    written = set()
    for _, argv in steps(tmp_path, 1.0):
        args = parser.parse_args(argv)
        for option in ("out", "plot", "json"):
            value = getattr(args, option, None)
            if value is not None:
                written.add(Path(value).relative_to(tmp_path).parts[0])
    assert written == set(TOUR_FOLDERS)
    commands = [argv[0] for _, argv in steps(tmp_path, 1.0)]
    assert commands.count("newton") == 3 and "diagonal" in commands


def test_spectrum_under_a_small_memory_budget_runs_lanczos_without_a_basis(tmp_path, monkeypatch,
                                                                           capsys):
    # N = 235 float64 numbers, 1,880 bytes a vector: 60 KB holds Hutch++'s 24 vectors and the
    # three-term recurrences (5 a probe), not a whole Lanczos basis (about 100 vectors)
    monkeypatch.setattr(progress, "live_display_visible", lambda stderr=False: False)
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    command = ["spectrum", "--layers", "64,3,10", "--samples", "24", "--top", "2",
               "--probes", "6", "--density-steps", "16"]
    assert main([*command, "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert main([*command, "--memory-budget", "60KB", "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "Lanczos (largest 2, three-term)" in err
    full = json.loads((tmp_path / "a" / "spectrum.json").read_text())
    small = json.loads((tmp_path / "b" / "spectrum.json").read_text())
    assert small["eigenvalues"]["converged"]
    assert small["eigenvalues"]["values"] == pytest.approx(full["eigenvalues"]["values"],
                                                           rel=1e-3)
    assert small["trace"] == full["trace"]  # Hutch++ fits either way
    assert main([*command, "--memory-budget", "2KB", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert "memory budget" in err and len(err.splitlines()) == 1


def test_spectrum_per_block_matches_the_library_and_draws_the_blocks(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["spectrum", "--layers", "64,3,10", "--samples", "16", "--top", "1",
                 "--probes", "6", "--density-steps", "8", "--per-block", "--dtype", "float64",
                 "--out", str(out)]) == 0
    record = json.loads((out / "spectrum.json").read_text())
    blocks = record["blocks"]
    assert len(blocks) == 2 and all(b["converged"] for b in blocks.values())
    assert sum(b["num_params"] for b in blocks.values()) == record["num_params"]
    # the whole matrix's top eigenvalue bounds every block's (Cauchy interlacing)
    top = record["eigenvalues"]["values"][0]
    assert all(b["values"][0] <= top * (1 + 1e-9) for b in blocks.values())
    assert (out / "block_spectra.png").is_file()
    assert "block heterogeneity" in (out / "index.html").read_text()  # its caption
    assert "per block" in capsys.readouterr().out
