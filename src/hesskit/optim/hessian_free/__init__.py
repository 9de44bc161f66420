"""Hessian-free optimization (Martens 2010; Kiros 2013's stochastic variant): the optimizer
(:mod:`.optimizer`), its CG solve (:mod:`.solve`), settings (:mod:`.settings`),
backtracking and line search (:mod:`.backtracking`), curvature chunks (:mod:`.chunks`),
diagonal preconditioners (:mod:`.preconditioners`), Martens' HFDemo set-up
(:mod:`.martens`) and stochastic Hessian-free (:mod:`.stochastic`)."""

from hesskit.optim.hessian_free.optimizer import HessianFree
from hesskit.optim.hessian_free.stochastic import StochasticHessianFree

__all__ = ["HessianFree", "StochasticHessianFree"]
