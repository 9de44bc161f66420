"""Shampoo: its roots against SciPy, its preconditioner's Kronecker convention against a
dense matrix, its steps against a NumPy implementation written here from the formulas,
grafting against torch.optim.Adam, convergence, the contract, and its constants."""

from __future__ import annotations

import copy
import inspect
import io

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from hesskit.errors import InvalidArgumentError, NonFiniteError
from hesskit.optim import Shampoo
from hesskit.optim.shampoo import optimizer as shampoo
from hesskit.optim.shampoo.graft import Graft
from hesskit.optim.shampoo.roots import inverse_root, spd_power

DTYPE = torch.float64


def spd(n: int, seed: int, rank: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, rank or n + 2))
    return X @ X.T


def root(A: np.ndarray, power: float) -> np.ndarray:
    """A^power by SciPy's Schur-Padé algorithm (independent of eigh)."""
    return np.real(scipy.linalg.fractional_matrix_power(A, power))


def gradients(shapes, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=DTYPE) for s in shapes] for _ in range(steps)]


def run(opt: Shampoo, params, grads) -> list[list[torch.Tensor]]:
    """Steps with fixed gradients (independent of θ); the parameter change of each step."""
    changes = []
    for step_grads in grads:
        before = [p.detach().clone() for p in params]
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()
        changes.append([p.detach() - b for p, b in zip(params, before, strict=True)])
    return changes



@pytest.mark.parametrize("rank", [None, 2], ids=["full", "rank-2"])
def test_inverse_fourth_root_matches_scipy(rank):
    A, eps = spd(5, 0, rank), 1e-3
    ours = inverse_root(torch.from_numpy(A), 4, eps).numpy()
    np.testing.assert_allclose(ours, root(A + eps * np.eye(5), -0.25), rtol=1e-9, atol=1e-10)


def test_inverse_root_of_float32_is_computed_in_float64():
    A = spd(6, 1)
    ours = inverse_root(torch.from_numpy(A).float(), 4, 1e-6)
    assert ours.dtype == torch.float32
    np.testing.assert_allclose(ours.double().numpy(), root(A + 1e-6 * np.eye(6), -0.25),
                               rtol=1e-5, atol=1e-6)


def test_spd_power_matches_scipy_and_refuses_a_singular_matrix():
    A = spd(4, 2)
    np.testing.assert_allclose(spd_power(torch.from_numpy(A), -1.5).numpy(), root(A, -1.5),
                               rtol=1e-9)
    with pytest.raises(InvalidArgumentError, match="positive-definite"):
        spd_power(torch.from_numpy(spd(4, 3, rank=2)) - 1e-3 * torch.eye(4, dtype=DTYPE), 1.0)
    with pytest.raises(InvalidArgumentError, match="eps > 0"):
        inverse_root(torch.eye(2), 4, 0.0)



def matrix_and_bias(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(4, 3).to(DTYPE)


def test_preconditioner_is_the_row_major_kronecker_product_of_the_fourth_roots():
    layer = matrix_and_bias()
    params = [layer.weight, layer.bias]
    eps, beta2 = 1e-3, 0.9
    opt = Shampoo(params, betas=(0.9, beta2), eps=eps, update_freq=1,
                  start_preconditioning_step=1)
    run(opt, params, gradients([(3, 4), (3,)], 3))
    state = opt.state[layer.weight]
    correction = 1 - beta2**3
    L = state["left"].numpy() / correction + eps * np.eye(3)
    R = state["right"].numpy() / correction + eps * np.eye(4)
    graft = opt.state[layer.bias]
    v_hat = graft["graft_sq"].numpy() / (1 - shampoo.GRAFT_BETA2**3)
    expected = scipy.linalg.block_diag(np.kron(root(L, 0.25), root(R, 0.25)),
                                       np.diag(np.sqrt(v_hat) + shampoo.GRAFT_EPS))
    P = opt.preconditioner()
    assert P.symmetric and P.psd
    np.testing.assert_allclose(P.to_dense().numpy(), expected, rtol=1e-8, atol=1e-12)
    # P⁻¹ vec(M) = vec(L^{-1/4} M R^{-1/4}) in the row-major convention
    M = np.random.default_rng(0).standard_normal((3, 4))
    v = np.concatenate([M.reshape(-1), np.ones(3)])
    solved = np.linalg.solve(P.to_dense().numpy(), v)[:12].reshape(3, 4)
    np.testing.assert_allclose(solved, root(L, -0.25) @ M @ root(R, -0.25), rtol=1e-8)
    inverse = opt.preconditioner(power=-1).matvec(torch.from_numpy(v)).numpy()
    np.testing.assert_allclose(inverse, np.linalg.solve(expected, v), rtol=1e-8)
    half = opt.preconditioner(power=-0.5).to_dense().numpy()
    np.testing.assert_allclose(half @ half, np.linalg.inv(expected), rtol=1e-7, atol=1e-10)


def test_ungrafted_step_is_minus_lr_times_the_preconditioner_inverse_on_the_first_moment():
    layer = matrix_and_bias(1)
    params = [layer.weight, layer.bias]
    opt = Shampoo(params, lr=0.1, graft="none", eps=1e-4, update_freq=1,
                  start_preconditioning_step=1)
    changes = run(opt, params, gradients([(3, 4), (3,)], 4, seed=3))[-1]
    m_hat = torch.cat([opt.state[p]["exp_avg"].reshape(-1) for p in params]) / (1 - 0.9**4)
    step = torch.cat([c.reshape(-1) for c in changes])
    expected = -0.1 * opt.preconditioner(power=-1).matvec(m_hat)  # T = 1: this step's roots
    torch.testing.assert_close(step, expected, rtol=1e-10, atol=1e-14)
    # the bias (graft none: SGD on m̂) has P = I there
    torch.testing.assert_close(step[12:], -0.1 * m_hat[12:], rtol=1e-12, atol=0)



def test_first_step_without_grafting_is_the_hand_computed_shampoo_step():
    torch.manual_seed(0)
    W = nn.Parameter(torch.randn(3, 5, dtype=DTYPE))
    G = torch.randn(3, 5, dtype=DTYPE, generator=torch.Generator().manual_seed(4))
    start, lr, eps = W.detach().clone(), 0.05, 1e-2
    opt = Shampoo([W], lr=lr, betas=(0.9, 0.95), eps=eps, update_freq=1, graft=Graft.NONE,
                  start_preconditioning_step=1)
    run(opt, [W], [[G]])
    g = G.numpy()  # L̂ = (1 − β₂)GGᵀ / (1 − β₂) = G Gᵀ; m̂ = G
    expected = start.numpy() - lr * root(g @ g.T + eps * np.eye(3), -0.25) @ g @ root(
        g.T @ g + eps * np.eye(5), -0.25)
    np.testing.assert_allclose(W.detach().numpy(), expected, rtol=1e-10)


def test_beta2_one_accumulates_plain_sums_as_the_original_paper():
    W = nn.Parameter(torch.zeros(2, 3, dtype=DTYPE))
    eps = 1e-3
    opt = Shampoo([W], betas=(0.9, 1.0), eps=eps, update_freq=1, start_preconditioning_step=1)
    grads = gradients([(2, 3)], 3, seed=10)
    run(opt, [W], grads)
    L = sum(g @ g.T for (g,) in grads).numpy()  # Gupta et al. 2018, Algorithm 1: L_t = εI + Σ
    np.testing.assert_allclose(opt.state[W]["left"].numpy(), L, rtol=1e-12)
    np.testing.assert_allclose(opt.state[W]["left_root"].numpy(),
                               root(L + eps * np.eye(2), -0.25), rtol=1e-9)


def reference_shampoo(params, groups, grads, *, T, start, decoupled):
    """Shampoo with Adam grafting written from the module docstring's formulas in NumPy."""
    theta = [p.detach().numpy().copy() for p in params]
    m = [np.zeros_like(x) for x in theta]
    v = [np.zeros_like(x) for x in theta]
    stats = {i: [np.zeros((x.shape[0],) * 2), np.zeros((x.shape[1],) * 2), None, None]
             for i, x in enumerate(theta) if x.ndim == 2}
    for t, step_grads in enumerate(grads, start=1):
        for i, (x, g) in enumerate(zip(theta, step_grads, strict=True)):
            lr, wd, (b1, b2), eps = groups[i]
            g = g.numpy() + (0 if decoupled else wd * x)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            mh = m[i] / (1 - b1**t)
            d = mh / (np.sqrt(v[i] / (1 - 0.999**t)) + 1e-8)
            if i in stats:
                s = stats[i]
                s[0], s[1] = b2 * s[0] + (1 - b2) * g @ g.T, b2 * s[1] + (1 - b2) * g.T @ g
                if t >= start and (t - start) % T == 0:
                    c = 1 - b2**t
                    s[2] = root(s[0] / c + eps * np.eye(len(s[0])), -0.25)
                    s[3] = root(s[1] / c + eps * np.eye(len(s[1])), -0.25)
                if t >= start:
                    D = s[2] @ mh @ s[3]
                    d = D * np.linalg.norm(d) / np.linalg.norm(D)
            theta[i] = x * (1 - lr * (wd if decoupled else 0)) - lr * d
    return theta


@pytest.mark.parametrize("decoupled", [True, False], ids=["decoupled", "l2"])
def test_parameter_groups_match_a_numpy_reference(decoupled):
    layer = matrix_and_bias(2)
    params = [layer.weight, layer.bias]
    group_settings = [(0.02, 0.3, (0.8, 0.95), 1e-3), (0.05, 0.0, (0.9, 0.99), 1e-3)]
    opt = Shampoo(
        [{"params": [layer.weight], "lr": 0.02, "weight_decay": 0.3, "betas": (0.8, 0.95)},
         {"params": [layer.bias], "lr": 0.05, "betas": (0.9, 0.99)}],
        eps=1e-3, update_freq=2, start_preconditioning_step=3,
        decoupled_weight_decay=decoupled,
    )
    grads = gradients([(3, 4), (3,)], 7, seed=5)
    expected = reference_shampoo(params, group_settings, grads, T=2, start=3,
                                 decoupled=decoupled)
    run(opt, params, grads)
    for p, x in zip(params, expected, strict=True):
        np.testing.assert_allclose(p.detach().numpy(), x, rtol=1e-10, atol=1e-13)
    assert opt.shampoo_state["root_refreshes"] == 3  # steps 3, 5, 7


def test_grafted_step_has_adams_norm_per_layer_and_equals_adam_before_preconditioning():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)).to(DTYPE)
    twin = copy.deepcopy(model)
    opt = Shampoo(model.parameters(), lr=0.01, update_freq=2, start_preconditioning_step=3)
    adam = torch.optim.Adam(twin.parameters(), lr=0.01, betas=(0.9, shampoo.GRAFT_BETA2),
                            eps=shampoo.GRAFT_EPS)
    grads = gradients([p.shape for p in model.parameters()], 6, seed=6)
    ours = run(opt, list(model.parameters()), grads)
    theirs = run(adam, list(twin.parameters()), grads)
    for t, (mine, adams) in enumerate(zip(ours, theirs, strict=True), start=1):
        for p, a, d in zip(model.parameters(), adams, mine, strict=True):
            if t < 3 or p.ndim == 1:
                torch.testing.assert_close(d, a, rtol=1e-10, atol=1e-15)
            else:
                torch.testing.assert_close(d.norm(), a.norm(), rtol=1e-10, atol=0)
                assert not torch.allclose(d, a, rtol=1e-3)  # a different direction


def test_lr_scheduler_scales_the_step():
    layer = matrix_and_bias(4)
    twin = copy.deepcopy(layer)
    grads = gradients([(3, 4), (3,)], 4, seed=7)
    opt = Shampoo(layer.parameters(), lr=0.1, update_freq=1, start_preconditioning_step=1)
    plain = Shampoo(twin.parameters(), lr=0.1, update_freq=1, start_preconditioning_step=1)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for t, step_grads in enumerate(grads):
        ours = run(opt, list(layer.parameters()), [step_grads])[0]
        scheduler.step()
        reference = run(plain, list(twin.parameters()), [step_grads])[0]
        factor = 0.5 ** (t // 2)
        for d, r in zip(ours, reference, strict=True):
            torch.testing.assert_close(d, factor * r, rtol=1e-12, atol=1e-15)
        with torch.no_grad():  # keep the twins at the same point
            for p, q in zip(twin.parameters(), layer.parameters(), strict=True):
                p.copy_(q)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)


def test_converges_on_linear_regression():
    gen = torch.Generator().manual_seed(8)
    X = torch.randn(64, 6, generator=gen, dtype=DTYPE)
    Y = X @ torch.randn(6, 3, generator=gen, dtype=DTYPE) + 0.1 * torch.randn(
        64, 3, generator=gen, dtype=DTYPE)
    torch.manual_seed(0)
    model = nn.Linear(6, 3).to(DTYPE)
    ones = torch.cat([X, torch.ones(64, 1, dtype=DTYPE)], 1)
    best = nn.functional.mse_loss(ones @ torch.linalg.lstsq(ones, Y).solution, Y)
    opt = Shampoo(model.parameters(), lr=0.05, update_freq=5)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.99)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(X), Y)
        loss.backward()
        return loss

    first = float(closure().detach())
    for _ in range(400):
        opt.step(closure)
        scheduler.step()
    assert float(closure().detach()) - float(best) < 1e-6 * first
    assert opt.shampoo_state["root_refreshes"] == 80  # the weight's roots, every 5 steps



def test_state_dict_round_trip_resumes_bit_identically():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(2, 3, 2), nn.Flatten(), nn.Linear(12, 2)).to(DTYPE)
    X = torch.randn(5, 2, 3, 3, dtype=DTYPE)
    Y = torch.randn(5, 2, dtype=DTYPE)

    def train(m, opt, steps):
        for _ in range(steps):
            def closure():
                opt.zero_grad()
                loss = nn.functional.mse_loss(m(X), Y)
                loss.backward()
                return loss
            opt.step(closure)

    def make(m):
        return Shampoo(m.parameters(), lr=0.01, update_freq=3, start_preconditioning_step=2)

    straight = copy.deepcopy(model)
    opt = make(straight)
    train(straight, opt, 9)
    first = copy.deepcopy(model)
    opt1 = make(first)
    train(first, opt1, 4)
    buffer = io.BytesIO()
    torch.save(opt1.state_dict(), buffer)
    buffer.seek(0)
    resumed = copy.deepcopy(first)
    opt2 = make(resumed)
    opt2.load_state_dict(torch.load(buffer, weights_only=False))
    train(resumed, opt2, 5)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert opt2.shampoo_state == opt.shampoo_state
    assert opt.state[straight[0].weight]["left"].shape == (3, 3)  # conv: [out, in·kh·kw]
    assert opt.state[straight[0].weight]["right"].shape == (8, 8)
    with pytest.raises(InvalidArgumentError, match="'shampoo'"):
        make(copy.deepcopy(model)).load_state_dict(torch.optim.Adam(
            model.parameters()).state_dict())


@pytest.mark.parametrize("bad", ["gradient", "loss"])
def test_non_finite_step_is_rejected_leaving_parameters_and_state_bitwise_unchanged(bad):
    layer = matrix_and_bias(6)
    params = list(layer.parameters())
    opt = Shampoo(params, update_freq=1, start_preconditioning_step=1, max_rejections=2)
    run(opt, params, gradients([(3, 4), (3,)], 2))
    saved_params = [p.detach().clone() for p in params]
    saved_state = copy.deepcopy(opt.state_dict())

    def closure():
        for p in params:
            p.grad = torch.ones_like(p)
        if bad == "gradient":
            params[0].grad[1, 2] = float("nan")
        return torch.tensor(float("inf") if bad == "loss" else 1.0)

    opt.step(closure)
    for p, q in zip(params, saved_params, strict=True):
        assert torch.equal(p, q)
    for key, value in saved_state["state"][0].items():
        assert torch.equal(torch.as_tensor(opt.state_dict()["state"][0][key]),
                           torch.as_tensor(value))
    assert opt.shampoo_state["nonfinite_rejections"] == 1
    assert opt.shampoo_state["steps"] == 2
    with pytest.raises(NonFiniteError, match="2 steps in a row"):
        opt.step(closure)


def test_a_zero_gradient_is_a_zero_step_not_a_rejection():
    layer = matrix_and_bias(8)
    params = list(layer.parameters())
    before = [p.detach().clone() for p in params]
    opt = Shampoo(params, update_freq=1, start_preconditioning_step=1)
    run(opt, params, [[torch.zeros(3, 4, dtype=DTYPE), torch.zeros(3, dtype=DTYPE)]])
    for p, q in zip(params, before, strict=True):
        assert torch.equal(p, q)
    assert opt.shampoo_state["nonfinite_rejections"] == 0 and opt.shampoo_state["steps"] == 1


def test_vectors_and_large_dimensions_take_the_graft_alone():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(6, 3), nn.Conv2d(1, 2, 3)).to(DTYPE)
    params = list(model.parameters())
    assert [Shampoo(params).matrix_shape(p) for p in params] == [(3, 6), None, (2, 9), None]
    assert [Shampoo(params, max_preconditioner_dim=6).matrix_shape(p) for p in params] == [
        (3, 6), None, None, None]
    twin = copy.deepcopy(model)
    opt = Shampoo(params, max_preconditioner_dim=5, update_freq=1)
    adam = torch.optim.Adam(twin.parameters(), betas=(0.9, shampoo.GRAFT_BETA2),
                            eps=shampoo.GRAFT_EPS)
    grads = gradients([p.shape for p in params], 3, seed=9)
    for ours, theirs in zip(run(opt, params, grads), run(adam, list(twin.parameters()), grads),
                            strict=True):
        for d, a in zip(ours, theirs, strict=True):
            torch.testing.assert_close(d, a, rtol=1e-10, atol=1e-15)
    assert opt.shampoo_state["root_refreshes"] == 0


def test_invalid_settings_are_refused_with_the_setting_named():
    p = [nn.Parameter(torch.zeros(2, 2))]
    with pytest.raises(InvalidArgumentError, match="eps > 0"):
        Shampoo(p, eps=0.0)
    with pytest.raises(InvalidArgumentError, match=r"betas\[1\] in \(0, 1\]"):
        Shampoo(p, betas=(0.9, 1.5))
    with pytest.raises(InvalidArgumentError, match="update_freq must be an integer"):
        Shampoo(p, update_freq=0)
    with pytest.raises(ValueError, match="'adamw' is not a valid Graft"):
        Shampoo(p, graft="adamw")


def test_defaults_are_the_reference_adam_recipe():
    assert (shampoo.LR, shampoo.BETAS, shampoo.EPS) == (1e-3, (0.9, 0.999), 1e-12)
    assert (shampoo.GRAFT_EPS, shampoo.GRAFT_BETA2) == (1e-8, 0.999)
    assert (shampoo.UPDATE_FREQ, shampoo.MAX_PRECONDITIONER_DIM) == (100, 8192)
    assert shampoo.INVERSE_ROOT == 4
    signature = inspect.signature(Shampoo)
    assert list(signature.parameters)[:7] == [
        "params", "lr", "betas", "eps", "weight_decay", "update_freq", "graft"]
    defaults = {n: p.default for n, p in signature.parameters.items()}
    assert [defaults[n] for n in ("lr", "betas", "eps", "weight_decay", "update_freq", "graft",
                                  "decoupled_weight_decay")] == [
        shampoo.LR, shampoo.BETAS, shampoo.EPS, 0.0, shampoo.UPDATE_FREQ, "adam", True]
    opt = Shampoo([nn.Parameter(torch.zeros(2, 2))])
    assert opt.start_preconditioning_step == shampoo.UPDATE_FREQ
    assert opt.graft is Graft.ADAM


def test_warmup_is_named_in_repr_and_its_steps_are_adams_exactly_until_the_start():
    """Steps 1 … s − 1 are the Adam graft's bitwise (torch.optim.Adam as the independent
    reference); step s is not; ``repr`` and ``warmup_steps`` state s and T."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    twin = torch.nn.Parameter(w.detach().clone())
    X = torch.randn(5, 4, dtype=torch.float64)
    opt = Shampoo([w], lr=0.01, update_freq=2, start_preconditioning_step=3)
    adam = torch.optim.Adam([twin], lr=0.01, eps=1e-8)
    assert opt.warmup_steps == 2
    assert "update_freq=2, start_preconditioning_step=3" in repr(opt)
    assert "start_preconditioning_step=100" in repr(Shampoo([w]))
    for step in (1, 2, 3):
        for p, o in ((w, opt), (twin, adam)):
            o.zero_grad()
            (X @ p.T).square().sum().backward()
            o.step()
        assert torch.allclose(w, twin, rtol=0, atol=1e-15) == (step < 3)


def test_warmup_note_speaks_only_for_a_run_inside_the_warmup():
    from hesskit.optim.shampoo.graft import warmup_note

    note = warmup_note("Shampoo (Adam graft)", 60, 99)
    assert note is not None and "ran 60 steps, all in its warm-up" in note
    assert "start_preconditioning_step = 100" in note
    assert warmup_note("Shampoo", 100, 99) is None
    assert warmup_note("Shampoo", 5, 0) is None
