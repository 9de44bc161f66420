"""The structural engine: one proof that a model is a chain, one table of layers, one primal
pass, and the hand-written fast paths built on them.

Every fast path of hesskit (Hessian-vector products, exact diagonals, dense H = G + R)
starts here, and only here, so that they agree on which models they apply to::

    recorder.record_chain      prove the forward pass is a chain (or say why not)
    layers                     the tables: Table.PRODUCT (nn.Linear, elementwise
                               activations, pass-throughs) and Table.DIAGONAL (also
                               Conv1d/2d, max/average pooling, constant padding)
    primal.primal_pass         per-layer inputs, σ′, σ″ and gradients of one batch
    hessian_product            H v by hand-written forward-over-reverse (PRODUCT only)
    curvature                  per-sample curvature backpropagation: exact diagonals
    map_primal, map_jacobians, map_curvature
                               the same for chains on feature maps (CNNs, DIAGONAL only)
    dense_blocks               the closed-form dense blocks of H, G and R (PRODUCT only)

A chain is proved in one table (``record_chain(..., table=...)``, default
``Table.PRODUCT``): callers of the exact diagonals record with ``Table.DIAGONAL``, so a
CNN gets its exact diagonal while the Hessian-vector product and the dense blocks refuse it
(and their operators fall back to ``torch.func``).

Imports flow one way: the engine uses problems, losses and layouts, and is used by
``operators`` (and through them by everything else); it never imports ``operators``,
``estimators``, ``dense``, ``optim`` or ``training``.
"""

from hesskit.engine.curvature import KINDS, OutputCurvature, chain_diagonal
from hesskit.engine.hessian_product import ChainHessian
from hesskit.engine.layers import (
    ELEMENTWISE_MODULES,
    Table,
    elementwise_derivatives,
    layer_kind,
)
from hesskit.engine.map_curvature import FeatureCurvature, map_chain_diagonal
from hesskit.engine.map_primal import MapPrimal, map_primal_pass
from hesskit.engine.primal import Primal, primal_pass
from hesskit.engine.recorder import Chain, Step, check_parameters, problem_chain, record_chain
from hesskit.errors import UnsupportedArchitectureError

__all__ = [
    "ELEMENTWISE_MODULES",
    "KINDS",
    "Chain",
    "ChainHessian",
    "FeatureCurvature",
    "MapPrimal",
    "OutputCurvature",
    "Primal",
    "Step",
    "Table",
    "UnsupportedArchitectureError",
    "chain_diagonal",
    "check_parameters",
    "elementwise_derivatives",
    "layer_kind",
    "map_chain_diagonal",
    "map_primal_pass",
    "primal_pass",
    "problem_chain",
    "record_chain",
]
