"""Facts about a model that explain exact zeros: layer membership, linearity, dead units.

Each function reads only the model's structure (a (nested) ``nn.Sequential``: which leaf
module owns which parameter and what follows it) or one forward pass. Anything it cannot
establish it leaves out, so a zero it cannot explain stays "unexplained". The per-sample
factor patterns behind ``disjoint_support`` are in :mod:`hesskit.dense.support`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hesskit.engine.layers import ELEMENTWISE_MODULES
from hesskit.engine.recorder import sequential_leaves
from hesskit.losses import BCEWithLogitsLoss, MSELoss
from hesskit.problem import Problem

AFFINE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Layers whose output is affine in their parameters (weight and bias jointly) and input."""

PIECEWISE_LINEAR = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.ReLU6, nn.Hardtanh, nn.Flatten)
"""Modules with zero second derivative wherever it exists (autograd also gives 0 at kinks)."""

DIAGONAL_LOSSES = (MSELoss, BCEWithLogitsLoss)
"""Losses whose Hessian in the outputs is diagonal: no two output units interact."""


def leaf_owners(problem: Problem) -> tuple[list[tuple[str, nn.Module]], dict[str, int]] | None:
    """The leaf modules of a (nested) ``nn.Sequential`` model in call order, and each
    chosen parameter's position among them (None when the model is not such a chain)."""
    leaves = sequential_leaves(problem.model)
    if leaves is None:
        return None
    position = {}
    for index, (name, module) in enumerate(leaves):
        for pname, _ in module.named_parameters(recurse=False):
            position[f"{name}.{pname}"] = index
    return leaves, position


def linear_layers(problem: Problem) -> dict[str, str]:
    """Parameters (name → layer) of affine layers in which the *network* is piecewise linear.

    True for layer i when every module after it is affine or piecewise linear: then with the
    other parameters fixed the output is piecewise linear in this layer's parameters, so
    ∇²_θ z = 0 within the layer and the layer's diagonal block of R is zero (H = G there).
    """
    owners = leaf_owners(problem)
    if owners is None:
        return {}
    leaves, position = owners
    result = {}
    for name in problem.layout.names:
        index = position.get(name)
        if index is None or not isinstance(leaves[index][1], AFFINE_LAYERS):
            continue
        if all(
            isinstance(module, AFFINE_LAYERS + PIECEWISE_LINEAR)
            for _, module in leaves[index + 1 :]
        ):
            result[name] = leaves[index][0]
    return result


def output_units(problem: Problem) -> Tensor | None:
    """Per flat entry, the output unit its final-layer parameter feeds (−1: all or unknown).

    Only when the last module is an ``nn.Linear`` and the loss's output Hessian is diagonal;
    otherwise None. Entry ``weight[a, c]`` or ``bias[a]`` of that layer feeds output a alone.
    """
    owners = leaf_owners(problem)
    if owners is None or not isinstance(problem.loss, DIAGONAL_LOSSES):
        return None
    leaves, position = owners
    last = len(leaves) - 1
    if not isinstance(leaves[last][1], nn.Linear):
        return None
    units = torch.full((problem.num_params,), -1, dtype=torch.long)
    for name, shape in zip(problem.layout.names, problem.layout.shapes, strict=True):
        if position.get(name) == last:
            rows = torch.arange(shape[0]).reshape(-1, *([1] * (len(shape) - 1))).expand(shape)
            units[problem.layout.slice(name)] = rows.reshape(-1)
    return units


def separate_units(problem: Problem) -> dict[tuple[str, str], Tensor]:
    """Entries of R between consecutive Linear layers A → B that are zero for every input.

    When only elementwise activations lie between A and B and the network is piecewise
    linear after B (:func:`linear_layers`), R = ∇²(ĝᵀz) couples θ_A and θ_B only through
    ∂h_p/∂θ_A, where h_p is hidden unit p: so R[W_B[k, p], W_A[i, ·] or b_A[i]] = 0 for
    p ≠ i, and R[b_B, θ_A] = 0. Keys are ``(row parameter, column parameter)`` in both
    orders; values are boolean masks shaped like the block.
    """
    owners, linear = leaf_owners(problem), linear_layers(problem)
    if owners is None:
        return {}
    leaves, _ = owners
    masks: dict[tuple[str, str], Tensor] = {}
    names = set(problem.layout.names)
    for index, (name_a, layer_a) in enumerate(leaves):
        if not isinstance(layer_a, nn.Linear):
            continue
        later = index + 1
        while later < len(leaves) and isinstance(leaves[later][1], ELEMENTWISE_MODULES):
            later += 1
        if later == len(leaves) or not isinstance(leaves[later][1], nn.Linear):
            continue
        name_b, layer_b = leaves[later]
        if f"{name_b}.weight" not in linear:
            continue
        out_b, units, in_a = layer_b.out_features, layer_a.out_features, layer_a.in_features
        differ = torch.arange(units)[:, None] != torch.arange(units)[None, :]  # [p, i]
        blocks = {
            ("weight", "weight"): differ[None, :, :, None].expand(out_b, units, units, in_a),
            ("weight", "bias"): differ[None].expand(out_b, units, units),
            ("bias", "weight"): torch.ones(out_b, units * in_a, dtype=torch.bool),
            ("bias", "bias"): torch.ones(out_b, units, dtype=torch.bool),
        }
        for (kind_b, kind_a), mask in blocks.items():
            row, col = f"{name_b}.{kind_b}", f"{name_a}.{kind_a}"
            if row in names and col in names:
                mask = mask.reshape(problem.layout.sizes[problem.layout.names.index(row)], -1)
                masks[(row, col)], masks[(col, row)] = mask, mask.T
    return masks


def separate_units_in_layer(problem: Problem) -> dict[tuple[str, str], Tensor]:
    """Entries of R within one affine layer, between *different* units, zero for every input.

    Layer l (``nn.Linear`` or ``nn.Conv*``, exact types), a_l = W_l x_{l−1} + b_l, followed
    by a run of elementwise modules x_l = σ(a_l) (any: tanh, GELU, …; :data:`ELEMENTWISE_MODULES`)
    and then only affine and piecewise-linear modules (exact types), so that z = g(x_l) with
    g piecewise linear (∇²g = 0; autodiff also gives 0 at kinks). x_{l−1} does not depend
    on θ_l (no module or parameter is used twice: :func:`leaf_owners` refuses those) and
    a_l is affine in θ_l, so for θ, θ′ in layer l

        ∂²z/∂θ∂θ′ = Σ_{i,j} ∂²z/∂a_l[i]∂a_l[j] · ∂a_l[i]/∂θ · ∂a_l[j]/∂θ′,
        ∂²z/∂a_l[i]∂a_l[j] = δ_ij σ″(a_l[i]) ∂g/∂x_l[i] + σ′(a_l[i]) σ′(a_l[j]) ∂²g/∂x_l[i]∂x_l[j]

    whose second term is 0. Unit i (output channel i of a conv, at every position) depends
    only on row i of W_l and on b_l[i], so R = Σ_e (∂ℓ/∂z_e) ∇²z_e (any loss, e over all
    output entries of the batch) is 0 between W_l[i, ·] or b_l[i] and W_l[j, ·] or b_l[j]
    for i ≠ j. Not when a curved activation comes later: then ∂²g/∂x_l[i]∂x_l[j] ≠ 0 in
    general. Keys are ``(row parameter, column parameter)`` (both orders for weight and
    bias); values are boolean masks shaped like the block. Cost: O(size(W_l)²) booleans.
    """
    owners = leaf_owners(problem)
    if owners is None:
        return {}
    leaves, _ = owners
    masks: dict[tuple[str, str], Tensor] = {}
    layout = problem.layout
    for index, (name, layer) in enumerate(leaves):
        if type(layer) not in AFFINE_LAYERS:
            continue
        later = index + 1
        while later < len(leaves) and type(leaves[later][1]) in ELEMENTWISE_MODULES:
            later += 1
        if any(type(m) not in AFFINE_LAYERS + PIECEWISE_LINEAR for _, m in leaves[later:]):
            continue
        units = {}
        for kind in ("weight", "bias"):
            full = f"{name}.{kind}"
            if full in layout.names:
                shape = layout.shapes[layout.names.index(full)]
                rows = torch.arange(shape[0]).reshape(-1, *([1] * (len(shape) - 1)))
                units[full] = rows.expand(shape).reshape(-1)
        for row, unit_r in units.items():
            for col, unit_c in units.items():
                masks[(row, col)] = unit_r[:, None] != unit_c[None, :]
    return masks


@dataclass(frozen=True)
class DeadUnit:
    """A ReLU unit whose input is ≤ 0 on every sample: its weights have zero curvature here."""

    layer: str
    unit: int


def dead_units(problem: Problem, params: dict[str, Tensor]) -> tuple[list[DeadUnit], Tensor]:
    """Dead ReLU units at ``params`` over all the data, and the flat mask of their weights.

    A unit is dead when its pre-activation is ≤ 0 for every sample (ReLU′ = 0 there, also at
    0 by PyTorch's convention), which needs an ``nn.Linear`` right before the ReLU. Its
    incoming weights ``W[u, :]``, bias ``b[u]`` and outgoing weights ``W_next[:, u]`` (when an
    ``nn.Linear`` follows) then have zero rows and columns in H, G and R at this point.
    """
    mask = torch.zeros(problem.num_params, dtype=torch.bool)
    owners = leaf_owners(problem)
    if owners is None:
        return [], mask
    leaves, _ = owners
    candidates = {}
    for index, (name, module) in enumerate(leaves):
        reused = sum(m is module for _, m in leaves) > 1
        if (
            isinstance(module, nn.ReLU)
            and not reused
            and index > 0
            and isinstance(leaves[index - 1][1], nn.Linear)
        ):
            candidates[name] = index
    if not candidates:
        return [], mask
    alive: dict[str, Tensor] = {}

    def recorder(name: str):
        def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
            active = (args[0].detach() > 0).reshape(len(args[0]), -1).any(dim=0)
            alive[name] = alive[name] | active if name in alive else active

        return hook

    handles = [
        leaves[index][1].register_forward_pre_hook(recorder(name))
        for name, index in candidates.items()
    ]
    try:
        with torch.no_grad():
            for batch in problem.batches():
                problem.output(params, batch.inputs)
    finally:
        for handle in handles:
            handle.remove()
    units = []
    for name, index in candidates.items():
        if name not in alive or alive[name].numel() != leaves[index - 1][1].out_features:
            continue
        dead = (~alive[name]).nonzero().flatten().tolist()
        units += [DeadUnit(name, unit) for unit in dead]
        incoming = leaves[index - 1][0]
        following = leaves[index + 1] if index + 1 < len(leaves) else None
        for unit in dead:
            _mark(problem, mask, f"{incoming}.weight", lambda v, u=unit: v[u, :])
            _mark(problem, mask, f"{incoming}.bias", lambda v, u=unit: v[u])
            if following is not None and isinstance(following[1], nn.Linear):
                _mark(problem, mask, f"{following[0]}.weight", lambda v, u=unit: v[:, u])
    return units, mask


def zero_inputs(problem: Problem) -> tuple[list[int], Tensor]:
    """Input features that are 0 on every sample, and the flat mask of the weights they feed.

    Needs an ``nn.Linear`` as the model's first module and one ``[n, features]`` input tensor
    (a stream is read once more). Then
    ∂z/∂W[:, j] = x_j = 0 for every sample and every parameter value, so W[:, j] has zero
    rows and columns in H, G and R (a fact about the data, not the architecture).
    """
    mask = torch.zeros(problem.num_params, dtype=torch.bool)
    owners = leaf_owners(problem)
    if owners is None or not isinstance(owners[0][0][1], nn.Linear):
        return [], mask
    name, first = owners[0][0]
    nonzero = torch.zeros(first.in_features, dtype=torch.bool)
    for batch in problem.batches():
        inputs = batch.inputs
        if not isinstance(inputs, Tensor) or tuple(inputs.shape[1:]) != (first.in_features,):
            return [], mask
        nonzero |= (inputs != 0).any(dim=0).cpu()
    features = (~nonzero).nonzero().flatten().tolist()
    for feature in features:
        _mark(problem, mask, f"{name}.weight", lambda v, j=feature: v[:, j])
    return features, mask


def _mark(problem: Problem, mask: Tensor, name: str, select) -> None:
    if name not in problem.layout.names:
        return
    view = mask[problem.layout.slice(name)].view(
        problem.layout.shapes[problem.layout.names.index(name)]
    )
    select(view).fill_(True)
