"""`hesskit precondition`: a default that runs as is, and progress that says where it is."""

from __future__ import annotations

from hesskit.cli import cmd_precondition
from hesskit.cli.cmd_precondition import MeasurementProgress
from hesskit.cli.main import build_parser


def test_runs_without_options_on_the_digits_autoencoder_with_few_measurements():
    args = build_parser().parse_args(["precondition"])
    assert args.problem == "digits-autoencoder" and args.model is None
    assert (args.steps, args.every) == (100, 50)  # 2 measurements per optimizer
    assert args.optimizers == ["sgd", "rmsprop", "adam"]


def test_each_measurement_prints_optimizer_step_overall_position_and_time_left(monkeypatch,
                                                                              capsys):
    now = [1000.0]
    monkeypatch.setattr(cmd_precondition.time, "monotonic", lambda: now[0])
    progress = MeasurementProgress(["sgd", "rmsprop", "adam"], steps=120, every=50)
    for name in ("sgd", "rmsprop"):
        for step in (50, 100, 120):
            now[0] += 20.0
            progress(name, step)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "  optimizer 1/3 (sgd), step 50/120, measurement 1/9, ~3 min left"
    # 5 of 9 measurements in 100 s: 4 more take about 80 s
    assert lines[4] == "  optimizer 2/3 (rmsprop), step 100/120, measurement 5/9, ~80 s left"
    assert len(lines) == 6


def test_without_problem_or_model_the_default_problem_runs(tmp_path, capsys):
    from hesskit.cli.main import main

    code = main(["precondition", "--steps", "2", "--every", "1", "--batch-size", "8",
                 "--max-products", "20", "--cg-maxiter", "20", "--probes", "4", "--no-layers",
                 "--optimizers", "sgd", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "digits-autoencoder: 2 steps" in out
    assert "  optimizer 1/1 (sgd), step 2/2, measurement 2/2" in out
    assert (tmp_path / "preconditioner.json").is_file()
