"""NumPy's and Python's global generators: seeded from the run's seed and saved with the
checkpoint, so a loss that draws from them repeats and resumes exactly."""

from __future__ import annotations

import json
import random
import textwrap

import numpy as np
import pytest

from hesskit.cli.main import main

MODEL = '''
import random

import numpy as np
import torch
from torch import nn


class NoisyLoss(nn.Module):
    """MSE scaled by draws from NumPy's and Python's global generators."""

    def forward(self, output, target):
        scale = 1.0 + float(np.random.rand()) + random.random()
        return scale * nn.functional.mse_loss(output, target)


def make():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(16, 2, generator=generator, dtype=torch.float64)
    torch.manual_seed(0)
    return nn.Linear(3, 2).double(), NoisyLoss(), (x, y)
'''


@pytest.fixture
def model_spec(tmp_path) -> str:
    path = tmp_path / "noisy_model.py"
    path.write_text(textwrap.dedent(MODEL))
    return f"{path}:make"


def train(model_spec: str, out, iterations: int, *extra: str) -> int:
    return main(["train", "--model", model_spec, "--optimizer", "sgd", "--lr", "0.05",
                 "--batch-size", "4", "--iterations", str(iterations), "--eval-every", "1",
                 "--checkpoint-every", "2", "--no-progress", "--seed", "3", "--out", str(out),
                 *extra])


def losses(out) -> list[float]:
    lines = (out / "log.jsonl").read_text().splitlines()[1:]
    return [json.loads(line)["loss"] for line in lines]


def test_two_runs_with_the_same_seed_draw_the_same_numbers(model_spec, tmp_path):
    for name, disturbance in (("a", 1), ("b", 2)):
        np.random.seed(disturbance)
        random.seed(disturbance)
        assert train(model_spec, tmp_path / name, 4) == 0
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_a_resumed_run_draws_what_an_uninterrupted_one_does(model_spec, tmp_path):
    assert train(model_spec, tmp_path / "whole", 4) == 0
    assert train(model_spec, tmp_path / "parts", 2) == 0
    np.random.seed(7)
    random.seed(7)
    assert train(model_spec, tmp_path / "parts", 4, "--resume") == 0
    assert losses(tmp_path / "whole") == losses(tmp_path / "parts")
