"""``train --resume`` when ``log.jsonl`` is missing, truncated, corrupt or too short.

Each case trains a tiny model for 4 iterations with a checkpoint every 2, damages the log,
resumes to 6 iterations and compares with an uninterrupted 6-iteration run: the resumed log
must hold the same records (wall times aside) and never a NUL byte. Where the checkpoint
holds no copy of the log (checkpoints written before copies existed), a damaged log is
refused with one line.
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest
import torch

from hesskit.cli.main import main
from hesskit.errors import DataError
from hesskit.report.schema import RunHeader
from hesskit.training import checkpoint as checkpoint_module
from hesskit.training.checkpoint import (
    CHECKPOINT_NAME,
    LOG_NAME,
    RunLog,
    load_checkpoint,
    pack_log,
    save_checkpoint,
)

MODEL = '''
import torch
from torch import nn


def make():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(16, 2, generator=generator, dtype=torch.float64)
    torch.manual_seed(0)
    return nn.Linear(3, 2).double(), nn.MSELoss(), (x, y)
'''


@pytest.fixture
def model_spec(tmp_path) -> str:
    path = tmp_path / "resume_model.py"
    path.write_text(textwrap.dedent(MODEL))
    return f"{path}:make"


def train(model_spec: str, out, iterations: int, *extra: str) -> int:
    return main(["train", "--model", model_spec, "--optimizer", "sgd", "--lr", "0.05",
                 "--batch-size", "4", "--iterations", str(iterations), "--eval-every", "1",
                 "--checkpoint-every", "2", "--no-progress", "--out", str(out), *extra])


def records(out) -> list[dict]:
    """The iteration records of a log without their wall times (they differ run to run)."""
    lines = (out / LOG_NAME).read_text().splitlines()
    rows = [json.loads(line) for line in lines[1:]]
    return [{key: value for key, value in row.items() if key != "wall_time"} for row in rows]


def drop_log_copy(out) -> None:
    """Make the checkpoint look like one written before checkpoints held a copy of the log."""
    state = load_checkpoint(out / CHECKPOINT_NAME)
    del state["log"]
    save_checkpoint(state, out / CHECKPOINT_NAME)


@pytest.fixture
def uninterrupted(model_spec, tmp_path) -> list[dict]:
    out = tmp_path / "reference"
    assert train(model_spec, out, 6) == 0
    return records(out)


def stopped_at_4(model_spec, tmp_path):
    out = tmp_path / "run"
    assert train(model_spec, out, 4) == 0
    return out


def cut_mid_line(data: bytes) -> bytes:
    return data[: data.rindex(b"\n", 0, len(data) - 1) - 7]


DAMAGES = {
    "missing": lambda path: path.unlink(),
    "truncated mid-line": lambda path: path.write_bytes(cut_mid_line(path.read_bytes())),
    "too short (header only)": lambda path: path.write_bytes(
        path.read_bytes().split(b"\n")[0] + b"\n"),
    "empty": lambda path: path.write_bytes(b""),
    "corrupt bytes": lambda path: path.write_bytes(
        path.read_bytes()[:40] + b"\x00\xff garbage" + path.read_bytes()[51:]),
    "not json": lambda path: path.write_text("this is not a run log\n" * 20),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_log_is_rebuilt_from_the_checkpoint_with_one_note(
        damage, model_spec, tmp_path, uninterrupted, capsys):
    out = stopped_at_4(model_spec, tmp_path)
    DAMAGES[damage](out / LOG_NAME)
    capsys.readouterr()
    assert train(model_spec, out, 6, "--resume") == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(notes) == 1 and "rebuilt it from the checkpoint" in notes[0], notes
    assert b"\x00" not in (out / LOG_NAME).read_bytes()
    assert records(out) == uninterrupted


def test_a_longer_log_with_a_torn_last_line_is_cut_back_silently(
        model_spec, tmp_path, uninterrupted, capsys):
    out = stopped_at_4(model_spec, tmp_path)
    with (out / LOG_NAME).open("ab") as stream:  # a crash after the checkpoint, mid-line
        stream.write(b'{"kind": "iteration", "iteration": 5, "wall')
    capsys.readouterr()
    assert train(model_spec, out, 6, "--resume") == 0
    assert capsys.readouterr().err == ""
    assert records(out) == uninterrupted


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_without_a_copy_in_the_checkpoint_a_damaged_log_is_refused_in_one_line(
        damage, model_spec, tmp_path, capsys):
    out = stopped_at_4(model_spec, tmp_path)
    drop_log_copy(out)
    DAMAGES[damage](out / LOG_NAME)
    before = (out / LOG_NAME).read_bytes() if (out / LOG_NAME).exists() else None
    capsys.readouterr()
    assert train(model_spec, out, 6, "--resume") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "holds no copy of the log" in lines[0], lines
    after = (out / LOG_NAME).read_bytes() if (out / LOG_NAME).exists() else None
    assert after == before  # refused without touching the file (no NUL padding)


def test_without_a_copy_an_intact_log_still_resumes(model_spec, tmp_path, uninterrupted):
    out = stopped_at_4(model_spec, tmp_path)
    drop_log_copy(out)
    assert train(model_spec, out, 6, "--resume") == 0
    assert records(out) == uninterrupted


def test_a_damaged_copy_in_the_checkpoint_is_a_data_error(tmp_path):
    log = RunLog(tmp_path, RunHeader(problem="p", optimizer="sgd", seed=0, batch_size=1,
                                     num_train=1, eval_every=1, lr=0.1, weight_decay=0.0))
    with pytest.raises(DataError, match="copy of the run log is damaged"):
        log.resume(10, torch.tensor([1, 2, 3], dtype=torch.uint8))


def test_the_log_copy_round_trips_and_a_short_log_is_never_padded(tmp_path):
    header = RunHeader(problem="p", optimizer="sgd", seed=0, batch_size=1, num_train=1,
                       eval_every=1, lr=0.1, weight_decay=0.0)
    log = RunLog(tmp_path, header)
    (tmp_path / LOG_NAME).write_bytes(b"")
    data = b'{"kind": "header"}\n'
    with pytest.raises(DataError):  # the copy is not a valid log: refused, not padded
        log.resume(len(data), pack_log(data))
    assert b"\x00" not in (tmp_path / LOG_NAME).read_bytes()


def test_log_lines_are_fsynced_before_every_checkpoint(model_spec, tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_save = os.fsync, checkpoint_module.save_checkpoint

    def fsync(fd):
        events.append("fsync log" if os.readlink(f"/proc/self/fd/{fd}").endswith(LOG_NAME)
                      else "fsync")
        return real_fsync(fd)

    def save(state, path):
        events.append("checkpoint")
        return real_save(state, path)

    monkeypatch.setattr(checkpoint_module.os, "fsync", fsync)
    monkeypatch.setattr("hesskit.training.loop.save_checkpoint", save)
    assert train(model_spec, tmp_path / "run", 4) == 0
    checkpoints = [i for i, event in enumerate(events) if event == "checkpoint"]
    assert len(checkpoints) == 2
    assert all(events[i - 1] == "fsync log" for i in checkpoints)
