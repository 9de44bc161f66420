"""Block structure of H = G + R: norms, the share of G and R, and why entries are zero.

For every pair of parameter tensors (row parameter at or after the column parameter in the
layout; the matrices are symmetric) the report gives the block's shape, ‖H_b‖_F, the shares
‖G_b‖²/(‖G_b‖² + ‖R_b‖²) and ‖R_b‖²/(‖G_b‖² + ‖R_b‖²) (None for an all-zero block), and the
number of exactly-zero entries of H, G and R with the reason for each zero, from evidence
(:mod:`hesskit.dense.evidence`) and never assumed:

* ``non_interacting_outputs``: both entries are final-layer weights into *different* output
  units and the loss's output Hessian is diagonal (MSE, BCE): zero for every input;
* ``linear_in_layer`` (R only): both parameters belong to one affine layer after which the
  network is piecewise linear (ReLU, leaky ReLU, identity): σ″ = 0, so R's block is zero
  and H = G there;
* ``separate_hidden_units`` (R only): between consecutive Linear layers A → B with the
  network piecewise linear after B, a weight out of hidden unit p and a weight into unit
  i ≠ p (or B's bias and anything in A): zero for every input;
* ``dead_unit``: a row or column of a ReLU unit inactive on every sample at this point;
* ``zero_input_feature``: a row or column of a first-layer weight whose input feature is
  0 on every sample (blank pixels of an image);
* ``unexplained``: exact zeros none of the above accounts for.

A zero is given the first reason in this order that applies.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from hesskit.dense.evidence import (
    DeadUnit,
    dead_units,
    linear_layers,
    output_units,
    separate_units,
    zero_inputs,
)
from hesskit.dense.hessian import DenseHessian


class ZeroReason(enum.Enum):
    """Why an entry is exactly zero."""

    NON_INTERACTING_OUTPUTS = "non_interacting_outputs"
    LINEAR_IN_LAYER = "linear_in_layer"
    SEPARATE_HIDDEN_UNITS = "separate_hidden_units"
    DEAD_UNIT = "dead_unit"
    ZERO_INPUT_FEATURE = "zero_input_feature"
    UNEXPLAINED = "unexplained"


EXPLANATIONS = {
    ZeroReason.NON_INTERACTING_OUTPUTS.value: (
        "final-layer weights into different output units never interact: each output "
        "depends on its own row only and the loss's output Hessian is diagonal "
        "(zero for every input)"
    ),
    ZeroReason.LINEAR_IN_LAYER.value: (
        "within one layer, the network is piecewise linear in the layer's parameters "
        "(every later activation has σ″ = 0), so R's block is zero and H = G there"
    ),
    ZeroReason.SEPARATE_HIDDEN_UNITS.value: (
        "between consecutive layers, R couples a weight out of hidden unit p only with the "
        "weights into the same unit p (and the next bias with nothing), because the network "
        "is piecewise linear after the later layer (zero for every input)"
    ),
    ZeroReason.DEAD_UNIT.value: (
        "a ReLU unit inactive on every sample at this point: its incoming and outgoing "
        "weights have zero rows and columns (depends on the point, not the architecture)"
    ),
    ZeroReason.ZERO_INPUT_FEATURE.value: (
        "first-layer weights from an input feature that is 0 on every sample: zero rows and "
        "columns (depends on the data, not the architecture)"
    ),
    ZeroReason.UNEXPLAINED.value: "exactly zero for no reason hesskit could establish",
}


@dataclass
class BlockStructure:
    """One block (rows of parameter ``rows``, columns of parameter ``columns``)."""

    rows: str
    columns: str
    shape: tuple[int, int]
    norm: float
    gauss_newton_share: float | None
    residual_share: float | None
    zeros: dict[str, int]
    zero_reasons: dict[str, dict[str, int]]


@dataclass
class StructureReport:
    """The structure of a :class:`DenseHessian`; ``to_json()`` for a file."""

    num_params: int
    dtype: str
    method: str
    blocks: list[BlockStructure]
    dead_units: list[DeadUnit]
    zero_input_features: list[int]
    explanations: dict[str, str] = field(default_factory=lambda: dict(EXPLANATIONS))

    def totals(self) -> dict[str, dict[str, int]]:
        """Zero counts by matrix and reason over the report's blocks."""
        total: dict[str, dict[str, int]] = {}
        for block in self.blocks:
            for part, reasons in block.zero_reasons.items():
                for reason, count in reasons.items():
                    total.setdefault(part, {}).setdefault(reason, 0)
                    total[part][reason] += count
        return total

    def to_dict(self) -> dict:
        return {**asdict(self), "totals": self.totals()}

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def structure_report(result: DenseHessian) -> StructureReport:
    """Analyse the blocks of ``result`` (built with ``split=True`` for G and R shares)."""
    problem, layout = result.problem, result.layout
    parts = {"H": result.hessian, "G": result.gauss_newton, "R": result.residual}
    parts = {key: value for key, value in parts.items() if value is not None}
    layers = linear_layers(problem)
    units = output_units(problem)
    separate = separate_units(problem)
    dead, dead_mask = dead_units(problem, result.parameters)
    features, zero_mask = zero_inputs(problem)
    blocks = []
    for j, columns in enumerate(layout.names):
        for rows in layout.names[j:]:
            rs, cs = layout.slice(rows), layout.slice(columns)
            evidence = _Evidence(
                outputs=_cross_outputs(units, rs, cs),
                linear=rows in layers and layers.get(columns) == layers[rows],
                separate=separate.get((rows, columns)),
                dead=dead_mask[rs][:, None] | dead_mask[cs][None, :],
                zero_input=zero_mask[rs][:, None] | zero_mask[cs][None, :],
            )
            blocks.append(_block(rows, columns, {k: m[rs, cs] for k, m in parts.items()}, evidence))
    dtype = str(result.hessian.dtype).removeprefix("torch.")
    return StructureReport(layout.num_params, dtype, result.method.value, blocks, dead, features)


@dataclass
class _Evidence:
    outputs: Tensor | None  # entries feeding different output units (diagonal loss)
    linear: bool  # both in one layer in which the network is piecewise linear
    separate: Tensor | None  # R entries of different hidden units in consecutive layers
    dead: Tensor  # rows or columns of dead units
    zero_input: Tensor  # rows or columns of weights from always-zero input features


def _cross_outputs(units: Tensor | None, rows: slice, cols: slice) -> Tensor | None:
    if units is None:
        return None
    r, c = units[rows], units[cols]
    return (r[:, None] >= 0) & (c[None, :] >= 0) & (r[:, None] != c[None, :])


def _block(
    rows: str, columns: str, parts: dict[str, Tensor], evidence: _Evidence
) -> BlockStructure:
    norms = {k: float(torch.linalg.matrix_norm(v)) for k, v in parts.items()}
    zeros, reasons = {}, {}
    for part, matrix in parts.items():
        remaining = matrix == 0
        zeros[part] = int(remaining.sum())
        counts = {}
        if evidence.outputs is not None:
            counts[ZeroReason.NON_INTERACTING_OUTPUTS.value] = _claim(remaining, evidence.outputs)
        if part == "R" and evidence.linear:
            counts[ZeroReason.LINEAR_IN_LAYER.value] = _claim(remaining, torch.ones_like(remaining))
        if part == "R" and evidence.separate is not None:
            counts[ZeroReason.SEPARATE_HIDDEN_UNITS.value] = _claim(remaining, evidence.separate)
        counts[ZeroReason.DEAD_UNIT.value] = _claim(remaining, evidence.dead)
        counts[ZeroReason.ZERO_INPUT_FEATURE.value] = _claim(remaining, evidence.zero_input)
        counts[ZeroReason.UNEXPLAINED.value] = int(remaining.sum())
        reasons[part] = {k: v for k, v in counts.items() if v}
    g2, r2 = norms.get("G", 0.0) ** 2, norms.get("R", 0.0) ** 2
    split = "G" in parts and g2 + r2 > 0
    shape = tuple(parts["H"].shape)
    return BlockStructure(
        rows,
        columns,
        (shape[0], shape[1]),
        norms["H"],
        g2 / (g2 + r2) if split else None,
        r2 / (g2 + r2) if split else None,
        zeros,
        reasons,
    )


def _claim(remaining: Tensor, mask: Tensor) -> int:
    """Count the still-unexplained zeros under ``mask`` and mark them explained."""
    claimed = remaining & mask
    count = int(claimed.sum())
    remaining &= ~claimed
    return count
