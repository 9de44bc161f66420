"""``normalizer`` makes batch losses add up to the loss over all the data, exactly.

With value_b the loss of batch b under its own reduction, Σ_b (m_b / Σ m) value_b, with
m_b = normalizer_b, is torch's loss over all N samples; batches of 4, 4 and 2 (a smaller
last batch), with ignored targets and class weights where the loss has them.
"""

from __future__ import annotations

import pytest
import torch
from loss_cases import CASES, Case
from torch import nn

from hesskit.errors import InvalidArgumentError
from hesskit.losses import AutodiffLoss, CrossEntropyLoss, MSELoss, as_loss

pytestmark = pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss")
SIZES = (4, 4, 2)


def _all_data(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    parts = [case.draw(g) for _ in range(3)]  # 3 draws of 4 samples, cut to 10
    z = torch.cat([p[0] for p in parts])[: sum(SIZES)]
    y = torch.cat([p[1] for p in parts])[: sum(SIZES)]
    return z, y


def _weighted_total(loss, z: torch.Tensor, y: torch.Tensor) -> float:
    zs, ys = z.split(SIZES), y.split(SIZES)
    norms = [loss.normalizer(yb, zb) for zb, yb in zip(zs, ys, strict=True)]
    values = [loss.value(zb, yb) for zb, yb in zip(zs, ys, strict=True)]
    return float(sum(m / sum(norms) * v for m, v in zip(norms, values, strict=True)))


PAIRS = [(case, r) for case in CASES for r in case.reductions if r != "sum"]


@pytest.mark.parametrize(("case", "reduction"), PAIRS, ids=[f"{c.name}-{r}" for c, r in PAIRS])
def test_normalizer_weights_give_the_mean_over_all_data(case: Case, reduction: str) -> None:
    z, y = _all_data(case)
    expected = float(case.reference(reduction)(z, y))
    assert _weighted_total(case.hesskit(reduction), z, y) == pytest.approx(expected, rel=1e-12)


def test_sample_count_weights_would_be_wrong_with_ignored_targets() -> None:
    """The older n_b/N rule is not exact here, so the test above is a real check."""
    case = next(c for c in CASES if c.name == "ce_weight_ignore_smooth")
    z, y = _all_data(case)
    loss = case.hesskit("mean")
    by_count = sum(
        len(zb) / len(z) * float(loss.value(zb, yb))
        for zb, yb in zip(z.split(SIZES), y.split(SIZES), strict=True)
    )
    assert abs(by_count - float(case.reference("mean")(z, y))) > 1e-3


def test_sum_reduction_normalizer_is_one() -> None:
    z, y = torch.randn(3, 5), torch.tensor([0, 1, 2])
    assert CrossEntropyLoss("sum").normalizer(y, z) == 1.0
    assert MSELoss("sum").normalizer(z, z) == 1.0


def test_sample_mean_normalizer_is_the_number_of_samples() -> None:
    assert MSELoss("sample_mean").normalizer(torch.zeros(6, 3)) == 6.0


def test_cross_entropy_normalizer_counts_non_ignored_and_weights() -> None:
    y = torch.tensor([0, -100, 2, 2])
    assert CrossEntropyLoss().normalizer(y) == 3.0
    weighted = CrossEntropyLoss(weight=torch.tensor([0.5, 1.0, 4.0]))
    assert weighted.normalizer(y) == 8.5


def test_cross_entropy_scale_without_targets_is_the_old_one_over_n() -> None:
    z = torch.randn(6, 3)
    assert CrossEntropyLoss().scale(z) == 1 / 6
    assert CrossEntropyLoss().scale(torch.randn(2, 3, 5)) == 1 / 10


def test_weighted_cross_entropy_scale_asks_for_targets() -> None:
    loss = as_loss(nn.CrossEntropyLoss(weight=torch.ones(3)))
    with pytest.raises(InvalidArgumentError, match=r"needs the targets; call scale\(z, y\)"):
        loss.scale(torch.randn(2, 3))


def test_autodiff_loss_normalizer_counts_samples() -> None:
    loss = AutodiffLoss(lambda z, y: ((z - y) ** 2).mean())
    assert loss.normalizer(torch.zeros(5, 2)) == 5.0
    assert AutodiffLoss(lambda z, y: z.sum(), reduction="sum").normalizer(torch.zeros(5)) == 1.0
