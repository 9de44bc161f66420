"""J v by forward mode, a traced linearization or the double-vjp: all exact, the traced map
only where it is proved to apply, and products bit-identical whichever way they ran."""

from __future__ import annotations

import pytest
import torch
from tests.reference import autograd_gauss_newton
from torch import nn

from hesskit.operators import gauss_newton_operator
from hesskit.operators.gauss_newton import OutputLinearization
from hesskit.problem import Problem


class ConvResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.inner = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3 * 6 * 6, 2)

    def forward(self, x):
        h = torch.tanh(self.stem(x))
        return self.head((h + torch.relu(self.inner(h))).flatten(1))


class InPlaceResidual(ConvResidual):
    """The residual add written in place, as torchvision's and HF's ResNets do."""

    def forward(self, x):
        h = torch.tanh(self.stem(x))
        out = self.inner(h)
        out += h
        return self.head(torch.relu(out).flatten(1))


class Branchy(nn.Module):
    """Data-dependent control flow: tracing cannot follow it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv1d(1, 2, 3), nn.Linear(8, 2)

    def forward(self, x):
        h = self.conv(x).flatten(1)
        if float(h.detach().sum()) > 0:  # data-dependent control flow: not traceable
            h = torch.tanh(h)
        return self.head(h)


class _NoForwardMode(torch.autograd.Function):
    """tanh with a backward but no jvp: forward-mode AD cannot pass through it."""

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad * (1 - out * out)


class NoForwardMode(ConvResidual):
    def forward(self, x):
        return self.head(_NoForwardMode.apply(self.stem(x)).flatten(1))


def _problem(model, shape):
    torch.manual_seed(0)
    model = model.double()
    X = torch.randn(5, *shape, dtype=torch.float64)
    y = torch.randn(5, 2, dtype=torch.float64)
    return model, X, y, Problem(model, nn.MSELoss(), (X, y))


def _reference(model, X, y):
    return autograd_gauss_newton(model, nn.functional.mse_loss, X, y)


@pytest.mark.parametrize("jacobian", ["auto", "linearize", "jvp", "double_vjp"])
def test_every_jacobian_method_gives_the_exact_gauss_newton_matrix(jacobian):
    model, X, y, problem = _problem(ConvResidual(), (1, 6, 6))
    op = gauss_newton_operator(problem, jacobian=jacobian)
    eye = torch.eye(op.shape[0], dtype=torch.float64)
    for _ in range(OutputLinearization.TRACE_AFTER + 1):
        torch.testing.assert_close(op.matmat(eye), _reference(model, X, y), atol=1e-10,
                                   rtol=1e-9)
    expected = {"auto": "linearize", "linearize": "linearize", "jvp": "jvp",
                "double_vjp": "double_vjp"}[jacobian]
    assert op.linearization(next(problem.batches())).method == expected


def test_auto_traces_only_after_forward_mode_products_and_changes_no_bit():
    *_, problem = _problem(ConvResidual(), (1, 6, 6))
    op = gauss_newton_operator(problem)
    v = torch.randn(op.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lin = op.linearization(next(problem.batches()))
    first = op @ v
    methods = [lin.method]
    for _ in range(5):
        assert torch.equal(op @ v, first)
        methods.append(lin.method)
    assert methods[: OutputLinearization.TRACE_AFTER] == ["jvp"] * OutputLinearization.TRACE_AFTER
    assert methods[-1] == "linearize" and lin.trace_refused is None


@pytest.mark.parametrize("jacobian", ["auto", "linearize"])
def test_ten_successive_products_on_an_in_place_residual_net_are_exact(jacobian):
    """torch.func.linearize's tangent drifts after its first call when forward adds in
    place; the in-place add is seen and the traced map never used."""
    model, X, y, problem = _problem(InPlaceResidual(), (1, 6, 6))
    G = _reference(model, X, y)
    op = gauss_newton_operator(problem, jacobian=jacobian)
    generator = torch.Generator().manual_seed(2)
    for _ in range(10):
        v = torch.randn(op.shape[0], dtype=torch.float64, generator=generator)
        torch.testing.assert_close(op @ v, G @ v, atol=1e-12, rtol=1e-10)
    lin = op.linearization(next(problem.batches()))
    assert lin.method == "jvp" and "in place (add_)" in lin.trace_refused


def test_an_untraceable_model_keeps_forward_mode():
    model, X, y, problem = _problem(Branchy(), (1, 6))
    op = gauss_newton_operator(problem, jacobian="linearize")
    torch.testing.assert_close(op.matmat(torch.eye(op.shape[0], dtype=torch.float64)),
                               _reference(model, X, y), atol=1e-10, rtol=1e-9)
    lin = op.linearization(next(problem.batches()))
    assert lin.method == "jvp" and "could not trace" in lin.trace_refused


def test_an_operation_without_forward_mode_falls_back_to_the_double_vjp():
    model, X, y, problem = _problem(NoForwardMode(), (1, 6, 6))
    op = gauss_newton_operator(problem)
    torch.testing.assert_close(op.matmat(torch.eye(op.shape[0], dtype=torch.float64)),
                               _reference(model, X, y), atol=1e-10, rtol=1e-9)
    lin = op.linearization(next(problem.batches()))
    assert lin.method == "double_vjp" and "forward-mode AD unavailable" in lin.trace_refused


class PaddedTokenConv(nn.Module):
    """A convolution over embedded tokens whose embedding has a padding row (as BERT's)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3, padding_idx=0)
        self.conv, self.head = nn.Conv1d(3, 2, 2), nn.Linear(2 * 3, 2)

    def forward(self, tokens):
        return self.head(torch.tanh(self.conv(self.embed(tokens).transpose(1, 2))).flatten(1))


def test_an_embedding_padding_row_keeps_forward_mode_away():
    """Reverse mode holds the padding row constant, forward mode does not: J v by jvp with
    Jᵀ u by vjp would not be one matrix and its transpose."""
    torch.manual_seed(0)
    model = PaddedTokenConv().double()
    tokens = torch.tensor([[0, 1, 2, 3], [4, 0, 0, 1], [2, 3, 0, 4]])
    y = torch.randn(3, 2, dtype=torch.float64)
    problem = Problem(model, nn.MSELoss(), (tokens, y))
    op = gauss_newton_operator(problem)
    G = op.matmat(torch.eye(op.shape[0], dtype=torch.float64))
    names = [n for n, _ in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def outputs(theta):
        params, start = {}, 0
        for name, p in zip(names, model.parameters(), strict=True):
            params[name] = theta[start : start + p.numel()].reshape(p.shape)
            start += p.numel()
        return torch.func.functional_call(model, params, (tokens,))

    J = torch.func.jacrev(outputs)(flat).reshape(-1, flat.numel())  # reverse mode, as torch
    torch.testing.assert_close(G, J.T @ J * (2 / y.numel()), atol=1e-12, rtol=1e-10)
    lin = op.linearization(next(problem.batches()))
    assert lin.method == "double_vjp" and "padding_idx=0" in lin.trace_refused
