"""The hand-written chain Hessian product against torch.autograd's dense Hessian (float64)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_op_cases import LOSSES, REDUCTIONS, hesskit_loss, split, targets, torch_loss_fn
from torch import nn

from hesskit.engine import ChainHessian
from hesskit.errors import UnsupportedArchitectureError
from hesskit.operators import hessian_operator
from hesskit.operators.hessian import HessianMethod
from hesskit.problem import Problem
from reference import autograd_hessian

ACTIVATIONS = {
    "relu": lambda draw: nn.ReLU(),
    "leaky_relu": lambda draw: nn.LeakyReLU(draw(st.floats(0.01, 0.5))),
    "elu": lambda draw: nn.ELU(draw(st.floats(0.5, 2.0))),
    "sigmoid": lambda draw: nn.Sigmoid(),
    "tanh": lambda draw: nn.Tanh(),
    "softplus": lambda draw: nn.Softplus(),
    "gelu": lambda draw: nn.GELU(),
    "silu": lambda draw: nn.SiLU(),
    "identity": lambda draw: nn.Identity(),
}


def by_products(op):
    """The operator's matrix from N products (its to_dense may take the dense closed form)."""
    return op.matmat(torch.eye(op.shape[0], dtype=op.dtype))


def tolerance(H: torch.Tensor) -> dict[str, float]:
    return dict(rtol=1e-10, atol=1e-10 * max(1.0, float(H.abs().max())))


def case_data(loss, reduction, model, batch_sizes, in_dim, out_dim, seed, params=None):
    """(problem, torch loss fn, X, y) with float64 data split into the given batches."""
    generator = torch.Generator().manual_seed(seed)
    n = sum(batch_sizes)
    X = torch.randn(n, in_dim, generator=generator, dtype=torch.float64)
    y = targets(loss, n, out_dim, generator)
    batches = split(X, y, list(batch_sizes))
    problem = Problem(model, hesskit_loss(loss, reduction), batches, params=params)
    return problem, torch_loss_fn(loss, reduction), X, y


@st.composite
def chains(draw):
    """A random chain: widths, depth, an activation per layer, bias or not, data, subset."""
    sizes = [draw(st.integers(1, 3))]
    sizes += draw(st.lists(st.integers(1, 4), min_size=0, max_size=3))
    sizes.append(draw(st.integers(2, 3)))
    torch.manual_seed(draw(st.integers(0, 10_000)))
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=draw(st.booleans())))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[draw(st.sampled_from(sorted(ACTIVATIONS)))](draw))
    model = nn.Sequential(*layers).double()
    names = [name for name, _ in model.named_parameters()]
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
    subset = None if draw(st.booleans()) else chosen
    loss, reduction = draw(st.sampled_from(LOSSES)), draw(st.sampled_from(REDUCTIONS))
    batch_sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    problem, loss_fn, X, y = case_data(
        loss, reduction, model, batch_sizes, sizes[0], sizes[-1], draw(st.integers(0, 999)),
        params=subset,
    )
    return problem, model, loss_fn, X, y


@settings(max_examples=30, deadline=None)
@given(chains(), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_chain_product_equals_autograd_hessian_on_random_chains(chain, columns, vector_seed):
    problem, model, loss_fn, X, y = chain
    H = autograd_hessian(model, loss_fn, X, y, names=list(problem.layout.names))
    op = hessian_operator(problem)
    V = torch.randn(
        problem.num_params, columns, generator=torch.Generator().manual_seed(vector_seed),
        dtype=torch.float64,
    )
    torch.testing.assert_close(op.matmat(V), H @ V, **tolerance(H))
    assert op.method is HessianMethod.CHAIN
    torch.testing.assert_close(op.matvec(V[:, 0]), H @ V[:, 0], **tolerance(H))


def test_chain_with_flatten_dropout_inplace_relu_and_an_unused_layer():
    """Pass-through layers, an in-place activation, and parameters the forward never uses."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Flatten(), nn.Linear(6, 4), nn.ReLU(inplace=True), nn.Dropout(0.5),
                nn.Identity(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3),
            )
            self.unused = nn.Linear(2, 2)

        def forward(self, x):
            return self.body(x)

    torch.manual_seed(0)
    model = Net().double().eval()
    X = torch.randn(5, 2, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (5,))
    problem = Problem(model, nn.CrossEntropyLoss(), [(X[:3], y[:3]), (X[3:], y[3:])])
    H = autograd_hessian(model, torch.nn.functional.cross_entropy, X, y)
    op = hessian_operator(problem)
    dense = by_products(op)
    assert op.method is HessianMethod.CHAIN
    torch.testing.assert_close(dense, H, **tolerance(H))
    assert dense[:, problem.layout.slice("unused.weight")].abs().max() == 0


class Residual(nn.Module):
    """Not a chain: the input skips the first layer."""

    def __init__(self):
        super().__init__()
        self.inner, self.out = nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.inner(x)) + x)


class InPlaceBetweenModules(nn.Module):
    """tanh_ between two Linear layers: the next layer receives the same tensor object."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x).tanh_())


class Tied(nn.Module):
    """Two square layers sharing one weight tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second, self.out = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2)
        self.second.weight = self.first.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.nn.functional.silu(self.second(torch.sigmoid(self.first(x)))))


class TiedSequential(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))
        self[2].weight = self[0].weight


NOT_CHAINS = {
    "residual": Residual,
    "in_place_between_modules": InPlaceBetweenModules,
    "tied_functional": Tied,
    "tied_sequential": TiedSequential,
    "softmax": lambda: nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1), nn.Linear(4, 2)),
}

NEW_CHAINS = {
    "softplus_beta_2": lambda: nn.Sequential(nn.Linear(3, 4), nn.Softplus(beta=2), nn.Linear(4, 2)),
    "gelu_tanh": lambda: nn.Sequential(nn.Linear(3, 4), nn.GELU("tanh"), nn.Linear(4, 2)),
    "mish_selu": lambda: nn.Sequential(nn.Linear(3, 4), nn.Mish(), nn.Linear(4, 3), nn.SELU(),
                                       nn.Linear(3, 2)),
    "hardswish_inplace_relu6": lambda: nn.Sequential(
        nn.Linear(3, 4), nn.Hardswish(), nn.Linear(4, 3), nn.ReLU6(inplace=True),
        nn.Linear(3, 2), nn.Tanh()
    ),
}


@pytest.mark.parametrize("kind", NEW_CHAINS)
def test_every_activation_of_the_table_takes_the_exact_chain_product(kind):
    torch.manual_seed(1)
    model = NEW_CHAINS[kind]().double()
    problem, loss_fn, X, y = case_data("mse", "mean", model, (4, 2), 3, 2, seed=2)
    H = autograd_hessian(model, loss_fn, X, y)
    op = hessian_operator(problem)
    torch.testing.assert_close(by_products(op), H, **tolerance(H))
    assert op.method is HessianMethod.CHAIN


@pytest.mark.parametrize("kind", NOT_CHAINS)
def test_models_the_recorder_refuses_fall_back_to_torch_func(kind):
    torch.manual_seed(1)
    model = NOT_CHAINS[kind]().double()
    problem, loss_fn, X, y = case_data("mse", "mean", model, (4, 2), 3, 2, seed=2)
    H = autograd_hessian(model, loss_fn, X, y)
    op = hessian_operator(problem)
    torch.testing.assert_close(by_products(op), H, **tolerance(H))
    assert op.method is HessianMethod.TORCH_FUNC


def test_use_chain_true_on_a_model_that_is_not_a_chain_says_what_to_do():
    torch.manual_seed(1)
    problem, *_ = case_data("mse", "mean", Residual().double(), (4,), 3, 2, seed=2)
    op = hessian_operator(problem, use_chain=True)
    with pytest.raises(UnsupportedArchitectureError, match=r"residual.*use_chain=None"):
        op.matvec(torch.ones(op.shape[0], dtype=torch.float64))


def test_use_chain_false_takes_torch_func_and_agrees_with_the_chain_product():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.SiLU(), nn.Linear(4, 2)).double()
    problem, loss_fn, X, y = case_data("bce", "sum", model, (3, 3), 3, 2, seed=4)
    H = autograd_hessian(model, loss_fn, X, y)
    fallback, chain = hessian_operator(problem, use_chain=False), hessian_operator(problem)
    torch.testing.assert_close(by_products(fallback), H, **tolerance(H))
    torch.testing.assert_close(by_products(chain), H, **tolerance(H))
    assert (fallback.method, chain.method) == (HessianMethod.TORCH_FUNC, HessianMethod.CHAIN)


@pytest.mark.parametrize("subset", [None, ["0.weight", "2.bias"]])
def test_chain_product_is_the_hessian_at_the_parameters_the_operator_was_built_at(subset):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    problem, loss_fn, X, y = case_data("ce", "mean", model, (4, 3), 3, 2, seed=6, params=subset)
    H = autograd_hessian(model, loss_fn, X, y, names=list(problem.layout.names))
    op = hessian_operator(problem)  # nothing computed yet
    with torch.no_grad():
        for name in problem.layout.names:
            dict(model.named_parameters())[name].add_(0.5)
    torch.testing.assert_close(by_products(op), H, **tolerance(H))
    assert op.method is HessianMethod.CHAIN


def test_chain_runs_one_forward_pass_per_batch_for_fifty_products():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2)).double()
    problem, *_ = case_data("ce", "mean", model, (3, 3, 1), 3, 2, seed=8)
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    op = hessian_operator(problem)
    generator = torch.Generator().manual_seed(0)
    for _ in range(25):
        op.matvec(torch.randn(op.shape[0], generator=generator, dtype=torch.float64))
    op.matmat(torch.randn(op.shape[0], 25, generator=generator, dtype=torch.float64))
    assert len(forwards) == problem.num_batches
    assert op.method is HessianMethod.CHAIN


def test_many_columns_go_through_in_blocks_with_the_same_result(monkeypatch):
    monkeypatch.setattr(ChainHessian, "max_columns", 2)
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(3, 4), nn.ELU(), nn.Linear(4, 3)).double()
    problem, loss_fn, X, y = case_data("mse", "sample_mean", model, (5,), 3, 3, seed=10)
    H = autograd_hessian(model, loss_fn, X, y)
    V = torch.randn(problem.num_params, 5, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    torch.testing.assert_close(hessian_operator(problem).matmat(V), H @ V, **tolerance(H))
