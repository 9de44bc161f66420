"""Matrix-free estimators on any curvature operator: diagonal, trace, eigenpairs, density.

Each costs curvature-vector products (reported as ``products``) and takes an explicit
``generator`` or ``seed`` for its random probes.
"""

from hesskit.estimators.diagonal import hutchinson_diagonal
from hesskit.estimators.lanczos import LanczosRecurrence, power_iteration, top_eigenpairs
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
    "Eigenpairs",
    "Estimate",
    "LanczosRecurrence",
    "SpectralQuadrature",
    "default_width",
    "density_on_grid",
    "exact_trace",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos_quadrature",
    "power_iteration",
    "spectral_density",
    "top_eigenpairs",
]
