"""K-FAC on the Hugging Face zoo (issue 22): every model's layers are found from its modules
and two steps on its first batch are finite, accepted and move every parameter."""

from __future__ import annotations

import pytest
import torch

from closures import batch_closure
from hesskit.optim.kfac.optimizer import KFAC
from hesskit.optim.kfac.steps import KFACSchedule

pytest.importorskip("transformers")

from hf_zoo.models import make

CASES = ["gpt2_sdpa", "llama_eager", "bert_sdpa", "vit_sdpa", "resnet_train", "bart_eager"]


@pytest.mark.parametrize("name", CASES)
def test_two_kfac_steps_are_accepted_and_move_every_parameter(name):
    case = make(name)
    opt = KFAC(case.model.parameters(), model=case.model, loss=case.loss,
               schedule=KFACSchedule(statistics_fraction=1.0))
    assert opt.blocks
    opt_closure = batch_closure(opt, *case.data[0])
    before = {n: p.detach().clone() for n, p in case.model.named_parameters()}
    losses = [float(opt.step(opt_closure)) for _ in range(2)]
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert opt.kfac_state["nonfinite_rejections"] == 0 and opt.kfac_state["steps"] == 2
    frozen = [n for n, p in case.model.named_parameters() if torch.equal(p, before[n])]
    assert frozen == []
