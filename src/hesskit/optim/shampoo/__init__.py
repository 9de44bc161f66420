"""Shampoo (Gupta et al. 2018; Anil et al. 2020): the optimizer (:mod:`.optimizer`), the
grafted step size and its warm-up (:mod:`.graft`), and the inverse matrix roots with the
preconditioner as an operator (:mod:`.roots`)."""

from hesskit.optim.shampoo.optimizer import Shampoo

__all__ = ["Shampoo"]
