"""The empirical-Fisher diagonal from the gradient's own backward pass
(``hesskit.estimators.gradient_squares``) against the separate per-sample pass
``empirical_fisher_diagonal`` and a per-sample loop written out here; the hook path must be
refused (and the separate pass taken) wherever the outer-product formula does not hold."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hesskit.estimators.exact_diagonal import empirical_fisher_diagonal
from hesskit.estimators.gradient_squares import GradientSquares
from hesskit.losses import BCEWithLogitsLoss
from hesskit.operators import gauss_newton_operator
from hesskit.optim import HessianFree
from hesskit.optim.hessian_free.preconditioners import (
    gradient_pass_preconditioner,
    martens_preconditioner,
)
from hesskit.problem import Problem

DTYPE = torch.float64


def mlp(activation: nn.Module = None, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 7), activation or nn.Tanh(), nn.Linear(7, 4, bias=False), nn.Sigmoid(),
        nn.Flatten(), nn.Linear(4, 3),
    ).to(DTYPE)


def data(n: int = 9, classes: bool = False, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=gen, dtype=DTYPE)
    y = torch.randint(0, 3, (n,), generator=gen) if classes else torch.randn(
        n, 3, generator=gen, dtype=DTYPE)
    return X, y


def captured(model, loss, X, y, extra=None):
    squares = GradientSquares(model, loss)
    with squares.capture(y):
        model.zero_grad()
        value = loss(model(X), y)
        if extra is not None:
            value = value + extra(model)
        value.backward()
    return squares, squares.empirical_fisher_diagonal()


def per_sample_loop(model, loss, X, y, scale):
    """c(n) Σ_n g_n⊙g_n with g_n = ∇ℓ_n, ℓ_n = the loss of case n alone divided by its
    reduction factor c(1) (unscaled)."""
    total = 0
    for n in range(X.shape[0]):
        model.zero_grad()
        (loss(model(X[n : n + 1]), y[n : n + 1]) / scale(1)).backward()
        total = total + torch.cat([p.grad.reshape(-1) ** 2 for p in model.parameters()])
    return scale(X.shape[0]) * total


@pytest.mark.parametrize(
    ("loss", "classes", "scale"),
    [
        (nn.MSELoss(), False, lambda n: 1 / (3 * n)),  # mean over every element: c = 1/(nk)
        (nn.MSELoss(reduction="sum"), False, lambda n: 1.0),
        (nn.CrossEntropyLoss(), True, lambda n: 1 / n),
        (BCEWithLogitsLoss(reduction="sample_mean"), False, lambda n: 1 / n),
    ],
)
def test_backward_pass_squares_are_the_empirical_fisher_diagonal(loss, classes, scale):
    X, y = data(classes=classes)
    if isinstance(loss, BCEWithLogitsLoss):
        y = torch.rand(y.shape, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
    model = mlp()
    squares, diagonal = captured(model, loss, X, y)
    assert squares.reason is None and squares.hook_passes == 1
    reference = empirical_fisher_diagonal(Problem(model, loss, (X, y)))
    torch.testing.assert_close(diagonal, reference, rtol=1e-12, atol=1e-15)
    loop = per_sample_loop(model, loss, X, y, scale)
    torch.testing.assert_close(diagonal, loop, rtol=1e-12, atol=1e-15)


def test_mean_reduction_divides_by_the_reduction_factor_not_by_n():
    # With a mean loss the backward's G_n is c·∂ℓ_n: the squares carry c², EF carries c.
    # A path that forgot 1/c would be off by n = 9 here; one that used 1/n for an
    # element-wise mean by k = 3.
    X, y = data()
    model = mlp()
    _, mean_diagonal = captured(model, nn.MSELoss(), X, y)
    _, sum_diagonal = captured(model, nn.MSELoss(reduction="sum"), X, y)
    torch.testing.assert_close(mean_diagonal, sum_diagonal / (3 * 9), rtol=1e-12, atol=0)


def test_in_place_activation_modules_keep_the_hook_path_exact():
    X, y = data()
    model = mlp(nn.ReLU(inplace=True))
    squares, diagonal = captured(model, nn.MSELoss(), X, y)
    assert squares.reason is None
    reference = empirical_fisher_diagonal(Problem(model, nn.MSELoss(), (X, y)))
    torch.testing.assert_close(diagonal, reference, rtol=1e-12, atol=1e-15)


def test_a_weight_cost_in_the_closure_does_not_enter_the_squares():
    X, y = data()
    model = mlp()

    def weight_cost(m):
        return 0.5 * 0.3 * sum(p.square().sum() for p in m.parameters())

    squares, diagonal = captured(model, nn.MSELoss(), X, y, extra=weight_cost)
    assert squares.reason is None
    reference = empirical_fisher_diagonal(Problem(model, nn.MSELoss(), (X, y)))
    torch.testing.assert_close(diagonal, reference, rtol=1e-12, atol=1e-15)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second, self.out = nn.Linear(5, 5), nn.Linear(5, 5), nn.Linear(5, 3)
        self.second.weight = self.first.weight  # one parameter in two layers

    def forward(self, x):
        return self.out(torch.tanh(self.second(torch.tanh(self.first(x)))))


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner, self.act, self.out = nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 3)

    def forward(self, x):
        return self.out(self.act(self.inner(self.act(self.inner(x)))))


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.out = nn.Linear(5, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.first(x)
        h.tanh_()  # an in-place op outside the modules
        return self.out(h)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.act, self.out = nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 3)

    def forward(self, x):
        return self.out(self.act(self.first(x)) + x)


@pytest.mark.parametrize(
    ("make", "inputs", "why"),
    [
        (lambda: Tied(), 5, "tied"),
        (lambda: Twice(), 5, "called twice"),
        (lambda: InPlace(), 5, "outside the modules"),
        (lambda: Residual(), 5, ""),
        (lambda: nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 3)), 5, ""),
    ],
    ids=["tied-weights", "linear-called-twice", "in-place-op", "residual", "layernorm"],
)
def test_models_outside_the_proof_fall_back_to_the_separate_pass(make, inputs, why):
    torch.manual_seed(0)
    model = make().to(DTYPE)
    X = torch.randn(7, inputs, dtype=DTYPE)
    y = torch.randn(7, 3, dtype=DTYPE)
    squares, diagonal = captured(model, nn.MSELoss(), X, y)
    assert diagonal is None and squares.refused_passes == 1 and why in squares.reason

    extra = []
    preconditioner = gradient_pass_preconditioner(
        model, nn.MSELoss(), lambda: (X, y), on_extra_pass=lambda: extra.append(1))
    with preconditioner.around_gradient():
        model.zero_grad()
        nn.MSELoss()(model(X), y).backward()
    statistic = preconditioner.statistic()
    assert extra == [1]
    reference = empirical_fisher_diagonal(Problem(model, nn.MSELoss(), (X, y)))
    torch.testing.assert_close(statistic, reference, rtol=1e-12, atol=1e-15)


def test_a_closure_on_other_targets_or_another_loss_is_refused():
    X, y = data()
    model = mlp()
    squares = GradientSquares(model, nn.MSELoss())
    with squares.capture(y + 1):  # the closure below used y, not y + 1
        model.zero_grad()
        nn.MSELoss()(model(X), y).backward()
    assert squares.empirical_fisher_diagonal() is None and "targets" in squares.reason
    with squares.capture(y):  # another loss of the same outputs
        model.zero_grad()
        nn.L1Loss()(model(X), y).backward()
    assert squares.empirical_fisher_diagonal() is None and "loss" in squares.reason
    with squares.capture(y):  # no backward pass at all
        nn.MSELoss()(model(X), y)
    assert squares.empirical_fisher_diagonal() is None
    assert squares.empirical_fisher_diagonal() is None and "no captured" in squares.reason


def test_a_scaled_loss_is_refused_in_one_process():
    # One process: s must be 1 (a closure 0.25·loss is not the loss the diagonal is of);
    # data parallel, s is the rank's share (tests/distributed: the training runner).
    X, y = data()
    model = mlp()
    squares = GradientSquares(model, nn.MSELoss())
    for factor in (0.25, -1.0):
        with squares.capture(y):
            model.zero_grad()
            (factor * nn.MSELoss()(model(X), y)).backward()
        assert squares.empirical_fisher_diagonal() is None and "scale" in squares.reason


def test_a_pass_is_used_once():
    X, y = data()
    model = mlp()
    squares, diagonal = captured(model, nn.MSELoss(), X, y)
    assert diagonal is not None
    assert squares.empirical_fisher_diagonal() is None  # stale: needs a new captured pass


def test_hessian_free_with_the_backward_pass_statistic_takes_the_separate_pass_steps():
    # Same CG preconditioner, so the same iterates; no separate pass with the hook path.
    X, y = data(n=16, classes=True)
    loss = nn.CrossEntropyLoss()
    results = []
    for hooked in (True, False):
        model = mlp(seed=4)
        extra = []
        if hooked:
            preconditioner = gradient_pass_preconditioner(
                model, loss, lambda: (X, y), on_extra_pass=lambda e=extra: e.append(1))
        else:
            preconditioner = martens_preconditioner(Problem(model, loss, (X, y)))
        optimizer = HessianFree(
            model.parameters(), preconditioner=preconditioner,
            curvature=lambda m=model: gauss_newton_operator(Problem(m, loss, (X, y))),
        )

        def closure(m=model, o=optimizer):
            o.zero_grad()
            value = loss(m(X), y)
            value.backward()
            return value

        for _ in range(3):
            optimizer.step(closure)
        results.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
        if hooked:
            assert extra == [] and preconditioner.statistic.squares.hook_passes == 3
    torch.testing.assert_close(results[0], results[1], rtol=1e-9, atol=1e-12)


def test_switching_dropout_on_after_a_proved_pass_is_refused():
    # The chain proof is reused while the call sequence and the train/eval modes stay; an
    # active dropout (train mode) couples nothing but is random: no longer the chain proved.
    X, y = data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 3))
    model = model.to(DTYPE).eval()
    squares, diagonal = captured(model, nn.MSELoss(), X, y)
    assert diagonal is not None
    model.train()
    squares2 = squares  # the same object, with its cached proof
    with squares2.capture(y):
        model.zero_grad()
        nn.MSELoss()(model(X), y).backward()
    assert squares2.empirical_fisher_diagonal() is None and "Dropout" in squares2.reason


def test_class_weights_whose_reduction_factor_reads_the_targets():
    # mean of a weighted cross-entropy: c = 1 / Σ_n w_{y_n}, read from the targets
    X, y = data(classes=True)
    loss = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0, 0.5], dtype=DTYPE))
    model = nn.Sequential(nn.Linear(5, 3)).to(DTYPE)
    squares, diagonal = captured(model, loss, X, y)
    assert squares.reason is None
    reference = empirical_fisher_diagonal(Problem(model, loss, (X, y)))
    torch.testing.assert_close(diagonal, reference, rtol=1e-12, atol=1e-15)
