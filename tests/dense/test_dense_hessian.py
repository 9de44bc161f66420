"""Dense H, G, R against independent references (autograd, finite differences)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hesskit.dense import Method, hessian
from hesskit.errors import InvalidArgumentError
from hesskit.models import mlp
from reference import autograd_gauss_newton, autograd_hessian, finite_difference_hessian

ACTIVATIONS = ["identity", "relu", "leaky_relu", "tanh", "sigmoid", "softplus", "gelu"]
LOSSES = {
    "mse": (nn.MSELoss, lambda n, k, g: torch.randn(n, k, generator=g, dtype=torch.float64)),
    "ce": (nn.CrossEntropyLoss, lambda n, k, g: torch.randint(0, k, (n,), generator=g)),
    "bce": (
        nn.BCEWithLogitsLoss,
        lambda n, k, g: torch.rand(n, k, generator=g, dtype=torch.float64),
    ),
}


def make_case(widths, activation, loss_name, batch_sizes, seed):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = mlp(widths, activation).double()
    loss_cls, targets = LOSSES[loss_name]
    n = sum(batch_sizes)
    X = torch.randn(n, widths[0], generator=generator, dtype=torch.float64)
    y = targets(n, widths[-1], generator)
    batches, start = [], 0
    for size in batch_sizes:
        batches.append((X[start : start + size], y[start : start + size]))
        start += size
    return model, loss_cls(), X, y, batches


@settings(max_examples=20, deadline=None)
@given(
    widths=st.lists(st.integers(1, 5), min_size=2, max_size=4),
    activation=st.sampled_from(ACTIVATIONS),
    loss_name=st.sampled_from(sorted(LOSSES)),
    batch_sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    seed=st.integers(0, 10_000),
)
def test_both_methods_match_autograd_hessian_and_gauss_newton(
    widths, activation, loss_name, batch_sizes, seed
):
    if loss_name == "ce" and widths[-1] < 2:
        widths = [*widths[:-1], 2]
    model, loss, X, y, batches = make_case(widths, activation, loss_name, batch_sizes, seed)
    H_ref = autograd_hessian(model, loss, X, y)
    G_ref = autograd_gauss_newton(model, loss, X, y)
    for method in (Method.LINEAR_CHAIN, Method.AUTODIFF):
        result = hessian(model, loss, batches, method=method)
        H, G, R = result.matrix("H"), result.matrix("G"), result.matrix("R")
        assert H.dtype == torch.float64
        torch.testing.assert_close(H, H_ref, atol=1e-10, rtol=0)
        torch.testing.assert_close(G, G_ref, atol=1e-10, rtol=0)
        torch.testing.assert_close(H, G + R, atol=0, rtol=0)
        assert torch.equal(H, H.T) and torch.equal(G, G.T) and torch.equal(R, R.T)
        alone = hessian(model, loss, batches, method=method, split=False).matrix()
        torch.testing.assert_close(alone, H_ref, atol=1e-10, rtol=0)
        assert torch.equal(alone, alone.T)


@pytest.mark.parametrize(
    "activation,loss_name", [("tanh", "mse"), ("relu", "ce"), ("softplus", "bce")]
)
def test_hessian_matches_central_finite_differences(activation, loss_name):
    model, loss, X, y, batches = make_case([3, 4, 2], activation, loss_name, [5, 3], seed=3)
    reference = finite_difference_hessian(model, loss, X, y)
    H = hessian(model, loss, batches).matrix()
    scale = reference.abs().max()
    assert float((H - reference).abs().max() / scale) < 1e-6


def test_any_module_and_a_parameter_subset_use_autodiff_and_match():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(3, 3)
            self.head = nn.Linear(3, 2)

        def forward(self, x):
            return self.head(x + torch.tanh(self.inner(x)))

    torch.manual_seed(0)
    model = Residual().double()
    X, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
    result = hessian(model, nn.CrossEntropyLoss(), (X, y))
    assert result.method is Method.AUTODIFF
    torch.testing.assert_close(
        result.matrix(), autograd_hessian(model, nn.CrossEntropyLoss(), X, y), atol=1e-10, rtol=0
    )
    names = ["inner.weight", "head.bias"]
    subset = hessian(model, nn.CrossEntropyLoss(), (X, y), params=names)
    torch.testing.assert_close(
        subset.matrix(),
        autograd_hessian(model, nn.CrossEntropyLoss(), X, y, names=names),
        atol=1e-10,
        rtol=0,
    )


def test_float32_model_gives_float32_matrices_close_to_float64():
    model, loss, X, y, _ = make_case([4, 5, 3], "tanh", "ce", [8], seed=1)
    H64 = hessian(model, loss, (X, y)).matrix()
    result = hessian(model.float(), loss, (X.float(), y))
    assert result.matrix("G").dtype == torch.float32
    torch.testing.assert_close(result.matrix().double(), H64, atol=1e-5, rtol=1e-4)


def test_blocks_and_labels_follow_the_layout():
    model, loss, X, y, _ = make_case([3, 4, 2], "relu", "mse", [5], seed=2)
    result = hessian(model, loss, (X, y))
    assert result.block("2.weight", "0.bias").shape == (8, 4)
    assert result.label(result.layout.slice("2.weight").start + 5) == "2.weight[1, 1]"
    assert len(result.blocks()) == 16
    with pytest.raises(InvalidArgumentError, match="split=True"):
        hessian(model, loss, (X, y), split=False).matrix("R")


def test_spectrum_relu_hessian_is_indefinite_and_gauss_newton_is_psd():
    model, loss, X, y, _ = make_case([4, 6, 6, 3], "relu", "ce", [20], seed=4)
    result = hessian(model, loss, (X, y))
    assert result.spectrum("H").num_negative > 0
    assert result.spectrum("G").num_negative == 0
    eigenvalues = torch.linalg.eigvalsh(result.matrix("H"))
    torch.testing.assert_close(result.spectrum("H").values, eigenvalues)


def test_linear_chain_is_refused_for_a_model_it_does_not_describe():
    model = nn.Sequential(nn.Linear(2, 2), nn.Softmax(dim=1), nn.Linear(2, 1)).double()
    data = (torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 1, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="autodiff"):
        hessian(model, nn.MSELoss(), data, method="linear_chain")
    assert hessian(model, nn.MSELoss(), data).method is Method.AUTODIFF


def test_relu_pre_activation_exactly_at_the_kink_follows_autograd():
    torch.manual_seed(0)
    model = mlp([2, 3, 2], "relu").double()
    with torch.no_grad():
        model[0].bias.zero_()
    X = torch.randn(5, 2, dtype=torch.float64)
    X[0] = 0.0  # every first-layer pre-activation of sample 0 is exactly 0
    y = torch.randn(5, 2, dtype=torch.float64)
    reference = autograd_hessian(model, nn.MSELoss(), X, y)
    for method in (Method.LINEAR_CHAIN, Method.AUTODIFF):
        H = hessian(model, nn.MSELoss(), (X, y), method=method).matrix()
        torch.testing.assert_close(H, reference, atol=1e-12, rtol=0)


class _GatedSiLU(nn.Module):
    """A Llama-style gated MLP: SiLU's backward has no forward-AD formula on torch 2.13."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))


def test_dense_hessian_of_a_silu_model_falls_back_to_reverse_mode_exactly():
    torch.manual_seed(0)
    model = _GatedSiLU().double()
    X, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    dense = hessian(model, nn.MSELoss(), (X, y))
    H = autograd_hessian(model, nn.functional.mse_loss, X, y)
    G = autograd_gauss_newton(model, nn.functional.mse_loss, X, y)
    torch.testing.assert_close(dense.matrix("H"), H, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(dense.matrix("G"), G, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(dense.matrix("R"), H - G, rtol=1e-10, atol=1e-13)
