"""Block structure of H = G + R: norms, the share of G and R, and why entries are zero.

For every pair of parameter tensors (row parameter at or after the column parameter in the
layout; the matrices are symmetric) the report gives the block's shape, ‖H_b‖_F, the shares
‖G_b‖²/(‖G_b‖² + ‖R_b‖²) and ‖R_b‖²/(‖G_b‖² + ‖R_b‖²) (None for an all-zero block), and the
number of exactly-zero entries of H, G and R with the reason for each zero, from evidence
(:mod:`hesskit.dense.evidence`, :mod:`hesskit.dense.support`) and never assumed:

* ``non_interacting_outputs``: both entries are final-layer weights into *different* output
  units and the loss's output Hessian is diagonal (MSE, BCE): zero for every input;
* ``linear_in_layer`` (R only): both parameters belong to one affine layer after which the
  network is piecewise linear (ReLU, leaky ReLU, identity): σ″ = 0, so R's block is zero
  and H = G there;
* ``separate_hidden_units`` (R only): between consecutive Linear layers A → B with the
  network piecewise linear after B, a weight out of hidden unit p and a weight into unit
  i ≠ p (or B's bias and anything in A): zero for every input;
* ``separate_units_in_layer`` (R only): within one affine layer followed by elementwise
  activations (any, e.g. tanh) and then only affine and piecewise-linear modules, the
  weights and bias of unit i with those of unit j ≠ i: zero for every input
  (:func:`~hesskit.dense.evidence.separate_units_in_layer`);
* ``dead_unit``: a row or column of a ReLU unit inactive on every sample at this point;
* ``zero_input_feature``: a row or column of a first-layer weight whose input feature is
  0 on every sample (blank pixels of an image);
* ``disjoint_support``: no sample on which every factor of the entry's per-sample terms is
  non-zero. In a chain of Linear layers and piecewise-linear activations, e.g. two
  first-layer weights whose input features are never non-zero together or whose units
  are never active together (:class:`~hesskit.dense.support.JointSupport`); with any
  elementwise activations (tanh, GELU, …), first-layer weights whose input features are
  never non-zero together (:class:`~hesskit.dense.support.FirstLayerSupport`). Each
  gives the factors of H, G and R and their proof;
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
    separate_units_in_layer,
    zero_inputs,
)
from hesskit.dense.hessian import DenseHessian
from hesskit.dense.support import (
    FirstLayerSupport,
    JointSupport,
    first_layer_support,
    joint_support,
)
from hesskit.errors import InvalidArgumentError


class ZeroReason(enum.Enum):
    """Why an entry is exactly zero."""

    NON_INTERACTING_OUTPUTS = "non_interacting_outputs"
    LINEAR_IN_LAYER = "linear_in_layer"
    SEPARATE_HIDDEN_UNITS = "separate_hidden_units"
    SEPARATE_UNITS_IN_LAYER = "separate_units_in_layer"
    DEAD_UNIT = "dead_unit"
    ZERO_INPUT_FEATURE = "zero_input_feature"
    DISJOINT_SUPPORT = "disjoint_support"
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
    ZeroReason.SEPARATE_UNITS_IN_LAYER.value: (
        "within one layer, R couples the weights and bias of unit i only with those of the "
        "same unit i, because after the layer's elementwise activation the network is "
        "piecewise linear (zero for every input)"
    ),
    ZeroReason.DEAD_UNIT.value: (
        "a ReLU unit inactive on every sample at this point: its incoming and outgoing "
        "weights have zero rows and columns (depends on the point, not the architecture)"
    ),
    ZeroReason.ZERO_INPUT_FEATURE.value: (
        "first-layer weights from an input feature that is 0 on every sample: zero rows and "
        "columns (depends on the data, not the architecture)"
    ),
    ZeroReason.DISJOINT_SUPPORT.value: (
        "no sample on which every factor of the entry's per-sample term is non-zero: e.g. "
        "two first-layer weights whose input features are never non-zero together, or "
        "whose units are never active together (ReLU-family chains; the first case also "
        "with tanh, GELU and other activations; depends on the point and the data)"
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


REASONS: list[str] = [reason.value for reason in ZeroReason]
"""The reason values in the order :func:`zero_reason_codes` numbers them."""


def zero_reason_codes(result: DenseHessian, part: str) -> tuple[Tensor, list[str]]:
    """Per entry of H, G or R (``part`` in ``"H"``, ``"G"``, ``"R"``), why it is zero.

    Returns an ``[N, N]`` int8 tensor (on the CPU) holding −1 where the entry is non-zero
    and otherwise the index into the returned list of :class:`ZeroReason` values of the
    first reason that applies (the same rule and evidence as :func:`structure_report`,
    whose per-block counts are the counts of these codes). Cost: the evidence (one forward
    pass over the data) plus O(N²) comparisons.
    """
    if part not in ("H", "G", "R"):
        raise InvalidArgumentError(f"part must be 'H', 'G' or 'R', not {part!r}")
    matrix = result.matrix(part)
    facts = _Facts(result)
    layout = result.layout
    codes = torch.full(matrix.shape, -1, dtype=torch.int8)
    for columns in layout.names:
        for rows in layout.names:
            rs, cs = layout.slice(rows), layout.slice(columns)
            codes[rs, cs] = _codes(part, matrix[rs, cs], facts.evidence(rows, columns))
    return codes, list(REASONS)


def structure_report(result: DenseHessian) -> StructureReport:
    """Analyse the blocks of ``result`` (built with ``split=True`` for G and R shares)."""
    layout = result.layout
    parts = {"H": result.hessian, "G": result.gauss_newton, "R": result.residual}
    parts = {key: value for key, value in parts.items() if value is not None}
    facts = _Facts(result)
    blocks = []
    for j, columns in enumerate(layout.names):
        for rows in layout.names[j:]:
            rs, cs = layout.slice(rows), layout.slice(columns)
            evidence = facts.evidence(rows, columns)
            codes = {k: _codes(k, m[rs, cs], evidence) for k, m in parts.items()}
            blocks.append(_block(rows, columns, {k: m[rs, cs] for k, m in parts.items()}, codes))
    dtype = str(result.hessian.dtype).removeprefix("torch.")
    return StructureReport(
        layout.num_params, dtype, result.method.value, blocks, facts.dead, facts.features
    )


@dataclass
class _Evidence:
    outputs: Tensor | None  # entries feeding different output units (diagonal loss)
    linear: bool  # both in one layer in which the network is piecewise linear
    separate: Tensor | None  # R entries of different hidden units in consecutive layers
    within: Tensor | None  # R entries of different units of one layer
    dead: Tensor  # rows or columns of dead units
    zero_input: Tensor  # rows or columns of weights from always-zero input features
    support: JointSupport | None  # per-sample factor patterns of a piecewise-linear chain
    first_layer: FirstLayerSupport | None  # input features ever non-zero together
    rows: str
    columns: str


class _Facts:
    """The evidence about one :class:`DenseHessian`, gathered once and cut into blocks."""

    def __init__(self, result: DenseHessian) -> None:
        problem = result.problem
        self.layout = result.layout
        self.layers = linear_layers(problem)
        self.units = output_units(problem)
        self.separate = separate_units(problem)
        self.within = separate_units_in_layer(problem)
        self.dead, self.dead_mask = dead_units(problem, result.parameters)
        self.features, self.zero_mask = zero_inputs(problem)
        self.support = joint_support(problem, result.parameters)
        self.first_layer = first_layer_support(problem, result.parameters)

    def evidence(self, rows: str, columns: str) -> _Evidence:
        rs, cs = self.layout.slice(rows), self.layout.slice(columns)
        return _Evidence(
            outputs=_cross_outputs(self.units, rs, cs),
            linear=rows in self.layers and self.layers.get(columns) == self.layers[rows],
            separate=self.separate.get((rows, columns)),
            within=self.within.get((rows, columns)),
            dead=self.dead_mask[rs][:, None] | self.dead_mask[cs][None, :],
            zero_input=self.zero_mask[rs][:, None] | self.zero_mask[cs][None, :],
            support=self.support,
            first_layer=self.first_layer,
            rows=rows,
            columns=columns,
        )


def _cross_outputs(units: Tensor | None, rows: slice, cols: slice) -> Tensor | None:
    if units is None:
        return None
    r, c = units[rows], units[cols]
    return (r[:, None] >= 0) & (c[None, :] >= 0) & (r[:, None] != c[None, :])


def _codes(part: str, matrix: Tensor, evidence: _Evidence) -> Tensor:
    """Per entry of one block of ``part``: −1 if non-zero, else the index in :data:`REASONS`
    of the first reason whose evidence covers it (``unexplained`` when none does)."""
    codes = torch.full(matrix.shape, -1, dtype=torch.int8)
    remaining = (matrix == 0).cpu()
    candidates: list[tuple[ZeroReason, Tensor | None]] = [
        (ZeroReason.NON_INTERACTING_OUTPUTS, evidence.outputs),
        (ZeroReason.LINEAR_IN_LAYER, _full(remaining) if part == "R" and evidence.linear else None),
        (ZeroReason.SEPARATE_HIDDEN_UNITS, evidence.separate if part == "R" else None),
        (ZeroReason.SEPARATE_UNITS_IN_LAYER, evidence.within if part == "R" else None),
        (ZeroReason.DEAD_UNIT, evidence.dead),
        (ZeroReason.ZERO_INPUT_FEATURE, evidence.zero_input),
        (ZeroReason.DISJOINT_SUPPORT, None),  # computed only if zeros remain
        (ZeroReason.UNEXPLAINED, _full(remaining)),
    ]
    for reason, mask in candidates:
        if reason is ZeroReason.DISJOINT_SUPPORT and remaining.any():
            mask = _disjoint(part, evidence)
        if mask is not None:
            claimed = remaining & mask
            codes[claimed] = REASONS.index(reason.value)
            remaining &= ~claimed
    return codes


def _disjoint(part: str, evidence: _Evidence) -> Tensor | None:
    """Entries whose per-sample terms vanish on every sample by either proof (or None)."""
    masks = [
        ~possible
        for proof in (evidence.support, evidence.first_layer)
        if proof is not None
        and (possible := proof.possible(part, evidence.rows, evidence.columns)) is not None
    ]
    if not masks:
        return None
    return torch.stack(masks).any(dim=0)


def _full(like: Tensor) -> Tensor:
    return torch.ones_like(like)


def _block(
    rows: str, columns: str, parts: dict[str, Tensor], codes: dict[str, Tensor]
) -> BlockStructure:
    norms = {k: float(torch.linalg.matrix_norm(v)) for k, v in parts.items()}
    zeros, reasons = {}, {}
    for part, code in codes.items():
        counts = torch.bincount(code[code >= 0].long(), minlength=len(REASONS)).tolist()
        zeros[part] = sum(counts)
        reasons[part] = {
            reason: count for reason, count in zip(REASONS, counts, strict=True) if count
        }
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
