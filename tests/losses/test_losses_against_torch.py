"""Every hesskit loss equals torch's: value, H_ℓ u and the per-sample factor, in float64.

The reference Hessian is ``torch.autograd.functional.hessian`` of torch's own loss on the
flattened outputs; the closed forms must also equal the ``AutodiffLoss`` of torch's loss.
Tolerance 1e-10: float64 arithmetic on O(1) numbers.
"""

from __future__ import annotations

import pytest
import torch
from loss_cases import CASES, HETEROSCEDASTIC, Case
from loss_oracles import output_hessian, sample_blocks

from hesskit.errors import InvalidArgumentError
from hesskit.losses import AutodiffLoss

TOL = 1e-10
pytestmark = pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss")
PAIRS = [(case, r) for case in CASES for r in case.reductions]
IDS = [f"{case.name}-{r}" for case, r in PAIRS]


def _data(case: Case, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return case.draw(torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("case", "reduction"), PAIRS, ids=IDS)
def test_value_equals_torch_loss(case: Case, reduction: str) -> None:
    z, y = _data(case)
    expected = case.reference(reduction)(z, y)
    assert torch.allclose(case.hesskit(reduction).value(z, y), expected, rtol=TOL, atol=TOL)


@pytest.mark.parametrize(("case", "reduction"), PAIRS, ids=IDS)
def test_scale_times_summed_loss_is_the_value(case: Case, reduction: str) -> None:
    """c = value / Σ_i ℓ_i, with Σ_i ℓ_i torch's loss under reduction "sum"."""
    z, y = _data(case)
    loss = case.hesskit(reduction)
    total = case.reference("sum")(z, y)
    assert loss.scale(z, y) * total == pytest.approx(float(case.reference(reduction)(z, y)))
    assert loss.normalizer(y, z) == pytest.approx(float(total / case.reference(reduction)(z, y)))


@pytest.mark.parametrize(("case", "reduction"), PAIRS, ids=IDS)
def test_hessian_vector_equals_autograd_hessian(case: Case, reduction: str) -> None:
    z, y = _data(case)
    full = output_hessian(case.reference(reduction), z, y)
    loss = case.hesskit(reduction)
    u = torch.randn((3, *z.shape), generator=torch.Generator().manual_seed(1), dtype=z.dtype)
    expected = (u.reshape(3, -1) @ full).reshape(u.shape)
    assert torch.allclose(loss.hessian_vector(z, y, u), expected, rtol=TOL, atol=TOL)
    assert torch.allclose(loss.hessian_vector(z, y, u[0]), expected[0], rtol=TOL, atol=TOL)


@pytest.mark.parametrize(("case", "reduction"), PAIRS, ids=IDS)
def test_factor_times_transpose_is_each_sample_block(case: Case, reduction: str) -> None:
    z, y = _data(case)
    blocks, off_blocks = sample_blocks(output_hessian(case.reference(reduction), z, y), len(z))
    S = case.hesskit(reduction).hessian_sqrt(z, y)
    assert S.shape[:2] == blocks.shape[:2]
    assert off_blocks == 0  # the loss separates over samples, so blocks are all of H_ℓ
    assert torch.allclose(S @ S.transpose(1, 2), blocks, rtol=TOL, atol=TOL)


@pytest.mark.parametrize(("case", "reduction"), PAIRS, ids=IDS)
def test_closed_form_equals_autodiff_of_torch_loss(case: Case, reduction: str) -> None:
    z, y = _data(case, seed=2)
    closed = case.hesskit(reduction)
    autodiff = AutodiffLoss(case.reference(reduction))
    u = torch.randn((2, *z.shape), generator=torch.Generator().manual_seed(3), dtype=z.dtype)
    assert torch.allclose(closed.value(z, y), autodiff.value(z, y), rtol=TOL, atol=TOL)
    assert torch.allclose(
        closed.hessian_vector(z, y, u), autodiff.hessian_vector(z, y, u), rtol=TOL, atol=TOL
    )
    S, T = closed.hessian_sqrt(z, y), autodiff.hessian_sqrt(z, y)
    assert torch.allclose(S @ S.transpose(1, 2), T @ T.transpose(1, 2), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_predicted_variance_gaussian_matches_torch_and_refuses_a_factor(reduction: str) -> None:
    z, y = _data(HETEROSCEDASTIC)
    reference = HETEROSCEDASTIC.reference(reduction)
    loss = HETEROSCEDASTIC.hesskit(reduction)
    assert torch.allclose(loss.value(z, y), reference(z, y), rtol=TOL, atol=TOL)
    u = torch.randn(z.shape, generator=torch.Generator().manual_seed(1), dtype=z.dtype)
    expected = (output_hessian(reference, z, y) @ u.reshape(-1)).reshape(z.shape)
    assert torch.allclose(loss.hessian_vector(z, y, u), expected, rtol=TOL, atol=TOL)
    assert not loss.convex
    with pytest.raises(InvalidArgumentError, match=r"needs a loss convex.*use the Hessian"):
        loss.hessian_sqrt(z, y)


def test_the_reference_hessians_are_not_all_trivial() -> None:
    """Guards the tests above: most cases have a curvature with structure to get wrong."""
    nondiagonal, nonzero = 0, 0
    for case in CASES:
        z, y = _data(case)
        full = output_hessian(case.reference("sum"), z, y)
        nonzero += bool(full.abs().max() > 0.01)
        nondiagonal += bool((full - torch.diag(full.diagonal())).abs().max() > 0.01)
    assert nonzero >= len(CASES) - 5  # L1, smooth L1 with β = 0, NLL, two KL: H_ℓ = 0
    assert nondiagonal >= 8  # every cross-entropy case
