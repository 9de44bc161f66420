"""``as_loss`` of any callable, and the ``AutodiffLoss`` it builds, where hesskit uses it."""

from __future__ import annotations

import pytest
import torch
from loss_oracles import output_hessian, sample_blocks
from torch import nn
from torch.func import vmap

from hesskit.losses import AutodiffLoss, CrossEntropyLoss, HuberLoss, Loss, MSELoss, as_loss

TOL = 1e-10


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 3, generator=g, dtype=torch.float64)
    return z, torch.randint(0, 2, (5, 3), generator=g).double() * 2 - 1


def test_as_loss_keeps_a_hesskit_loss() -> None:
    loss = MSELoss("sum")
    assert as_loss(loss) is loss


def test_as_loss_maps_torch_modules_to_their_closed_forms() -> None:
    assert type(as_loss(nn.HuberLoss(delta=0.3))) is HuberLoss
    assert as_loss(nn.HuberLoss(delta=0.3)).delta == 0.3
    converted = as_loss(nn.CrossEntropyLoss(ignore_index=3, label_smoothing=0.25))
    assert (converted.ignore_index, converted.label_smoothing) == (3, 0.25)
    assert as_loss(nn.KLDivLoss(reduction="batchmean")).reduction == "sample_mean"


def test_a_subclass_with_its_own_forward_gets_autodiff_not_the_parent_closed_form() -> None:
    class Doubled(nn.MSELoss):
        def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(z, y)

    loss = as_loss(Doubled())
    z, y = _data()
    assert isinstance(loss, AutodiffLoss)
    assert torch.allclose(loss.value(z, y), 2 * nn.functional.mse_loss(z, y))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_unknown_torch_loss_module_becomes_autodiff_with_its_reduction(reduction: str) -> None:
    module = nn.SoftMarginLoss(reduction=reduction)
    loss = as_loss(module)
    z, y = _data()
    assert isinstance(loss, AutodiffLoss) and loss.reduction == reduction
    assert loss.scale(z) == (1.0 if reduction == "sum" else 1 / 5)
    full = output_hessian(module, z, y)
    u = torch.randn(z.shape, dtype=z.dtype, generator=torch.Generator().manual_seed(1))
    expected = (full @ u.reshape(-1)).reshape(z.shape)
    assert torch.allclose(loss.hessian_vector(z, y, u), expected, rtol=TOL, atol=TOL)
    blocks, _ = sample_blocks(full, len(z))
    S = loss.hessian_sqrt(z, y)
    assert torch.allclose(S @ S.transpose(1, 2), blocks, rtol=TOL, atol=TOL)


def test_plain_function_becomes_a_mean_autodiff_loss() -> None:
    def log_cosh(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.cosh(z - y)).sum(1).mean()

    loss = as_loss(log_cosh)
    z, y = _data()
    assert isinstance(loss, AutodiffLoss) and loss.reduction == "mean"
    assert "log_cosh" in loss.describe()
    expected = torch.diag_embed(1 / torch.cosh(z - y) ** 2) / len(z)  # (log cosh)'' = sech²
    S = loss.hessian_sqrt(z, y)
    assert torch.allclose(S @ S.transpose(1, 2), expected, rtol=TOL, atol=TOL)


def test_autodiff_hessian_vector_works_under_vmap_as_the_operators_call_it() -> None:
    loss = AutodiffLoss(nn.CrossEntropyLoss(label_smoothing=0.1))
    z = torch.randn(4, 5, dtype=torch.float64)
    y = torch.tensor([0, 4, 2, 2])
    U = torch.randn(3, 4, 5, dtype=torch.float64)
    mapped = vmap(lambda u: loss.hessian_vector(z, y, u))(U)
    closed = CrossEntropyLoss(label_smoothing=0.1).hessian_vector(z, y, U)
    assert torch.allclose(mapped, closed, rtol=TOL, atol=TOL)


def test_autodiff_loss_is_a_loss_module_holding_the_torch_module() -> None:
    module = nn.SmoothL1Loss()
    loss = AutodiffLoss(module)
    assert isinstance(loss, Loss) and module in loss.modules()
