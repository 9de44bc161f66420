"""K-FAC's pieces outside the optimizer: the exact curvature products F u on its batch (in
the optimizer's parameter order), the damped direction, the factors' running average,
their plain-dict form for state dicts, and the coverage table.

Used by :mod:`hesskit.optim.kfac.optimizer` for the quadratic model of §7 of Martens &
Grosse (2015): F is ``hesskit.operators.gauss_newton_operator`` on the batch (= the Fisher for MSE,
cross-entropy, BCE), K vectors in ONE ``matmat`` (one linearisation, K double-vjp products
vectorised by ``torch.func.vmap``), or one ``matvec`` at a time where ``vmap`` cannot run
(``channels_last`` tensors, :func:`channels_last`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hesskit.operators import gauss_newton_operator
from hesskit.operators.kfac_factors import FactorEigen, KroneckerFactors, join, split
from hesskit.operators.kfac_layers import KFACApproximation, LinearBlock
from hesskit.problem import Problem


def curvature_products(
    problem: Problem, names: Sequence[str], params: Sequence[Tensor], vectors: list[Tensor],
    inputs: object = None,
) -> list[Tensor]:
    """F u for each flat u (optimizer order ``names``/``params``), flat, in u's order.

    ``inputs``: the batch's inputs, only to detect ``channels_last`` (:func:`channels_last`).
    Cost: one linearisation and K Gauss-Newton products on the batch.
    """
    layout = problem.layout
    order = [list(names).index(n) for n in layout.names]
    starts = [0, *torch.cumsum(torch.tensor([p.numel() for p in params]), 0).tolist()]

    def to_layout(v: Tensor) -> Tensor:
        return torch.cat([v[starts[i]: starts[i + 1]] for i in order])

    def from_layout(v: Tensor) -> Tensor:
        pieces = layout.unflatten(v)
        return torch.cat([pieces[n].reshape(-1) for n in names])

    V = torch.stack([to_layout(v) for v in vectors], dim=1)
    # double-vjp J v: one matmat per linearisation does not pay back linearize's
    # one-off tracing (5-6 gradients; gauss_newton.OutputLinearization) on convolutions
    operator = gauss_newton_operator(problem, jacobian="double_vjp")
    if channels_last([*params, *([inputs] if isinstance(inputs, Tensor) else [])]):
        FV = torch.stack([operator.matvec(V[:, j]) for j in range(V.shape[1])], dim=1)
    else:
        FV = operator.matmat(V)
    return [from_layout(FV[:, j]) for j in range(len(vectors))]


def channels_last(tensors: Sequence[Tensor]) -> bool:
    """Whether a 4-D tensor is not contiguous (``channels_last``): ``torch.func.vmap`` over
    products through it raises "NYI: querying is_contiguous inside of vmap"."""
    return any(t.ndim == 4 and not t.is_contiguous() for t in tensors)


def damped_direction(
    blocks: list[LinearBlock], eigen: dict[str, FactorEigen], pieces: dict[str, Tensor],
    gamma: float,
) -> dict[str, Tensor]:
    """Δ = −F̆_γ⁻¹ ∇h by parameter name: each block's factored-damping inverse
    (G + γ/π I)⁻¹ ∇_W̄ h (A + πγ I)⁻¹ from its eigendecompositions, and −∇h/γ² for every
    parameter no block covers (:data:`UNCOVERED_RULE`). ``pieces``: ∇h by name."""
    out = {name: -g / gamma**2 for name, g in pieces.items()}
    for block in blocks:
        solved = eigen[block.weight].damped_inverse(join(block, pieces), gamma)
        out.update({n: -t for n, t in split(block, solved).items()})
    return out


def averaged_factors(
    old: dict[str, KroneckerFactors], new: dict[str, KroneckerFactors], decay: float
) -> dict[str, KroneckerFactors]:
    """ε·old + (1 − ε)·new per block (Martens & Grosse 2015, §5); ``new`` itself on the
    first iteration or when ε = 0."""
    if not old or decay == 0:
        return new
    return {w: KroneckerFactors(decay * old[w].A + (1 - decay) * f.A,
                                decay * old[w].G + (1 - decay) * f.G)
            for w, f in new.items()}


def plain_factors(wide: dict) -> dict:
    """``factors`` and ``eigen`` of K-FAC's state as plain dicts of tensors and floats (so
    that a state dict loads with ``torch.load(..., weights_only=True)``)."""
    return {"factors": {w: {"A": f.A, "G": f.G} for w, f in wide["factors"].items()},
            "eigen": {w: dict(vars(e)) for w, e in wide["eigen"].items()}}


def factor_objects(wide: dict) -> dict:
    """The inverse of :func:`plain_factors`: ``KroneckerFactors`` and ``FactorEigen``."""
    return {
        "factors": {w: f if isinstance(f, KroneckerFactors) else KroneckerFactors(**f)
                    for w, f in wide.get("factors", {}).items()},
        "eigen": {w: e if isinstance(e, FactorEigen) else FactorEigen(**e)
                  for w, e in wide.get("eigen", {}).items()},
    }


UNCOVERED_RULE = "−∇h/γ² (damping only)"
"""How K-FAC steps a parameter no block covers (``optim/kfac/optimizer.py``, step 3)."""


def coverage_table(names: Sequence[str], params: Sequence[Tensor], blocks: list[LinearBlock],
                   approximation: KFACApproximation) -> str:
    """One line per parameter: its name, shape and how K-FAC treats it (the layer kind
    and its Kronecker factors' sizes, the modules of a tied weight, or the uncovered
    rule); then a count of covered and uncovered entries."""
    how: dict[str, str] = {}
    for b in blocks:
        uses = ", ".join(f"{u.module} ({u.kind.value})" for u in b.uses)
        tied = f"; tied, {len(b.uses)} uses summed" if len(b.uses) > 1 else ""
        how[b.weight] = (f"Kronecker A {b.input_dim}×{b.input_dim} ⊗ G {b.out_features}×"
                         f"{b.out_features} [{approximation.value}]: {uses}{tied}")
        if b.bias is not None:
            how[b.bias] = f"bias of {b.module} (homogeneous coordinate of A)"
    lines, covered, total = ["K-FAC coverage:"], 0, 0
    for name, p in zip(names, params, strict=True):
        total += p.numel()
        covered += p.numel() if name in how else 0
        lines.append(f"  {name} {tuple(p.shape)}: {how.get(name, 'uncovered: ' + UNCOVERED_RULE)}")
    lines.append(f"  covered {covered} of {total} entries")
    return "\n".join(lines)
