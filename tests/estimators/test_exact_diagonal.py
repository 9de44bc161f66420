"""Exact Hessian / Gauss-Newton / empirical-Fisher diagonals against independent references.

References: ``torch.autograd.functional.hessian`` (``autograd_hessian``), the full Jacobian
with torch's losses (``autograd_gauss_newton``) and a loop of per-sample gradients of
torch's losses (the empirical Fisher). All in float64 with tolerance 1e-10.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hesskit.errors import InvalidArgumentError, UnsupportedArchitectureError
from hesskit.estimators.exact_diagonal import (
    DiagonalMethod,
    diagonal,
    empirical_fisher_diagonal,
    gauss_newton_diagonal,
    hessian_diagonal,
)
from hesskit.operators.base import MatrixOperator
from hesskit.problem import Problem
from reference import autograd_gauss_newton, autograd_hessian, flat_parameters

TOL = 1e-10
ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
}
TORCH_LOSSES = {
    "mse": (nn.MSELoss, nn.functional.mse_loss),
    "ce": (nn.CrossEntropyLoss, nn.functional.cross_entropy),
    "bce": (nn.BCEWithLogitsLoss, nn.functional.binary_cross_entropy_with_logits),
}


def make_targets(loss: str, n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    if loss == "ce":
        return torch.randint(0, k, (n,), generator=generator)
    if loss == "bce":
        return torch.rand(n, k, generator=generator, dtype=torch.float64)
    return torch.randn(n, k, generator=generator, dtype=torch.float64)


def empirical_fisher_reference(model, loss: str, X, y) -> torch.Tensor:
    """Σ_i c g_i²: per-sample gradients of torch's summed loss in a Python loop."""
    functional = TORCH_LOSSES[loss][1]
    k = model(X[:1]).shape[1]
    c = 1 / len(X) if loss == "ce" else 1 / (len(X) * k)
    params = list(model.parameters())
    total = torch.zeros_like(flat_parameters(model))
    for i in range(len(X)):
        value = functional(model(X[i : i + 1]), y[i : i + 1], reduction="sum")
        grads = torch.autograd.grad(value, params)
        total += c * torch.cat([g.reshape(-1) for g in grads]) ** 2
    return total


def split(X, y, sizes):
    batches, start = [], 0
    for size in sizes:
        batches.append((X[start : start + size], y[start : start + size]))
        start += size
    return batches


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(1, 6), min_size=0, max_size=3),
    activation=st.sampled_from(sorted(ACTIVATIONS)),
    loss=st.sampled_from(sorted(TORCH_LOSSES)),
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    outputs=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_exact_diagonals_match_autograd_on_random_mlps(
    widths, activation, loss, sizes, outputs, seed
):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    sizes_in = [3, *widths, outputs]
    layers = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes_in)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes_in) - 2:
            layers.append(ACTIVATIONS[activation]())
    model = nn.Sequential(*layers).double()
    n = sum(sizes)
    X = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    y = make_targets(loss, n, outputs, generator)
    module, functional = TORCH_LOSSES[loss]
    problem = Problem(model, module(), split(X, y, sizes))

    H = autograd_hessian(model, functional, X, y).diagonal()
    G = autograd_gauss_newton(model, functional, X, y).diagonal()
    EF = empirical_fisher_reference(model, loss, X, y)
    torch.testing.assert_close(hessian_diagonal(problem), H, atol=TOL, rtol=0)
    torch.testing.assert_close(gauss_newton_diagonal(problem), G, atol=TOL, rtol=0)
    torch.testing.assert_close(
        gauss_newton_diagonal(problem, use_chain=False), G, atol=TOL, rtol=0
    )
    torch.testing.assert_close(empirical_fisher_diagonal(problem), EF, atol=TOL, rtol=0)
    torch.testing.assert_close(
        empirical_fisher_diagonal(problem, use_chain=False), EF, atol=TOL, rtol=0
    )


def test_deep_narrow_tanh_network_switches_to_dense_curvature_and_stays_exact():
    # k = 2 outputs, width 3: after two σ″ residuals the factor has 8 ≥ 2·3 columns, so it
    # is multiplied out to dense before the middle linear layer; later σ″ add to the dense Q.
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3), nn.Tanh(),
        nn.Linear(3, 2),
    ).double()
    X = torch.randn(6, 4, dtype=torch.float64)
    y = torch.randn(6, 2, dtype=torch.float64)
    problem = Problem(model, nn.MSELoss(reduction="sum"), (X, y))
    H = autograd_hessian(model, lambda z, t: ((z - t) ** 2).sum(), X, y).diagonal()
    torch.testing.assert_close(hessian_diagonal(problem), H, atol=TOL, rtol=0)


class ChainedNet(nn.Module):
    """Not an nn.Sequential: named attributes, a forward that chains them (in-place ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(6, 5)
        self.act = nn.ReLU(inplace=True)
        self.squash = nn.Sigmoid()
        self.flatten = nn.Flatten()
        self.head = nn.Linear(5, 3)
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        return self.head(self.squash(self.act(self.hidden(self.flatten(x)))))


class ResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.act = nn.Tanh()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(x + self.act(self.inner(x)))


def test_custom_module_that_chains_its_layers_is_exact():
    torch.manual_seed(2)
    model = ChainedNet().double()
    X = torch.randn(5, 2, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (5,))
    problem = Problem(model, nn.CrossEntropyLoss(), (X, y))
    H = autograd_hessian(model, nn.functional.cross_entropy, X, y).diagonal()
    result = diagonal(problem, "hessian")
    assert result.method is DiagonalMethod.BACKPROP and result.exact
    torch.testing.assert_close(result.values, H, atol=TOL, rtol=0)
    assert result.trace == pytest.approx(float(H.sum()), abs=TOL)
    assert float(result.stderr.abs().max()) == 0.0
    assert bool((result.per_parameter()["unused.weight"] == 0).all())


def test_subset_of_parameters_matches_reference_on_those_parameters():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2)).double()
    X, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    names = ["0.bias", "2.weight"]
    problem = Problem(model, nn.MSELoss(), (X, y), params=names)
    H = autograd_hessian(model, nn.functional.mse_loss, X, y, names=names).diagonal()
    torch.testing.assert_close(hessian_diagonal(problem), H, atol=TOL, rtol=0)


def test_residual_network_is_refused_for_the_exact_hessian_with_the_reason():
    model = ResidualNet().double()
    X, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    problem = Problem(model, nn.MSELoss(), (X, y))
    with pytest.raises(UnsupportedArchitectureError, match=r"residual connection.*Hutchinson"):
        hessian_diagonal(problem)


def test_residual_network_gets_the_exact_gauss_newton_diagonal_per_sample():
    torch.manual_seed(4)
    model = ResidualNet().double()
    X, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    problem = Problem(model, nn.MSELoss(), (X, y))
    G = autograd_gauss_newton(model, nn.functional.mse_loss, X, y).diagonal()
    result = diagonal(problem, "ggn")
    assert result.method is DiagonalMethod.PER_SAMPLE
    torch.testing.assert_close(result.values, G, atol=TOL, rtol=0)
    with pytest.raises(UnsupportedArchitectureError):
        gauss_newton_diagonal(problem, use_chain=True)


def test_residual_network_hessian_falls_back_to_hutchinson_within_its_standard_error():
    pytest.importorskip("hesskit.operators.hessian")
    torch.manual_seed(5)
    model = ResidualNet().double()
    X, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    problem = Problem(model, nn.MSELoss(), (X, y))
    H = autograd_hessian(model, nn.functional.mse_loss, X, y).diagonal()
    result = diagonal(problem, "hessian", probes=400, seed=1)
    assert result.method is DiagonalMethod.HUTCHINSON and not result.exact
    assert "residual connection" in result.fallback_reason
    assert result.products == 400
    z = (result.values - H).abs() / result.stderr.clamp_min(1e-12)
    assert float(z.max()) < 5.0


@pytest.mark.parametrize(
    ("forward", "reason"),
    [
        (lambda m, x: m[2](torch.relu(m[0](x))), "'relu' outside the modules"),
        (lambda m, x: m[2](m[1](m[0](x))) * 2, "'mul' outside the modules"),
        (lambda m, x: m[0](m[1](m[0](x))), "called twice"),
    ],
)
def test_models_that_are_not_chains_are_refused(forward, reason):
    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seq = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))

        def forward(self, x):
            return forward(self.seq, x)

    problem = Problem(Wrapped().double(), nn.MSELoss(),
                      (torch.randn(4, 3, dtype=torch.float64),
                       torch.randn(4, 3, dtype=torch.float64)))
    with pytest.raises(UnsupportedArchitectureError, match=reason):
        hessian_diagonal(problem)


def test_train_mode_dropout_is_the_eval_function_and_unsupported_layers_are_refused():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Tanh(), nn.Linear(4, 2)).double()
    X, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    problem = Problem(model, nn.MSELoss(), (X, y))  # dropout="eval": hesskit's documented choice
    train_mode = hessian_diagonal(problem)
    assert model.training
    model.eval()
    H = autograd_hessian(model, nn.functional.mse_loss, X, y).diagonal()
    torch.testing.assert_close(train_mode, H, atol=TOL, rtol=0)
    torch.testing.assert_close(hessian_diagonal(problem), H, atol=TOL, rtol=0)
    odd = Problem(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)).double(),
                  nn.MSELoss(), (X, y))
    with pytest.raises(UnsupportedArchitectureError, match="LayerNorm"):
        hessian_diagonal(odd)


def test_batch_norm_in_training_mode_has_exact_gauss_newton_and_fisher_diagonals():
    """The samples are coupled through the batch statistics, so there is no per-sample
    function; the diagonals come from rows of the whole batch's Jacobian (one batch: the
    reference is the dense matrix of the batch function, BatchNorm in train mode)."""
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    X, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    buffers = [b.clone() for b in model.buffers()]
    problem = Problem(model, nn.MSELoss(), (X, y))
    reference = copy.deepcopy(model)
    G = autograd_gauss_newton(reference, nn.functional.mse_loss, X, y)
    torch.testing.assert_close(gauss_newton_diagonal(problem), G.diagonal(), atol=TOL, rtol=0)
    fisher = pytest.importorskip("hesskit.operators.fisher")
    squares = torch.zeros(G.shape[0], dtype=torch.float64)
    for i in range(len(X)):  # ℓ_i through the whole batch's forward pass (coupled)
        loss_i = ((reference(X) - y)[i] ** 2).sum()
        grads = torch.autograd.grad(loss_i, list(reference.parameters()))
        squares += torch.cat([g.reshape(-1) for g in grads]) ** 2
    expected = squares / y.numel()  # a_i = 1/(n k) for the mean squared error
    got = fisher.empirical_fisher_operator(problem).diagonal()
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))


def test_matrix_operator_diagonal_is_read_exactly_and_unknown_kind_is_refused():
    A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    result = diagonal(MatrixOperator(A))
    assert result.method is DiagonalMethod.MATRIX
    assert result.values.tolist() == [2.0, 3.0] and result.trace == 5.0
    model = nn.Sequential(nn.Linear(2, 1)).double()
    problem = Problem(model, nn.MSELoss(), (torch.zeros(2, 2, dtype=torch.float64),
                                           torch.zeros(2, 1, dtype=torch.float64)))
    with pytest.raises(InvalidArgumentError, match="unknown curvature matrix 'jacobian'"):
        diagonal(problem, "jacobian")
    fisher = diagonal(problem, "fisher", probes=4)  # the Monte-Carlo Fisher: an estimate
    assert fisher.method is DiagonalMethod.HUTCHINSON and "Gauss-Newton" in fisher.fallback_reason


def test_empirical_fisher_diagonal_equals_the_operators_diagonal():
    fisher = pytest.importorskip("hesskit.operators.fisher")
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    X = torch.randn(7, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (7,))
    problem = Problem(model, nn.CrossEntropyLoss(), split(X, y, [4, 3]))
    dense = fisher.empirical_fisher_operator(problem).to_dense().diagonal()
    torch.testing.assert_close(empirical_fisher_diagonal(problem), dense, atol=TOL, rtol=0)


class _BatchCentred(nn.Module):
    """Mixes the samples in forward without any BatchNorm: x − mean over the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.tanh(self.first(x))
        return self.second(h - h.mean(0, keepdim=True))


def test_a_forward_that_mixes_samples_is_not_vmapped_over_samples():
    torch.manual_seed(9)
    model = _BatchCentred().double()
    X, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    problem = Problem(model, nn.MSELoss(), (X, y))
    G = autograd_gauss_newton(model, nn.functional.mse_loss, X, y)
    torch.testing.assert_close(gauss_newton_diagonal(problem), G.diagonal(), atol=TOL, rtol=0)
