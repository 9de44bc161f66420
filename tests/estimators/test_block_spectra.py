"""block_spectra: each diagonal block's top eigenvalues against eigvalsh of the principal
submatrix of the dense Hessian (torch.autograd.functional on the flat parameters)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hesskit import Problem
from hesskit.errors import InvalidArgumentError
from hesskit.estimators import block_spectra, module_blocks
from hesskit.operators import gauss_newton_operator, hessian_operator
from reference import autograd_hessian


class TwoBranch(nn.Module):
    """Not a Sequential: a tanh branch and a linear skip, added."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(5, 6), nn.Tanh())
        self.head = nn.Linear(6, 3)
        self.skip = nn.Linear(5, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)) + self.skip(x)


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    model = TwoBranch().double()
    X, Y = torch.randn(20, 5, dtype=torch.float64), torch.randn(20, 3, dtype=torch.float64)
    return Problem(model, nn.MSELoss(), (X, Y)), model, X, Y


def test_module_blocks_groups_by_owning_module_or_a_prefix_depth():
    names = ["encoder.0.weight", "encoder.0.bias", "head.weight", "head.bias", "skip.weight"]
    assert module_blocks(names) == {"encoder.0": names[:2], "head": names[2:4],
                                    "skip": names[4:]}
    assert module_blocks(names, depth=1) == {"encoder": names[:2], "head": names[2:4],
                                             "skip": names[4:]}


def test_each_blocks_top_eigenvalues_are_those_of_the_principal_submatrix(problem):
    prob, model, X, Y = problem
    H = autograd_hessian(model, nn.MSELoss(), X, Y)
    names = [name for name, _ in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    offsets = dict(zip(names, np.cumsum([0, *sizes[:-1]]).tolist(), strict=True))
    spectra = block_spectra(hessian_operator(prob), k=2, tol=1e-10)
    assert list(spectra) == ["encoder.0", "head", "skip"]
    for spectrum in spectra.values():
        index = np.concatenate([np.arange(offsets[n], offsets[n] + model.get_parameter(n).numel())
                                for n in spectrum.names])
        expected = np.linalg.eigvalsh(H[np.ix_(index, index)].numpy())[::-1][:2]
        assert spectrum.num_params == len(index)
        assert spectrum.eigenpairs.converged and spectrum.density is None
        np.testing.assert_allclose(spectrum.eigenpairs.values.numpy(), expected, rtol=1e-8)


def test_block_densities_lie_within_each_blocks_spectrum(problem):
    prob = problem[0]
    blocks = {"first": ["encoder.0.weight", "encoder.0.bias"], "last": ["head.weight"]}
    spectra = block_spectra(gauss_newton_operator(prob), blocks, density_probes=2,
                            density_steps=8)
    for spectrum in spectra.values():
        top = float(spectrum.eigenpairs.values[0])
        nodes = spectrum.density.nodes[spectrum.density.weights > 0]
        assert float(nodes.max()) <= top * (1 + 1e-6)  # Ritz values interlace
        assert float(nodes.min()) >= -1e-8 * top  # G is positive semi-definite
        assert spectrum.density.size == spectrum.num_params


def test_no_blocks_is_refused(problem):
    with pytest.raises(InvalidArgumentError, match="no blocks"):
        block_spectra(hessian_operator(problem[0]), {})
