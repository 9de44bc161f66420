"""``optimizer.preconditioner(power)`` and ``torch_preconditioner``: the matrix P each
optimizer preconditions with, as a curvature operator.

Each dense P (materialised by products with the identity's columns) is compared with P
built here by hand from the optimizer's state (what ``analysis.preconditioner_adapters``
built before the operators existed), and −P⁻¹g with the step the optimizer took."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from closures import batch_closure
from hesskit.analysis.preconditioner_adapters import preconditioner_of
from hesskit.errors import InvalidArgumentError
from hesskit.layout import ParameterLayout
from hesskit.optim import KFAC, AdaHessian, Sophia
from hesskit.optim.preconditioner_operators import torch_preconditioner
from hesskit.problem import Problem

LOSS = nn.MSELoss()


def mlp(seed: int = 0) -> nn.Module:
    """3 → 4 → 2 with biases and a gain no layer covers: non-square Kronecker factors
    (A 4×4 and G 4×4 for the first layer, A 5×5 and G 2×2 for the second)."""
    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = nn.Linear(3, 4), nn.Linear(4, 2)
            self.gain = nn.Parameter(torch.tensor([1.3]))

        def forward(self, x):
            return self.second(torch.tanh(self.first(x))) * self.gain

    return Net().double()


def data(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(n, 3, generator=g, dtype=torch.float64),
            torch.randn(n, 2, generator=g, dtype=torch.float64))


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def dense(op) -> torch.Tensor:
    """The operator's matrix from its products with the N identity columns."""
    n = op.shape[0]
    return op.matmat(torch.eye(n, dtype=op.dtype))


def gradient(model: nn.Module, params) -> torch.Tensor:
    X, y = data()
    loss = LOSS(model(X), y)
    return flat(torch.autograd.grad(loss, list(params)))


def closure_for(model, optimizer, backward: bool):
    X, y = data()

    def closure():
        optimizer.zero_grad()
        value = LOSS(model(X), y)
        if backward:
            value.backward()
        return value

    return closure


def check_powers(op_of_power, expected: torch.Tensor) -> None:
    """P, P⁻¹ and P^{-1/2} against the dense expected P."""
    torch.testing.assert_close(dense(op_of_power(1.0)), expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(dense(op_of_power(-1.0)), torch.linalg.inv(expected),
                               rtol=1e-9, atol=1e-12)
    root = dense(op_of_power(-0.5))
    torch.testing.assert_close(root @ expected @ root, torch.eye(expected.shape[0],
                               dtype=torch.float64), rtol=1e-9, atol=1e-10)


def test_adahessian_preconditioner_is_its_denominator_and_gives_its_step():
    model = mlp()
    params = list(model.parameters())
    optimizer = AdaHessian(params, lr=0.05, betas=(0.0, 0.99), hessian_power=0.5)
    closure = closure_for(model, optimizer, backward=False)
    for _ in range(2):
        optimizer.step(closure)
    before = [p.detach().clone() for p in params]
    g = gradient(model, params)
    optimizer.step(closure)
    pieces = []
    for p in params:  # the denominator, by hand (k = 1/2, t = 3)
        v = optimizer.state[p]["exp_hessian_diag_sq"]
        pieces.append((v.sqrt() / math.sqrt(1 - 0.99**3)) ** 0.5 + 1e-4)
    expected = torch.diag(flat(pieces))
    check_powers(optimizer.preconditioner, expected)
    step = flat(params) - flat(before)  # β₁ = 0, no weight decay: −lr P⁻¹ g
    torch.testing.assert_close(step, -0.05 * optimizer.preconditioner(-1.0).matvec(g),
                               rtol=1e-12, atol=1e-15)


def test_sophia_preconditioner_is_its_clamped_curvature_and_gives_its_step():
    model = mlp()
    params = list(model.parameters())
    X, y = data()
    optimizer = Sophia(params, lr=0.01, betas=(0.0, 0.9), rho=0.3, weight_decay=0.0,
                       interval=1, curvature=lambda: Problem(model, LOSS, (X, y)))
    closure = closure_for(model, optimizer, backward=True)
    for _ in range(2):
        optimizer.step(closure)
    before = [p.detach().clone() for p in params]
    g = gradient(model, params)
    optimizer.step(closure)
    expected = torch.diag(flat(torch.clamp(0.3 * optimizer.state[p]["hessian"], min=1e-15)
                               for p in params))
    check_powers(optimizer.preconditioner, expected)
    ratio = optimizer.preconditioner(-1.0).matvec(g)
    assert bool((ratio.abs() < 1).any())  # some entries are the unclipped −lr P⁻¹g
    step = flat(params) - flat(before)
    torch.testing.assert_close(step, -0.01 * ratio.clamp(-1, 1), rtol=1e-12, atol=1e-15)


def kfac_dense(model: nn.Module, optimizer: KFAC) -> torch.Tensor:
    """(A + πγI) ⊗ (G + γ/πI) per layer from the averaged factors (not the cached
    eigenbases), on the flat layout in the model's order; γ² on the gain."""
    state = optimizer.kfac_state
    gamma = float(state["gamma"])
    names = [n for n, _ in model.named_parameters()]
    layout = ParameterLayout.from_tensors(dict(model.named_parameters()))
    P = torch.zeros(layout.num_params, layout.num_params, dtype=torch.float64)
    P[layout.slice("gain"), layout.slice("gain")] = gamma**2
    for layer in ("first", "second"):
        f = state["factors"][f"{layer}.weight"]
        pi = math.sqrt((float(f.A.trace()) / f.A.shape[0]) / (float(f.G.trace()) / f.G.shape[0]))
        A = f.A + pi * gamma * torch.eye(f.A.shape[0], dtype=torch.float64)
        G = f.G + gamma / pi * torch.eye(f.G.shape[0], dtype=torch.float64)
        out, inp = G.shape[0], A.shape[0] - 1
        # vec([W b]) row-major: entry (o, i) at o·(in + 1) + i; the operator is V ↦ G V A,
        # i.e. G ⊗ A on that vector (A symmetric)
        joined = torch.kron(G, A)
        w, b = layout.slice(f"{layer}.weight"), layout.slice(f"{layer}.bias")
        index = torch.tensor([w.start + o * inp + i for o in range(out) for i in range(inp)]
                             + [b.start + o for o in range(out)])
        order = [o * (inp + 1) + i for o in range(out) for i in range(inp)] + [
            o * (inp + 1) + inp for o in range(out)]
        P[index[:, None], index[None, :]] = joined[order][:, order]
    assert names == list(layout.names)
    return P


def test_kfac_preconditioner_is_its_damped_kronecker_factors_and_gives_its_step():
    model = mlp()
    X, y = data()
    optimizer = KFAC(model.parameters(), model=model, loss=LOSS, weight_decay=0.01)
    closure = batch_closure(optimizer, X, y)
    for _ in range(2):
        optimizer.step(closure)
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    previous = flat(optimizer.state[p]["previous_update"] for p in params)
    grad_h = gradient(model, params) + 0.01 * flat(before)
    optimizer.step(closure)  # iteration 3 refreshes the eigenbases from this step's factors
    expected = kfac_dense(model, optimizer)
    check_powers(optimizer.preconditioner, expected)
    state = optimizer.kfac_state
    delta = -optimizer.preconditioner(-1.0).matvec(grad_h)
    step = flat(params) - flat(before)
    assert abs(float(state["last_mu"])) > 0  # δ₀ takes part
    torch.testing.assert_close(
        step, float(state["last_alpha"]) * delta + float(state["last_mu"]) * previous,
        rtol=1e-9, atol=1e-13)


def test_kfac_in_reversed_groups_is_reordered_to_the_analysed_layout():
    model = mlp()
    X, y = data()
    params = list(model.parameters())
    optimizer = KFAC([{"params": params[3:]}, {"params": params[:3]}], model=model, loss=LOSS)
    optimizer.step(batch_closure(optimizer, X, y))
    assert optimizer.preconditioner().layout.names[0] == "second.weight"
    layout = ParameterLayout.from_tensors(dict(model.named_parameters()))
    P = preconditioner_of(optimizer, params, layout)
    expected = kfac_dense(model, optimizer)
    torch.testing.assert_close(dense(P.matrix), expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(dense(P.inverse), torch.linalg.inv(expected), rtol=1e-9,
                               atol=1e-12)


@pytest.mark.parametrize("kind", ["adam", "amsgrad", "adamw", "rmsprop", "centered"])
def test_torch_preconditioner_is_torchs_denominator(kind):
    model = mlp()
    params = list(model.parameters())
    optimizer = {
        "adam": lambda: torch.optim.Adam(params, lr=0.01),
        "amsgrad": lambda: torch.optim.Adam(params, lr=0.01, amsgrad=True),
        "adamw": lambda: torch.optim.AdamW(params, lr=0.01),
        "rmsprop": lambda: torch.optim.RMSprop(params, lr=0.01),
        "centered": lambda: torch.optim.RMSprop(params, lr=0.01, centered=True),
    }[kind]()
    closure = closure_for(model, optimizer, backward=True)
    for _ in range(3):
        optimizer.step(closure)
    pieces = []
    for p in params:
        s = optimizer.state[p]
        if kind in ("rmsprop", "centered"):
            v = s["square_avg"] - (s["grad_avg"] ** 2 if kind == "centered" else 0)
            pieces.append(v.sqrt() + 1e-8)
        else:
            v = s["max_exp_avg_sq"] if kind == "amsgrad" else s["exp_avg_sq"]
            pieces.append(v.sqrt() / math.sqrt(1 - 0.999**3) + 1e-8)
    check_powers(lambda power: torch_preconditioner(optimizer, power), torch.diag(flat(pieces)))


def test_adam_step_is_minus_lr_times_the_inverse_on_the_first_moment():
    model = mlp()
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=0.01)
    closure = closure_for(model, optimizer, backward=True)
    optimizer.step(closure)
    before = flat(params)
    optimizer.step(closure)
    m_hat = flat(optimizer.state[p]["exp_avg"] / (1 - 0.9**2) for p in params)
    torch.testing.assert_close(flat(params) - before,
                               -0.01 * torch_preconditioner(optimizer, -1.0).matvec(m_hat),
                               rtol=1e-12, atol=1e-15)


def test_sgd_is_the_identity_and_others_or_no_state_are_refused():
    model = mlp()
    params = list(model.parameters())
    sgd = torch_preconditioner(torch.optim.SGD(params, lr=0.1, momentum=0.9))
    torch.testing.assert_close(dense(sgd), torch.eye(sgd.shape[0], dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="no preconditioner for LBFGS"):
        torch_preconditioner(torch.optim.LBFGS(params))
    with pytest.raises(InvalidArgumentError, match="no state"):
        torch_preconditioner(torch.optim.Adam(params))
    with pytest.raises(InvalidArgumentError, match="no state"):
        AdaHessian(params).preconditioner()
    with pytest.raises(InvalidArgumentError, match="no factors"):
        KFAC(model.parameters(), model=model, loss=LOSS).preconditioner()


def test_a_zero_diagonal_entry_has_no_inverse():
    model = mlp()
    params = list(model.parameters())
    optimizer = AdaHessian(params, eps=0.0)
    optimizer.step(closure_for(model, optimizer, backward=False))
    for p in params:
        optimizer.state[p]["exp_hessian_diag_sq"].zero_()
    assert float(optimizer.preconditioner().diagonal().max()) == 0
    with pytest.raises(InvalidArgumentError, match="not positive"):
        optimizer.preconditioner(-1.0)


def test_a_diagonal_preconditioner_in_reversed_groups_is_reordered_to_the_analysed_layout():
    model = mlp()
    params = list(model.parameters())
    optimizer = torch.optim.Adam([{"params": params[3:]}, {"params": params[:3]}], lr=0.01)
    optimizer.step(closure_for(model, optimizer, backward=True))
    expected = flat(optimizer.state[p]["exp_avg_sq"].sqrt() / math.sqrt(1 - 0.999) + 1e-8
                    for p in params)
    own = torch_preconditioner(optimizer).diagonal()
    assert not torch.equal(own, expected)  # its own order is the groups'
    layout = ParameterLayout.from_tensors(dict(model.named_parameters()))
    P = preconditioner_of(optimizer, params, layout)
    torch.testing.assert_close(P.diagonal, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(dense(P.matrix), torch.diag(expected), rtol=1e-12, atol=0)
