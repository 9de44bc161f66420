"""K-FAC beyond [n, in] Linear layers (issue 22): the expand and reduce approximations of
Eschenhagen et al. (NeurIPS 2023, §3) where each is exact, ``transformers``' Conv1D and
``nn.Embedding``, each against the dense Gauss-Newton matrix Jᵀ H_ℓ J built here with
``torch.func`` on a flat-parameter function in float64; tied weights against their
per-use factors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from closures import batch_closure
from hesskit.operators.kfac import kfac_operator
from hesskit.operators.kfac_factors import FactorTargets, factor_statistics
from hesskit.operators.kfac_layers import KFACApproximation, kfac_blocks
from hesskit.problem import Problem

DTYPE = torch.float64
N, R, IN, OUT = 5, 3, 4, 2


def dense_mse_ggn(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """Jᵀ (2/m I) J for the mean squared error over the m output entries, J by jacrev of
    the outputs in the flat parameters (named_parameters order, row-major)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])

    def outputs(theta: torch.Tensor) -> torch.Tensor:
        pieces, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            size = shape.numel()
            pieces[name] = theta[offset: offset + size].reshape(shape)
            offset += size
        return functional_call(model, pieces, (X,)).reshape(-1)

    J = jacrev(outputs)(flat)
    return 2.0 / J.shape[0] * J.T @ J


class Pooled(nn.Module):
    """A Linear layer on [n, R, in] whose outputs are averaged over R before the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(IN, OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).mean(dim=1)


def data(pooled: bool):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(N, R, IN, generator=gen, dtype=DTYPE)
    Y = torch.randn(N, OUT, generator=gen, dtype=DTYPE) if pooled else torch.randn(
        N, R, OUT, generator=gen, dtype=DTYPE)
    return X, Y


def kfac_dense(model, X, Y, approx: str) -> torch.Tensor:
    problem = Problem(model, nn.MSELoss(), (X, Y))
    return kfac_operator(problem, targets=FactorTargets.EXPECTED, kfac_approx=approx).to_dense()


def test_expand_is_exact_for_a_linear_layer_with_a_loss_per_position():
    torch.manual_seed(0)
    model = nn.Linear(IN, OUT).to(DTYPE)
    X, Y = data(pooled=False)
    exact = dense_mse_ggn(model, X)
    torch.testing.assert_close(kfac_dense(model, X, Y, "expand"), exact, rtol=0, atol=1e-12)
    assert (kfac_dense(model, X, Y, "reduce") - exact).abs().max() > 1e-2


def test_reduce_is_exact_for_a_linear_layer_pooled_over_positions_before_the_loss():
    torch.manual_seed(0)
    model = Pooled().to(DTYPE)
    X, Y = data(pooled=True)
    exact = dense_mse_ggn(model, X)
    torch.testing.assert_close(kfac_dense(model, X, Y, "reduce"), exact, rtol=0, atol=1e-12)
    assert (kfac_dense(model, X, Y, "expand") - exact).abs().max() > 1e-3


def test_transformers_conv1d_is_a_transposed_linear_layer():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = Conv1D(OUT, IN).to(DTYPE)  # weight [in, out]: y = x W + b
    assert kfac_blocks(model, ["weight", "bias"])[0].transposed
    X, Y = data(pooled=False)
    exact = dense_mse_ggn(model, X)
    torch.testing.assert_close(kfac_dense(model, X, Y, "expand"), exact, rtol=0, atol=1e-12)


def test_an_embedding_is_exact_under_a_loss_per_token_and_its_input_factor_is_the_counts():
    torch.manual_seed(0)
    model = nn.Embedding(7, 3).to(DTYPE)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 7, (N, R), generator=gen)
    Y = torch.randn(N, R, 3, generator=gen, dtype=DTYPE)
    problem = Problem(model, nn.MSELoss(), (ids, Y))
    op = kfac_operator(problem, targets=FactorTargets.EXPECTED)
    counts = torch.bincount(ids.reshape(-1), minlength=7).to(DTYPE)
    torch.testing.assert_close(op.factors["weight"].G, torch.diag(counts / (N * R)))
    torch.testing.assert_close(op.to_dense(), dense_mse_ggn(model, ids), rtol=0, atol=1e-12)


class TiedLM(nn.Module):
    """An embedding and an output layer that share one matrix (GPT-2's lm_head)."""

    def __init__(self, tied: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(6, 4)
        self.hidden = nn.Linear(4, 4)
        self.head = nn.Linear(4, 6, bias=False)
        if tied:
            self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden(self.embed(ids))))


def test_a_tied_weight_sums_its_uses_each_rescaled_to_equal_mean_eigenvalues():
    torch.manual_seed(0)
    tied = TiedLM().to(DTYPE)
    untied = TiedLM(tied=False).to(DTYPE)
    untied.load_state_dict(tied.state_dict())
    untied.head.weight.data = tied.embed.weight.detach().clone()
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 6, (N, R), generator=gen)
    Y = torch.randn(N, R, 6, generator=gen, dtype=DTYPE)
    names = [n for n, _ in tied.named_parameters()]
    blocks = kfac_blocks(tied, names)
    shared = next(b for b in blocks if b.weight == "embed.weight")
    assert [u.module for u in shared.uses] == ["embed", "head"] and shared.bias is None
    got = factor_statistics(Problem(tied, nn.MSELoss(), (ids, Y)), blocks,
                            FactorTargets.EXPECTED)["embed.weight"]
    uses = factor_statistics(Problem(untied, nn.MSELoss(), (ids, Y)),
                             kfac_blocks(untied, [n for n, _ in untied.named_parameters()]),
                             FactorTargets.EXPECTED)
    A_sum, G_sum = 0, 0
    for w in ("embed.weight", "head.weight"):  # both [6, 4]: G-slot 6×6, A-slot 4×4
        A, G = uses[w].A, uses[w].G
        s = (G.diagonal().mean() / A.diagonal().mean()).sqrt()
        A_sum, G_sum = A_sum + A * s, G_sum + G / s
    torch.testing.assert_close(got.A, A_sum, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got.G, G_sum, rtol=1e-12, atol=1e-14)


def test_the_approximation_is_an_enum_that_accepts_its_names():
    assert KFACApproximation("reduce") is KFACApproximation.REDUCE
    with pytest.raises(ValueError):
        KFACApproximation("mean")


def test_the_optimizer_takes_the_approximation_by_keyword():
    from hesskit.optim.kfac.optimizer import KFAC
    from hesskit.optim.kfac.steps import KFACSchedule

    X, Y = data(pooled=True)
    for approx in ("expand", "reduce"):
        torch.manual_seed(0)
        model = Pooled().to(DTYPE)
        want = factor_statistics(Problem(model, nn.MSELoss(), (X, Y)),
                                 kfac_blocks(model, ["linear.weight", "linear.bias"]),
                                 FactorTargets.EXPECTED,
                                 approximation=KFACApproximation(approx))["linear.weight"]
        opt = KFAC(model.parameters(), model=model, loss=nn.MSELoss(),
                   targets=FactorTargets.EXPECTED, kfac_approx=approx,
                   schedule=KFACSchedule(statistics_fraction=1.0))
        opt_closure = batch_closure(opt, X, Y)
        opt.step(opt_closure)
        got = opt.kfac_state["factors"]["linear.weight"]
        torch.testing.assert_close(got.A, want.A, rtol=0, atol=0)
        torch.testing.assert_close(got.G, want.G, rtol=0, atol=0)


class ScaledEmbedding(nn.Embedding):
    """An embedding whose forward is not y = W[ids] (BART's scaled word embedding)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids) * 2.0


def test_a_weight_also_used_by_a_module_kfac_cannot_model_is_not_covered():
    model = TiedLM()
    model.embed = ScaledEmbedding(6, 4)
    model.head.weight = model.embed.weight
    names = [n for n, _ in model.named_parameters()]
    assert [b.weight for b in kfac_blocks(model, names)] == ["hidden.weight"]


def test_a_layer_that_never_runs_is_refused_with_a_remedy():
    model = nn.MultiheadAttention(4, 2).to(DTYPE)  # calls out_proj's weight functionally
    x = torch.randn(3, 2, 4, dtype=DTYPE)

    class Attend(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = model

        def forward(self, x):
            return self.attn(x, x, x)[0]

    problem = Problem(Attend(), nn.MSELoss(), (x, torch.zeros_like(x)))
    with pytest.raises(Exception, match=r"did not run in the forward pass.*leave its"):
        kfac_operator(problem, targets=FactorTargets.EXPECTED)
