"""The methods that precondition with an estimated curvature diagonal: AdaHessian (Yao et
al. 2021, Hutchinson's diagonal of H) and Sophia (Liu et al. 2024, a clipped
Gauss-Newton-Bartlett or Hutchinson diagonal)."""

from hesskit.optim.diagonal.adahessian import AdaHessian
from hesskit.optim.diagonal.sophia import Sophia, SophiaEstimator

__all__ = ["AdaHessian", "Sophia", "SophiaEstimator"]
