"""Every zoo model: the dense H, G, R = H − G and the structure report agree with autograd."""

from __future__ import annotations

import pytest

from hesskit.dense import hessian, structure_report
from zoo.models import make
from zoo.oracle import assert_relative, reference, zoo_params

EXPLAINED_AT_EVERY_POINT = (
    "non_interacting_outputs",
    "linear_in_layer",
    "separate_hidden_units",
    "dead_unit",
    "zero_input_feature",
)
"""Zero reasons that claim a structural (not accidental) zero."""


def _dense(name: str):
    case = make(name)
    return hessian(case.model, case.loss, case.data, case.params)


@pytest.mark.parametrize("name", zoo_params())
@pytest.mark.parametrize("part", ["H", "G", "R"])
def test_dense_matrix_equals_autograd_reference(name, part):
    ref = reference(name)
    want = {"H": ref.hessian, "G": ref.gauss_newton, "R": ref.residual}[part]
    result = _dense(name)
    # R is compared relative to H: it is a difference and may be (close to) zero.
    got = result.matrix(part)
    if part == "R":
        error = float((got - want).norm() / ref.hessian.norm())
        assert error <= 1e-8, f"{name}: dense R ({result.method.value}): error {error:.3g} of ‖H‖"
    else:
        assert_relative(got, want, f"{name}: dense {part} ({result.method.value})")


@pytest.mark.parametrize("name", zoo_params())
def test_structure_report_explained_zeros_are_zeros_of_the_reference(name):
    ref = reference(name)
    result = _dense(name)
    report = structure_report(result)
    matrices = {"H": ref.hessian, "G": ref.gauss_newton, "R": ref.residual}
    layout = result.layout
    scale = float(ref.hessian.abs().max())
    for block in report.blocks:
        rows, cols = layout.slice(block.rows), layout.slice(block.columns)
        for part, reasons in block.zero_reasons.items():
            want = matrices[part][rows, cols]
            claimed = sum(reasons.get(reason, 0) for reason in EXPLAINED_AT_EVERY_POINT)
            near_zero = int((want.abs() <= 1e-12 * scale).sum())
            assert claimed <= near_zero, (
                f"{name}: block ({block.rows}, {block.columns}) of {part}: the report explains "
                f"{claimed} zeros ({reasons}) but the reference has only {near_zero}"
            )
            assert block.zeros[part] == int((result.matrix(part)[rows, cols] == 0).sum())
