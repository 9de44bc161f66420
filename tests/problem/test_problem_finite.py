"""NaN or Inf in inputs, targets or parameters end in ONE NonFiniteError that says where.

Claims: the message names the batch, the tensor (its path in a tuple or dict), the count
of bad entries and the index of the first; a stream is checked on every pass; parameters
are checked by ``check_finite_parameters``, which ``total_loss`` and ``gradient`` call.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from hesskit.errors import NonFiniteError
from hesskit.problem import Problem

N, D, K = 6, 3, 2


class DictModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(D, K)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.lin(batch["x1"] * batch["x2"])


def data() -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(N, D, generator=g), torch.randn(N, D, generator=g),
            torch.randn(N, K, generator=g))


def batches(x1: Tensor, x2: Tensor, y: Tensor) -> list:
    return [({"x1": x1[s], "x2": x2[s]}, y[s]) for s in (slice(0, 3), slice(3, N))]


def test_nan_in_a_dict_input_names_the_batch_the_entry_and_the_first_index():
    x1, x2, y = data()
    x2[4, 1] = math.nan
    x2[5, 0] = math.nan
    with pytest.raises(
        NonFiniteError,
        match=r"batch 1, inputs\['x2'\] has 2 NaN entries, first at \[1, 1\]; fix the data",
    ):
        Problem(DictModel(), nn.MSELoss(), batches(x1, x2, y))


def test_inf_in_targets_is_named():
    x1, x2, y = data()
    y[0, 1] = -math.inf
    pattern = r"batch 0, targets has 1 infinite entries, first at \[0, 1\]"
    with pytest.raises(NonFiniteError, match=pattern):
        Problem(DictModel(), nn.MSELoss(), batches(x1, x2, y))


class Stream:
    """Finite on the first pass, a NaN in the second batch's inputs from then on."""

    def __init__(self) -> None:
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        x1, x2, y = data()
        if self.passes > 1:
            x1[3, 2] = math.nan
        yield from batches(x1, x2, y)


def test_a_stream_is_checked_as_its_batches_are_read_on_every_pass():
    problem = Problem(DictModel(), nn.MSELoss(), Stream())
    pattern = r"batch 1, inputs\['x1'\] has 1 NaN entries, first at \[0, 2\]"
    with pytest.raises(NonFiniteError, match=pattern):
        problem.total_loss()


def test_nan_in_a_parameter_is_named_by_total_loss_gradient_and_the_explicit_check():
    problem = Problem(DictModel(), nn.MSELoss(), batches(*data()))
    with torch.no_grad():
        problem.model.lin.weight[1, 2] = math.nan
    pattern = r"parameter 'lin.weight' has 1 NaN entries, first at \[1, 2\]"
    for call in (problem.total_loss, problem.gradient, problem.check_finite_parameters):
        with pytest.raises(NonFiniteError, match=pattern):
            call()


def test_parameters_passed_explicitly_are_the_ones_checked():
    problem = Problem(DictModel(), nn.MSELoss(), batches(*data()))
    params = problem.parameters()
    params = {**params, "lin.bias": torch.tensor([0.0, math.inf])}
    with pytest.raises(NonFiniteError, match=r"parameter 'lin.bias' has 1 infinite entries"):
        problem.gradient(params)
    problem.check_finite_parameters()  # the model's own values are finite
