"""The structure report of H = G + R on blocks of Hugging Face models: the dense matrices
equal the oracles, and every zero it explains is exactly zero (a reason is never given to
a non-zero entry) — on models that are no chain of layers, the evidence classes must not
fire where they do not apply."""

from __future__ import annotations

import pytest
import torch

from hesskit.dense import hessian_of
from hesskit.dense.structure import REASONS, structure_report, zero_reason_codes
from hesskit.problem import Problem

pytest.importorskip("transformers")

from hf_zoo.models import make
from hf_zoo.reference import Oracle, relative_error


@pytest.mark.parametrize("name", ["gpt2_eager", "bert_sdpa", "resnet_train"])
def test_structure_report_of_a_block_explains_only_exact_zeros(name):
    case = make(name)
    result = hessian_of(Problem(case.model, case.loss, case.data, params=case.block))
    oracle = Oracle(case.reference_model, case.loss_kind, case.data, case.block)
    assert relative_error(result.matrix("H"), oracle.hessian_dense()) <= case.rtol
    report = structure_report(result)
    assert report.num_params == oracle.theta.numel()
    for part in ("H", "G", "R"):
        codes, reasons = zero_reason_codes(result, part)
        matrix = result.matrix(part)
        assert reasons == REASONS
        claimed = codes >= 0
        assert torch.all(matrix[claimed] == 0), f"{name}: a non-zero entry of {part} has a reason"
        assert torch.equal(claimed, matrix == 0)  # every exact zero is counted
