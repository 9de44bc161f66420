"""Facts about a model that explain exact zeros: layer membership, linearity, dead units.

Each function reads only the model's structure (a (nested) ``nn.Sequential``: which leaf
module owns which parameter and what follows it) or one forward pass. Anything it cannot
establish it leaves out, so a zero it cannot explain stays "unexplained".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hesskit.engine.layers import (
    ELEMENTWISE_MODULES,
    PIECEWISE_LINEAR_MODULES,
    elementwise_derivatives,
)
from hesskit.engine.recorder import sequential_leaves
from hesskit.losses import AutodiffLoss, BCEWithLogitsLoss, Loss, MSELoss
from hesskit.problem import Problem

AFFINE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Layers whose output is affine in their parameters (weight and bias jointly) and input."""

PIECEWISE_LINEAR = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.ReLU6, nn.Hardtanh, nn.Flatten)
"""Modules with zero second derivative wherever it exists (autograd also gives 0 at kinks)."""

DIAGONAL_LOSSES = (MSELoss, BCEWithLogitsLoss)
"""Losses whose Hessian in the outputs is diagonal: no two output units interact."""


def _owners(problem: Problem) -> tuple[list[tuple[str, nn.Module]], dict[str, int]] | None:
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
    owners = _owners(problem)
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
    owners = _owners(problem)
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
    owners, linear = _owners(problem), linear_layers(problem)
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
    owners = _owners(problem)
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
    owners = _owners(problem)
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


SUPPORT_CHUNK = 4096
"""Samples per chunk when intersecting supports (bounds the ``[chunk, size]`` masks)."""


@dataclass
class JointSupport:
    """Per-sample zero patterns of the factors of H, G and R in a piecewise-linear chain.

    The model is a chain of ``nn.Linear`` layers l = 1 … L, each followed by zero or more
    elementwise piecewise-linear modules (σ″ = 0): a_l = W_l x_{l−1} + b_l, x_l = φ_l(a_l),
    output z = φ_L(a_L), with x_0 the data and φ_l the composition of the modules after
    layer l (the identity when there are none). Write s_l = φ_l′(a_l) (autodiff's value,
    0 at a ReLU kink) and u, v for the factors every per-sample term carries:

    * G = Σ_n J_nᵀ H_ℓ,n J_n (the loss separates over samples). The chain rule through
      the elementwise φ_l gives J_n[:, W_l[i, a]] = (∂z_n/∂x_l[i]) s_l,n[i] x_{l−1},n[a] and
      J_n[:, b_l[i]] = (∂z_n/∂x_l[i]) s_l,n[i]: so J_n's column p is exactly 0 when
      u_p,n = 0, where u = [s_l,n[i] ≠ 0]·[x_{l−1},n[a] ≠ 0] for W_l[i, a] and
      [s_l,n[i] ≠ 0] for b_l[i]. G[p, q] = 0 if u_p,n u_q,n = 0 for every sample n.
    * R = Σ_n Σ_k g_nk ∇²z_nk (g = ∂ℓ/∂z). Within a layer ∇²z = 0 (z is piecewise linear
      in one layer's parameters). For p in layer l and q in a later layer m:
      ∂z/∂W_m[j, b] = (∂z/∂a_m[j]) x_{m−1}[b], and ∂z/∂a_m[j] depends on θ_l only through
      φ′ of layers ≥ m, whose derivative σ″ is 0; so ∂²z/∂θ_p∂W_m[j, b] =
      (∂z/∂a_m[j]) s_{m−1}[b] ∂a_{m−1}[b]/∂θ_p, which carries s_m[j] (from ∂z/∂a_m[j]),
      s_{m−1}[b] and u_p (∂a_{m−1}[b]/∂θ_p carries s_l[i] x_{l−1}[a], or is δ_bi x_{l−1}[a]
      when m − 1 = l, where then s_{m−1}[b] = s_l[i]). The bias b_m has ∂z/∂b_m = ∂z/∂a_m,
      free of θ_l: its R terms with earlier layers vanish. With v_q,n =
      [s_m,n[j] ≠ 0]·[s_{m−1},n[b] ≠ 0] for W_m[j, b] (m ≥ 2) and v = 0 for biases,
      R[p, q] = 0 if u_p,n v_q,n = 0 for every n. Note x_{m−1}[b] itself is *not* a factor
      of R (it is differentiated away); for ReLU [x ≠ 0] = [s ≠ 0] anyway.
    * H = G + R summed per sample: H[p, q] = 0 when both per-sample terms vanish on every
      sample.

    Masks are boolean: ``inputs[l]`` = [x_{l−1} ≠ 0], ``[n, in_l]``; ``slopes[l]`` =
    [s_l ≠ 0], ``[n, out_l]``; ``layers`` maps each parameter to its layer's position l
    (0-based) and ``kinds`` to ``"weight"`` or ``"bias"``.
    """

    layers: dict[str, int]
    kinds: dict[str, str]
    inputs: list[Tensor]
    slopes: list[Tensor]

    def gradient_factors(self, name: str, samples: slice) -> Tensor:
        """u: ``[n, size(name)]``, False where J_n's column is exactly 0."""
        layer = self.layers[name]
        slope = self.slopes[layer][samples]
        if self.kinds[name] == "bias":
            return slope
        return (slope[:, :, None] & self.inputs[layer][samples][:, None, :]).flatten(1)

    def residual_factors(self, name: str, samples: slice) -> Tensor:
        """v: ``[n, size(name)]``, False where R's terms with earlier layers vanish."""
        layer = self.layers[name]
        slope = self.slopes[layer][samples]
        if self.kinds[name] == "bias" or layer == 0:
            return torch.zeros_like(self.gradient_factors(name, samples))
        previous = self.slopes[layer - 1][samples]
        return (slope[:, :, None] & previous[:, None, :]).flatten(1)

    def possible(self, part: str, rows: str, columns: str) -> Tensor:
        """``[size(rows), size(columns)]``: True where some sample's term may be non-zero."""
        layer_r, layer_c = self.layers[rows], self.layers[columns]
        total = len(self.slopes[0])
        result = None
        for start in range(0, total, SUPPORT_CHUNK):
            samples = slice(start, min(start + SUPPORT_CHUNK, total))
            u_r = self.gradient_factors(rows, samples).float()
            u_c = self.gradient_factors(columns, samples).float()
            terms = []
            if part in ("G", "H"):
                terms.append(u_r.T @ u_c)
            if part in ("R", "H") and layer_r > layer_c:
                terms.append(self.residual_factors(rows, samples).float().T @ u_c)
            if part in ("R", "H") and layer_r < layer_c:
                terms.append(u_r.T @ self.residual_factors(columns, samples).float())
            chunk = torch.zeros(u_r.shape[1], u_c.shape[1], dtype=torch.bool)
            for term in terms:  # sums of 0/1 products: > 0 iff some sample has both factors
                chunk |= term > 0
            result = chunk if result is None else result | chunk
        assert result is not None
        return result


def joint_support(problem: Problem, params: dict[str, Tensor]) -> JointSupport | None:
    """The per-sample factor patterns of :class:`JointSupport` from one forward pass.

    Only for a proven structure, else None: an ``nn.Sequential`` whose first module is an
    ``nn.Linear`` and whose other modules are ``nn.Linear``, ``nn.Identity`` or elementwise
    piecewise-linear activations, each used once; every Linear sees ``[n, features]``
    inputs; a hesskit loss that separates over samples (not a user callable); and each
    Linear's recorded input equal to φ of the previous Linear's recorded output (nothing
    else runs between them). s_l comes from autodiff of the modules themselves
    (:func:`~hesskit.engine.layers.elementwise_derivatives`), as the dense builders use.
    """
    owners = _owners(problem)
    if owners is None or isinstance(problem.loss, AutodiffLoss):
        return None
    if not isinstance(problem.loss, Loss):
        return None
    leaves, position = owners
    allowed = (nn.Linear, nn.Identity, *PIECEWISE_LINEAR_MODULES)
    if not leaves or not isinstance(leaves[0][1], nn.Linear):
        return None
    if any(not isinstance(m, allowed) or sum(m is o for _, o in leaves) > 1 for _, m in leaves):
        return None
    linears = [index for index, (_, module) in enumerate(leaves) if isinstance(module, nn.Linear)]
    after = [
        [leaves[k][1] for k in range(index + 1, stop)]
        for index, stop in zip(linears, [*linears[1:], len(leaves)], strict=True)
    ]
    seen: dict[int, tuple[list[Tensor], list[Tensor]]] = {k: ([], []) for k in linears}

    def recorder(index: int):
        def hook(_module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            seen[index][0].append(args[0].detach().clone())  # an in-place φ may follow
            seen[index][1].append(output.detach().clone())

        return hook

    handles = [leaves[k][1].register_forward_hook(recorder(k)) for k in linears]
    outputs = []
    try:
        with torch.no_grad():
            for batch in problem.batches():
                outputs.append(problem.output(params, batch.inputs))
    finally:
        for handle in handles:
            handle.remove()
    inputs, slopes, previous = [], [], None
    for index, modules in zip(linears, after, strict=True):
        ins, outs = seen[index]
        if not ins or any(x.ndim != 2 for x in ins):
            return None
        x, a = torch.cat(ins).cpu(), torch.cat(outs).cpu()
        if previous is not None and not torch.equal(previous, x):
            return None  # something else ran between two layers
        slope = torch.ones_like(a)
        value = a
        for module in modules:
            value, first, _ = elementwise_derivatives(module, value)
            slope = slope * first
        inputs.append(x != 0)
        slopes.append(slope != 0)
        previous = value
    if not all(isinstance(z, Tensor) for z in outputs) or not torch.equal(
        previous, torch.cat(outputs).cpu()
    ):
        return None  # the output is not φ_L(a_L)
    layers, kinds = {}, {}
    for name in problem.layout.names:
        index = position.get(name)
        if index not in linears:
            return None
        layers[name] = linears.index(index)
        kinds[name] = name.rsplit(".", 1)[1]
    return JointSupport(layers, kinds, inputs, slopes)
