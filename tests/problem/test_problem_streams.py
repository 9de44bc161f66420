"""Streaming data: a re-iterable is read batch by batch on every pass, never kept.

Claims: ``Problem`` reads a stream once at construction (not at all with ``num_data=``)
and once per pass after that; it keeps no reference to a yielded tensor; a smaller last
batch and a loss with its own ``normalizer`` give the exact mean over all samples (float64,
1e-12); a one-shot generator is read once and works for several passes.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from hesskit.errors import InvalidArgumentError
from hesskit.losses import MSELoss
from hesskit.problem import Problem

N, D, K, BATCH = 10, 3, 2, 4


def dataset() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, D, generator=g, dtype=torch.float64), torch.randn(
        N, K, generator=g, dtype=torch.float64
    )


def model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(D, 4), nn.Tanh(), nn.Linear(4, K)).double()


class CountingStream:
    """Yields fresh copies of the batches (so that only a holder keeps them alive), counts
    its passes and keeps weak references to every tensor it yields."""

    def __init__(self, batch_size: int = BATCH) -> None:
        self.X, self.Y = dataset()
        self.batch_size, self.passes, self.yielded = batch_size, 0, []

    def __iter__(self):
        self.passes += 1
        for start in range(0, N, self.batch_size):
            x = self.X[start : start + self.batch_size].clone()
            y = self.Y[start : start + self.batch_size].clone()
            self.yielded += [weakref.ref(x), weakref.ref(y)]
            yield x, y


def full_loss_and_gradient(net: nn.Module) -> tuple[Tensor, Tensor]:
    X, Y = dataset()
    loss = nn.functional.mse_loss(net(X), Y)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    return loss.detach(), torch.cat([g.reshape(-1) for g in grads])


def test_a_stream_is_read_once_per_pass_and_no_yielded_tensor_is_kept():
    stream, net = CountingStream(), model()
    problem = Problem(net, nn.MSELoss(), stream)
    assert stream.passes == 1 and problem.streamed
    assert problem.num_data == N and problem.num_batches == 3
    loss, gradient = problem.total_loss(), problem.gradient()
    assert stream.passes == 3
    expected_loss, expected_gradient = full_loss_and_gradient(net)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-12, atol=1e-14)
    del loss, gradient
    gc.collect()
    assert len(stream.yielded) == 3 * 2 * 3
    assert all(ref() is None for ref in stream.yielded)


def test_num_data_given_skips_the_construction_pass_and_a_wrong_count_is_caught():
    stream = CountingStream()
    problem = Problem(model(), nn.MSELoss(), stream, num_data=N)
    assert stream.passes == 0
    torch.testing.assert_close(problem.total_loss(), full_loss_and_gradient(problem.model)[0])
    wrong = Problem(model(), nn.MSELoss(), CountingStream(), num_data=N + 1)
    with pytest.raises(InvalidArgumentError, match="yielded 10 samples on this pass but 11"):
        wrong.total_loss()


def test_a_data_loader_with_a_smaller_last_batch_gives_the_mean_over_all_samples():
    X, Y = dataset()
    loader = DataLoader(TensorDataset(X, Y), batch_size=BATCH)  # batches of 4, 4, 2
    net = model()
    problem = Problem(net, nn.MSELoss(), loader)
    assert problem.streamed and problem.num_batches == 3
    assert [b.weight for b in problem.batches()] == pytest.approx([0.4, 0.4, 0.2], abs=1e-15)
    expected_loss, expected_gradient = full_loss_and_gradient(net)
    torch.testing.assert_close(problem.total_loss(), expected_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(problem.gradient(), expected_gradient, rtol=1e-12, atol=1e-14)


def test_a_shuffling_data_loader_is_warned_about():
    X, Y = dataset()
    with pytest.warns(UserWarning, match="shuffles"):
        Problem(model(), nn.MSELoss(), DataLoader(TensorDataset(X, Y), batch_size=3, shuffle=True))


def test_a_generator_is_read_once_into_memory_and_serves_several_passes():
    X, Y = dataset()
    problem = Problem(model(), nn.MSELoss(), ((X[s:s + 3], Y[s:s + 3]) for s in range(0, N, 3)))
    assert not problem.streamed and problem.num_batches == 4
    first, second = problem.total_loss(), problem.total_loss()
    assert torch.equal(first, second)
    torch.testing.assert_close(first, full_loss_and_gradient(problem.model)[0])


class MaskedMSE(MSELoss):
    """Squared error over the entries where the mask is 1, averaged over those entries:
    ℓ_b = Σ m (z − y)² / Σ m, so the batch normalizer is Σ m (targets are (y, m))."""

    def value(self, z: Tensor, y) -> Tensor:
        target, mask = y
        return (mask * (z - target) ** 2).sum() / mask.sum()

    def normalizer(self, targets, outputs=None) -> float:
        return float(targets[1].sum())


def test_a_loss_with_a_normalizer_gives_the_exact_mean_over_unequal_batches():
    X, Y = dataset()
    mask = torch.zeros(N, K, dtype=X.dtype)
    mask[:2] = 1  # the first batch has 4 counted entries, the second 1, the last none
    mask[5, 0] = 1
    batches = [(X[s:s + BATCH], (Y[s:s + BATCH], mask[s:s + BATCH])) for s in range(0, N, BATCH)]
    net = model()
    problem = Problem(net, MaskedMSE(), batches)
    expected = (mask * (net(X) - Y) ** 2).sum() / mask.sum()
    assert problem.num_batches == 2  # the batch with no counted entry is left out
    torch.testing.assert_close(problem.total_loss(), expected.detach(), rtol=1e-12, atol=0)


def test_with_params_differentiates_a_subset_without_reading_the_stream_again():
    stream, net = CountingStream(), model()
    problem = Problem(net, nn.MSELoss(), stream)
    last = problem.with_params(["2.weight", "2.bias"])
    assert stream.passes == 1 and last.num_data == N and last.layout.names == ("2.weight", "2.bias")
    full = problem.gradient()
    torch.testing.assert_close(last.gradient(), full[-last.num_params :], rtol=1e-12, atol=0)
