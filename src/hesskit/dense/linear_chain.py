"""Exact H, G and R of a chain of ``nn.Linear`` layers and elementwise activations.

For ``nn.Sequential(Linear, σ, Linear, σ, …, Linear)`` the Hessian has a closed form in
per-sample quantities (the "Hessian backpropagation" of Dangel et al., 2020), so every
parameter block is a sum over samples that one GEMM computes. Per sample, with
``a_l = Θ_l x̃_l`` (Θ_l = [W_l, b_l], x̃_l = [h_{l-1}; 1]), h_l = σ(a_l), z = a_L:

* δ_l = ∂L/∂a_l, the usual backpropagated gradient;
* P_l = ∂²L/∂a_l², from P_L = H_ℓ and
  P_l = D′ W_{l+1}ᵀ P_{l+1} W_{l+1} D′ + diag(σ″(a_l) ⊙ W_{l+1}ᵀ δ_{l+1}),
  D′ = diag σ′(a_l). The first term carries G's part (P^G), the diagonal term R's (P^R);
* T_{m,l} = ∂a_m/∂a_l (T_{l,l} = I) and V_{m,l} = ∂h_{m-1}/∂a_l = D′_{m-1} T_{m-1,l}.

Then, for layers l ≤ m (entries Θ_m[k,p], Θ_l[i,j]):

    H = Σ_n (P_m T_{m,l})[k,i] x̃_m[p] x̃_l[j]  +  Σ_n δ_m[k] V_{m,l}[p,i] x̃_l[j]   (l < m)

G is the first sum with P^G, R the first sum with P^R plus the second sum (which comes from
W_m multiplying h_{m-1}(θ): the network's own second derivative). Cost: about
2·n·N_m·N_l flops per pair of layers and term, i.e. ≈ n·N² per term over the lower
triangle, in a few large GEMMs; forward-over-reverse HVPs need several times more flops,
in small batched products (see ``benchmarks/dense.py`` for the measured ratio).

σ′ and σ″ come from forward-mode autodiff of the activation modules themselves (exact for
elementwise modules, with PyTorch's convention at kinks), so any listed activation works.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import jvp

from hesskit.problem import Problem

ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.ReLU,
    nn.LeakyReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softsign,
    nn.Tanhshrink,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.LogSigmoid,
)
"""Activation modules that act entry by entry (diagonal Jacobian), so σ′, σ″ are vectors."""


@dataclass(frozen=True)
class ChainLayer:
    """One ``nn.Linear`` and the elementwise modules that follow it (empty for the last)."""

    linear: nn.Linear
    weight_name: str
    bias_name: str | None
    activations: tuple[nn.Module, ...]

    def activate(self, a: Tensor) -> Tensor:
        for module in self.activations:
            a = module(a)
        return a


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The modules of a (nested) ``nn.Sequential`` in call order, or None if it is not one."""
    if not isinstance(model, nn.Sequential):
        return None
    leaves: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            inner = leaf_modules(child)
            if inner is None:
                return None
            leaves += [(f"{name}.{sub}", module) for sub, module in inner]
        else:
            leaves.append((name, child))
    return leaves


def linear_chain(problem: Problem) -> list[ChainLayer] | None:
    """The layers if ``problem`` is a Linear/elementwise chain over all its parameters, else None.

    Conditions: the model is a (nested) ``nn.Sequential`` of ``nn.Linear`` and
    :data:`ELEMENTWISE_MODULES` that starts and ends with a Linear, all inputs are
    ``[n, features]``, and the chosen parameters are exactly all the Linear parameters.
    """
    leaves = leaf_modules(problem.model)
    if (
        not leaves
        or not isinstance(leaves[0][1], nn.Linear)
        or not isinstance(leaves[-1][1], nn.Linear)
    ):
        return None
    layers: list[ChainLayer] = []
    for name, module in leaves:
        if isinstance(module, nn.Linear):
            bias = f"{name}.bias" if module.bias is not None else None
            layers.append(ChainLayer(module, f"{name}.weight", bias, ()))
        elif isinstance(module, ELEMENTWISE_MODULES) and not getattr(module, "inplace", False):
            last = layers[-1]
            layers[-1] = ChainLayer(
                last.linear, last.weight_name, last.bias_name, (*last.activations, module)
            )
        else:
            return None
    names = [n for layer in layers for n in (layer.weight_name, layer.bias_name) if n]
    if tuple(names) != problem.layout.names:
        return None
    if any(batch.inputs.ndim != 2 for batch in problem.batches()):
        return None
    return layers


def _derivatives(layer: ChainLayer, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """σ(a), σ′(a), σ″(a) elementwise, by forward-mode autodiff of the activation modules."""
    ones = torch.ones_like(a)

    def first(x: Tensor) -> tuple[Tensor, Tensor]:
        return jvp(layer.activate, (x,), (ones,))

    (h, d1), (_, d2) = jvp(first, (a,), (ones,))
    return h, d1, d2


@dataclass
class _Batch:
    """Per-sample quantities of one batch (n samples), weighted by the batch weight."""

    inputs: list[Tensor]  # x̃_l = [h_{l-1}, 1 if bias], [n, in_l(+1)]
    deltas: list[Tensor]  # δ_l, [n, out_l]
    curvature_gn: list[Tensor]  # P^G_l, [n, out_l, out_l]
    curvature_residual: list[Tensor | None]  # P^R_l (None when exactly zero)
    slopes: list[Tensor]  # σ′(a_l), [n, out_l] (l < L)


def _per_sample(
    problem: Problem,
    layers: list[ChainLayer],
    params: dict[str, Tensor],
    inputs: Tensor,
    targets: Tensor,
    weight: float,
) -> _Batch:
    weights = [params[layer.weight_name] for layer in layers]
    h, xs, slopes, curvatures = inputs, [], [], []
    for index, layer in enumerate(layers):
        bias = params[layer.bias_name] if layer.bias_name else None
        xs.append(torch.cat([h, torch.ones_like(h[:, :1])], 1) if bias is not None else h)
        a = h @ weights[index].T + (bias if bias is not None else 0)
        if index < len(layers) - 1:
            h, d1, d2 = _derivatives(layer, a)
            slopes.append(d1)
            curvatures.append(d2)
    z = a.detach().requires_grad_(True)
    with torch.enable_grad():
        (dz,) = torch.autograd.grad(problem.loss.value(z, targets), z)
    z = z.detach()
    factor = problem.loss.hessian_sqrt(z, targets).reshape(len(z), z[0].numel(), -1)
    deltas = [weight * dz.reshape(len(z), -1)]
    gn = [weight * factor @ factor.transpose(1, 2)]
    residual: list[Tensor | None] = [None]
    for index in range(len(layers) - 2, -1, -1):
        w_next, d1 = weights[index + 1], slopes[index]
        back = deltas[0] @ w_next  # ∂L/∂h_l
        deltas.insert(0, d1 * back)
        outer = d1[:, :, None] * d1[:, None, :]
        gn.insert(0, outer * (w_next.T @ gn[0] @ w_next))
        res = outer * (w_next.T @ residual[0] @ w_next) if residual[0] is not None else None
        diagonal = curvatures[index] * back
        if bool(diagonal.any()):
            res = torch.diag_embed(diagonal) if res is None else res + torch.diag_embed(diagonal)
        residual.insert(0, res)
    return _Batch(xs, deltas, gn, residual, slopes)


def _outer_sum(U: Tensor, x_rows: Tensor, x_cols: Tensor) -> Tensor:
    """Σ_n U[n,k,i] x_rows[n,p] x_cols[n,j] as ``[k, p, i, j]`` (a strided view)."""
    n, out_rows, out_cols = U.shape
    pairs = (x_rows[:, :, None] * x_cols[:, None, :]).reshape(n, -1)
    C = U.reshape(n, -1).T @ pairs
    return C.reshape(out_rows, out_cols, x_rows.shape[1], x_cols.shape[1]).permute(0, 2, 1, 3)


def _chain_sum(delta: Tensor, V: Tensor, x_cols: Tensor) -> Tensor:
    """Σ_n δ[n,k] V[n,p,i] x_cols[n,j] as ``[k, p, i, j]`` (a strided view)."""
    n, out_rows = delta.shape
    left = (delta[:, :, None] * x_cols[:, None, :]).reshape(n, -1)
    C = left.T @ V.reshape(n, -1)
    return C.reshape(out_rows, x_cols.shape[1], V.shape[1], V.shape[2]).permute(0, 2, 3, 1)


class LinearChainBuilder:
    """Adds the lower-triangle layer blocks of G and R (or of H = G + R) into dense matrices."""

    def __init__(self, problem: Problem, layers: list[ChainLayer]) -> None:
        self.problem = problem
        self.layers = layers
        self.params = {name: p.detach().clone() for name, p in problem.parameters().items()}
        layout = problem.layout
        self.ranges = []  # (weight slice, bias slice or None) per layer
        for layer in layers:
            bias = layout.slice(layer.bias_name) if layer.bias_name else None
            self.ranges.append((layout.slice(layer.weight_name), bias))

    def add_batch(
        self,
        inputs: Tensor,
        targets: Tensor,
        weight: float,
        gauss_newton: Tensor,
        residual: Tensor,
        samples: int | None = None,
    ) -> None:
        """Add one batch's lower-triangle blocks (``samples`` limits n, for timing probes)."""
        if samples is not None:
            inputs, targets = inputs[:samples], targets[:samples]
        with torch.no_grad():
            batch = _per_sample(self.problem, self.layers, self.params, inputs, targets, weight)
            for m in range(len(self.layers)):
                transfer = None  # T_{m,l}, l going down from m
                for l_ in range(m, -1, -1):
                    transfer = self._transfer(batch, m, l_, transfer)
                    self._add_pair(batch, m, l_, transfer, gauss_newton, residual)

    def _transfer(self, batch: _Batch, m: int, l_: int, previous: Tensor | None) -> Tensor:
        """T_{m,l} = ∂a_m/∂a_l per sample, from T_{m,l+1} (T_{m,m} = I)."""
        if l_ == m:
            n, out = batch.deltas[m].shape
            return torch.eye(
                out, dtype=batch.deltas[m].dtype, device=batch.deltas[m].device
            ).expand(n, out, out)
        w_next = self.params[self.layers[l_ + 1].weight_name]
        return (previous @ w_next) * batch.slopes[l_][:, None, :]

    def _add_pair(
        self, batch: _Batch, m: int, l_: int, T: Tensor, gauss_newton: Tensor, residual: Tensor
    ) -> None:
        x_m, x_l = batch.inputs[m], batch.inputs[l_]
        _add_blocks(
            gauss_newton,
            self.ranges[m],
            self.ranges[l_],
            _outer_sum(batch.curvature_gn[m] @ T, x_m, x_l),
        )
        if batch.curvature_residual[m] is not None:
            _add_blocks(
                residual,
                self.ranges[m],
                self.ranges[l_],
                _outer_sum(batch.curvature_residual[m] @ T, x_m, x_l),
            )
        if l_ < m:
            V = self._hidden_transfer(batch, m, l_)
            _add_blocks(
                residual,
                self.ranges[m],
                self.ranges[l_],
                _chain_sum(batch.deltas[m], V, x_l),
                weight_rows_only=True,
            )

    def _hidden_transfer(self, batch: _Batch, m: int, l_: int) -> Tensor:
        """V_{m,l} = ∂h_{m-1}/∂a_l = D′_{m-1} T_{m-1,l} per sample, ``[n, in_m, out_l]``."""
        T = None
        for k in range(l_, m):
            if T is None:
                T = torch.diag_embed(batch.slopes[l_])
            else:
                w = self.params[self.layers[k].weight_name]
                T = batch.slopes[k][:, :, None] * (w @ T)
        return T


def _add_blocks(
    matrix: Tensor,
    rows: tuple[slice, slice | None],
    cols: tuple[slice, slice | None],
    block: Tensor,
    weight_rows_only: bool = False,
) -> None:
    """Add a ``[k, p, i, j]`` layer block (p, j include the bias column last) into ``matrix``."""
    out_rows, _, out_cols, _ = block.shape
    in_rows = (rows[0].stop - rows[0].start) // out_rows
    in_cols = (cols[0].stop - cols[0].start) // out_cols
    row_parts = [(rows[0], slice(0, in_rows))]
    if rows[1] is not None and not weight_rows_only:
        row_parts.append((rows[1], in_rows))
    col_parts = [(cols[0], slice(0, in_cols))]
    if cols[1] is not None:
        col_parts.append((cols[1], in_cols))
    for row_range, p in row_parts:
        for col_range, j in col_parts:
            part = block[:, p, :, j]
            target = matrix[row_range, col_range].view(part.shape)
            target.add_(part)
