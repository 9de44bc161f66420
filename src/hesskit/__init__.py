"""hesskit: second-order derivatives of neural networks and the optimizers that use them.

The public API, grouped as data flows through it (see each module for the mathematics)::

    Problem                      model + loss + data as pure functions of the parameters
    operators                    curvature matrices as N×N linear operators (H, G, F, EF)
    dense                        exact dense H = G + R, structure report, cost guard
    estimators                   diagonals, traces, eigenpairs (Lanczos), spectral density,
                                 per-block spectra
    monitor                      CurvatureMonitor: sharpness, trace, per-block sharpness
                                 every k steps of a training loop
    solvers                      conjugate gradient with Martens' hooks
    optim                        torch.optim optimizers that use curvature, all seven also
                                 here: DampedNewton, HessianFree, StochasticHessianFree,
                                 KFAC, Shampoo, Sophia, AdaHessian (their pieces, damping
                                 rules and settings in hesskit.optim)
    analysis                     RMSProp's second moment against the exact diagonals

The library needs torch, NumPy and SciPy only; the ``hesskit`` command, plots and data-set
helpers come with the ``cli`` extra (:mod:`hesskit.extras`).
"""

from hesskit.activations import ACTIVATION_NAMES, Activation, get_activation
from hesskit.analysis import RMSPropAnalysis, rmsprop_curvature_analysis
from hesskit.dense import (
    CostEstimate,
    DenseHessian,
    StructureReport,
    check_fits,
    estimate_cost,
    hessian,
    hessian_of,
    structure_report,
)
from hesskit.errors import (
    DataError,
    HesskitError,
    InvalidArgumentError,
    MissingExtraError,
    NonFiniteError,
    TooLargeError,
)
from hesskit.estimators import (
    Eigenpairs,
    Estimate,
    block_spectra,
    exact_trace,
    hutchinson_diagonal,
    hutchinson_trace,
    hutchpp_trace,
    power_iteration,
    spectral_density,
    top_eigenpairs,
)
from hesskit.estimators.exact_diagonal import (
    diagonal,
    empirical_fisher_diagonal,
    gauss_newton_diagonal,
    hessian_diagonal,
)
from hesskit.layout import ParameterLayout
from hesskit.losses import (
    AutodiffLoss,
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    GaussianNLLLoss,
    HuberLoss,
    KLDivLoss,
    L1Loss,
    Loss,
    MSELoss,
    NLLLoss,
    PoissonNLLLoss,
    SmoothL1Loss,
    as_loss,
)
from hesskit.monitor import CurvatureMonitor
from hesskit.newton import NewtonResult, NewtonStatus, newton
from hesskit.operators import (
    CountingOperator,
    CurvatureOperator,
    MatrixOperator,
    damped,
    empirical_fisher_operator,
    fisher_operator,
    gauss_newton_operator,
    hessian_operator,
)
from hesskit.optim import (
    KFAC,
    AdaHessian,
    DampedNewton,
    HessianFree,
    Shampoo,
    Sophia,
    StochasticHessianFree,
)
from hesskit.problem import Problem
from hesskit.solvers import conjugate_gradient

__version__ = "0.2.0"

__all__ = [  # noqa: RUF022 - grouped by topic, as the module docstring
    # problem and losses
    "ACTIVATION_NAMES",
    "Activation",
    "AutodiffLoss",
    "BCELoss",
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "GaussianNLLLoss",
    "HuberLoss",
    "KLDivLoss",
    "L1Loss",
    "Loss",
    "MSELoss",
    "NLLLoss",
    "ParameterLayout",
    "PoissonNLLLoss",
    "SmoothL1Loss",
    "as_loss",
    "Problem",
    "get_activation",
    # one variable
    "NewtonResult",
    "NewtonStatus",
    "newton",
    # operators
    "CountingOperator",
    "CurvatureOperator",
    "MatrixOperator",
    "damped",
    "empirical_fisher_operator",
    "fisher_operator",
    "gauss_newton_operator",
    "hessian_operator",
    # dense
    "CostEstimate",
    "DenseHessian",
    "StructureReport",
    "check_fits",
    "estimate_cost",
    "hessian",
    "hessian_of",
    "structure_report",
    # estimators
    "Eigenpairs",
    "Estimate",
    "diagonal",
    "empirical_fisher_diagonal",
    "exact_trace",
    "gauss_newton_diagonal",
    "hessian_diagonal",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "hutchpp_trace",
    "block_spectra",
    "power_iteration",
    "spectral_density",
    "top_eigenpairs",
    # curvature during training
    "CurvatureMonitor",
    # solvers and optimizers
    "conjugate_gradient",
    "DampedNewton",
    "HessianFree",
    "StochasticHessianFree",
    "KFAC",
    "Shampoo",
    "Sophia",
    "AdaHessian",
    # analysis
    "RMSPropAnalysis",
    "rmsprop_curvature_analysis",
    # errors
    "DataError",
    "HesskitError",
    "InvalidArgumentError",
    "MissingExtraError",
    "NonFiniteError",
    "TooLargeError",
]
