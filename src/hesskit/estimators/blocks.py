"""The spectrum of each diagonal block of a curvature matrix: one parameter group at a time.

For a partition of the parameters into blocks b (a layer, a transformer block), the block
A_bb = P_b A P_bᵀ is the principal submatrix of A on b's parameters (``op.block``; for a
problem operator only those parameters are differentiated). Its top eigenvalues and its
spectral density describe the curvature *within* the block; how much these differ between
blocks is what Zhang et al., "Why Transformers Need Adam: A Hessian Perspective" (2024), call
block heterogeneity. The eigenvalues of the blocks are not those of A (Cauchy interlacing
only gives λ_max(A_bb) ≤ λ_max(A)).

Cost: for each block, the products of ``top_eigenpairs`` and, if asked, of
``spectral_density``, each product with A_bb (for a problem operator about one product
with A, less for blocks near the output). Memory: that of the estimators on N_b-vectors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hesskit.errors import InvalidArgumentError
from hesskit.estimators.lanczos import top_eigenpairs
from hesskit.estimators.result import Eigenpairs
from hesskit.estimators.spectral_density import SpectralQuadrature, spectral_density
from hesskit.operators.base import CurvatureOperator


@dataclass(frozen=True)
class BlockSpectrum:
    """One block's names, size, top eigenpairs and (if asked) spectral density."""

    names: tuple[str, ...]
    num_params: int
    eigenpairs: Eigenpairs
    density: SpectralQuadrature | None


def module_blocks(names: Sequence[str], depth: int | None = None) -> dict[str, list[str]]:
    """Group parameter names by the module that owns them (the name less its last part):
    ``"encoder.0.weight"`` and ``"encoder.0.bias"`` form block ``"encoder.0"``.

    Args:
        names: parameter names, e.g. ``op.layout.names``.
        depth: keep only the first ``depth`` parts of the module path, so that
            ``depth=3`` puts every parameter of ``transformer.h.3.*`` into ``transformer.h.3``.
            ``None``: the owning module itself (every layer its own block).

    Returns:
        Block name → its parameter names, in the order of first appearance.
    """
    blocks: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")[:-1] or [name]
        key = ".".join(parts if depth is None else parts[:depth])
        blocks.setdefault(key, []).append(name)
    return blocks


def block_spectra(
    op: CurvatureOperator,
    blocks: Mapping[str, Sequence[str]] | None = None,
    *,
    k: int = 1,
    tol: float = 1e-3,
    density_probes: int = 0,
    density_steps: int = 64,
    memory_budget: int | str | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> dict[str, BlockSpectrum]:
    """Top-k eigenvalues (and spectral density) of each diagonal block A_bb of ``op``.

    Args:
        op: the N×N symmetric operator A; it must have ``block(names)``.
        blocks: block name → parameter names; default :func:`module_blocks` of
            ``op.layout.names`` (every module its own block).
        k: eigenvalues per block (at most the block's size).
        tol: the relative eigenvalue tolerance of :func:`top_eigenpairs`.
        density_probes: probes of each block's spectral density (0: none).
        density_steps: Lanczos steps per density probe.
        memory_budget: passed to the estimators.
        seed: the same seed for every block.
        progress: passed to the estimators.

    Returns:
        Block name → :class:`BlockSpectrum`, in the order of ``blocks``.
    """
    blocks = module_blocks(op.layout.names) if blocks is None else blocks
    if not blocks:
        raise InvalidArgumentError("no blocks given; pass a mapping of names to parameters")
    result = {}
    for name, names in blocks.items():
        block = op.block(list(names))
        size = block.shape[0]
        pairs = top_eigenpairs(block, min(k, size), tol=tol, memory_budget=memory_budget,
                               seed=seed, progress=progress)
        density = None
        if density_probes:
            density = spectral_density(block, probes=density_probes, steps=density_steps,
                                       memory_budget=memory_budget, seed=seed,
                                       progress=progress)
        result[name] = BlockSpectrum(tuple(names), size, pairs, density)
    return result
