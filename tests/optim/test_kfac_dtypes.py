"""K-FAC on a bfloat16 model and on a channels_last CNN (issue 22): factors and their
eigendecompositions in float32, the update cast back to the parameters' dtype; each run
against the same model in float32 / contiguous memory."""

from __future__ import annotations

import copy

import torch
from torch import nn

from closures import batch_closure
from hesskit.optim.kfac.optimizer import KFAC
from hesskit.optim.kfac.steps import KFACSchedule

SCHEDULE = KFACSchedule(statistics_fraction=1.0)


def test_a_bfloat16_model_steps_like_its_float32_copy_to_bfloat16_rounding():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(torch.bfloat16)
    reference = copy.deepcopy(model).float()  # the same (bf16-representable) values
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(32, 6, generator=gen).to(torch.bfloat16)
    Y = torch.randint(0, 3, (32,), generator=gen)
    opt = KFAC(model.parameters(), model=model, loss=nn.CrossEntropyLoss(), schedule=SCHEDULE)
    ref = KFAC(reference.parameters(), model=reference, loss=nn.CrossEntropyLoss(),
               schedule=SCHEDULE)
    opt_closure = batch_closure(opt, X, Y)
    ref_closure = batch_closure(ref, X.float(), Y)
    before = [p.detach().float().clone() for p in model.parameters()]
    opt.step(opt_closure)
    ref.step(ref_closure)
    factors = opt.kfac_state["factors"]["0.weight"]
    eigen = opt.kfac_state["eigen"]["0.weight"]
    assert factors.A.dtype == factors.G.dtype == eigen.A_vectors.dtype == torch.float32
    for p, q, b in zip(model.parameters(), reference.parameters(), before, strict=True):
        assert p.dtype == torch.bfloat16
        step, ref_step = p.detach().float() - b, q.detach() - b
        assert float((step - ref_step).norm()) <= 0.05 * float(ref_step.norm()) + 1e-2 * float(
            b.abs().max())  # bf16 has 8 significant bits: ~0.4 % per rounding


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(27, 3))  # MaxPool2d queries the layout


def test_a_channels_last_cnn_steps_as_its_contiguous_copy():
    gen = torch.Generator().manual_seed(0)
    X, Y = torch.randn(8, 2, 6, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)
    model = cnn().to(memory_format=torch.channels_last)
    reference = cnn()
    assert not model[0].weight.is_contiguous()
    opt = KFAC(model.parameters(), model=model, loss=nn.CrossEntropyLoss(), schedule=SCHEDULE)
    ref = KFAC(reference.parameters(), model=reference, loss=nn.CrossEntropyLoss(),
               schedule=SCHEDULE)
    opt_closure = batch_closure(opt, X.to(memory_format=torch.channels_last), Y)
    ref_closure = batch_closure(ref, X, Y)
    for _ in range(2):
        torch.testing.assert_close(opt.step(opt_closure), ref.step(ref_closure),
                                   rtol=1e-5, atol=1e-6)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
