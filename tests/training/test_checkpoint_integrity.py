"""``train --resume`` from a damaged checkpoint, for every optimizer the CLI trains.

Each optimizer trains a tiny model for 3 iterations (one run per optimizer, copied for each
case); the checkpoint is then damaged (truncated, emptied, replaced by random bytes, a byte
flipped at several offsets, an entry removed, another optimizer's state put in, a NaN put
into a parameter or the optimizer state) and the run resumed. Every case must end with exit
code 2, exactly one line on stderr that names the checkpoint, and every file of the folder
byte-identical to what it was before the resume (nothing is written before the checks pass).
"""

from __future__ import annotations

import hashlib
import random
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from hesskit.cli.main import main
from hesskit.cli.options import OPTIMIZER_NAMES
from hesskit.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from hesskit.training.checkpoint_checks import PARAMETER_STATE
from user_models import TANH_MLP

MODEL = TANH_MLP


@pytest.fixture(scope="module")
def model_spec(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("integrity_model") / "integrity_model.py"
    path.write_text(textwrap.dedent(MODEL))
    return f"{path}:make"


def train_argv(model_spec: str, optimizer: str, out: Path, iterations: int) -> list[str]:
    return ["train", "--model", model_spec, "--optimizer", optimizer, "--batch-size", "8",
            "--iterations", str(iterations), "--no-progress", "--out", str(out)]


@pytest.fixture(scope="module")
def trained(model_spec, tmp_path_factory) -> dict[str, Path]:
    """One finished 3-iteration run per optimizer (copied before each damage)."""
    root = tmp_path_factory.mktemp("integrity_runs")
    folders = {}
    for name in OPTIMIZER_NAMES:
        folders[name] = root / name
        assert main(train_argv(model_spec, name, folders[name], 3)) == 0
    return folders


def folder_hashes(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _flip(offset_fraction: float):
    def damage(path: Path, optimizer: str, trained: dict[str, Path]) -> None:
        data = bytearray(path.read_bytes())
        data[int(offset_fraction * (len(data) - 1))] ^= 0x41
        path.write_bytes(bytes(data))
    return damage


def _rewrite(change):
    """A damage to the content, saved WITH a valid checksum (so the schema check must catch
    it, not the checksum)."""
    def damage(path: Path, optimizer: str, trained: dict[str, Path]) -> None:
        state = load_checkpoint(path)
        change(state, optimizer, trained)
        save_checkpoint(state, path)
    return damage


def _drop_optimizer_entry(state: dict, optimizer: str, trained) -> None:
    shaped, other = PARAMETER_STATE[optimizer]
    required = (*shaped, *other)
    if required:
        del state["optimizer"]["state"][0][required[0]]
        return
    wide = next(key for key in state["optimizer"] if key not in ("state", "param_groups"))
    del state["optimizer"][wide]["damping"]


def _other_optimizers_state(state: dict, optimizer: str, trained) -> None:
    other = "sgd" if optimizer == "adam" else "adam"
    state["optimizer"] = load_checkpoint(trained[other] / CHECKPOINT_NAME)["optimizer"]


def _nan_parameter(state: dict, optimizer: str, trained) -> None:
    first = next(iter(state["model"]))
    state["model"][first].view(-1)[1] = float("nan")


def _nan_optimizer_state(state: dict, optimizer: str, trained) -> None:
    """A NaN in the first floating tensor of the optimizer's state (its λ when it has none)."""
    def poison(tree) -> bool:
        if isinstance(tree, torch.Tensor) and tree.is_floating_point() and tree.numel():
            tree.view(-1)[0] = float("nan")
            return True
        values = tree.values() if isinstance(tree, dict) else tree
        return isinstance(tree, (dict, list)) and any(poison(value) for value in values)

    optimizer_state = state["optimizer"]
    if not poison(optimizer_state["state"]):
        wide = next(key for key in optimizer_state if key not in ("state", "param_groups"))
        if not poison(optimizer_state[wide]):
            optimizer_state[wide]["damping"] = float("nan")


def _random_bytes(path: Path, optimizer: str, trained) -> None:
    path.write_bytes(random.Random(0).randbytes(path.stat().st_size))


DAMAGES = {
    "truncated": lambda path, *_: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "empty": lambda path, *_: path.write_bytes(b""),
    "random bytes": _random_bytes,
    **{f"byte flipped at {fraction:.0%}": _flip(fraction)
       for fraction in (0.0, 0.05, 0.3, 0.6, 0.9, 0.99, 1.0)},
    "missing key": _rewrite(lambda state, *_: state.pop("optimizer")),
    "missing optimizer-state entry": _rewrite(_drop_optimizer_entry),
    "another optimizer's state": _rewrite(_other_optimizers_state),
    "NaN in a parameter": _rewrite(_nan_parameter),
    "NaN in the optimizer state": _rewrite(_nan_optimizer_state),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("optimizer", OPTIMIZER_NAMES)
def test_a_damaged_checkpoint_is_refused_in_one_line_and_the_folder_is_left_as_it_was(
        optimizer, damage, trained, model_spec, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained[optimizer], out)
    DAMAGES[damage](out / CHECKPOINT_NAME, optimizer, trained)
    before = folder_hashes(out)
    capsys.readouterr()
    code = main([*train_argv(model_spec, optimizer, out, 6), "--resume"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "checkpoint" in err and CHECKPOINT_NAME in err, err
    assert "bug in hesskit" not in err
    assert folder_hashes(out) == before


def test_the_parameter_state_table_names_every_optimizer_and_holds_after_training(trained):
    assert set(PARAMETER_STATE) == set(OPTIMIZER_NAMES)
    for name, folder in trained.items():
        shaped, other = PARAMETER_STATE[name]
        for entries in load_checkpoint(folder / CHECKPOINT_NAME)["optimizer"]["state"].values():
            assert set(shaped) | set(other) <= set(entries), name


def write_without_checksum(path: Path) -> dict:
    """Rewrite a checkpoint as hesskit wrote it before checksums (``torch.save`` alone)."""
    state = load_checkpoint(path)
    torch.save(state, path)
    return state


@pytest.mark.parametrize("optimizer", ["adam", "kfac", "shampoo", "sophia", "hf", "shf"])
def test_a_checkpoint_without_checksum_resumes_saying_so_once(
        optimizer, trained, model_spec, tmp_path, capsys):
    reference, old = tmp_path / "reference", tmp_path / "old"
    shutil.copytree(trained[optimizer], reference)
    shutil.copytree(trained[optimizer], old)
    write_without_checksum(old / CHECKPOINT_NAME)
    capsys.readouterr()
    assert main([*train_argv(model_spec, optimizer, reference, 5), "--resume"]) == 0
    assert capsys.readouterr().err == ""
    assert main([*train_argv(model_spec, optimizer, old, 5), "--resume"]) == 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "has no checksum" in err, err
    new = load_checkpoint(reference / CHECKPOINT_NAME)["model"]
    resumed = load_checkpoint(old / CHECKPOINT_NAME)["model"]
    assert all(torch.equal(new[key], resumed[key]) for key in new)


@pytest.mark.parametrize("change", ["no optimizer entry", "NaN in the optimizer state"])
@pytest.mark.parametrize("optimizer", ["adam", "kfac", "shampoo", "sophia", "sophia-h", "shf"])
def test_a_damaged_checkpoint_without_checksum_is_refused_in_one_line(
        optimizer, change, trained, model_spec, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained[optimizer], out)
    state = load_checkpoint(out / CHECKPOINT_NAME)
    if change == "no optimizer entry":
        del state["optimizer"]
    else:
        _nan_optimizer_state(state, optimizer, trained)
    torch.save(state, out / CHECKPOINT_NAME)
    before = folder_hashes(out)
    capsys.readouterr()
    code = main([*train_argv(model_spec, optimizer, out, 6), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "KeyError" not in err and "bug in hesskit" not in err
    assert ("'optimizer'" in err) if change == "no optimizer entry" else ("NaN" in err), err
    assert folder_hashes(out) == before
