"""`hesskit train` and `hesskit bench` on the command line: results, and one-line errors."""

from __future__ import annotations

import json

import pytest

from hesskit.cli.main import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--problem", "nope", "--optimizer", "adam", "--iterations", "1"],
         "unknown problem 'nope'"),
        (["train", "--problem", "digits-classifier", "--optimizer", "adamw",
          "--iterations", "1"], "unknown optimizer 'adamw'"),
        (["train", "--problem", "digits-classifier", "--optimizer", "adam"], "no budget"),
        (["train", "--problem", "digits-classifier", "--optimizer", "adam", "--epochs", "-1"],
         "must be greater than 0"),
        (["bench", "--problem", "nope", "--optimizers", "adam"], "unknown problem 'nope'"),
        (["bench", "--problem", "digits-classifier", "--optimizers", "adam,bogus"],
         "unknown optimizer 'bogus'"),
        (["bench", "--problem", "digits-classifier", "--seeds", "x"], "neither a count"),
        (["bench", "--problem", "digits-classifier", "--budget-seconds", "1",
          "--budget-epochs", "1"], "not allowed with argument"),
        (["bench", "--problem", "digits-classifier", "--jobs", "0"], "must be at least 1"),
        (["train", "--problem", "digits-classifier", "--optimizer", "hf", "--iterations", "1",
          "--initial-damping", "-1"], "must not be negative"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, message, capsys):
    try:
        code = main([*argv])
    except SystemExit as exit_:  # argparse errors exit from inside parse_args
        code = exit_.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], captured.err


def test_train_writes_a_log_and_resumes_to_a_longer_budget(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--problem", "digits-classifier", "--optimizer", "adam", "--seed", "1",
            "--eval-every", "2", "--checkpoint-every", "2", "--no-progress", "--out", str(out)]
    assert main([*base, "--iterations", "3"]) == 0
    assert main([*base, "--iterations", "5", "--resume"]) == 0
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [line.get("iteration") for line in lines] == [None, 0, 1, 2, 3, 4, 5]
    stdout = capsys.readouterr().out
    assert "stopped by iterations after 5 iterations" in stdout
    assert str(out / "checkpoint.pt") in stdout


def test_bench_ends_with_the_table_and_the_report_path(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--problem", "digits-classifier", "--optimizers", "adam,sgd",
            "--budget-epochs", "0.2", "--tune-fraction", "0.5", "--no-progress",
            "--out", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert stdout.rstrip().splitlines()[-1] == f"HTML report: {out / 'report.html'}"
    assert "median over 1 seed" in stdout and "SGD (Nesterov)" in stdout
    assert (out / "report.html").is_file() and (out / "report.json").is_file()
