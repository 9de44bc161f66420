"""``--model`` with the models and losses people write: two inputs, a dict, a DataLoader, a
loss that is a plain function; each command runs, and the numbers match a direct call."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from hesskit.cli.main import build_parser, main

MODULE = '''
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(2, 2)

    def forward(self, x1, x2):
        return torch.tanh(self.a(x1)) + self.b(x2)


class DictInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 2)

    def forward(self, batch):
        return self.a(batch["x"]) * batch["scale"]


def squared_error(output, target):
    return ((output - target) ** 2).sum(dim=1).mean()


def data(n=12):
    generator = torch.Generator().manual_seed(0)
    x1 = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    x2 = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    y = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return x1, x2, y


def two_inputs():
    torch.manual_seed(0)
    x1, x2, y = data()
    return TwoInputs().double(), squared_error, ((x1, x2), y)


def dict_input():
    torch.manual_seed(0)
    x1, x2, y = data()
    return DictInput().double(), nn.HuberLoss(), ({"x": x1, "scale": x2[:, :1]}, y)


def loader():
    torch.manual_seed(0)
    x1, _, y = data()
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    return model, nn.MSELoss(), DataLoader(TensorDataset(x1, y), batch_size=5)
'''


@pytest.fixture
def spec(tmp_path, monkeypatch):
    (tmp_path / "people_models.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.chdir(tmp_path)
    return lambda name: f"people_models:{name}"


def user_function(tmp_path, name: str):
    """The function ``name`` of the user's file, loaded on its own (not through hesskit)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("people_models_copy",
                                                  tmp_path / "people_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def autograd_hessian_of(model, loss, data) -> torch.Tensor:
    """The dense Hessian of the mean loss over all batches, by torch.autograd (float64)."""
    batches = [data] if isinstance(data, tuple) else list(data)
    params = dict(model.named_parameters())
    count = sum(len(targets) for _, targets in batches)

    def total(*flat):
        values = dict(zip(params, flat, strict=True))
        value = 0.0
        for inputs, targets in batches:
            args = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
            output = torch.func.functional_call(model, values, tuple(args))
            value = value + loss(output, targets) * len(targets) / count
        return value

    blocks = torch.autograd.functional.hessian(total, tuple(params.values()))
    sizes = [p.numel() for p in params.values()]
    return torch.cat([torch.cat([block.reshape(a, b) for block, b in zip(row, sizes, strict=True)],
                                dim=1) for row, a in zip(blocks, sizes, strict=True)])


@pytest.mark.parametrize("function", ["two_inputs", "dict_input", "loader"])
def test_hessian_of_a_user_model_equals_autograd(function, spec, tmp_path, capsys):
    assert main(["hessian", "--model", spec(function), "--out", str(tmp_path / "h")]) == 0
    payload = json.loads((tmp_path / "h" / "structure.json").read_text())
    H = autograd_hessian_of(*user_function(tmp_path, function)())
    eigenvalues = torch.linalg.eigvalsh(H)
    scale = float(eigenvalues.abs().max())
    assert payload["estimate"]["num_params"] == H.shape[0]
    assert abs(payload["spectra"]["H"]["max"] - float(eigenvalues[-1])) <= 1e-10 * scale
    assert abs(payload["spectra"]["H"]["min"] - float(eigenvalues[0])) <= 1e-10 * scale


@pytest.mark.parametrize("command", [
    ["spectrum", "--top", "2", "--probes", "6", "--density-probes", "1", "--density-steps", "4"],
    ["diagonal", "--steps", "0", "--probes", "4"],
    ["diagonal", "--steps", "2", "--every", "1", "--probes", "4"],
    ["train", "--optimizer", "hf", "--iterations", "2", "--no-progress"],
    ["train", "--optimizer", "adam", "--iterations", "3", "--batch-size", "4", "--no-progress"],
])
@pytest.mark.parametrize("function", ["two_inputs", "dict_input", "loader"])
def test_every_model_command_runs_a_user_model(command, function, spec, tmp_path, capsys):
    code = main([*command, "--model", spec(function), "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err


def test_help_states_the_model_contract():
    parser = build_parser()
    for command in ("hessian", "spectrum", "diagonal", "train"):
        text = " ".join(parser._subparsers._group_actions[0].choices[command].format_help().split())
        assert "(model, loss, data)" in text and "current directory" in text
        assert "loss(output, target)" in text and "DataLoader" in text
