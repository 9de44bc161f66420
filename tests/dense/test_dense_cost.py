"""The cost estimate and the guard that refuses a build before allocating it."""

import importlib

import pytest
import torch
from torch import nn

import hesskit.dense.cost as cost
from hesskit.dense import estimate_cost, hessian, memory_estimate, parse_bytes
from hesskit.errors import InvalidArgumentError, TooLargeError
from hesskit.models import mlp
from hesskit.problem import Problem

dense_hessian = importlib.import_module("hesskit.dense.hessian")  # the module, not the function


def test_million_parameter_model_is_refused_before_anything_is_built(monkeypatch):
    model = nn.Linear(1000, 1000)  # 1 001 000 parameters
    data = (torch.randn(4, 1000), torch.randn(4, 1000))

    def forbidden(*args, **kwargs):
        raise AssertionError("the guard must refuse before building or measuring")

    monkeypatch.setattr(dense_hessian, "fill", forbidden)
    monkeypatch.setattr(cost, "probe_seconds", forbidden)
    monkeypatch.setattr(dense_hessian.torch, "zeros", forbidden)
    with pytest.raises(TooLargeError, match=r"N = 1,001,000 .*needs .*TB.*Hessian-vector products"):
        hessian(model, nn.MSELoss(), data)
    with pytest.raises(TooLargeError, match="N = 1,001,000"):
        estimate_cost(Problem(model, nn.MSELoss(), data))


def test_memory_estimate_counts_three_matrices_for_the_split():
    problem = Problem(
        mlp([3, 4, 2]).double(),
        nn.MSELoss(),
        (torch.randn(5, 3).double(), torch.randn(5, 2).double()),
    )
    n = problem.num_params
    split = memory_estimate(problem, split=True, memory_budget="1GB")
    alone = memory_estimate(problem, split=False, memory_budget=10**9)
    assert (split.entries, split.matrices, split.matrix_bytes) == (n * n, 3, 3 * n * n * 8)
    assert alone.matrix_bytes == n * n * 8 and alone.budget_bytes == 10**9


def test_a_small_budget_refuses_and_names_the_alternatives_that_fit():
    problem = Problem(
        mlp([30, 30, 2]).double(),
        nn.MSELoss(),
        (torch.randn(5, 30).double(), torch.randn(5, 2).double()),
    )
    with pytest.raises(
        TooLargeError,
        match=r"budget is 100\.0 KB; use a matrix-free method instead: Hessian-vector products",
    ):
        hessian(
            problem.model,
            problem.loss,
            (torch.randn(5, 30).double(), torch.randn(5, 2).double()),
            memory_budget="100KB",
        )


def test_estimate_cost_measures_a_positive_time():
    problem = Problem(
        mlp([4, 6, 3]).double(),
        nn.CrossEntropyLoss(),
        (torch.randn(16, 4).double(), torch.randint(0, 3, (16,))),
    )
    for method in ("linear_chain", "autodiff"):
        estimate = estimate_cost(problem, method=method)
        assert estimate.seconds > 0 and estimate.method == method and estimate.fits


@pytest.mark.parametrize(
    "text,expected", [("2GB", 2 * 10**9), ("512MiB", 512 * 2**20), ("1e6", 10**6), ("1.5 kb", 1500)]
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["lots", "-1GB", "2 parsecs", "0"])
def test_parse_bytes_rejects_nonsense(text):
    with pytest.raises(InvalidArgumentError, match="not a memory size"):
        parse_bytes(text)


def test_default_budget_is_half_the_available_memory():
    assert cost.default_memory_budget() == pytest.approx(0.5 * cost.available_memory(), rel=0.05)
    assert cost.available_memory() > 0
