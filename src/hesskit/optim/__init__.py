"""Second-order optimizers as ``torch.optim.Optimizer`` subclasses, and their pieces.

* :class:`DampedNewton`: exact dense Hessian, Levenberg-Marquardt damping, optional
  saddle-free |H|; for small models.
* :class:`HessianFree`: Martens (2010), matrix-free: CG on Gauss-Newton products;
  :func:`martens2010` (``HessianFree.martens2010``) builds it with HFDemo's settings.
* Optimizers that estimate curvature: :class:`KFAC` (Martens & Grosse 2015), :class:`Sophia`
  (Liu et al. 2023), :class:`AdaHessian` (Yao et al. 2021), :class:`Shampoo` (Gupta et al.
  2018, grafted onto Adam's step size as Anil et al. 2020).

One base class, ``base.CurvatureOptimizer`` (parameters, optimizer-wide state and its
save/load, the watched closure of ``closure_batch``, the one all-reduce), one damping rule
(``damping``: ρ and Levenberg-Marquardt), ``safety`` (reject non-finite steps and restore
the parameters exactly), ``weight_cost`` and ``sampling``; by family: ``newton``,
``hessian_free`` (optimizer, CG solve, settings, backtracking, chunks, Martens'
preconditioner, HFDemo's set-up, stochastic HF), ``kfac``, ``shampoo``, ``diagonal``
(AdaHessian, Sophia). Every optimizer's ``preconditioner()`` is a curvature operator
(``preconditioner_operators``).
"""

from hesskit.optim.damping import (
    LevenbergMarquardt,
    levenberg_marquardt_update,
    reduction_ratio,
)
from hesskit.optim.diagonal.adahessian import AdaHessian
from hesskit.optim.diagonal.sophia import (
    Sophia,
    SophiaEstimator,
    gauss_newton_bartlett_diagonal,
    hutchinson_gaussian_diagonal,
)
from hesskit.optim.hessian_free.backtracking import (
    ArmijoSearch,
    LineSearchResult,
    armijo_line_search,
    choose_iterate,
)
from hesskit.optim.hessian_free.chunks import CurvatureChunk, RoundRobinChunks, chunk_loss
from hesskit.optim.hessian_free.martens import martens2010
from hesskit.optim.hessian_free.optimizer import HessianFree
from hesskit.optim.hessian_free.preconditioners import (
    DiagonalPreconditioner,
    martens_preconditioner,
)
from hesskit.optim.hessian_free.settings import (
    PREVIOUS_CG,
    PREVIOUS_RATIO,
    CGSettings,
    RatioSettings,
)
from hesskit.optim.hessian_free.stochastic import StochasticHessianFree
from hesskit.optim.kfac.optimizer import KFAC
from hesskit.optim.kfac.steps import KFACSchedule
from hesskit.optim.newton import DampedNewton, Indefinite
from hesskit.optim.shampoo.optimizer import Shampoo

__all__ = [
    "KFAC",
    "PREVIOUS_CG",
    "PREVIOUS_RATIO",
    "AdaHessian",
    "ArmijoSearch",
    "CGSettings",
    "CurvatureChunk",
    "DampedNewton",
    "DiagonalPreconditioner",
    "HessianFree",
    "Indefinite",
    "KFACSchedule",
    "LevenbergMarquardt",
    "LineSearchResult",
    "RatioSettings",
    "RoundRobinChunks",
    "Shampoo",
    "Sophia",
    "SophiaEstimator",
    "StochasticHessianFree",
    "armijo_line_search",
    "choose_iterate",
    "chunk_loss",
    "gauss_newton_bartlett_diagonal",
    "hutchinson_gaussian_diagonal",
    "levenberg_marquardt_update",
    "martens2010",
    "martens_preconditioner",
    "reduction_ratio",
]
