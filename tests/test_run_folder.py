"""``hesskit.run_folder``: a folder that holds a run is refused, or moved aside whole."""

from __future__ import annotations

import pytest

from hesskit.errors import InvalidArgumentError
from hesskit.run_folder import move_run_aside, prepare_run_folder, refuse_existing_run

NAMES = ("log.jsonl", "checkpoint.pt")


def test_a_folder_without_the_run_files_is_accepted(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    refuse_existing_run(tmp_path, NAMES, resume_hint="--resume")
    assert prepare_run_folder(tmp_path / "missing", NAMES) is None


def test_a_folder_with_a_run_is_refused_naming_it_and_the_ways_on(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(InvalidArgumentError, match=r"already holds a run \(checkpoint.pt\); "
                       r"continue it with --resume, choose a new --out or pass --overwrite"):
        prepare_run_folder(tmp_path, NAMES, resume_hint="--resume")
    assert prepare_run_folder(tmp_path, NAMES, resume=True) is None


def test_overwrite_moves_the_whole_folder_to_a_free_sibling(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text("old log")
    first = prepare_run_folder(run, NAMES, overwrite=True)
    run.mkdir()
    (run / "log.jsonl").write_text("second log")
    second = move_run_aside(run)
    assert first != second and first.name.startswith("run.old-")
    assert (first / "log.jsonl").read_text() == "old log"
    assert (second / "log.jsonl").read_text() == "second log" and not run.exists()


def test_the_training_library_refuses_a_folder_that_holds_a_run(tmp_path):
    import torch
    from torch import nn

    from hesskit.cli.user_training import UserTrainingProblem
    from hesskit.training.loop import Budget, TrainConfig, train

    x = torch.randn(8, 3, dtype=torch.float64)
    problem = UserTrainingProblem("tiny", nn.Linear(3, 2).double(), nn.MSELoss(),
                                  (x, x[:, :2]), (x, x[:, :2]))
    train(problem, TrainConfig("sgd"), Budget(iterations=1), out_dir=tmp_path, progress=False)
    before = (tmp_path / "log.jsonl").read_bytes()
    with pytest.raises(InvalidArgumentError, match="already holds a run"):
        train(problem, TrainConfig("adam"), Budget(iterations=1), out_dir=tmp_path,
              progress=False)
    assert (tmp_path / "log.jsonl").read_bytes() == before
