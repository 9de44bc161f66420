"""AdaHessian: constants, the first step by hand on a diagonal quadratic (where the
Hutchinson estimate is exact), spatial averaging, convergence, resume and rejection."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hesskit.optim.diagonal import adahessian
from hesskit.optim.diagonal.adahessian import AdaHessian

DTYPE = torch.float64
D = torch.tensor([1.0, 4.0, 0.25, 9.0], dtype=DTYPE)  # H = diag(D): z ⊙ H z = D exactly


def quadratic(theta: torch.Tensor) -> torch.Tensor:
    return 0.5 * (D * theta * theta).sum()


def test_constants_are_the_authors():
    assert adahessian.LR == 0.15 and adahessian.BETAS == (0.9, 0.999)
    assert adahessian.EPS == 1e-4 and adahessian.HESSIAN_POWER == 1.0


def test_first_step_on_a_diagonal_quadratic_is_lr_times_gradient_over_curvature():
    theta = nn.Parameter(torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=DTYPE))
    start = theta.detach().clone()
    opt = AdaHessian([theta])
    opt.step(lambda: quadratic(theta))
    # m̂ = g = Dθ, v̂ = D², so θ₁ = θ₀ − lr · Dθ₀ / (D + ε)
    expected = start - 0.15 * D * start / (D + 1e-4)
    torch.testing.assert_close(theta.detach(), expected, rtol=1e-14, atol=1e-15)


def test_converges_on_a_diagonal_quadratic():
    theta = nn.Parameter(torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=DTYPE))
    opt = AdaHessian([theta], lr=0.5)
    for _ in range(300):
        opt.step(lambda: quadratic(theta))
    assert float(quadratic(theta.detach())) < 1e-10


def test_kernels_are_averaged_over_their_spatial_dimensions():
    C = torch.arange(1.0, 9.0, dtype=DTYPE).reshape(2, 1, 2, 2)
    w = nn.Parameter(torch.ones(2, 1, 2, 2, dtype=DTYPE))
    opt = AdaHessian([w])
    opt.step(lambda: (C * w * w).sum())  # H = diag(2C)
    expected = (2 * C).mean(dim=(2, 3), keepdim=True).expand_as(C)
    torch.testing.assert_close(opt.state[w]["hessian"], expected, rtol=0, atol=1e-14)


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_a_create_graph_closure_gives_the_same_step():
    a = nn.Parameter(torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=DTYPE))
    b = nn.Parameter(a.detach().clone())
    AdaHessian([a]).step(lambda: quadratic(a))
    opt = AdaHessian([b])

    def closure():
        opt.zero_grad()
        loss = quadratic(b)
        loss.backward(create_graph=True)
        return loss

    opt.step(closure)
    assert torch.equal(a, b)


def mlp_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DTYPE)
    gen = torch.Generator().manual_seed(1)
    X, Y = torch.randn(10, 3, generator=gen, dtype=DTYPE), torch.randn(10, 2, generator=gen,
                                                                      dtype=DTYPE)
    return model, lambda: nn.functional.mse_loss(model(X), Y)


def test_state_dict_round_trip_resumes_bit_identically():
    model, closure = mlp_problem()
    opt = AdaHessian([{"params": model[0].parameters(), "weight_decay": 0.01},
                      {"params": model[2].parameters()}], update_each=2, seed=3)
    for _ in range(3):
        opt.step(closure)
    twin = copy.deepcopy(model)
    twin_opt = AdaHessian([{"params": twin[0].parameters(), "weight_decay": 0.01},
                           {"params": twin[2].parameters()}], update_each=2, seed=7)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    X = torch.randn(10, 3, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    Y = torch.randn(10, 2, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    for _ in range(3):
        opt.step(lambda: nn.functional.mse_loss(model(X), Y))
        twin_opt.step(lambda: nn.functional.mse_loss(twin(X), Y))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters(),
                                                 strict=True))


def test_non_finite_loss_is_rejected_leaving_parameters_and_state_unchanged():
    model, closure = mlp_problem()
    opt = AdaHessian(model.parameters())
    opt.step(closure)
    before = [p.detach().clone() for p in model.parameters()]
    moments = [opt.state[p]["exp_avg"].clone() for p in model.parameters()]
    opt.step(lambda: closure() * float("inf"))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(torch.equal(m, opt.state[p]["exp_avg"])
               for m, p in zip(moments, model.parameters(), strict=True))
    assert opt.adahessian_state["nonfinite_rejections"] == 1
    assert opt.adahessian_state["steps"] == 1


class _Attention(nn.Module):
    """One attention layer through torch's default kernel selection (flash on CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.head = nn.Linear(4, 12), nn.Linear(4, 2)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.head(nn.functional.scaled_dot_product_attention(q, k, v).mean(1))


def test_a_model_with_default_attention_kernels_steps_as_under_the_math_kernel():
    """Differentiating the closure twice needs a kernel with a double backward; the flash
    kernel torch picks by default has none (a raw RuntimeError before)."""
    torch.manual_seed(0)
    model = _Attention()
    twin = copy.deepcopy(model)
    X, y = torch.randn(6, 5, 4), torch.randn(6, 2)
    AdaHessian(model.parameters(), lr=0.1).step(
        lambda: nn.functional.mse_loss(model(X), y))
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        AdaHessian(twin.parameters(), lr=0.1).step(
            lambda: nn.functional.mse_loss(twin(X), y))
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def _run_with_bad_batch(bad: str | None) -> tuple[list[torch.Tensor], list[bool]]:
    """Six steps on six batches; with ``bad`` an extra batch with one poisoned input entry
    (``"nan"``: the loss is NaN; ``"inf"``: tanh saturates, the loss is finite but the
    gradient 0 · ∞ is NaN, found only after the probe is drawn) is stepped on before the
    fourth. Returns the parameters and, per poisoned step, whether they stayed bitwise."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DTYPE)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, generator=gen, dtype=DTYPE),
                torch.randn(8, 2, generator=gen, dtype=DTYPE)) for _ in range(6)]
    opt = AdaHessian(model.parameters(), lr=0.1, seed=5)
    unchanged = []
    for i, (X, Y) in enumerate(batches):
        if i == 3 and bad is not None:
            poisoned = X.clone()
            poisoned[0, 0] = float(bad)
            before = [p.detach().clone() for p in model.parameters()]
            loss = opt.step(lambda X=poisoned, Y=Y: nn.functional.mse_loss(model(X), Y))
            assert bool(torch.isfinite(loss)) == (bad == "inf")
            unchanged.append(all(torch.equal(a, b) for a, b in
                                 zip(before, model.parameters(), strict=True)))
            assert opt.adahessian_state["nonfinite_rejections"] == 1
        opt.step(lambda X=X, Y=Y: nn.functional.mse_loss(model(X), Y))
    return [p.detach().clone() for p in model.parameters()], unchanged


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_a_rejected_batch_leaves_the_run_bitwise_equal_to_the_run_without_it(bad):
    """The probe is drawn before the gradient and estimate are checked; a rejection rewinds
    the generator, so the later steps draw the probes of the clean run (the "inf" case
    failed before the rewind)."""
    clean, _ = _run_with_bad_batch(None)
    poisoned, unchanged = _run_with_bad_batch(bad)
    assert unchanged == [True]
    assert all(torch.equal(a, b) for a, b in zip(clean, poisoned, strict=True))
