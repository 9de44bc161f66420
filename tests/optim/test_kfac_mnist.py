"""K-FAC with its defaults on the most ordinary model (issue 22): a 784-128-10 ReLU MLP on
raw-pixel MNIST (pixels in [0, 1], not normalised), batch 256, 50 steps on three seeds.

Before the fix, float32 LAPACK ``eigh`` of the first layer's input factor (hundreds of
always-zero pixel rows, rank ≤ the 32 statistics cases) raised ``torch._C._LinAlgError:
linalg.eigh: The algorithm failed to converge`` at step 0 or 1 on 2 of 3 seeds. Needs the
MNIST IDX files in ``../shared/data/mnist`` (skipped without them).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from closures import batch_closure
from hesskit.optim.kfac.optimizer import KFAC

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
BATCH, STEPS = 256, 50

pytestmark = pytest.mark.skipif(
    not all((SHARED_DATA / "mnist" / name).is_file() for name in MNIST_FILES),
    reason=f"the MNIST files are not in {SHARED_DATA / 'mnist'} (CI has them)",
)


@pytest.fixture(scope="module")
def raw_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 50 · 256 training images, raw pixels in [0, 1], and their labels."""
    from hesskit.data.mnist import load_mnist

    data = load_mnist(SHARED_DATA)
    return data.train_x[: BATCH * STEPS], data.train_y[: BATCH * STEPS]


def kfac(model: nn.Module) -> KFAC:
    """K-FAC with every default."""
    return KFAC(model.parameters(), model=model, loss=nn.CrossEntropyLoss())


def kfac_step(opt: KFAC, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """One step on a batch, through the ordinary closure."""
    return float(opt.step(batch_closure(opt, inputs, targets)))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kfac_defaults_train_a_relu_mlp_on_raw_pixel_mnist_for_50_steps(raw_mnist, seed):
    X, Y = raw_mnist
    assert float(X.min()) == 0.0 and float(X.max()) == 1.0  # raw pixels, not normalised
    dead = int((X[:BATCH].abs().sum(0) == 0).sum())
    assert dead > 200  # always-zero pixels: zero rows and columns of the first A factor
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = kfac(model)
    order = torch.randperm(len(Y), generator=torch.Generator().manual_seed(seed))
    probe = order[:2048]
    with torch.no_grad():
        before = float(nn.functional.cross_entropy(model(X[probe]), Y[probe]))
    losses = []
    for k in range(STEPS):
        index = order[k * BATCH: (k + 1) * BATCH]
        losses.append(kfac_step(opt, X[index], Y[index]))
    assert all(math.isfinite(v) for v in losses)
    assert opt.kfac_state["steps"] == STEPS and opt.kfac_state["nonfinite_rejections"] == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with torch.no_grad():
        after = float(nn.functional.cross_entropy(model(X[probe]), Y[probe]))
    # With λ₀ = 150 the defaults learn slowly here (seed 0: batch loss 2.29 → 1.99, λ 150
    # → 11.5 after 50 steps; benchmarks/kfac_classifier.py has settings for classifiers),
    # but the loss falls and λ with it.
    assert after < before - 0.1
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1
    assert opt.kfac_state["damping"] < 150.0
