"""Inputs of several forms: a tuple (``forward(x1, x2)``) and a dict (``forward(batch)``).

Claim: ``Problem`` calls the model correctly for each form, and its loss, gradient and the
Hessian and Gauss-Newton products equal ``torch.autograd.functional`` on a flat-parameter
function written out here (float64, 1e-10), over batches of unequal size.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from hesskit.errors import InvalidArgumentError
from hesskit.operators import gauss_newton_operator, hessian_operator
from hesskit.problem import Problem
from hesskit.tensor_tree import model_arguments, num_samples, select, to_device

N, D1, D2, H, K = 7, 3, 2, 4, 2
SHAPES = {"l1.weight": (H, D1), "l1.bias": (H,), "l2.weight": (H, D2),
          "out.weight": (K, H), "out.bias": (K,)}


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.out = nn.Linear(D1, H), nn.Linear(D2, H, bias=False), nn.Linear(H, K)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.out(torch.tanh(self.l1(x1) + self.l2(x2)))


class DictInputs(TwoInputs):
    def forward(self, batch: dict[str, Tensor]) -> Tensor:  # type: ignore[override]
        return super().forward(batch["x1"], batch["x2"])


def unflatten(theta: Tensor) -> dict[str, Tensor]:
    out, start = {}, 0
    for name, shape in SHAPES.items():
        size = int(torch.tensor(shape).prod())
        out[name] = theta[start : start + size].reshape(shape)
        start += size
    return out


def reference_output(theta: Tensor, x1: Tensor, x2: Tensor) -> Tensor:
    p = unflatten(theta)
    hidden = torch.tanh(x1 @ p["l1.weight"].T + p["l1.bias"] + x2 @ p["l2.weight"].T)
    return hidden @ p["out.weight"].T + p["out.bias"]


def reference_loss(theta: Tensor, x1: Tensor, x2: Tensor, y: Tensor) -> Tensor:
    return ((reference_output(theta, x1, x2) - y) ** 2).mean()  # MSE over all N·K elements


def data() -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(N, D1, generator=g), torch.randn(N, D2, generator=g)
    return x1, x2, torch.randn(N, K, generator=g)


def model_of(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(1)
    return cls().double()


def flat(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def batches(form: str) -> list:
    x1, x2, y = (t.double() for t in data())
    pieces = [slice(0, 4), slice(4, N)]  # a smaller last batch
    if form == "tuple":
        return [((x1[s], x2[s]), y[s]) for s in pieces]
    return [({"x1": x1[s], "x2": x2[s]}, y[s]) for s in pieces]


FORMS = [("tuple", TwoInputs), ("dict", DictInputs)]


@pytest.mark.parametrize(("form", "cls"), FORMS)
def test_loss_and_gradient_of_tuple_and_dict_inputs_equal_the_flat_reference(form, cls):
    model = model_of(cls)
    problem = Problem(model, nn.MSELoss(), batches(form))
    x1, x2, y = (t.double() for t in data())
    theta = flat(model).requires_grad_(True)
    expected = reference_loss(theta, x1, x2, y)
    (expected_gradient,) = torch.autograd.grad(expected, theta)
    assert problem.num_data == N and problem.num_batches == 2
    torch.testing.assert_close(problem.total_loss(), expected.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(problem.gradient(), expected_gradient, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("form", "cls"), FORMS)
def test_hessian_and_gauss_newton_products_of_tuple_and_dict_inputs_equal_autograd(form, cls):
    model = model_of(cls)
    problem = Problem(model, nn.MSELoss(), batches(form))
    x1, x2, y = (t.double() for t in data())
    theta = flat(model)
    hessian = torch.autograd.functional.hessian(lambda t: reference_loss(t, x1, x2, y), theta)
    jacobian = torch.autograd.functional.jacobian(
        lambda t: reference_output(t, x1, x2).reshape(-1), theta
    )
    gauss_newton = jacobian.T @ jacobian * (2.0 / (N * K))  # H_ℓ = 2/(N K) I for the MSE mean
    v = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(2), dtype=theta.dtype)
    torch.testing.assert_close(hessian_operator(problem) @ v, hessian @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        gauss_newton_operator(problem) @ v, gauss_newton @ v, rtol=1e-10, atol=1e-12
    )


def test_inputs_of_different_lengths_name_the_offending_entry_and_its_shape():
    x1, x2, y = data()
    with pytest.raises(InvalidArgumentError, match=r"batch 0: inputs\[1\] has shape \(6, 2\)"):
        Problem(model_of(TwoInputs).float(), nn.MSELoss(), ((x1, x2[:6]), y))
    with pytest.raises(InvalidArgumentError, match=r"inputs\['x2'\] has shape \(6, 2\)"):
        Problem(model_of(DictInputs).float(), nn.MSELoss(), ({"x1": x1, "x2": x2[:6]}, y))
    with pytest.raises(InvalidArgumentError, match=r"inputs hold 7 samples but the targets 6"):
        Problem(model_of(TwoInputs).float(), nn.MSELoss(), ((x1, x2), y[:6]))


def test_a_batch_that_is_not_a_pair_is_refused_with_the_grouping_to_use():
    x1, x2, y = data()
    pattern = r"batch 0 is a tuple of 3 entries.*\(\(x1, x2\), y\)"
    with pytest.raises(InvalidArgumentError, match=pattern):
        Problem(model_of(TwoInputs).float(), nn.MSELoss(), [(x1, x2, y)])


def test_tree_helpers_count_select_and_move_every_tensor():
    x1, x2, _ = data()
    tree = {"pair": (x1, x2), "flag": None}
    assert num_samples(tree) == N
    part = select(tree, slice(2, 5))
    assert part["pair"][0].shape == (3, D1) and part["pair"][1].shape == (3, D2)
    assert part["flag"] is None
    one = select(tree, 0)
    assert one["pair"][1].shape == (D2,)
    assert torch.equal(select(one, None)["pair"][1], x2[:1])
    moved = to_device(tree, "cpu")
    assert moved["pair"][0] is x1  # already there: no copy
    assert model_arguments((x1, x2)) == ((x1, x2), {}) and model_arguments([x1]) == ((x1,), {})
    assert model_arguments(tree) == ((tree,), {}) and model_arguments(x1) == ((x1,), {})
