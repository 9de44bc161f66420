"""`hesskit diagonal`: the diagonals summary, the training analysis files, one-line errors."""

from __future__ import annotations

import json

import pytest

from hesskit.cli.main import main

SMALL = ["--data", "random", "--samples", "16", "--layers", "5,4,3", "--dtype", "float64"]


def test_steps_zero_prints_the_three_exact_diagonals(capsys):
    assert main(["diagonal", "--steps", "0", *SMALL]) == 0
    out = capsys.readouterr().out
    for label in ("diag H: exact", "diag G: exact", "diag EF: exact"):
        assert label in out


def test_training_writes_json_and_png_and_prints_the_numbers(tmp_path, capsys):
    code = main(["diagonal", "--steps", "4", "--every", "2", "--optimizer", "adam",
                 "--out", str(tmp_path), *SMALL])
    assert code == 0
    data = json.loads((tmp_path / "rmsprop_vs_curvature.json").read_text())
    assert data["optimizer"] == "Adam" and data["final_step"] == 4
    assert (tmp_path / "rmsprop_vs_curvature.png").read_bytes()[:4] == b"\x89PNG"
    last = next(c for c in data["comparisons"]
                if c["step"] == 4 and c["layer"] == "all" and c["diagonal"] == "diag G")
    assert f"rank correlation {last['spearman']:.2f}" in capsys.readouterr().out


def test_a_bad_alpha_ends_with_one_line_and_exit_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:  # refused while parsing, before any work
        main(["diagonal", "--alpha", "2", "--out", str(tmp_path), *SMALL])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "'2' must lie in [0, 1)" in err
    assert len(err.strip().splitlines()) == 1


def test_negative_steps_are_an_argparse_error_with_exit_code_2(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["diagonal", "--steps", "-1", *SMALL])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "'-1' must be at least 0" in err
    assert len(err.strip().splitlines()) == 1
