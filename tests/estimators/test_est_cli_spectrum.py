"""`hesskit spectrum` end to end on a tiny model, checked against autograd's dense Hessian."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from hesskit.cli.main import main
from hesskit.models import mlp
from hesskit.progress import Progress
from reference import autograd_hessian

DENSITY = ["--density-probes", "2", "--density-steps", "10", "--probes", "12"]
TINY = ["--layers", "3,4,2", "--data", "random", "--samples", "12", "--loss", "mse"]


def tiny_hessian() -> torch.Tensor:
    """The Hessian the CLI options above describe, rebuilt independently."""
    torch.manual_seed(0)
    model = mlp([3, 4, 2], "relu").double()
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(12, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(12, 2, generator=generator, dtype=torch.float64)
    return autograd_hessian(model, nn.functional.mse_loss, X, y)


def test_spectrum_writes_json_and_plots_matching_the_dense_hessian(tmp_path, capsys):
    options = ["--top", "3", "--tol", "1e-8", *DENSITY, "--out", str(tmp_path)]
    code = main(["spectrum", *TINY, *options])
    assert code == 0
    record = json.loads((tmp_path / "spectrum.json").read_text())
    assert (tmp_path / "spectral_density.png").stat().st_size > 0
    assert (tmp_path / "eigenvalues.png").stat().st_size > 0
    H = tiny_hessian()
    expected = np.sort(np.linalg.eigvalsh(H.numpy()))[::-1][:3]
    np.testing.assert_allclose(record["eigenvalues"]["values"], expected, rtol=1e-7)
    trace = record["trace"]
    assert abs(trace["value"] - float(torch.trace(H))) <= 4 * trace["stderr"] + 1e-10
    assert record["num_params"] == H.shape[0] == 26
    out = capsys.readouterr().out
    assert "top 3 eigenvalues" in out and "Hutch++" in out


def test_top_larger_than_the_model_is_one_line_naming_n(tmp_path, capsys):
    assert main(["spectrum", *TINY, "--top", "100", *DENSITY, "--out", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--top 26 or fewer" in lines[0]
    assert not (tmp_path / "spectrum.json").exists()


def test_bad_option_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["spectrum", "--matrix", "fisher"])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_progress_bar_appears_only_when_asked_or_slow():
    with Progress("x", 10, show=None, delay=60.0) as quiet:
        quiet.advance(5)
        assert not quiet.visible
    with Progress("x", 10, show=None, delay=0.0) as slow:
        slow.advance(5)
        assert slow.visible
    with Progress("x", 10, show=False, delay=0.0) as never:
        never.advance(5)
        assert not never.visible and never.completed == 5
