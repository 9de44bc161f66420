"""Closed-form σ, σ′, σ″ against torch.autograd of torch's own functions and finite differences."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq
from torch.nn.functional import elu, gelu, leaky_relu, relu, silu, softplus

from hesskit.activations import ACTIVATION_NAMES, get_activation
from hesskit.errors import InvalidArgumentError

# Independent references: torch's own implementations, differentiated by autograd.
REFERENCES = {
    "identity": ({}, lambda x: x),
    "relu": ({}, relu),
    "leaky_relu": ({"slope": 0.2}, lambda x: leaky_relu(x, 0.2)),
    "elu": ({"alpha": 1.7}, lambda x: elu(x, 1.7)),
    "sigmoid": ({}, torch.sigmoid),
    "tanh": ({}, torch.tanh),
    "softplus": ({}, softplus),
    "gelu": ({}, lambda x: gelu(x, approximate="none")),
    "silu": ({}, silu),
}
KINKED = {"relu", "leaky_relu", "elu"}
# float64 grid on [-6, 6] that contains x = 0 exactly (the kink).
GRID = torch.linspace(-6, 6, 1201, dtype=torch.float64)
TINY = 1e-12


def autograd_derivatives(function, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """σ′ and σ″ elementwise by double backward (the Jacobian of an elementwise map is diagonal)."""
    x = x.clone().requires_grad_(True)
    (first,) = torch.autograd.grad(function(x).sum(), x, create_graph=True)
    if not first.requires_grad:
        return first.detach(), torch.zeros_like(x)
    (second,) = torch.autograd.grad(first.sum(), x, allow_unused=True)
    return first.detach(), torch.zeros_like(x) if second is None else second


def test_registry_lists_the_nine_activations_in_order():
    assert tuple(REFERENCES) == ACTIVATION_NAMES


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_value_and_module_match_torch(name):
    params, reference = REFERENCES[name]
    activation = get_activation(name, **params)
    torch.testing.assert_close(activation.value(GRID), reference(GRID), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(activation.module()(GRID), reference(GRID), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_closed_form_derivatives_match_autograd_on_dense_grid_including_the_kink(name):
    params, reference = REFERENCES[name]
    activation = get_activation(name, **params)
    first, second = autograd_derivatives(reference, GRID)
    torch.testing.assert_close(activation.first(GRID), first, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(activation.second(GRID), second, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_closed_form_derivatives_match_central_differences_away_from_kinks(name):
    params, _ = REFERENCES[name]
    activation = get_activation(name, **params)
    x = GRID[GRID.abs() > 1e-3]
    h = 1e-5  # truncation h²·σ‴/6 ≈ 1e-11, rounding 1e-16/h ≈ 1e-11
    first_fd = (activation.value(x + h) - activation.value(x - h)) / (2 * h)
    second_fd = (activation.first(x + h) - activation.first(x - h)) / (2 * h)
    torch.testing.assert_close(activation.first(x), first_fd, rtol=0, atol=1e-9)
    torch.testing.assert_close(activation.second(x), second_fd, rtol=0, atol=1e-9)


def test_second_derivative_is_zero_exactly_for_piecewise_linear_ones():
    flags = {name: get_activation(name).piecewise_linear for name in ACTIVATION_NAMES}
    assert {name for name, flag in flags.items() if flag} == {"identity", "relu", "leaky_relu"}
    for name in ("identity", "relu", "leaky_relu"):
        assert torch.count_nonzero(get_activation(name).second(GRID)) == 0
    for name in set(ACTIVATION_NAMES) - {"identity", "relu", "leaky_relu"}:
        assert torch.count_nonzero(get_activation(name).second(GRID)) > 0


SIDES = torch.tensor([-TINY, 0.0, TINY], dtype=torch.float64)


def test_relu_kink_pinned_on_both_sides_and_at_zero():
    assert get_activation("relu").first(SIDES).tolist() == [0.0, 0.0, 1.0]
    assert get_activation("relu", at_kink=0.5).first(SIDES).tolist() == [0.0, 0.5, 1.0]
    assert get_activation("relu", at_kink=1.0).first(SIDES).tolist() == [0.0, 1.0, 1.0]
    assert get_activation("relu", at_kink=0.5).second(SIDES).tolist() == [0.0, 0.0, 0.0]


def test_leaky_relu_kink_defaults_to_slope_as_pytorch():
    leaky = get_activation("leaky_relu", slope=0.1)
    assert leaky.first(SIDES).tolist() == [0.1, 0.1, 1.0]
    assert get_activation("leaky_relu", slope=0.1, at_kink=1.0).first(SIDES).tolist() == [
        0.1,
        1.0,
        1.0,
    ]
    assert get_activation("leaky_relu").slope == 0.01


def test_elu_kink_first_is_alpha_and_second_is_right_derivative_by_default():
    elu = get_activation("elu", alpha=2.0)
    first, second = elu.first(SIDES).tolist(), elu.second(SIDES).tolist()
    assert first[1:] == [2.0, 1.0] and first[0] == pytest.approx(2.0, abs=1e-11)
    assert second[1:] == [0.0, 0.0] and second[0] == pytest.approx(2.0, abs=1e-11)
    custom = get_activation("elu", alpha=2.0, at_kink=1.5, second_at_kink=2.0)
    assert custom.first(torch.tensor(0.0)).item() == 1.5
    assert custom.second(torch.tensor(0.0)).item() == 2.0
    assert get_activation("elu").alpha == 1.0


def test_elu_does_not_overflow_on_large_positive_inputs():
    x = torch.tensor([800.0, -800.0], dtype=torch.float64)
    elu = get_activation("elu")
    for values in (elu.value(x), elu.first(x), elu.second(x)):
        assert torch.isfinite(values).all()


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(ACTIVATION_NAMES),
    shape=st.lists(st.integers(0, 4), max_size=3),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_elementwise_on_any_shape_and_dtype(name, shape, dtype, seed):
    activation = get_activation(name)
    generator = torch.Generator().manual_seed(seed)
    x64 = 3 * torch.randn(shape, dtype=torch.float64, generator=generator)
    x = x64.to(dtype)
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {}
    for method in (activation.value, activation.first, activation.second):
        result = method(x)
        assert result.shape == x.shape and result.dtype == dtype
        expected = method(x.to(torch.float64)).to(dtype)  # same points, float64 arithmetic
        torch.testing.assert_close(result, expected, **tolerance)
        if x.numel():
            flat = method(x.flatten())  # elementwise: shape does not change any value
            torch.testing.assert_close(result.flatten(), flat)


def test_integer_inputs_are_promoted_to_the_default_float_dtype():
    result = get_activation("sigmoid").first(torch.tensor([0, 1]))
    assert result.dtype == torch.get_default_dtype()
    assert result[0].item() == pytest.approx(0.25)


@pytest.mark.parametrize(("name", "approximate"), [("gelu", -0.7518), ("silu", -1.2785)])
def test_documented_stationary_point_is_where_autograd_derivative_vanishes(name, approximate):
    _, reference = REFERENCES[name]

    def derivative(x: float) -> float:
        return autograd_derivatives(reference, torch.tensor([x], dtype=torch.float64))[0].item()

    root = brentq(derivative, -3, -0.1, xtol=1e-14)
    assert root == pytest.approx(approximate, abs=5e-5)
    assert f"{approximate:.4f}".replace("-", "−") in get_activation(name).stationary_points()


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(InvalidArgumentError, match=r"unknown activation 'swish'.*relu.*silu"):
        get_activation("swish")


def test_names_ignore_case_and_dashes():
    assert get_activation("Leaky-ReLU").name == "leaky_relu"


def test_unknown_or_bad_parameter_is_a_clear_error():
    with pytest.raises(InvalidArgumentError, match=r"'relu' has no parameter 'slope'"):
        get_activation("relu", slope=0.1)
    with pytest.raises(InvalidArgumentError, match=r"parameters are: none"):
        get_activation("tanh", alpha=1.0)
    with pytest.raises(InvalidArgumentError, match=r"'alpha'.*finite number"):
        get_activation("elu", alpha=math.inf)
