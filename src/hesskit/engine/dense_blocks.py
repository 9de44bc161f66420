"""Exact dense H, G and R of a proved chain of ``nn.Linear`` layers and elementwise activations.

For a chain Linear, σ…, Linear, σ…, … (:mod:`hesskit.engine.recorder`) the Hessian has a
closed form in per-sample quantities (the "Hessian backpropagation" of Dangel et al.,
2020), so every parameter block is a sum over samples that one GEMM computes. Per sample, with
``a_l = Θ_l x̃_l`` (Θ_l = [W_l, b_l], x̃_l = [h_{l-1}; 1]), h_l = σ(a_l), z = a_L:

* δ_l = ∂L/∂a_l, the usual backpropagated gradient (:mod:`hesskit.engine.primal`);
* P_l = ∂²L/∂a_l², backpropagated from the output by
  :class:`~hesskit.engine.curvature.OutputCurvature` through every activation after
  layer l: P^G without, P^R with the σ″ ⊙ g terms, so
  P = P^G + P^R (for one activation: P_l = D′ W_{l+1}ᵀ P_{l+1} W_{l+1} D′ +
  diag(σ″(a_l) ⊙ W_{l+1}ᵀ δ_{l+1}), D′ = diag σ′(a_l));
* T_{m,l} = ∂a_m/∂a_l (T_{l,l} = I) and V_{m,l} = ∂h_{m-1}/∂a_l = D′_{m-1} T_{m-1,l}, with
  D′ the product of the slopes of the activations between two layers.

Then, for layers l ≤ m (entries Θ_m[k,p], Θ_l[i,j]):

    H = Σ_n (P_m T_{m,l})[k,i] x̃_m[p] x̃_l[j]  +  Σ_n δ_m[k] V_{m,l}[p,i] x̃_l[j]   (l < m)

G is the first sum with P^G, R the first sum with P^R plus the second sum (which comes from
W_m multiplying h_{m-1}(θ): the network's own second derivative). Cost: about
2·n·N_m·N_l flops per pair of layers and term, i.e. ≈ n·N² per term over the lower
triangle, in a few large GEMMs; forward-over-reverse HVPs need several times more flops,
in small batched products (see ``benchmarks/dense.py`` for the measured ratio).

σ′ and σ″ come from :func:`hesskit.engine.layers.elementwise_derivatives`, so every
activation of the engine's table works, also after the last layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hesskit.engine.curvature import OutputCurvature
from hesskit.engine.layers import Table
from hesskit.engine.primal import ActivationRecord, LinearRecord, primal_pass
from hesskit.engine.recorder import Chain, problem_chain
from hesskit.errors import UnsupportedArchitectureError
from hesskit.problem import Problem
from hesskit.tensor_tree import select


def dense_chain(problem: Problem, params: dict[str, Tensor] | None = None) -> Chain:
    """The proved chain of ``problem`` (first batch) if its dense blocks have the closed form.

    Conditions beyond the chain itself: the differentiated parameters are exactly the
    weights and biases of all its ``nn.Linear`` layers, each layer's bias right after its
    weight in the parameter layout.

    Raises:
        UnsupportedArchitectureError: with the reason, when a condition fails.
    """
    batch = next(problem.batches())
    params = problem.parameters() if params is None else params
    chain = problem_chain(problem, params, batch.inputs, table=Table.PRODUCT)
    linear = [s for s in chain.steps if s.kind == "linear"]
    names = [n for s in linear for n in chain.names[id(s.module)] if n is not None]
    if sorted(names) != sorted(problem.layout.names):
        raise UnsupportedArchitectureError(
            "the dense closed form needs every nn.Linear parameter of the chain, and only "
            "those, to be differentiated"
        )
    layout = problem.layout
    for step in linear:
        weight, bias = chain.names[id(step.module)]
        if bias is not None and layout.slice(bias).start != layout.slice(weight).stop:
            raise UnsupportedArchitectureError(
                f"the dense closed form needs {bias!r} right after {weight!r} in the layout"
            )
    return chain


def layer_ranges(problem: Problem, chain: Chain) -> list[slice]:
    """The index range of each Linear layer (weight then bias), in call order."""
    ranges = []
    for step in chain.steps:
        if step.kind == "linear":
            weight, bias = chain.names[id(step.module)]
            start = problem.layout.slice(weight).start
            ranges.append(slice(start, problem.layout.slice(bias or weight).stop))
    return ranges


@dataclass
class _Batch:
    """Per-sample quantities of one batch (n samples), weighted by the batch weight."""

    inputs: list[Tensor]  # x̃_l = [h_{l-1}, 1 if bias], [n, in_l(+1)]
    weights: list[Tensor]  # W_l
    deltas: list[Tensor]  # δ_l, [n, out_l]
    curvature_gn: list[Tensor]  # P^G_l, [n, out_l, out_l]
    curvature_residual: list[Tensor | None]  # P^R_l (None when exactly zero)
    slopes: list[Tensor]  # D′ between layer l and l + 1: the product of σ′, [n, out_l]


def _per_sample(
    problem: Problem, chain: Chain, params: dict[str, Tensor], targets: Tensor, weight: float
) -> _Batch:
    primal = primal_pass(chain, problem.loss, targets, params)
    factor = problem.loss.hessian_sqrt(primal.outputs, targets)
    gn = OutputCurvature(factor.reshape(factor.shape[0], -1, factor.shape[-1]))
    residual: OutputCurvature | None = None
    inputs, weights, deltas, p_gn, p_res, slopes = [], [], [], [], [], []
    slope: Tensor | None = None
    for record in reversed(primal.records):
        if isinstance(record, ActivationRecord):
            gn.through_activation(record.slope, None)
            extra = record.residual()
            if residual is not None:
                residual.through_activation(record.slope, extra)
            elif extra is not None:
                residual = OutputCurvature(dense=torch.diag_embed(extra))
            slope = record.slope if slope is None else slope * record.slope
            continue
        assert isinstance(record, LinearRecord)
        a = record.inputs
        inputs.insert(0, torch.cat([a, torch.ones_like(a[:, :1])], 1) if record.has_bias else a)
        weights.insert(0, record.weight)
        deltas.insert(0, weight * record.output_gradient)
        p_gn.insert(0, weight * gn.matrix())
        p_res.insert(0, None if residual is None else weight * residual.matrix())
        if slope is not None and len(weights) > 1:
            slopes.insert(0, slope)
        elif len(weights) > 1:
            slopes.insert(0, torch.ones_like(record.output_gradient))
        slope = None
        if record is not primal.records[0]:
            gn.through_linear(record.weight)
            if residual is not None:
                residual.through_linear(record.weight)
    return _Batch(inputs, weights, deltas, p_gn, p_res, slopes)


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

    def __init__(
        self,
        problem: Problem,
        chain: Chain | None = None,
        params: dict[str, Tensor] | None = None,
    ) -> None:
        self.problem = problem
        params = problem.parameters() if params is None else params
        self.params = {name: p.detach().clone() for name, p in params.items()}
        self.chain = chain or dense_chain(problem, self.params)
        layout = problem.layout
        self.ranges = []  # (weight slice, bias slice or None) per layer, in call order
        for step in self.chain.steps:
            if step.kind == "linear":
                weight, bias = self.chain.names[id(step.module)]
                self.ranges.append((layout.slice(weight), layout.slice(bias) if bias else None))

    def add_batch(
        self,
        inputs: Tensor,
        targets: Tensor,
        weight: float,
        gauss_newton: Tensor,
        residual: Tensor | None,
        samples: int | None = None,
    ) -> None:
        """Add one batch's lower-triangle blocks (``samples`` limits n, for timing probes).

        G's blocks go into ``gauss_newton`` and R's into ``residual`` (the same tensor for H;
        None to build G alone).

        Raises:
            UnsupportedArchitectureError: this batch runs through other modules than the
                chain proved on the first batch (data-dependent control flow).
        """
        if samples is not None:
            inputs, targets = select(inputs, slice(samples)), select(targets, slice(samples))
        chain = problem_chain(self.problem, self.params, inputs, table=Table.PRODUCT)
        if chain.structure() != self.chain.structure():
            raise UnsupportedArchitectureError(
                "a batch runs through other modules than the first one; the dense closed "
                "form needs the same chain for every batch"
            )
        with torch.no_grad():
            batch = _per_sample(self.problem, chain, self.params, targets, weight)
            for m in range(len(self.ranges)):
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
        return (previous @ batch.weights[l_ + 1]) * batch.slopes[l_][:, None, :]

    def _add_pair(
        self,
        batch: _Batch,
        m: int,
        l_: int,
        T: Tensor,
        gauss_newton: Tensor,
        residual: Tensor | None,
    ) -> None:
        x_m, x_l = batch.inputs[m], batch.inputs[l_]
        _add_blocks(
            gauss_newton,
            self.ranges[m],
            self.ranges[l_],
            _outer_sum(batch.curvature_gn[m] @ T, x_m, x_l),
        )
        if residual is None:  # the Gauss-Newton part only
            return
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
                T = batch.slopes[k][:, :, None] * (batch.weights[k] @ T)
        return T


def finish(matrix: Tensor, ranges: list[slice]) -> None:
    """Copy the lower block triangle to the upper one and symmetrise the diagonal blocks."""
    for index, rows in enumerate(ranges):
        block = matrix[rows, rows]
        block.copy_((block + block.T) / 2)
        for cols in ranges[:index]:
            matrix[cols, rows] = matrix[rows, cols].T


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


def dense_matrix(
    problem: Problem,
    part: str,
    chain: Chain | None = None,
    params: dict[str, Tensor] | None = None,
) -> Tensor:
    """H (``part="H"``) or G (``"G"``) of ``problem`` at ``params`` (default: the model's
    current values) as a dense ``[N, N]`` by the closed form.

    Cost ≈ 2·n·N² flops per term over the lower block triangle, then one mirror pass.

    Raises:
        UnsupportedArchitectureError: ``problem`` is not a chain :func:`dense_chain` accepts.
    """
    builder = LinearChainBuilder(problem, chain, params)
    n = problem.num_params
    matrix = torch.zeros(n, n, dtype=problem.dtype, device=problem.device)
    for batch in problem.batches():
        residual = matrix if part == "H" else None
        builder.add_batch(batch.inputs, batch.targets, batch.weight, matrix, residual)
    finish(matrix, layer_ranges(problem, builder.chain))
    return matrix
