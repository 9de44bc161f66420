"""Matrix-free estimators on any curvature operator: diagonal, trace, eigenpairs, density.

Each costs curvature-vector products (reported as ``products``), takes an explicit
``generator`` or ``seed`` for its random probes, and holds a number of N-vectors stated in
its docstring and checked against the memory budget (:mod:`hesskit.memory`) before the
first product: ``top_eigenpairs`` ``max_vectors`` + 2 (thick restarts) or 5 (three-term),
the spectral density 5 per probe without reorthogonalisation, Hutchinson 3 per probe of a
chunk. ``block_spectra`` runs them on each diagonal block (a layer, a transformer block).
"""

from hesskit.estimators.blocks import BlockSpectrum, block_spectra, module_blocks
from hesskit.estimators.diagonal import hutchinson_diagonal
from hesskit.estimators.lanczos import top_eigenpairs
from hesskit.estimators.power_iteration import power_iteration
from hesskit.estimators.recurrence import LanczosRecurrence
from hesskit.estimators.result import Eigenpairs, Estimate
from hesskit.estimators.spectral_density import (
    SpectralQuadrature,
    default_width,
    density_on_grid,
    lanczos_quadrature,
    spectral_density,
)
from hesskit.estimators.trace import exact_trace, hutchinson_trace, hutchpp_trace

__all__ = [
    "BlockSpectrum",
    "Eigenpairs",
    "Estimate",
    "LanczosRecurrence",
    "SpectralQuadrature",
    "block_spectra",
    "default_width",
    "density_on_grid",
    "exact_trace",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos_quadrature",
    "module_blocks",
    "power_iteration",
    "spectral_density",
    "top_eigenpairs",
]
