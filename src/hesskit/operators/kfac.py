"""K-FAC's block-diagonal Kronecker-factored curvature as a linear operator.

    F̆ = blockdiag_ℓ (A_ℓ ⊗ G_ℓ)        (Martens & Grosse 2015, §3-§4.2)

over the ``nn.Linear``, ``transformers`` ``Conv1D``, ``nn.Embedding`` (tied weights: one block,
the uses summed) and coverable ``nn.Conv2d`` layers (KFC, Grosse & Martens 2016;
:mod:`kfac_conv`) the problem differentiates (:mod:`kfac_layers`, :mod:`kfac_factors`);
every other parameter's block is 0 (K-FAC has no curvature for it). In the flat layout
(row-major ``W``, then ``b``) a layer's block acts on V̄ = [V_W v_b] as V̄ ↦ G V̄ A.

Symmetric and positive semi-definite. Cost of a product: Σ_ℓ O(out·(in+1)·(in+1+out)) per
vector, no pass over the data; building it is one forward and one backward pass per batch
(k backward passes for ``FactorTargets.EXPECTED``), plus two eigendecompositions per layer
on the first :meth:`KFACOperator.inverse_matvec`.

Where K-FAC is exact: for a one-layer linear model z = W x + b and a loss whose output
Hessian H_ℓ does not depend on z (mean squared error: H_ℓ = 2c I), the GGN block is
Σ_i c (ā_i ā_iᵀ) ⊗ 2I = A ⊗ G with the expected G, so ``kfac_operator(problem,
targets=FactorTargets.EXPECTED)`` equals ``gauss_newton_operator(problem)`` to rounding;
with sampled targets it equals it in expectation. For cross-entropy, H_ℓ = diag(p) − ppᵀ
varies with x and K-FAC is an approximation even for one layer (exact for one sample).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hesskit.errors import InvalidArgumentError
from hesskit.layout import ParameterLayout
from hesskit.operators.base import CurvatureOperator, Vector
from hesskit.operators.kfac_factors import (
    FactorEigen,
    FactorTargets,
    KroneckerFactors,
    LinearBlock,
    factor_statistics,
    join,
    kfac_blocks,
    split,
)
from hesskit.operators.kfac_layers import KFACApproximation
from hesskit.problem import Problem


class KFACOperator(CurvatureOperator):
    """blockdiag(A_ℓ ⊗ G_ℓ) on the layout's parameters (uncovered parameters: zero block).

    Args:
        layout: the flat parameter layout.
        blocks: the covered layers.
        factors: A and G per layer, keyed by the layer's weight name.
        dtype, device: of the vectors.
    """

    symmetric = True
    psd = True

    def __init__(
        self,
        layout: ParameterLayout,
        blocks: list[LinearBlock],
        factors: dict[str, KroneckerFactors],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__(layout, dtype, device)
        missing = [b.weight for b in blocks if b.weight not in factors]
        if missing:
            raise InvalidArgumentError(f"no Kronecker factors for the layers {missing}")
        self.blocks = blocks
        self.factors = factors
        self._eigen: dict[str, FactorEigen] = {}

    def _blockwise(self, V: Tensor, apply) -> Tensor:
        """Apply ``apply(block, V̄ [K, out, in+1])`` per layer to V ``[N, K]``."""
        pieces = self.layout.unflatten(V.T.contiguous())
        out = {name: torch.zeros_like(t) for name, t in pieces.items()}
        for block in self.blocks:
            out.update(split(block, apply(block, join(block, pieces))))
        return self.layout.flatten(out, batch_dims=1).T

    def _matmat(self, V: Tensor) -> Tensor:
        def product(block: LinearBlock, joined: Tensor) -> Tensor:
            f = self.factors[block.weight]
            return f.G @ joined @ f.A

        return self._blockwise(V, product)

    def eigen(self, block: LinearBlock) -> FactorEigen:
        """The (cached) eigendecompositions of a layer's factors."""
        if block.weight not in self._eigen:
            self._eigen[block.weight] = FactorEigen.of(self.factors[block.weight])
        return self._eigen[block.weight]

    def inverse_matmat(self, V: Tensor, damping: float = 0.0, *, factored: bool = False) -> Tensor:
        """(F̆ + λI)⁻¹ V for flat V ``[N, K]``, layer by layer; λ = ``damping``.

        ``factored=False``: the exact inverse of A ⊗ G + λI through the factors'
        eigenbases (Q_A ⊗ Q_G)(Λ_A ⊗ Λ_G + λ)⁻¹(Q_A ⊗ Q_G)ᵀ. ``factored=True``: the
        inverse of K-FAC's factored Tikhonov damping (A + π√λ I) ⊗ (G + √λ/π I)
        (Martens & Grosse 2015, §6.3), which is what the optimizer applies. Uncovered
        parameters: V/λ. Cost: O(out·(in+1)·(in+1+out)) per layer per vector.

        Raises:
            InvalidArgumentError: ``damping`` is negative, or 0 where uncovered parameters
                (or singular factors) have no inverse.
        """
        if damping < 0 or (damping == 0 and self._has_uncovered()):
            raise InvalidArgumentError(
                f"damping must be > 0 (got {damping}) when some parameters have no K-FAC "
                "block (their block is 0); pass damping > 0"
            )
        self._check_flat(V, ndim=2)
        gamma = damping**0.5

        def solve(block: LinearBlock, joined: Tensor) -> Tensor:
            eig = self.eigen(block)
            return eig.damped_inverse(joined, gamma) if factored else (
                eig.exact_inverse(joined, damping)
            )

        covered = self._blockwise(V.to(self.dtype), solve)
        if not self._has_uncovered():
            return covered
        mask = self._uncovered_mask()[:, None]
        return torch.where(mask, V.to(self.dtype) / damping, covered)

    def inverse_matvec(self, v: Vector, damping: float = 0.0, *, factored: bool = False) -> Vector:
        """(F̆ + λI)⁻¹ v for v flat ``[N]`` or parameter-shaped; see :meth:`inverse_matmat`."""
        flat, form = self._to_flat(v, batch_dims=0)
        out = self.inverse_matmat(flat.unsqueeze(1), damping, factored=factored).squeeze(1)
        return self._from_flat(out, form, batch_dims=0)

    def diagonal(self) -> Tensor:
        """diag(F̆) exactly: entry (o, i) of W is G_oo A_ii, entry o of b is G_oo A_{in,in}
        (the homogeneous coordinate); 0 for uncovered parameters. Cost O(N)."""
        pieces = {
            name: torch.zeros(shape, dtype=self.dtype, device=self.device)
            for name, shape in zip(self.layout.names, self.layout.shapes, strict=True)
        }
        for block in self.blocks:
            f = self.factors[block.weight]
            joined = f.G.diagonal()[:, None] * f.A.diagonal()[None, :]
            pieces.update(split(block, joined.to(self.dtype)))
        return self.layout.flatten(pieces)

    def _uncovered_mask(self) -> Tensor:
        covered = {n for b in self.blocks for n in (b.weight, b.bias) if n is not None}
        return torch.cat([
            torch.full((size,), name not in covered, dtype=torch.bool, device=self.device)
            for name, size in zip(self.layout.names, self.layout.sizes, strict=True)
        ])

    def _has_uncovered(self) -> bool:
        return bool(self._uncovered_mask().any())


def kfac_operator(
    problem: Problem,
    *,
    targets: FactorTargets = FactorTargets.SAMPLED,
    generator: torch.Generator | int | None = None,
    kfac_approx: KFACApproximation | str = KFACApproximation.EXPAND,
) -> KFACOperator:
    """K-FAC's blockdiag(A ⊗ G) of ``problem`` at its current parameters (module docstring).

    Args:
        problem: the model, loss and data; its ``nn.Linear`` and ``nn.Conv2d`` layers
            are covered (:func:`~hesskit.operators.kfac_factors.kfac_blocks`).
        targets: where the G factors' output gradients come from (:class:`FactorTargets`).
        generator: a ``torch.Generator`` or seed for ``SAMPLED`` targets (None: torch's
            global random state).
        kfac_approx: ``"expand"`` or ``"reduce"`` for layers on ``[n, ..., in]`` inputs
            (Eschenhagen et al. 2023, §3; :mod:`~hesskit.operators.kfac_layers`).
    """
    if isinstance(generator, int) and not isinstance(generator, bool):
        generator = torch.Generator(device=problem.device).manual_seed(generator)
    blocks = kfac_blocks(problem.model, problem.layout.names)
    factors = factor_statistics(problem, blocks, targets, generator,
                                approximation=KFACApproximation(kfac_approx))
    return KFACOperator(problem.layout, blocks, factors, problem.dtype, problem.device)
