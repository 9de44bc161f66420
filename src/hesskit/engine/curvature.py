"""Per-sample curvature backpropagated through a chain: exact diagonals and dense blocks.

The per-sample Hessian of ℓ_i with respect to each layer output, Q_l,i = ∂²ℓ_i/∂x_l,i²,
obeys (Dangel, Kunstner & Hennig, "BackPACK", ICLR 2020, §3; the "Hessian backpropagation"
of Dangel et al. 2020):

    Q_L,i = S_i S_iᵀ                               (``Loss.hessian_sqrt``, reduction c included)
    Linear  x_l = W x_{l−1} + b:     Q_{l−1} = Wᵀ Q_l W
    σ       x_l = σ(x_{l−1}):        Q_{l−1} = D Q_l D + diag(σ″(x_{l−1}) ⊙ g_l),  D = diag σ′

with g_l = ∂ℓ/∂x_l. Dropping the σ″ terms gives the Gauss-Newton part; replacing Q_L by
δ_i δ_iᵀ (δ_i the unscaled per-sample output gradient) gives the empirical Fisher. A weight
enters one layer, linearly, so

    ∂²ℓ/∂W[p, q]² = Σ_i Q_l,i[p, p] a_i,q²,      ∂²ℓ/∂b[p]² = Σ_i Q_l,i[p, p].

:class:`OutputCurvature` keeps Q factorised, Q_i = F_i diag(s_i) F_iᵀ with F_i ``[d, m]`` and
signs s_i = ±1 (a residual enters as the signed square-root columns √|r| with sign(r)),
and multiplies it out to a dense ``[n, d, d]`` once a factor has m ≥ 2d columns, so columns
do not pile up over many layers. The first layer with parameters needs only diag(Q), which
the factor gives in n d m operations. For a ReLU network there is no residual and m is the
output dimension k: the cost is about k backward passes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hesskit.engine.map_curvature import map_chain_diagonal
from hesskit.engine.map_primal import MapPrimal
from hesskit.engine.primal import ActivationRecord, LinearRecord, Primal
from hesskit.losses import Loss

KINDS = ("hessian", "ggn", "ef")
"""The matrices whose per-sample curvature the engine backpropagates: H, G and EF."""


class OutputCurvature:
    """Per-sample Q_i = F_i diag(s_i) F_iᵀ (``factor`` [n, d, m], ``signs`` [n, m] or None),
    or dense ``[n, d, d]`` once that is cheaper (or when built from a dense matrix)."""

    def __init__(self, factor: Tensor | None = None, dense: Tensor | None = None) -> None:
        self.factor: Tensor | None = factor
        self.signs: Tensor | None = None
        self.dense: Tensor | None = dense

    def diagonal(self) -> Tensor:
        """diag(Q_i) for every sample, ``[n, d]``."""
        if self.dense is not None:
            return self.dense.diagonal(dim1=1, dim2=2)
        squares = self.factor**2
        if self.signs is not None:
            squares = squares * self.signs[:, None, :]
        return squares.sum(-1)

    def matrix(self) -> Tensor:
        """Q_i for every sample, dense ``[n, d, d]``."""
        if self.dense is None:
            return self.factor @ self._signed(self.factor).transpose(1, 2)
        return self.dense

    def through_linear(self, weight: Tensor) -> None:
        """Q ← Wᵀ Q W (first made dense if the factor has at least 2 d columns)."""
        if self.dense is None and self.factor.shape[-1] >= 2 * self.factor.shape[1]:
            self.dense = self.matrix()
            self.factor = self.signs = None
        if self.dense is not None:
            self.dense = weight.T @ self.dense @ weight
        else:
            self.factor = torch.einsum("oi,nom->nim", weight, self.factor)

    def through_activation(self, slope: Tensor, residual: Tensor | None) -> None:
        """Q ← D Q D + diag(residual), D = diag(slope)."""
        if self.dense is not None:
            self.dense = slope[:, :, None] * self.dense * slope[:, None, :]
        else:
            self.factor = slope[:, :, None] * self.factor
        if residual is None:
            return
        if self.dense is not None:
            self.dense = self.dense + torch.diag_embed(residual)
            return
        n = residual.shape[0]
        signs = torch.ones(n, self.factor.shape[-1], dtype=residual.dtype, device=residual.device)
        signs = signs if self.signs is None else self.signs
        self.factor = torch.cat([self.factor, torch.diag_embed(residual.abs().sqrt())], dim=-1)
        self.signs = torch.cat([signs, torch.sign(residual)], dim=-1)

    def _signed(self, factor: Tensor) -> Tensor:
        return factor if self.signs is None else factor * self.signs[:, None, :]


def output_curvature(primal: Primal, loss: Loss, targets: Tensor, kind: str) -> OutputCurvature:
    """Q_L at the model output for ``kind`` ``"hessian"``/``"ggn"`` (S Sᵀ) or ``"ef"`` (c δ δᵀ)."""
    if kind == "ef":  # Q_i = c δ_i δ_iᵀ with δ_i = g_i / c, the unscaled per-sample gradient
        scale = loss.scale(primal.outputs, targets)
        return OutputCurvature((primal.output_gradient / scale**0.5)[:, :, None])
    factor = loss.hessian_sqrt(primal.outputs, targets)
    return OutputCurvature(factor.reshape(factor.shape[0], -1, factor.shape[-1]))


def chain_diagonal(
    primal: Primal | MapPrimal, loss: Loss, targets: Tensor, kind: str
) -> dict[str, Tensor]:
    """The diagonal of one batch's (unweighted) curvature matrix, per differentiated parameter.

    Feature-map chains (CNNs) go to :func:`~hesskit.engine.map_curvature.map_chain_diagonal`,
    which keeps Q factorised in the maps' own shapes and never densifies it.

    Args:
        primal: the batch's primal records.
        loss: the loss ℓ (its reduction factor c is included).
        targets: the batch targets y.
        kind: ``"hessian"``, ``"ggn"`` or ``"ef"``.

    Returns:
        ``{name: diagonal shaped [out, in] or [out]}`` for the differentiated parameters the
        chain uses (a parameter it does not use has a zero diagonal and is left out).
    """
    if isinstance(primal, MapPrimal):
        return map_chain_diagonal(primal, loss, targets, kind)
    records = primal.records
    if not records:
        return {}
    curvature = output_curvature(primal, loss, targets, kind)
    diagonals: dict[str, Tensor] = {}
    with torch.no_grad():
        for position in range(len(records) - 1, -1, -1):
            record = records[position]
            if isinstance(record, LinearRecord):
                _linear_diagonals(record, curvature, diagonals)
                if position > 0:
                    curvature.through_linear(record.weight)
            elif isinstance(record, ActivationRecord):
                residual = record.residual() if kind == "hessian" else None
                curvature.through_activation(record.slope, residual)
    return diagonals


def _linear_diagonals(
    record: LinearRecord, curvature: OutputCurvature, out: dict[str, Tensor]
) -> None:
    if not record.differentiated:
        return
    diag_q = curvature.diagonal()
    if record.weight_name is not None:
        out[record.weight_name] = diag_q.T @ record.inputs**2
    if record.bias_name is not None:
        out[record.bias_name] = diag_q.sum(0)
