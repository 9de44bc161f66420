"""Unwrapped Hugging Face models: hesskit's curvature operators equal the oracles.

Every case of ``hf_zoo.models`` goes into ``Problem`` as it is (dict inputs as keyword
arguments, ``.logits`` as the output, dropout > 0 in train mode) and its products are
compared with ``hf_zoo.reference``, which differentiates the dropout-free twin. The
tolerance is the case's ``rtol`` (1e-8 in float64; looser for models that round to float32
inside, see ``models.FLOAT32_CAST_RTOL``).
"""

from __future__ import annotations

from functools import cache

import pytest

pytest.importorskip("transformers")

import torch

from hesskit.operators import (
    empirical_fisher_operator,
    fisher_operator,
    gauss_newton_operator,
    hessian_operator,
)
from hesskit.problem import Problem
from hf_zoo.models import CASES, make, one_torch_thread  # noqa: F401 - a fixture
from hf_zoo.reference import Oracle, relative_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = list(CASES)
RESNETS = ["resnet_train", "resnet_eval"]
DIAGONAL_CASES = ["gpt2_sdpa", "llama_eager", "bert_sdpa", "vit_eager", "bart_eager", *RESNETS]


def _problem(name: str, params=None) -> Problem:
    case = make(name)
    return Problem(case.model, case.loss, case.data, params=params)


def _directions(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g, dtype=torch.float64)


@cache
def _oracle(name: str, block: bool = False) -> Oracle:
    case = make(name)
    return Oracle(case.reference_model, case.loss_kind, case.data, case.block if block else None)


@cache
def _per_sample_gradients(name: str) -> torch.Tensor:
    return _oracle(name).per_sample_gradients()


@cache
def _dense_gauss_newton(name: str) -> torch.Tensor:
    return _oracle(name).gauss_newton_dense()


@cache
def _rtol(name: str) -> float:
    return make(name).rtol


def _assert_close(got: torch.Tensor, want: torch.Tensor, name: str, what: str) -> None:
    rtol = _rtol(name)
    assert got.shape == want.shape, f"{name}: {what}: shape {tuple(got.shape)}"
    error = relative_error(got, want)
    assert error <= rtol, f"{name}: {what}: relative error {error:.3g} (tolerance {rtol:g})"


# -- products ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_hessian_vector_product_equals_double_backward_of_the_dropout_free_twin(name):
    oracle = _oracle(name)
    v = _directions(oracle.theta.numel(), 1, seed=1)[:, 0]
    _assert_close(hessian_operator(_problem(name)) @ v, oracle.hessian_vector(v), name, "H v")


@pytest.mark.parametrize("name", NAMES)
def test_gauss_newton_matmat_equals_jvp_vjp_reference(name):
    oracle = _oracle(name)
    V = _directions(oracle.theta.numel(), 3, seed=2)
    got = gauss_newton_operator(_problem(name)).matmat(V)
    _assert_close(got, oracle.gauss_newton_matmat(V), name, "G V")


@pytest.mark.parametrize("name", NAMES)
def test_empirical_fisher_matmat_equals_per_sample_gradient_outer_products(name):
    oracle = _oracle(name)
    V = _directions(oracle.theta.numel(), 3, seed=3)
    got = empirical_fisher_operator(_problem(name)).matmat(V)
    want = oracle.empirical_fisher_matmat(V, _per_sample_gradients(name))
    _assert_close(got, want, name, "EF V")


@pytest.mark.parametrize("name", NAMES)
def test_total_loss_and_gradient_equal_the_dropout_free_twin(name):
    """Dropout > 0 in train mode, yet hesskit's L and ∇L are those of the model without it."""
    problem, oracle = _problem(name), _oracle(name)
    _assert_close(problem.total_loss().detach(), oracle.loss().detach(), name, "L")
    _assert_close(problem.gradient(), oracle.gradient(), name, "gradient")


@pytest.mark.parametrize("name", NAMES)
def test_total_loss_and_gradient_are_bitwise_repeatable_in_train_mode_with_dropout(name):
    problem = _problem(name)
    assert torch.equal(problem.total_loss(), problem.total_loss()), f"{name}: L differs"
    assert torch.equal(problem.gradient(), problem.gradient()), f"{name}: gradient differs"


@pytest.mark.parametrize("name", NAMES)
def test_same_operator_called_twice_gives_bitwise_equal_products(name):
    problem = _problem(name)
    V = _directions(problem.num_params, 2, seed=4)
    for op in (
        hessian_operator(problem),
        gauss_newton_operator(problem),
        empirical_fisher_operator(problem),
        fisher_operator(problem, samples=2, seed=0),
    ):
        first, second = op.matmat(V), op.matmat(V)
        assert torch.equal(first, second), f"{name}: {type(op).__name__} products differ"


@pytest.mark.parametrize("name", NAMES)
def test_fisher_with_the_same_seed_is_the_same_matrix(name):
    problem = _problem(name)
    V = _directions(problem.num_params, 2, seed=5)
    first = fisher_operator(problem, samples=2, seed=7).matmat(V)
    second = fisher_operator(_problem(name), samples=2, seed=7).matmat(V)
    assert torch.equal(first, second), f"{name}: Fisher products with seed 7 differ"


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_ten_successive_gauss_newton_products_equal_the_reference(name):
    """One cached linearisation serves every product (the in-place residual add and the
    BatchNorm buffers must not leak state from one product into the next)."""
    oracle = _oracle(name)
    G = gauss_newton_operator(_problem(name))
    V = _directions(oracle.theta.numel(), 10, seed=6)
    for k, v in enumerate(V.T):
        _assert_close(G @ v, oracle.gauss_newton_vector(v), name, f"G v, product {k + 1}")


@pytest.mark.parametrize("name", RESNETS)
def test_batchnorm_buffers_are_bitwise_unchanged_by_products(name):
    case = make(name)
    before = {k: b.clone() for k, b in case.model.named_buffers()}
    problem = Problem(case.model, case.loss, case.data)
    v = _directions(problem.num_params, 1, seed=7)
    for op in (hessian_operator(problem), gauss_newton_operator(problem),
               empirical_fisher_operator(problem)):
        op.matmat(v)
    problem.gradient()
    for key, value in case.model.named_buffers():
        assert torch.equal(value, before[key]), f"{name}: buffer {key} changed"


# -- blocks, diagonals, traces -------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_hessian_block_to_dense_equals_autograd_hessian_of_the_block(name):
    case = make(name)
    got = hessian_operator(_problem(name)).block(case.block).to_dense()
    _assert_close(got, _oracle(name, block=True).hessian_dense(), name, "H block")


@pytest.mark.parametrize("name", NAMES)
def test_gauss_newton_block_to_dense_equals_explicit_jacobian_product(name):
    case = make(name)
    got = gauss_newton_operator(_problem(name)).block(case.block).to_dense()
    _assert_close(got, _oracle(name, block=True).gauss_newton_dense(), name, "G block")


@pytest.mark.slow
@pytest.mark.parametrize("name", DIAGONAL_CASES)
def test_gauss_newton_diagonal_and_trace_equal_the_dense_reference(name):
    want = _dense_gauss_newton(name).diagonal()
    G = gauss_newton_operator(_problem(name))
    _assert_close(G.diagonal(), want, name, "diag(G)")
    _assert_close(torch.tensor(G.trace(), dtype=torch.float64), want.sum(), name, "tr(G)")


@pytest.mark.parametrize("name", NAMES)
def test_empirical_fisher_diagonal_equals_sum_of_squared_per_sample_gradients(name):
    want = _oracle(name).empirical_fisher_diagonal(_per_sample_gradients(name))
    got = empirical_fisher_operator(_problem(name)).diagonal()
    _assert_close(got, want, name, "diag(EF)")
