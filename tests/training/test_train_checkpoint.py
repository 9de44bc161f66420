"""Atomic checkpoints: a crash while writing leaves the previous checkpoint intact."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from hesskit.errors import DataError
from hesskit.training import checkpoint
from hesskit.training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def test_checkpoint_round_trips_tensors_and_plain_values(tmp_path):
    state = {"weights": torch.arange(6.0).reshape(2, 3), "iteration": 7, "note": "x",
             "nested": {"a": [1.5, None]}}
    loaded = load_checkpoint(save_checkpoint(state, tmp_path / "c.pt"))
    assert torch.equal(loaded["weights"], state["weights"])
    assert loaded["iteration"] == 7 and loaded["nested"] == {"a": [1.5, None]}


def test_crash_between_write_and_rename_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"iteration": 1}, path)

    def crash(source, target):
        raise KeyboardInterrupt  # the process dies after writing, before renaming

    monkeypatch.setattr(checkpoint.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"iteration": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"iteration": 1}
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left behind


def test_crash_halfway_through_writing_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"iteration": 1}, path)
    real_save = torch.save

    def torn_save(obj, stream):
        real_save(obj, stream)
        stream.truncate(10)  # half a file on disk
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"iteration": 2, "big": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"iteration": 1}


def test_rng_state_restores_torch_numpy_and_python_draws(tmp_path):
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    saved = load_checkpoint(save_checkpoint({"rng": capture_rng_state()}, tmp_path / "r.pt"))
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(saved["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_missing_or_corrupt_checkpoint_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"no checkpoint at .*without --resume"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot be read"):
        load_checkpoint(tmp_path / "bad.pt")


def test_every_byte_of_a_checkpoint_is_covered_by_its_checksum(tmp_path):
    path = save_checkpoint({"weights": torch.arange(4.0)}, tmp_path / "c.pt")
    data = path.read_bytes()
    for offset in range(0, len(data), max(1, len(data) // 97)):
        damaged = bytearray(data)
        damaged[offset] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(DataError, match=r"damaged|cannot be read"):
            load_checkpoint(path)


def test_a_checkpoint_written_before_checksums_still_loads_unverified(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"iteration": 3}, path)
    found = checkpoint.read_checkpoint(path)
    assert found.state == {"iteration": 3} and not found.checksum_verified
    save_checkpoint({"iteration": 3}, path)
    assert checkpoint.read_checkpoint(path).checksum_verified


def test_the_global_generators_are_seeded_from_the_run_seed():
    draws = []
    for disturbance in (1, 2):
        np.random.seed(disturbance)
        random.seed(disturbance)
        checkpoint.seed_global_generators(5)
        draws.append((np.random.rand(), random.random(), torch.rand(1).item()))
    assert draws[0] == draws[1]
