"""Models as people write them: train-mode BatchNorm, Dropout, attention, other dtypes.

Claims: with train-mode BatchNorm hesskit differentiates the function that normalises with
each batch's statistics (equal to a hand-written reference under
``torch.autograd.functional.hessian``, float64, 1e-10) and leaves every buffer bitwise
unchanged; Dropout acts as in eval mode; a ``TransformerEncoderLayer`` model gets Hessian-
vector products (the default CPU attention kernel has no double backward) equal to central
differences of its autograd gradient; a module that changes a buffer is named.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from hesskit.errors import InvalidArgumentError
from hesskit.operators import gauss_newton_operator, hessian_operator
from hesskit.problem import Problem

N, D, H, K, EPS = 9, 3, 4, 2, 1e-5


def batchnorm_model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D, H), nn.BatchNorm1d(H, eps=EPS), nn.Tanh(), nn.Linear(H, K))
    net = net.double().train()
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.normal_()
        net[1].running_mean.normal_()
    return net


def data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, D, generator=g, dtype=torch.float64), torch.randn(
        N, K, generator=g, dtype=torch.float64
    )


PIECES = [slice(0, 5), slice(5, N)]


def batchnorm_reference_loss(theta: Tensor) -> Tensor:
    """Σ_b (n_b / N) mean-squared error of the network that uses each batch's statistics."""
    sizes = [H * D, H, H, H, K * H, K]
    W1, b1, gamma, beta, W2, b2 = torch.split(theta, sizes)
    W1, W2 = W1.reshape(H, D), W2.reshape(K, H)
    X, Y = data()
    total = theta.new_zeros(())
    for piece in PIECES:
        s = X[piece] @ W1.T + b1
        normed = (s - s.mean(0)) / torch.sqrt(s.var(0, unbiased=False) + EPS)
        z = torch.tanh(gamma * normed + beta) @ W2.T + b2
        total = total + len(z) / N * ((z - Y[piece]) ** 2).mean()
    return total


def state(net: nn.Module) -> dict[str, Tensor]:
    return {name: t.detach().clone() for name, t in net.state_dict().items()}


def test_train_mode_batchnorm_uses_batch_statistics_and_leaves_every_buffer_unchanged():
    net = batchnorm_model()
    X, Y = data()
    before = state(net)
    problem = Problem(net, nn.MSELoss(), [(X[p], Y[p]) for p in PIECES])
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    v = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(2), dtype=theta.dtype)
    hessian = torch.autograd.functional.hessian(batchnorm_reference_loss, theta)
    reference_gradient = torch.func.grad(batchnorm_reference_loss)(theta)
    torch.testing.assert_close(problem.total_loss(), batchnorm_reference_loss(theta))
    torch.testing.assert_close(problem.gradient(), reference_gradient, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hessian_operator(problem) @ v, hessian @ v, rtol=1e-10, atol=1e-12)
    gauss_newton_operator(problem) @ v
    after = state(net)
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert net.training and net[1].track_running_stats
    assert problem.couples_samples


def test_functional_mode_restores_the_model_when_the_block_raises():
    net = batchnorm_model()
    problem = Problem(net, nn.MSELoss(), data())
    with pytest.raises(RuntimeError, match="inside"), problem.functional_mode():
        assert not net[1].track_running_stats
        raise RuntimeError("inside")
    assert net[1].track_running_stats and net[1].running_mean is not None


def dropout_model() -> nn.Module:
    torch.manual_seed(4)
    return nn.Sequential(nn.Linear(D, H), nn.Dropout(0.5), nn.Tanh(), nn.Linear(H, K)).double()


def test_train_mode_dropout_acts_as_in_eval_mode_and_is_deterministic():
    net = dropout_model().train()
    X, Y = data()
    problem = Problem(net, nn.MSELoss(), (X, Y))
    expected = nn.functional.mse_loss(dropout_model().eval()(X), Y)
    torch.testing.assert_close(problem.total_loss(), expected.detach(), rtol=1e-12, atol=0)
    v = torch.ones(problem.num_params, dtype=torch.float64)
    assert torch.equal(hessian_operator(problem) @ v, hessian_operator(problem) @ v)
    assert torch.equal(problem.gradient(), problem.gradient())
    assert net[1].training


class Encoder(nn.Module):
    """A TransformerEncoderLayer (attention through scaled_dot_product_attention), mean-pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            d_model=4, nhead=2, dim_feedforward=6, dropout=0.1, batch_first=True
        )
        self.head = nn.Linear(4, K)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layer(x).mean(1))


def autograd_gradient(net: nn.Module, theta: Tensor, X: Tensor, Y: Tensor) -> Tensor:
    params = dict(zip([n for n, _ in net.named_parameters()], _split(net, theta), strict=True))
    outputs = torch.func.functional_call(net, params, (X,))
    loss = nn.functional.mse_loss(outputs, Y)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(params.values()))])


def _split(net: nn.Module, theta: Tensor) -> list[Tensor]:
    shapes = [p.shape for p in net.parameters()]
    pieces = torch.split(theta, [s.numel() for s in shapes])
    return [piece.reshape(s).requires_grad_(True) for piece, s in zip(pieces, shapes, strict=True)]


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_transformer_hessian_vector_product_equals_differences_of_the_gradient(mode):
    torch.manual_seed(5)
    net = Encoder().double()
    net.train(mode == "train")
    g = torch.Generator().manual_seed(6)
    X = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    Y = torch.randn(5, K, generator=g, dtype=torch.float64)
    problem = Problem(net, nn.MSELoss(), (X, Y))
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    v = torch.randn(theta.numel(), generator=g, dtype=theta.dtype)
    step = 1e-5
    net.eval()  # the reference: dropout off, as hesskit's default; plain autograd
    forward = autograd_gradient(net, theta + step * v, X, Y)
    backward = autograd_gradient(net, theta - step * v, X, Y)
    difference = (forward - backward) / (2 * step)
    net.train(mode == "train")
    product = hessian_operator(problem) @ v
    torch.testing.assert_close(product, difference, rtol=1e-6, atol=1e-8 * float(difference.norm()))
    assert net.training == (mode == "train")


class Counter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(D, K)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.linear(x)


def test_a_module_that_changes_a_buffer_in_place_is_named():
    X, Y = data()
    problem = Problem(Counter().double(), nn.MSELoss(), (X, Y))
    with pytest.raises(InvalidArgumentError, match=r"changed its buffer 'calls' in place"):
        problem.output(problem.parameters(), X)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_problems_on_float32_and_bfloat16_models_keep_their_dtype(dtype):
    X, Y = data()
    net = dropout_model().to(dtype)
    problem = Problem(net, nn.MSELoss(), (X.to(dtype), Y.to(dtype)))
    assert problem.dtype == dtype
    assert problem.total_loss().dtype == dtype and problem.gradient().dtype == dtype
    expected = nn.functional.mse_loss(net.eval()(X.to(dtype)), Y.to(dtype))
    torch.testing.assert_close(problem.total_loss(), expected.detach())
