"""Second-order optimizers as ``torch.optim.Optimizer`` subclasses, and their pieces.

* :class:`DampedNewton`: exact dense Hessian, Levenberg-Marquardt damping, optional
  saddle-free |H|; for small models.
* :class:`HessianFree`: Martens (2010), matrix-free: CG on Gauss-Newton products.

The pieces are small modules usable alone: ``damping`` (ρ and the LM rule),
``backtracking`` (choose among CG iterates, Armijo search), ``preconditioners`` (Martens'
diagonal), ``safety`` (reject non-finite steps and restore the parameters exactly).
"""

from hesskit.optim.backtracking import (
    ArmijoSearch,
    LineSearchResult,
    armijo_line_search,
    choose_iterate,
)
from hesskit.optim.damping import (
    LevenbergMarquardt,
    levenberg_marquardt_update,
    reduction_ratio,
)
from hesskit.optim.hessian_free import CGSettings, HessianFree
from hesskit.optim.newton import DampedNewton, Indefinite
from hesskit.optim.preconditioners import DiagonalPreconditioner, martens_preconditioner

__all__ = [
    "ArmijoSearch",
    "CGSettings",
    "DampedNewton",
    "DiagonalPreconditioner",
    "HessianFree",
    "Indefinite",
    "LevenbergMarquardt",
    "LineSearchResult",
    "armijo_line_search",
    "choose_iterate",
    "levenberg_marquardt_update",
    "martens_preconditioner",
    "reduction_ratio",
]
