"""The curvature monitor on unwrapped Hugging Face models (issue 24: it works on the zoos).

Each family's monitor measures the whole model's sharpness and, through ``blocks``, the top
eigenvalue of the case's parameter block, which the independent oracle of
``hf_zoo.reference`` gives densely. A measurement leaves every parameter and buffer (BatchNorm
running statistics included) bitwise as it was, and the train/eval mode too.
"""

from __future__ import annotations

import math

import pytest

pytest.importorskip("transformers")

import torch

from hesskit import CurvatureMonitor
from hf_zoo.models import make, one_torch_thread  # noqa: F401 - a fixture
from hf_zoo.reference import Oracle

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAMILIES = ["gpt2_eager", "llama_sdpa", "bert_sdpa", "resnet_train", "bart_sdpa"]


@pytest.mark.parametrize("name", FAMILIES)
def test_a_measurement_matches_the_oracle_block_and_changes_nothing(name):
    case = make(name)
    oracle = Oracle(case.reference_model, case.loss_kind, case.data, case.block)
    dense = oracle.hessian_dense()
    want = float(torch.linalg.eigvalsh(0.5 * (dense + dense.T))[-1])
    before = {k: v.detach().clone() for k, v in case.model.state_dict().items()}
    modes = [m.training for m in case.model.modules()]
    monitor = CurvatureMonitor(case.model, case.loss, case.data, every=1, tol=1e-8,
                               blocks={"case block": case.block})
    record = monitor.step()
    sharpness = record["eigenvalues"][0]
    assert math.isfinite(sharpness) and sharpness >= want - 1e-6 and record["converged"]
    allowed = 1e-6 * abs(want) + case.rtol * float(torch.linalg.norm(dense)) + 1e-10
    assert abs(record["blocks"]["case block"] - want) <= allowed, (record["blocks"], want)
    after = case.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), name
    assert [m.training for m in case.model.modules()] == modes
