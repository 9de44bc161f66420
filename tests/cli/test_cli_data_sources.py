"""``--data digits|mnist|mnist1d|random`` and ``--data-dir`` on hessian, spectrum, diagonal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hesskit.cli.main import build_parser, main
from hesskit.cli.model_spec import problem_from_args
from hesskit.data.idx import write_idx

ANALYSIS_COMMANDS = ("hessian", "spectrum", "diagonal")


def _fake_mnist(folder, count=12):
    """Four valid IDX files of ``count`` training and 4 test images; pixel (0, 0) = label."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.arange(count, dtype=np.uint8) % 10
    images = np.zeros((count, 28, 28), np.uint8)
    images[:, 0, 0] = labels * 25
    write_idx(folder / "train-images-idx3-ubyte.gz", images)
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images[:4])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels[:4])
    return labels


def _args(*argv):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("command", ANALYSIS_COMMANDS)
def test_every_analysis_command_accepts_every_data_source(command):
    for source in ("digits", "mnist", "mnist1d", "random"):
        args = _args(command, "--data", source, "--data-dir", "somewhere")
        assert args.data == source and args.data_dir == "somewhere"


def test_mnist_from_data_dir_gives_784_inputs_and_its_labels(tmp_path):
    labels = _fake_mnist(tmp_path / "mnist")
    problem = problem_from_args(_args("hessian", "--data", "mnist", "--data-dir",
                                      str(tmp_path), "--samples", "10"))
    (batch,) = problem.batches()
    inputs, targets = batch.inputs, batch.targets
    assert inputs.shape == (10, 784)
    assert targets.tolist() == labels[:10].tolist()
    expected = torch.as_tensor(labels[:10] * 25 / 255.0, dtype=inputs.dtype)
    assert torch.allclose(inputs[:, 0], expected)
    first = next(problem.model.parameters())
    assert first.shape == (16, 784)  # the default layers follow the data: 784,16,10


def test_mnist_data_dir_defaults_to_the_environment_variable(tmp_path, monkeypatch):
    _fake_mnist(tmp_path / "mnist")
    monkeypatch.setenv("HESSKIT_DATA_DIR", str(tmp_path))
    problem = problem_from_args(_args("spectrum", "--data", "mnist", "--samples", "5",
                                      "--loss", "mse"))
    (batch,) = problem.batches()
    inputs, targets = batch.inputs, batch.targets
    assert inputs.shape == (5, 784) and targets.shape == (5, 10)


def test_mnist1d_gives_40_inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("HESSKIT_CACHE_DIR", str(tmp_path / "cache"))
    problem = problem_from_args(_args("diagonal", "--data", "mnist1d", "--samples", "7"))
    (batch,) = problem.batches()
    inputs, targets = batch.inputs, batch.targets
    assert inputs.shape == (7, 40) and targets.shape == (7,)
    assert set(targets.tolist()) <= set(range(10))


def test_more_samples_than_mnist_offers_is_one_line_exit_2(tmp_path, capsys):
    _fake_mnist(tmp_path / "mnist")
    code = main(["hessian", "--data", "mnist", "--data-dir", str(tmp_path), "--samples", "13",
                 "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert "--samples 13 is more than the 12 training cases of mnist" in error


def test_layers_that_do_not_fit_the_data_are_refused_with_the_fix(tmp_path, capsys):
    _fake_mnist(tmp_path / "mnist")
    code = main(["spectrum", "--data", "mnist", "--data-dir", str(tmp_path), "--layers",
                 "64,10", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "mnist has 784 features but the first layer has 64; use --layers 784,..." in (
        capsys.readouterr().err)


def test_missing_mnist_files_name_the_folder(tmp_path, capsys):
    code = main(["diagonal", "--data", "mnist", "--data-dir", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2 and "not found in" in error and "empty" in error
