"""K-FAC (Martens & Grosse 2015): the optimizer (:mod:`.optimizer`), its schedule of
constants and quadratic-model step (:mod:`.steps`), and its pieces outside the optimizer:
curvature products, damped direction, factor averages (:mod:`.products`). The layers and
their Kronecker factors are operators: :mod:`hesskit.operators.kfac_layers` and
:mod:`hesskit.operators.kfac_factors`."""

from hesskit.optim.kfac.optimizer import KFAC
from hesskit.optim.kfac.steps import KFACBatchSchedule, KFACSchedule

__all__ = ["KFAC", "KFACBatchSchedule", "KFACSchedule"]
