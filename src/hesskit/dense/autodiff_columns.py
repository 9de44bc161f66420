"""Columns of H, G and R for any ``nn.Module``, by vectorised forward-over-reverse autodiff.

Column block by column block: for a chunk of K basis vectors e_j inside one parameter
tensor p, and only the rows of parameters q at or after p in the layout (the other half
follows by symmetry), one ``vmap``-ed ``jvp`` gives

* H mode: H_{q,p} e_j = ∂/∂θ_p [∇_{θ_q} L]  (jvp of the gradient);
* split mode: R_{q,p} e_j = ∂/∂θ_p [J_qᵀ ĝ] with ĝ = ∂ℓ/∂z held fixed, together with the
  output tangent J_p e_j, then G_{q,p} e_j = J_qᵀ H_ℓ (J_p e_j) by a batched vjp.

Tangents enter only through θ_p and the gradient is taken only for the later parameters, so
autograd prunes the backward pass at θ_p's layer: the last layers cost little. Cost: about
three to four forward passes per column. This is the general path; chains of Linear layers
use the closed form in :mod:`hesskit.engine.dense_blocks`, which is several times faster.

Forward-mode gaps: an operation without a forward-AD formula for its backward (torch 2.13's
``silu_backward``, in every Llama-family MLP) makes the jvp raise. The columns are then
computed by reverse-over-reverse autodiff (``vjp`` of ``grad``: H e_j, and R e_j as the
Hessian of the scalar ⟨f(θ, X), ĝ⟩ with ĝ fixed; J e_j by the vjp of the vjp), the same
matrices at a higher cost (a backward pass through the whole network per column). So are
models where forward mode disagrees with reverse mode (an embedding's padding row, which
reverse mode holds constant: :func:`hesskit.engine.purity.forward_mode_mismatch`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, jvp, vjp, vmap

from hesskit.engine.purity import forward_mode_mismatch
from hesskit.problem import Batch, Problem


class AutodiffColumns:
    """Computes ``[K, rows]`` column chunks of H (or of G and R) for one parameter block."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.params = {name: p.detach().clone() for name, p in problem.parameters().items()}
        self.names = problem.layout.names
        self.reverse_mode = forward_mode_mismatch(problem.model) is not None
        """Columns by reverse-over-reverse: where forward mode disagrees with reverse mode
        (an embedding's padding row), or once an operation without a forward-AD formula
        is met."""

    def columns(self, block: int, start: int, stop: int, split: bool) -> dict[str, Tensor]:
        """Columns ``start:stop`` of parameter ``block``, rows of parameters ``block:``.

        Returns ``{"H": [K, rows]}`` or ``{"G": ..., "R": ...}``, summed over the batches with
        their weights.
        """
        name = self.names[block]
        reference = self.params[name]
        count = stop - start
        basis = torch.zeros(
            count, reference.numel(), dtype=reference.dtype, device=reference.device
        )
        basis[torch.arange(count), torch.arange(start, stop)] = 1
        basis = basis.reshape(count, *reference.shape)
        total: dict[str, Tensor] = {}
        for batch in self.problem.batches():
            parts = self._batch_columns(batch, block, basis, split)
            for key, value in parts.items():
                total[key] = (
                    total[key] + batch.weight * value if key in total else batch.weight * value
                )
        return total

    def _batch_columns(
        self, batch: Batch, block: int, basis: Tensor, split: bool
    ) -> dict[str, Tensor]:
        if not self.reverse_mode:
            try:
                if split:
                    return self._split_columns(batch, block, basis)
                return {"H": self._hessian_columns(batch, block, basis)}
            except NotImplementedError:  # an operation without a forward-AD formula
                self.reverse_mode = True
        if split:
            return self._split_columns_reverse(batch, block, basis)
        return {"H": self._hessian_columns_reverse(batch, block, basis)}

    def _later(self, block: int) -> list[str]:
        return list(self.names[block:])

    def _with(self, later: dict[str, Tensor]) -> dict[str, Tensor]:
        return {**self.params, **later}

    def _flat(self, values: dict[str, Tensor], count: int) -> Tensor:
        return torch.cat([values[name].reshape(count, -1) for name in values], dim=1)

    def _hessian_columns(self, batch: Batch, block: int, basis: Tensor) -> Tensor:
        name, later = self.names[block], self._later(block)

        def gradient_of_later(theta_p: Tensor) -> dict[str, Tensor]:
            def loss(theta_later: dict[str, Tensor]) -> Tensor:
                return self.problem.batch_loss(self._with(theta_later), batch.inputs, batch.targets)

            point = {q: theta_p if q == name else self.params[q] for q in later}
            return grad(loss)(point)

        def column(v: Tensor) -> dict[str, Tensor]:
            return jvp(gradient_of_later, (self.params[name],), (v,))[1]

        return self._flat(vmap(column)(basis), len(basis))

    def _split_columns(self, batch: Batch, block: int, basis: Tensor) -> dict[str, Tensor]:
        name, later = self.names[block], self._later(block)
        problem, X, y = self.problem, batch.inputs, batch.targets

        def output_of_later(theta_later: dict[str, Tensor]) -> Tensor:
            return problem.output(self._with(theta_later), X)

        z0, pullback = vjp(output_of_later, {q: self.params[q] for q in later})
        z0 = z0.detach()
        loss_gradient = grad(lambda z: problem.loss.value(z, y))(z0)

        def residual_gradient(theta_p: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
            point = {q: theta_p if q == name else self.params[q] for q in later}
            z, pull = vjp(output_of_later, point)
            return z, pull(loss_gradient)[0]

        def column(v: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
            _, (output_tangent, residual) = jvp(residual_gradient, (self.params[name],), (v,))
            return output_tangent, residual

        output_tangents, residual = vmap(column)(basis)
        curved = problem.loss.hessian_vector(z0, y, output_tangents)
        gauss_newton = vmap(lambda u: pullback(u)[0])(curved)
        count = len(basis)
        return {"G": self._flat(gauss_newton, count), "R": self._flat(residual, count)}

    def _symmetric_columns(self, scalar, block: int, basis: Tensor) -> dict[str, Tensor]:
        """∇²scalar(θ) e_j on the rows of parameters ``block:``, by ``vjp`` of ``grad``
        (the Hessian is symmetric, so the vjp with e_j is the column)."""
        name, later = self.names[block], self._later(block)
        _, pull = vjp(grad(scalar), self.params)

        def column(v: Tensor) -> dict[str, Tensor]:
            cotangent = {q: v if q == name else torch.zeros_like(t) for q, t in self.params.items()}
            full = pull(cotangent)[0]
            return {q: full[q] for q in later}

        return vmap(column)(basis)

    def _hessian_columns_reverse(self, batch: Batch, block: int, basis: Tensor) -> Tensor:
        def loss(theta: dict[str, Tensor]) -> Tensor:
            return self.problem.batch_loss(theta, batch.inputs, batch.targets)

        return self._flat(self._symmetric_columns(loss, block, basis), len(basis))

    def _split_columns_reverse(self, batch: Batch, block: int, basis: Tensor) -> dict[str, Tensor]:
        name, later = self.names[block], self._later(block)
        problem, X, y = self.problem, batch.inputs, batch.targets
        z0, pullback = vjp(lambda theta: problem.output(theta, X), self.params)
        z0 = z0.detach()
        loss_gradient = grad(lambda z: problem.loss.value(z, y))(z0)

        def paired(theta: dict[str, Tensor]) -> Tensor:
            return (problem.output(theta, X) * loss_gradient).sum()

        residual = self._symmetric_columns(paired, block, basis)
        _, forward = vjp(lambda u: pullback(u)[0], torch.zeros_like(z0))

        def gauss_newton_column(v: Tensor) -> dict[str, Tensor]:
            direction = {q: v if q == name else torch.zeros_like(t) for q, t in self.params.items()}
            output_tangent = forward(direction)[0]
            full = pullback(problem.loss.hessian_vector(z0, y, output_tangent))[0]
            return {q: full[q] for q in later}

        count = len(basis)
        gauss_newton = vmap(gauss_newton_column)(basis)
        return {"G": self._flat(gauss_newton, count), "R": self._flat(residual, count)}
