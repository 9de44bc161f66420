"""KFC factors of ``nn.Conv2d`` (Grosse & Martens 2016) against explicit loops, and the
Kronecker product against the exact GGN where the KFC assumptions hold exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from closures import batch_closure
from hesskit.operators import gauss_newton_operator
from hesskit.operators.kfac import kfac_operator
from hesskit.operators.kfac_factors import FactorTargets, factor_statistics, kfac_blocks
from hesskit.optim.kfac.optimizer import KFAC
from hesskit.optim.kfac.steps import KFACSchedule
from hesskit.problem import Problem


@pytest.fixture(autouse=True)
def _float64():
    """Float64 in this module only (a module-level default would leak into other files)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _conv(bias: bool = True, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(2, 3, kernel_size=(2, 3), stride=stride, padding=padding, bias=bias)


def _data(n: int = 4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 2, 4, 5, generator=g)


def _patch(x: torch.Tensor, conv: nn.Conv2d, i: int, r: int, c: int) -> torch.Tensor:
    """The input patch of sample i under the kernel at output (r, c), by slicing."""
    ph, pw = conv.padding
    padded = nn.functional.pad(x, (pw, pw, ph, ph))
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    return padded[i, :, r * sh: r * sh + kh, c * sw: c * sw + kw].reshape(-1)


@pytest.mark.parametrize("bias,stride,padding", [(True, 1, 1), (False, 2, 0)])
def test_factors_equal_their_definitions_by_loops_over_samples_and_positions(
        bias, stride, padding):
    conv = _conv(bias, stride, padding)
    model = nn.Sequential(conv, nn.Tanh(), nn.Flatten())
    X = _data()
    with torch.no_grad():
        out_shape = model(X).shape
    Y = torch.randn(out_shape, generator=torch.Generator().manual_seed(2))
    problem = Problem(model, nn.MSELoss(), (X, Y))
    blocks = kfac_blocks(model, problem.layout.names)
    assert len(blocks) == 1 and blocks[0].conv is not None
    factors = factor_statistics(problem, blocks, FactorTargets.EMPIRICAL)["0.weight"]

    # brute force: the gradient of the (mean) loss w.r.t. the conv output, by autograd
    s = conv(X).detach().requires_grad_(True)
    loss = nn.MSELoss()(torch.tanh(s).flatten(1), Y)
    (ds,) = torch.autograd.grad(loss, s)
    c = 1 / Y.numel()  # the reduction factor of the mean squared error
    n, _, H, W = s.shape
    A = torch.zeros_like(factors.A)
    G = torch.zeros_like(factors.G)
    for i in range(n):
        for r in range(H):
            for col in range(W):
                a = _patch(X, conv, i, r, col)
                if bias:
                    a = torch.cat([a, torch.ones(1)])
                A += torch.outer(a, a) / n
                g = ds[i, :, r, col] / c**0.5
                G += torch.outer(g, g) / (H * W)
    torch.testing.assert_close(factors.A, A, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(factors.G, G, rtol=1e-12, atol=1e-12)


def test_kronecker_product_is_the_exact_ggn_of_a_one_layer_linear_conv_under_mse():
    """IAD, SH and SUD hold exactly here (H_ℓ = 2cI at every location), so KFC is exact."""
    conv = _conv()
    model = nn.Sequential(conv, nn.Flatten())
    X = _data(3)
    with torch.no_grad():
        Y = torch.randn(model(X).shape, generator=torch.Generator().manual_seed(3))
    problem = Problem(model, nn.MSELoss(), (X, Y))
    kfc = kfac_operator(problem, targets=FactorTargets.EXPECTED).to_dense()
    exact = gauss_newton_operator(problem).to_dense()
    torch.testing.assert_close(kfc, exact, rtol=1e-10, atol=1e-12)


def test_a_nonlinear_conv_is_only_approximated():
    """With a tanh after the convolution SH fails, so the product is NOT the GGN: the test
    above is not passing by accident of the layout."""
    conv = _conv()
    model = nn.Sequential(conv, nn.Tanh(), nn.Flatten())
    X = _data(3)
    with torch.no_grad():
        Y = torch.randn(model(X).shape, generator=torch.Generator().manual_seed(3))
    problem = Problem(model, nn.MSELoss(), (X, Y))
    kfc = kfac_operator(problem, targets=FactorTargets.EXPECTED).to_dense()
    exact = gauss_newton_operator(problem).to_dense()
    assert (kfc - exact).norm() > 1e-3 * exact.norm()
    torch.testing.assert_close(kfc.trace(), exact.trace(), rtol=0.5, atol=0)


def test_inverse_matvec_of_a_conv_block_matches_a_dense_solve():
    model = nn.Sequential(_conv(), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 5 * 5, 2))
    X = _data(5)
    Y = torch.randn(5, 2, generator=torch.Generator().manual_seed(4))
    op = kfac_operator(Problem(model, nn.MSELoss(), (X, Y)), targets=FactorTargets.EXPECTED)
    assert [b.conv is not None for b in op.blocks] == [True, False]
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(5))
    dense = op.to_dense() + 0.1 * torch.eye(op.shape[0])
    torch.testing.assert_close(op.inverse_matvec(v, 0.1), torch.linalg.solve(dense, v),
                               rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(op.diagonal(), op.to_dense().diagonal(), rtol=1e-12, atol=0)


def test_grouped_convolutions_are_not_covered():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten())
    assert kfac_blocks(model, [n for n, _ in model.named_parameters()]) == []


def test_the_optimizer_steps_a_small_cnn_and_reduces_the_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 3))
    X = torch.randn(32, 1, 4, 4, generator=torch.Generator().manual_seed(6))
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(7))
    opt = KFAC(model.parameters(), model=model, loss=nn.CrossEntropyLoss(), schedule=KFACSchedule(
        statistics_fraction=1.0, initial_damping=1.0))
    assert [b.conv is not None for b in opt.blocks] == [True, False]
    opt_closure = batch_closure(opt, X, y)
    first = float(opt.step(opt_closure))
    for _ in range(9):
        last = float(opt.step(opt_closure))
    assert last < 0.7 * first
