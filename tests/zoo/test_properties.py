"""Property tests: on random models that are NOT ``nn.Sequential``, every fast path equals
the generic ``torch.func`` path to 1e-10.

The models are custom ``nn.Module``s with a random list of Linear layers and activations
applied as modules, as functions in ``forward``, or in place (``F.relu(h, inplace=True)``,
``h.tanh_()``, ``nn.ReLU(inplace=True)``), sometimes a weight tied between two square
layers, sometimes residual adds, sometimes frozen parameters: the shapes a "chain of
layers" detector must either prove or refuse.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the torch convention
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from hesskit.dense import hessian
from hesskit.errors import UnsupportedArchitectureError
from hesskit.estimators.exact_diagonal import gauss_newton_diagonal, hessian_diagonal
from hesskit.operators import hessian_operator
from hesskit.problem import Problem
from reference import autograd_hessian
from zoo.oracle import relative_error

TOL = 1e-10
PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

MODULES = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "elu": nn.ELU,
}
FUNCTIONS = {
    "relu": F.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softplus": F.softplus,
    "leaky_relu": lambda h: F.leaky_relu(h, 0.1),
    "elu": F.elu,
}
IN_PLACE = {
    "relu": lambda h: F.relu(h, inplace=True),
    "tanh": lambda h: h.tanh_(),
    "sigmoid": lambda h: h.sigmoid_(),
    "leaky_relu": lambda h: F.leaky_relu(h, 0.1, inplace=True),
    "elu": lambda h: F.elu(h, inplace=True),
}
IN_PLACE_MODULES = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.1, inplace=True),
}
STYLES = ("module", "function", "in_place", "in_place_module")


@dataclass(frozen=True)
class Spec:
    widths: tuple[int, ...]  # input, hidden..., output
    activations: tuple[tuple[str, str], ...]  # (name, style) after each hidden layer
    residual: tuple[bool, ...]  # add the layer's input to its activation (square layers)
    tie: tuple[int, int] | None  # layer j's weight is layer i's (both square)
    frozen: tuple[str, ...]
    loss: str
    batches: tuple[int, ...]
    seed: int


class RandomNet(nn.Module):
    """x → [Linear → σ (→ + x)]* → Linear, σ applied as ``Spec`` says."""

    def __init__(self, spec: Spec) -> None:
        super().__init__()
        self.spec = spec
        w = spec.widths
        self.layers = nn.ModuleList(nn.Linear(w[i], w[i + 1]) for i in range(len(w) - 1))
        self.acts = nn.ModuleList()
        for name, style in spec.activations:
            if style == "module":
                self.acts.append(MODULES[name]())
            elif style == "in_place_module":
                self.acts.append(IN_PLACE_MODULES[name]())
            else:
                self.acts.append(nn.Identity())  # placeholder: applied as a function
        if spec.tie is not None:
            i, j = spec.tie
            self.layers[j].weight = self.layers[i].weight

    def _activate(self, index: int, h: Tensor) -> Tensor:
        name, style = self.spec.activations[index]
        if style == "function":
            return FUNCTIONS[name](h)
        if style == "in_place":
            return IN_PLACE[name](h)
        return self.acts[index](h)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for index, layer in enumerate(self.layers[:-1]):
            a = self._activate(index, layer(h))
            h = h + a if self.spec.residual[index] else a
        return self.layers[-1](h)


@st.composite
def specs(draw) -> Spec:
    depth = draw(st.integers(1, 3))
    square = draw(st.booleans())
    width = draw(st.integers(2, 4))
    hidden = [width] * depth if square else [draw(st.integers(2, 4)) for _ in range(depth)]
    d_in = width if square and draw(st.booleans()) else draw(st.integers(1, 4))
    widths = (d_in, *hidden, draw(st.integers(2, 3)))
    activations = []
    for _ in range(depth):
        style = draw(st.sampled_from(STYLES))
        table = {
            "module": MODULES,
            "function": FUNCTIONS,
            "in_place": IN_PLACE,
            "in_place_module": IN_PLACE_MODULES,
        }[style]
        activations.append((draw(st.sampled_from(sorted(table))), style))
    residual = tuple(widths[i] == widths[i + 1] and draw(st.booleans()) for i in range(depth))
    squares = [i for i in range(depth + 1) if widths[i] == widths[i + 1] == width]
    tie = None
    if len(squares) >= 2 and draw(st.booleans()):
        i, j = sorted(draw(st.lists(st.sampled_from(squares), min_size=2, max_size=2, unique=True)))
        tie = (i, j)
    names = [f"layers.{i}.{kind}" for i in range(depth + 1) for kind in ("weight", "bias")]
    if tie is not None:
        names.remove(f"layers.{tie[1]}.weight")
    frozen = tuple(draw(st.lists(st.sampled_from(names), max_size=2, unique=True)))
    if len(frozen) == len(names):
        frozen = frozen[:-1]
    batches = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2)))
    return Spec(
        widths,
        tuple(activations),
        residual,
        tie,
        frozen,
        draw(st.sampled_from(["mse", "ce", "bce"])),
        batches,
        draw(st.integers(0, 10_000)),
    )


def build(spec: Spec):
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        model = RandomNet(spec).double()
        for name, p in model.named_parameters():
            if name in spec.frozen:
                p.requires_grad_(False)
        n, k = sum(spec.batches), spec.widths[-1]
        X = torch.randn(n, spec.widths[0], dtype=torch.float64)
        if spec.loss == "ce":
            loss, y = nn.CrossEntropyLoss(), torch.randint(0, k, (n,))
        elif spec.loss == "bce":
            loss, y = nn.BCEWithLogitsLoss(), torch.rand(n, k, dtype=torch.float64)
        else:
            loss, y = nn.MSELoss(), torch.randn(n, k, dtype=torch.float64)
    data, start = [], 0
    for size in spec.batches:
        data.append((X[start : start + size], y[start : start + size]))
        start += size
    return model, loss, data, X, y


def _close(got: Tensor, want: Tensor, what: str, spec: Spec) -> None:
    error = relative_error(got, want)
    assert error <= TOL, f"{what}: relative error {error:.3g} on {spec}"


@PROPERTY_SETTINGS
@given(specs())
def test_default_hessian_operator_equals_the_torch_func_operator(spec):
    model, loss, data, _, _ = build(spec)
    problem = Problem(model, loss, data)
    fast = hessian_operator(problem).to_dense()
    generic = hessian_operator(Problem(model, loss, data), use_chain=False).to_dense()
    _close(fast, generic, "hessian_operator default vs use_chain=False", spec)


@PROPERTY_SETTINGS
@given(specs())
def test_dense_auto_method_equals_autodiff(spec):
    model, loss, data, _, _ = build(spec)
    auto = hessian(model, loss, data, method="auto")
    generic = hessian(model, loss, data, method="autodiff")
    for part in ("H", "G"):
        _close(auto.matrix(part), generic.matrix(part), f"dense {part} auto vs autodiff", spec)


@PROPERTY_SETTINGS
@given(specs())
def test_hessian_diagonal_equals_the_reference_diagonal_or_refuses(spec):
    model, loss, data, X, y = build(spec)
    try:
        got = hessian_diagonal(Problem(model, loss, data))
    except UnsupportedArchitectureError:
        return
    want = autograd_hessian(model, loss, X, y).diagonal()
    _close(got, want, "hessian_diagonal vs autograd", spec)


@PROPERTY_SETTINGS
@given(specs())
def test_gauss_newton_diagonal_fast_path_equals_per_sample_path(spec):
    model, loss, data, _, _ = build(spec)
    fast = gauss_newton_diagonal(Problem(model, loss, data))
    generic = gauss_newton_diagonal(Problem(model, loss, data), use_chain=False)
    _close(fast, generic, "gauss_newton_diagonal default vs use_chain=False", spec)


def test_the_strategy_builds_what_it_claims():
    """A hand-made spec: tied, residual, in-place and frozen all present in the module."""
    spec = Spec(
        (3, 3, 3, 2),
        (("relu", "in_place"), ("tanh", "function")),
        (True, False),
        (0, 1),
        ("layers.2.bias",),
        "mse",
        (3, 2),
        0,
    )
    model, _, _, X, _ = build(spec)
    assert model.layers[1].weight is model.layers[0].weight
    assert not model.layers[2].bias.requires_grad
    assert not isinstance(model, nn.Sequential)
    h = X + F.relu(model.layers[0](X))
    want = model.layers[2](torch.tanh(model.layers[1](h)))
    torch.testing.assert_close(model(X), want, rtol=0, atol=0)


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
