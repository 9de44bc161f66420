"""Objects that describe themselves: operators, results and optimizers in one ``repr`` line;
parameter names that survive ``torch.compile``."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import hesskit
from hesskit.optim import KFAC, HessianFree


@pytest.fixture
def net_and_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    X = torch.randn(8, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (8,))
    return model, hesskit.Problem(model, nn.CrossEntropyLoss(), (X, y))


def test_operator_repr_names_kind_size_dtype_and_blocks(net_and_problem):
    _, problem = net_and_problem
    text = repr(hesskit.hessian_operator(problem))
    assert text.startswith("HessianOperator(N=26, float64, cpu, symmetric")
    assert "blocks=[0.weight 4×3, 0.bias 4, 2.weight 2×4, 2.bias 2]" in text
    assert "samples=8" in text and "0x" not in text
    ggn = repr(hesskit.gauss_newton_operator(problem))
    assert ggn.startswith("GaussNewtonOperator(N=26") and "psd" in ggn


def test_wrapped_operators_say_what_they_wrap(net_and_problem):
    _, problem = net_and_problem
    H = hesskit.hessian_operator(problem)
    assert "damping=0.25, of=HessianOperator" in repr(hesskit.damped(H, 0.25))
    assert repr(H.block(["2.weight"])).endswith("blocks=[2.weight 2×4])")


def test_long_layouts_are_cut_with_a_count():
    from hesskit.describe import layout_text

    text = layout_text([f"p{i}" for i in range(9)], [(2,)] * 9)
    assert text == "[p0 2, p1 2, p2 2, p3 2, p4 2, p5 2, … 3 more]"


def test_estimate_repr_says_estimate_or_exact_with_its_error():
    estimate = hesskit.Estimate(value=12.0, stderr=3.0, products=40)
    assert repr(estimate) == "Estimate(12 ± 3, estimate, relative stderr 0.25, products=40)"
    exact = hesskit.Estimate(value=5.0, stderr=0.0, products=0)
    assert repr(exact) == "Estimate(5 ± 0, exact, products=0)"


def test_eigenpairs_repr_shows_values_and_bounds_not_vectors(net_and_problem):
    _, problem = net_and_problem
    assert repr(hesskit.top_eigenpairs(hesskit.hessian_operator(problem), 2)).startswith(
        "Eigenpairs(k=2 (vectors not kept), values=[")
    pairs = hesskit.top_eigenpairs(hesskit.hessian_operator(problem), 2, return_vectors=True)
    text = repr(pairs)
    assert text.startswith("Eigenpairs(k=2 of N=26, values=[")
    assert f"{float(pairs.values[0]):.4g}" in text and "error ≤ [" in text
    assert "tensor(" not in text and len(text) < 200


def test_diagonal_result_repr_says_exact_or_estimate(net_and_problem):
    _, problem = net_and_problem
    exact = hesskit.diagonal(problem, "ggn")
    assert repr(exact).startswith("DiagonalResult(ggn, exact:")
    assert f"trace {exact.trace:.4g}" in repr(exact)
    estimate = hesskit.diagonal(_ProductsOnly(hesskit.hessian_operator(problem)), probes=10)
    assert repr(estimate).startswith("DiagonalResult(operator, estimate: Hutchinson")
    assert "relative stderr" in repr(estimate) and "products=10" in repr(estimate)


class _ProductsOnly(hesskit.CurvatureOperator):
    """An operator known only by its products (no exact diagonal)."""

    def __init__(self, operator):
        super().__init__(operator.layout, operator.dtype, operator.device)
        self.operator = operator

    def _matmat(self, V):
        return self.operator.matmat(V)


def test_solver_result_repr_shows_status_not_the_solution(net_and_problem):
    _, problem = net_and_problem
    G = hesskit.damped(hesskit.gauss_newton_operator(problem), 1.0)
    result = hesskit.conjugate_gradient(G, torch.ones(26, dtype=torch.float64))
    assert re.fullmatch(r"CGResult\(CONVERGED, iterations=\d+, products=\d+, N=26\)",
                        repr(result))


def test_optimizer_repr_shows_size_settings_and_state(net_and_problem):
    model, _ = net_and_problem
    hf = HessianFree(model.parameters(), curvature=lambda: None, weight_decay=1e-5)
    text = repr(hf)
    assert text.startswith("HessianFree(N=26 in 4 tensors, lr=1, weight_decay=1e-05; ")
    assert f"damping={hf.hf_state['damping']:.4g}" in text and "steps=0" in text
    kfac = KFAC(model.parameters(), model=model, loss=nn.CrossEntropyLoss())
    assert repr(kfac).startswith("KFAC(N=26 in 4 tensors")


def test_parameter_names_survive_torch_compile(net_and_problem):
    model, problem = net_and_problem
    compiled = torch.compile(model)
    assert next(iter(dict(compiled.named_parameters()))).startswith("_orig_mod.")
    (X, y) = next(iter(problem.batches())).inputs, next(iter(problem.batches())).targets
    from_compiled = hesskit.Problem(compiled, nn.CrossEntropyLoss(), (X, y))
    assert from_compiled.layout == problem.layout
    H = hesskit.hessian_operator(from_compiled)
    assert H.block(["_orig_mod.2.bias"]).layout.names == ("2.bias",)
    assert H.block(["2.bias"]).layout.names == ("2.bias",)
    only = hesskit.Problem(compiled, nn.CrossEntropyLoss(), (X, y), params=["_orig_mod.0.bias"])
    assert only.layout.names == ("0.bias",)
    torch.testing.assert_close(H.to_dense(), hesskit.hessian_operator(problem).to_dense(),
                               rtol=0, atol=0)
