"""Exact curvature diagonals of a chain on feature maps (CNNs) by per-sample backpropagation.

The per-sample Hessian of ℓ_i in a layer output x_l, Q_l,i = ∂²ℓ_i/∂x_l,i², obeys the
recursion of :mod:`hesskit.engine.curvature` (Dangel, Kunstner & Hennig, "BackPACK",
ICLR 2020, §3): Q_{l−1} = J_lᵀ Q_l J_l for a layer linear (or locally linear) in its input
with Jacobian J_l, plus diag(σ″ ⊙ g_l) after an elementwise σ (g_l = ∂ℓ/∂x_l, Hessian
only). Here Q_i is kept, for feature maps of any shape and never densified, as

    Q_i = F_i diag(s_i) F_iᵀ + diag(d_i)

with m factor columns F_i ``[m, *shape]``, signs s_i = ±1 and a *pending diagonal* d_i:

* output: F = S_i (``Loss.hessian_sqrt``, c included) or, for the empirical Fisher,
  one column δ_i √c (δ_i the unscaled per-sample output gradient); d = 0;
* elementwise σ with D = diag σ′: F ← D F, d ← σ′² ⊙ d + σ″ ⊙ g;
* max-pooling, padding, Flatten, Identity, eval Dropout (Jacobian rows one-hot or zero):
  F ← Jᵀ F and d ← Jᵀ d (:func:`~hesskit.engine.map_jacobians.transport_diagonal`);
* Linear, convolution, average pooling: first d is expanded into the signed columns
  √|d_j| Jᵀ e_j (one per feature j, from E = Jᵀ I computed once per batch: the Jacobian
  is the same for every sample), then F ← Jᵀ F.

A weight enters one layer, so its diagonal there is (``map_jacobians.weight_squares``)

    Σ_i Σ_c s_ic (∂(F_ic · y_i)/∂W)²  +  Σ_i Σ_j d_ij (∂y_ij/∂W)²

and the second sum has a closed form (conv: Σ_l d[o, l] unfold(x)[k, l]²). BackPACK's
DiagHessian instead turns every σ″ term into columns where it arises, two sets of them
(positive and negative parts): m grows by 2·numel(x) per smooth activation. Keeping d
pending saves those columns through every activation, pooling and padding, and saves
them entirely at the first differentiated layer (where no layer below needs them).

Cost per sample, with m_l columns at layer l: m_l transposed-Jacobian products plus, at a
convolution, m_l weight gradients. For ReLU networks m = k (the output dimension; about
k backward passes). A smooth activation on a map of d features adds d columns below the
next linear layer (that is also BackPACK's cost, twice over): expensive on big maps. The
samples go through in chunks that keep the largest column stack under
:data:`ELEMENT_BUDGET` numbers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hesskit.engine.layers import AVERAGING, CONV, ELEMENTWISE, LINEAR, PARAMETRIC_KINDS
from hesskit.engine.map_jacobians import (
    scale_columns,
    transport_diagonal,
    transpose_columns,
    transposed_identity,
    weight_squares,
)
from hesskit.engine.map_primal import MapPrimal, MapRecord
from hesskit.losses import Loss

ELEMENT_BUDGET = 2**25
"""Largest column stack (samples × columns × features) held at once."""

_EXPANDING = (LINEAR, CONV, AVERAGING)


class FeatureCurvature:
    """Q_i = F_i diag(s_i) F_iᵀ + diag(d_i) for a chunk of samples.

    Attributes:
        columns: F ``[c, m, *shape]``.
        signs: s ``[c, m]`` (None: all +1).
        pending: d ``[c, *shape]`` (None: zero).
    """

    def __init__(self, columns: Tensor, signs: Tensor | None = None) -> None:
        self.columns = columns
        self.signs = signs
        self.pending: Tensor | None = None

    def through_elementwise(self, record: MapRecord, residual: Tensor | None, part: slice) -> None:
        """F ← D F, d ← σ′² ⊙ d + residual."""
        self.columns = scale_columns(record, self.columns, part)
        if self.pending is not None:
            self.pending = record.slope[part] ** 2 * self.pending
        if residual is not None:
            self.pending = residual if self.pending is None else self.pending + residual

    def through_layer(self, record: MapRecord, part: slice, identity: Tensor | None) -> None:
        """F ← Jᵀ F; d transported (selections) or expanded by E = Jᵀ I (``identity``)."""
        if self.pending is not None and record.kind not in _EXPANDING:
            self.pending = transport_diagonal(record, self.pending, part)
            self.columns = transpose_columns(record, self.columns, part)
            return
        self.columns = transpose_columns(record, self.columns, part)
        if self.pending is None:
            return
        assert identity is not None
        d = self.pending.reshape(self.pending.shape[0], -1)  # [c, d_out]
        expanded = d.abs().sqrt().view(*d.shape, *[1] * (identity.ndim - 1)) * identity
        signs = self.signs
        if signs is None:
            signs = d.new_ones(self.columns.shape[:2])
        self.columns = torch.cat([self.columns, expanded], dim=1)
        self.signs = torch.cat([signs, torch.sign(d)], dim=1)
        self.pending = None


def output_columns(primal: MapPrimal, loss: Loss, targets: Tensor, kind: str) -> Tensor:
    """The factor of Q_L, ``[n, m, *z.shape[1:]]``, for ``kind``."""
    z = primal.outputs
    if kind == "ef":  # Q_i = c δ_i δ_iᵀ with δ_i = g_i / c, the unscaled per-sample gradient
        return (primal.output_gradient / loss.scale(z, targets) ** 0.5)[:, None]
    factor = loss.hessian_sqrt(z, targets)  # [n, k, m]
    return factor.transpose(1, 2).reshape(z.shape[0], factor.shape[-1], *z.shape[1:])


def map_chain_diagonal(
    primal: MapPrimal, loss: Loss, targets: Tensor, kind: str
) -> dict[str, Tensor]:
    """The diagonal of one batch's curvature matrix, per differentiated parameter.

    Args:
        primal: the batch's feature-map records.
        loss: the loss ℓ (its reduction factor c is included).
        targets: the batch targets y.
        kind: ``"hessian"``, ``"ggn"`` or ``"ef"``.

    Returns:
        ``{name: diagonal shaped like the parameter}`` for the differentiated parameters
        the chain uses.
    """
    records = primal.records
    if not records:
        return {}
    with torch.no_grad():
        top = output_columns(primal, loss, targets, kind)
        smooth = kind == "hessian" and any(r.second is not None for r in records)
        identities = _identities(records, smooth)
        n = top.shape[0]
        chunk = max(1, ELEMENT_BUDGET // _elements_per_sample(records, top.shape[1], smooth))
        diagonals: dict[str, Tensor] = {}
        for start in range(0, n, chunk):
            part = slice(start, min(n, start + chunk))
            gradient = primal.output_gradient[part, None] if smooth else None
            for name, value in _backpropagate(records, top[part], gradient, identities,
                                              part).items():
                diagonals[name] = diagonals[name] + value if name in diagonals else value
    return diagonals


def _backpropagate(
    records: list[MapRecord],
    top: Tensor,
    gradient: Tensor | None,
    identities: dict[int, Tensor],
    part: slice,
) -> dict[str, Tensor]:
    """The diagonals from one chunk; ``gradient`` (g as one column) is carried when σ″ ≠ 0."""
    curvature = FeatureCurvature(top)
    out: dict[str, Tensor] = {}
    for position in range(len(records) - 1, -1, -1):
        record = records[position]
        if record.kind in PARAMETRIC_KINDS:
            out.update(weight_squares(record, curvature.columns, curvature.signs,
                                      curvature.pending, part))
        if position == 0:
            break
        if record.kind == ELEMENTWISE:
            residual = None
            if gradient is not None and record.second is not None:
                residual = record.second[part] * gradient[:, 0]
            curvature.through_elementwise(record, residual, part)
            if gradient is not None:
                gradient = scale_columns(record, gradient, part)
        else:
            curvature.through_layer(record, part, identities.get(position))
            if gradient is not None:
                gradient = transpose_columns(record, gradient, part)
    return out


def _identities(records: list[MapRecord], smooth: bool) -> dict[int, Tensor]:
    """E = Jᵀ I of every linear step where a pending diagonal will be expanded."""
    if not smooth:
        return {}
    identities, pending = {}, False
    for position in range(len(records) - 1, 0, -1):
        record = records[position]
        pending = pending or record.second is not None
        if pending and record.kind in _EXPANDING:
            identities[position] = transposed_identity(record)
            pending = False
    return identities


def _elements_per_sample(records: list[MapRecord], columns: int, smooth: bool) -> int:
    """The largest column stack (or per-column weight gradient) one sample needs."""
    largest, pending = 1, False
    for record in reversed(records):
        d_in, d_out = math.prod(record.inputs.shape[1:]), math.prod(record.output_shape)
        largest = max(largest, columns * max(d_in, d_out))
        if record.kind == CONV:
            largest = max(largest, columns * record.weight.numel())
        pending = pending or (smooth and record.second is not None)
        if pending and record.kind in _EXPANDING:
            columns += d_out
            pending = False
            largest = max(largest, columns * d_in)
    return largest
