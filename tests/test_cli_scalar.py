"""`hesskit activations | newton | neuron`: output, exit codes and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hesskit.activations import ACTIVATION_NAMES
from hesskit.cli.main import main

_SCRIPT = Path(sys.executable).parent / "hesskit"
HESSKIT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "hesskit"]


def test_activations_prints_the_table(capsys):
    assert main(["activations"]) == 0
    out = capsys.readouterr().out
    for name in ACTIVATION_NAMES:
        assert name in out
    assert "piecewise linear" in out
    assert "σ′(0) = 0.01" in out  # leaky ReLU's kink convention


def test_activations_plot_writes_one_png(tmp_path, capsys):
    assert main(["activations", "--plot", str(tmp_path / "figs")]) == 0
    png = tmp_path / "figs" / "activations.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in capsys.readouterr().out


def test_newton_on_relu_reports_zero_curvature_and_exits_0(capsys):
    assert main(["newton", "--activation", "relu", "--x0", "-1"]) == 0
    out = capsys.readouterr().out
    assert "status: ZERO_CURVATURE" in out
    assert "non-isolated minimisers" in out


def test_newton_on_sigmoid_reports_no_stationary_point(capsys):
    assert main(["newton", "--activation", "sigmoid", "--x0", "-1", "--max-iter", "20"]) == 0
    out = capsys.readouterr().out
    assert "status: NO_STATIONARY_POINT" in out
    assert "no stationary point at finite x" in out


def test_newton_converges_on_gelu_and_plots(tmp_path, capsys):
    assert main(["newton", "--activation", "gelu", "--x0", "-1", "--plot", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "status: CONVERGED" in out and "-0.7517915" in out
    assert (tmp_path / "newton_gelu.png").stat().st_size > 0


def test_newton_unknown_activation_is_one_line_exit_2(capsys):
    assert main(["newton", "--activation", "swish", "--x0", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "unknown activation 'swish'" in err and "relu" in err


@pytest.mark.parametrize("bad", ["abc", "nan", "inf"])
def test_newton_bad_number_is_one_line_exit_2(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["newton", "--activation", "relu", f"--x0={bad}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and bad in err


def test_neuron_prints_the_hessian_and_converges(capsys):
    assert main(["neuron"]) == 0
    out = capsys.readouterr().out
    assert "Hessian of E at (w, b) = (1, 0)" in out
    assert "0.944847" in out  # (2/n) Σ_active x² for the default data and start
    assert "status: CONVERGED" in out


def test_neuron_plot_writes_png(tmp_path, capsys):
    assert main(["neuron", "--plot", str(tmp_path)]) == 0
    assert (tmp_path / "neuron.png").read_bytes()[:4] == b"\x89PNG"


def test_neuron_dead_start_is_a_diagnosis_not_an_error(capsys):
    assert main(["neuron", "--w0", "0", "--b0", "-1"]) == 0
    assert "status: SINGULAR_HESSIAN" in capsys.readouterr().out


def test_unwritable_output_folder_is_one_line_exit_2(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["neuron", "--plot", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write to output folder" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["newton", "--activation", "nope", "--x0", "1"],
        ["newton", "--activation", "relu", "--x0", "one"],
        ["activations", "--plot", "/dev/null/sub"],
    ],
)
def test_installed_command_fails_without_a_traceback(argv):
    completed = subprocess.run(
        [*HESSKIT, *argv], capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert completed.stderr.count("\n") == 1 and "error" in completed.stderr
