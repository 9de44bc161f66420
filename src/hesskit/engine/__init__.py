"""The structural engine: one proof that a model is a chain, one table of layers, one primal
pass, and the hand-written fast paths built on them.

Every fast path of hesskit (Hessian-vector products, exact diagonals, dense H = G + R)
starts here, and only here, so that they agree on which models they apply to::

    recorder.record_chain      prove the forward pass is a chain (or say why not)
    layers                     the table: nn.Linear, elementwise activations, pass-throughs
    primal.primal_pass         per-layer inputs, σ′, σ″ and gradients of one batch
    hessian_product            H v by hand-written forward-over-reverse
    curvature                  per-sample curvature backpropagation: exact diagonals
    dense_blocks               the closed-form dense blocks of H, G and R

Imports flow one way: the engine uses problems, losses and layouts, and is used by
``operators`` (and through them by everything else); it never imports ``operators``,
``estimators``, ``dense``, ``optim`` or ``training``.
"""

from hesskit.engine.curvature import KINDS, OutputCurvature, chain_diagonal
from hesskit.engine.hessian_product import ChainHessian
from hesskit.engine.layers import ELEMENTWISE_MODULES, elementwise_derivatives, layer_kind
from hesskit.engine.primal import Primal, primal_pass
from hesskit.engine.recorder import Chain, Step, check_parameters, problem_chain, record_chain
from hesskit.errors import UnsupportedArchitectureError

__all__ = [
    "ELEMENTWISE_MODULES",
    "KINDS",
    "Chain",
    "ChainHessian",
    "OutputCurvature",
    "Primal",
    "Step",
    "UnsupportedArchitectureError",
    "chain_diagonal",
    "check_parameters",
    "elementwise_derivatives",
    "layer_kind",
    "primal_pass",
    "problem_chain",
    "record_chain",
]
