"""The optimizer names that train/bench --help list are the registry's, all of them."""

from __future__ import annotations

import subprocess
import sys

from hesskit.cli.options import OPTIMIZER_NAMES
from hesskit.training.optimizers import REGISTRY


def test_help_names_are_the_registry():
    assert sorted(OPTIMIZER_NAMES) == sorted(REGISTRY)


def test_train_and_bench_help_list_every_optimizer():
    for command in ("train", "bench"):
        text = subprocess.run([sys.executable, "-m", "hesskit", command, "--help"],
                              capture_output=True, text=True, check=True).stdout
        flat = " ".join(text.split())
        for name in REGISTRY:
            assert name in flat, (command, name)
        assert "kfac, shampoo, sophia, sophia-h, adahessian" in flat
