"""`hesskit hessian` end to end on a tiny random MLP."""

import json

from hesskit.cli.main import main

TINY = ["--layers", "4,3,2", "--data", "random", "--samples", "8", "--loss", "mse"]


def test_hessian_command_writes_figures_and_report(tmp_path, capsys):
    assert main(["hessian", *TINY, "--activation", "relu", "--out", str(tmp_path)]) == 0
    for name in ("hessian.png", "gauss_newton.png", "residual.png", "eigenvalues.png"):
        assert (tmp_path / name).stat().st_size > 0
    payload = json.loads((tmp_path / "structure.json").read_text())
    assert payload["structure"]["num_params"] == 4 * 3 + 3 + 3 * 2 + 2
    assert payload["spectra"]["G"]["num_negative"] == 0
    assert "linear_in_layer" in payload["structure"]["totals"]["R"]
    assert "structure of H = G + R" in capsys.readouterr().out


def test_estimate_only_prints_the_estimate_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["hessian", *TINY, "--estimate-only", "--out", str(out)]) == 0
    assert "N = 23 parameters" in capsys.readouterr().out
    assert not out.exists()


def test_too_large_is_one_line_and_exit_2(tmp_path, capsys):
    code = main(["hessian", *TINY, "--memory-budget", "1KB", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "N = 23" in err


def test_bad_memory_budget_is_a_usage_error(capsys):
    try:
        main(["hessian", *TINY, "--memory-budget", "lots"])
    except SystemExit as exit_:
        assert exit_.code == 2
    assert "not a memory size" in capsys.readouterr().err
