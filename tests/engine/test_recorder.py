"""The recorder proves a chain or refuses with the reason; what it refuses is never a chain."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional

from hesskit.engine import record_chain
from hesskit.errors import UnsupportedArchitectureError


class Custom(nn.Module):
    """Linear, σ, Linear with σ applied by ``act`` in forward (not as a module)."""

    def __init__(self, act) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(3, 4), nn.Linear(4, 2)
        self.act = act

    def forward(self, x):
        return self.second(self.act(self.first(x)))


REFUSED = {
    "functional relu in place": (
        Custom(lambda h: functional.relu(h, inplace=True)), "'relu' outside"
    ),
    "tanh_ method": (Custom(lambda h: h.tanh_()), "'tanh_' outside"),
    "functional tanh": (Custom(torch.tanh), "'tanh' outside"),
    "view between modules": (Custom(lambda h: h.view(h.shape[0], -1)), "'view' outside"),
    "softmax module": (nn.Sequential(nn.Linear(3, 4), nn.Softmax(1), nn.Linear(4, 2)),
                       "Softmax is not supported"),
    "conv holds parameters": (nn.Sequential(nn.Conv1d(1, 1, 1)), "not an nn.Linear"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_what_is_not_a_provable_chain_is_refused_with_the_reason(name):
    model, reason = REFUSED[name]
    with pytest.raises(UnsupportedArchitectureError, match=reason):
        record_chain(model.double(), torch.randn(5, 3, dtype=torch.float64))


def test_tied_weights_are_refused_even_inside_a_sequential():
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
    model[2].weight = model[0].weight
    with pytest.raises(UnsupportedArchitectureError, match="tied weights"):
        record_chain(model, torch.randn(5, 3))


def test_a_subclass_of_a_table_module_is_not_trusted():
    class Sneaky(nn.ReLU):  # a subclass may override forward
        pass

    with pytest.raises(UnsupportedArchitectureError, match="Sneaky is not supported"):
        record_chain(nn.Sequential(nn.Linear(3, 4), Sneaky(), nn.Linear(4, 2)),
                     torch.randn(5, 3))


def test_an_in_place_module_is_recorded_with_its_input_as_it_was_before_it_ran():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
    X = torch.randn(6, 3)
    chain = record_chain(model, X)
    pre_activation = chain.steps[1].inputs
    torch.testing.assert_close(pre_activation, model[0](X).detach())
    assert bool((pre_activation < 0).any())  # the recorded copy was not clamped


def test_parameters_passed_in_are_the_ones_the_chain_is_recorded_with():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    weight = torch.zeros(4, 3)
    chain = record_chain(model, torch.randn(5, 3), {"0.weight": weight})
    torch.testing.assert_close(chain.steps[1].inputs, model[0].bias.detach().expand(5, 4))
