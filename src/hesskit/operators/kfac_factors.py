"""K-FAC's Kronecker factors (layers and their uses: :mod:`kfac_layers`), and their inverses.

For a linear layer s = W̄ ā with W̄ = [W b] (``[out, in + 1]``) and ā = [a; 1] the input
with a homogeneous 1 for the bias, the gradient of a sample's loss is g āᵀ with
g = ∂ℓ_i/∂s. K-FAC (Martens & Grosse 2015, §3) approximates the layer's block of the
Fisher, E[vec(g āᵀ) vec(g āᵀ)ᵀ] = E[ā āᵀ ⊗ g gᵀ], by the Kronecker product of the
expectations A ⊗ G, with

    A = (1/n) Σ_i ā_i ā_iᵀ      (``[in + 1, in + 1]``)
    G = Σ_i a_i g_i g_iᵀ          (``[out, out]``),

where a_i is the weight of sample i in the total loss (a_i = c, the reduction factor:
1/n for a mean cross-entropy, 1/(n k) for a mean squared error). These weights make
A ⊗ G approximate hesskit's Gauss-Newton / Fisher matrices of the same loss (so
n·E[āāᵀ ⊗ ggᵀ]·c ≈ E[āāᵀ] ⊗ c Σ_i g gᵀ): for Martens' mean cross-entropy G is his
E[g gᵀ]. Over several batches A = Σ_b (n_b/N) A_b and G = Σ_b w_b G_b.

In the flat parameter layout (row-major ``W`` then ``b``) the block acts as
V̄ ↦ G V̄ A on V̄ = [V_W  v_b] (``[out, in + 1]``): (A ⊗ G) vec(V̄) = vec(G V̄ A).

Where g comes from (:class:`FactorTargets`): targets ŷ drawn from the model's predictive
distribution p(y | z) (the Fisher, Martens & Grosse §5: unbiased for G), the observed
targets (the empirical Fisher), or the exact expectation E_ŷ[r rᵀ] = H_ℓ through the
square-root factor H_ℓ = S Sᵀ of the loss's output Hessian (k backward passes instead of
one; the "exact" G, as kfac-jax's ``curvature_propagation``-free exact mode; exact K-FAC
for a one-layer linear model under a loss whose H_ℓ does not depend on z, e.g. MSE).

``nn.Conv2d`` layers get the KFC factors of Grosse & Martens (2016) (:mod:`kfac_conv`):
the same A and G with ā the kernel's input patches, A summed and G averaged over the
output locations; in the flat layout the kernel ``[out, in, kh, kw]`` is the matrix
``[out, in·kh·kw]`` (row-major), so V̄ = [V_W.reshape(out, -1)  v_b].

Cost per batch: one forward pass and one backward pass to the layer outputs (k backward
passes for ``EXPECTED``), plus O(n (in² + out²)) for the outer products.
"""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hesskit.distributed import all_reduce_sums
from hesskit.errors import UnsupportedArchitectureError
from hesskit.losses import Loss
from hesskit.operators.fisher import sample_key
from hesskit.operators.kfac_conv import conv_factors
from hesskit.operators.kfac_layers import (
    KFACApproximation,
    LayerKind,
    LinearBlock,
    kfac_blocks,
    summed_uses,
    use_factors,
)
from hesskit.problem import Batch, Problem


class FactorTargets(enum.Enum):
    """Which targets the output gradients g of the G factor are computed with."""

    SAMPLED = "sampled"
    """ŷ ~ p(y | z), one draw per sample: the Fisher (Martens & Grosse 2015, §5)."""

    EMPIRICAL = "empirical"
    """The observed targets: the empirical Fisher (an option; biased, Kunstner et al. 2019)."""

    EXPECTED = "expected"
    """E_ŷ[r rᵀ] = H_ℓ exactly, by backpropagating the k columns of H_ℓ's square root."""


@dataclass
class KroneckerFactors:
    """A (``[in + 1, in + 1]``) and G (``[out, out]``) of one layer."""

    A: Tensor
    G: Tensor

    def clone(self) -> KroneckerFactors:
        return KroneckerFactors(self.A.clone(), self.G.clone())


linear_blocks = kfac_blocks
"""The former name of :func:`kfac_blocks` (it covers convolutions too now)."""


def factor_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype factors are accumulated in: float64 stays, everything else (float32,
    bfloat16, float16) is float32, as LAPACK has no bfloat16 ``eigh`` and a half-precision
    sum of n outer products loses the small eigenvalues the damping is tuned against."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def covered_names(blocks: Iterable[LinearBlock]) -> set[str]:
    """The parameter names the blocks cover."""
    return {name for b in blocks for name in (b.weight, b.bias) if name is not None}


def factor_statistics(
    problem: Problem,
    blocks: list[LinearBlock],
    targets: FactorTargets = FactorTargets.SAMPLED,
    generator: torch.Generator | None = None,
    *,
    seed: int | None = None,
    approximation: KFACApproximation = KFACApproximation.EXPAND,
) -> dict[str, KroneckerFactors]:
    """A and G of every block over the problem's batches (module docstring), by weight name.

    Over several batches A = Σ_b (n_b/N) A_b and G = Σ_b w_b G_b. On a distributed problem N
    and the w_b are global and each rank's sums are added over the ranks in ONE all-reduce,
    so every rank holds the factors of all samples (what one process on the concatenated
    data computes).

    Args:
        seed: for ``SAMPLED`` targets, key each sample's draw by (seed, its global index)
            (``hesskit.operators.fisher.sample_key``) instead of drawing from ``generator``:
            the draws then do not depend on how the data are batched or sharded over ranks
            (one generator re-seed per sample).
        approximation: expand or reduce for inputs with extra dimensions
            (:class:`~hesskit.operators.kfac_layers.KFACApproximation`).

    Raises:
        UnsupportedArchitectureError: a covered convolution is called more than once per
            forward pass or on inputs that are not ``[n, c, H, W]``.
    """
    if targets is FactorTargets.SAMPLED:
        problem.loss.require_likelihood("K-FAC with sampled targets")
    sums: dict[str, KroneckerFactors] = {}
    for batch in problem.batches():
        share = batch.num_samples / problem.num_data
        factors = _batch_factors(problem, blocks, batch, targets, generator, seed,
                                 KFACApproximation(approximation))
        for name, (A, G) in factors.items():
            if name not in sums:
                sums[name] = KroneckerFactors(share * A, batch.weight * G)
            else:
                sums[name].A.add_(A, alpha=share)
                sums[name].G.add_(G, alpha=batch.weight)
    if problem.distributed:
        names = list(sums)
        reduced = all_reduce_sums([t for w in names for t in (sums[w].A, sums[w].G)])
        sums = {w: KroneckerFactors(reduced[2 * i], reduced[2 * i + 1])
                for i, w in enumerate(names)}
    return sums


def _batch_factors(
    problem: Problem,
    blocks: list[LinearBlock],
    batch: Batch,
    targets: FactorTargets,
    generator: torch.Generator | None,
    seed: int | None,
    approximation: KFACApproximation,
) -> dict[str, tuple[Tensor, Tensor]]:
    uses = [(b, use) for b in blocks for use in b.uses]
    records: dict[str, list[tuple[Tensor, Tensor]]] = {u.module: [] for _, u in uses}
    modules = dict(problem.model.named_modules(remove_duplicate=False))
    handles = [modules[name].register_forward_hook(_recorder(store))
               for name, store in records.items()]
    params = {n: p.detach().requires_grad_(True) for n, p in problem.parameters().items()}
    try:
        with torch.enable_grad():
            z = problem.output(params, batch.inputs)
    finally:
        for handle in handles:
            handle.remove()
    calls = [(b, u, record) for b, u in uses for record in records[u.module]]
    for b in blocks:
        _check_record(b, [r for c, _, r in calls if c is b])
    if not calls:  # no covered layer: no statistics to take
        return {}
    deltas = _output_gradients(problem, z, batch, [r[1] for _, _, r in calls], targets,
                               generator, seed)
    pairs: dict[str, list[tuple[Tensor, Tensor]]] = {b.weight: [] for b in blocks}
    for (b, use, (a, _)), call_deltas in zip(calls, zip(*deltas, strict=True), strict=True):
        a = a.detach()
        work = factor_dtype(call_deltas[0].dtype if use.kind is LayerKind.EMBEDDING
                            else a.dtype)
        if use.kind is not LayerKind.EMBEDDING:
            a = a.to(work)
        block_deltas = [d.to(work) for d in call_deltas]
        if b.conv is not None:
            pairs[b.weight].append(conv_factors(a, block_deltas, b.bias is not None, b.conv))
            continue
        pairs[b.weight].append(use_factors(b, use.kind, a, block_deltas, batch.num_samples,
                                           approximation, work))
    return {w: summed_uses(p) for w, p in pairs.items() if p}


def _output_gradients(
    problem: Problem,
    z: Tensor,
    batch: Batch,
    outputs: list[Tensor],
    targets: FactorTargets,
    generator: torch.Generator | None,
    seed: int | None,
) -> list[list[Tensor]]:
    """Per backward pass, the scaled pre-activation gradients of each block, such that
    G = Σ_passes δᵀ δ (the 1/c of the sampled and empirical cases folded in as √(1/c))."""
    loss = problem.loss
    if targets is FactorTargets.EXPECTED:
        S = loss.hessian_sqrt(z.detach(), batch.targets)  # [n, k, m], H_ℓ = S Sᵀ (c inside)
        passes = []
        for j in range(S.shape[-1]):
            u = S[:, :, j].reshape(z.shape)
            grads = torch.autograd.grad(
                z, outputs, grad_outputs=u, retain_graph=True, allow_unused=True
            )
            passes.append(_filled(grads, outputs))
        return passes
    if targets is FactorTargets.EMPIRICAL:
        y = batch.targets
    elif seed is not None:
        y = keyed_sample_targets(loss, z.detach(), batch.start, seed)
    else:
        y = loss.sample_targets(z.detach(), generator=generator)
    value = loss.value(z, y)
    scale = loss.scale(z.detach(), y)
    grads = torch.autograd.grad(value, outputs, allow_unused=True)
    return [[g / math.sqrt(scale) for g in _filled(grads, outputs)]]


def keyed_sample_targets(loss: Loss, z: Tensor, start: int, seed: int) -> Tensor:
    """One target per sample from p(y | z_i), sample i's drawn from a generator keyed by
    (seed, start + i) (``hesskit.operators.fisher.sample_key``; ``start`` the global index of
    the first sample): the same draws however the data are batched or sharded."""
    generator = torch.Generator(device=z.device)
    draws = []
    for i in range(z.shape[0]):
        generator.manual_seed(sample_key(seed, start + i))
        draws.append(loss.sample_targets(z[i: i + 1], generator=generator))
    return torch.cat(draws)


def _filled(grads: tuple[Tensor | None, ...], outputs: list[Tensor]) -> list[Tensor]:
    """Detached gradients, zeros for a layer output the loss does not depend on."""
    return [
        torch.zeros_like(s).detach() if g is None else g.detach()
        for g, s in zip(grads, outputs, strict=True)
    ]


def _recorder(store: list[tuple[Tensor, Tensor]]):
    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        store.append((inputs[0], output))

    return hook


def _check_record(block: LinearBlock, record: list[tuple[Tensor, Tensor]]) -> None:
    if not record:
        raise UnsupportedArchitectureError(
            f"K-FAC: layer {block.module!r} did not run in the forward pass (its weight is "
            "used functionally, as nn.MultiheadAttention uses out_proj); leave its "
            "parameters out of the optimizer or the operator"
        )
    if block.conv is None:
        return
    if len(record) != 1:
        raise UnsupportedArchitectureError(
            f"K-FAC: convolution {block.module!r} ran {len(record)} times in one forward "
            "pass; KFC here covers a convolution used exactly once; leave its parameters "
            "out of the optimizer or the operator"
        )
    if record[0][0].ndim != 4:
        raise UnsupportedArchitectureError(
            f"K-FAC: convolution {block.module!r} got inputs of shape "
            f"{tuple(record[0][0].shape)}; KFC here covers batched [n, c, H, W] inputs only; "
            "add the batch dimension"
        )


@dataclass
class FactorEigen:
    """Eigendecompositions A = Q_A diag(λ_A) Q_Aᵀ, G = Q_G diag(λ_G) Q_Gᵀ and the π of
    factored Tikhonov damping (eigenvalues clamped at 0: the factors are PSD).

    Stored in the factors' dtype (float32 or float64: :func:`factor_dtype`); products with
    a vector of another dtype (a bfloat16 model's gradient) are computed in this dtype and
    cast back to the vector's.
    """

    A_values: Tensor
    A_vectors: Tensor
    G_values: Tensor
    G_vectors: Tensor
    pi: float

    @classmethod
    def of(cls, factors: KroneckerFactors) -> FactorEigen:
        A_values, A_vectors = symmetric_eigh(factors.A)
        G_values, G_vectors = symmetric_eigh(factors.G)
        return cls(
            A_values.clamp(min=0), A_vectors, G_values.clamp(min=0), G_vectors,
            pi_correction(factors),
        )

    def damped_inverse(self, V: Tensor, gamma: float) -> Tensor:
        """(G + (γ/π) I)⁻¹ V (A + π γ I)⁻¹ for V ``[..., out, in + 1]``: the inverse of
        factored Tikhonov damping (A + πγI) ⊗ (G + γ/π I) (Martens & Grosse 2015, §6.3)."""
        denominator = (self.G_values + gamma / self.pi)[:, None] * (
            self.A_values + self.pi * gamma
        )[None, :]
        return self._solve(V, denominator)

    def exact_inverse(self, V: Tensor, damping: float) -> Tensor:
        """(A ⊗ G + damping·I)⁻¹ vec(V) exactly, through both eigenbases."""
        return self._solve(V, self.G_values[:, None] * self.A_values[None, :] + damping)

    def _solve(self, V: Tensor, denominator: Tensor) -> Tensor:
        work = V.to(self.A_vectors.dtype)
        rotated = self.G_vectors.T @ work @ self.A_vectors
        return (self.G_vectors @ (rotated / denominator) @ self.A_vectors.T).to(V.dtype)


def symmetric_eigh(factor: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues and eigenvectors of a symmetric PSD factor that never raise.

    LAPACK's float32 ``syevd`` fails to converge ("linalg.eigh: The algorithm failed to
    converge") on rank-deficient factors with many exactly-zero rows, e.g. the input factor
    A of a first layer on raw MNIST pixels (hundreds of always-zero pixels, rank ≤ the
    statistics batch). So the decomposition is of S = (M + Mᵀ)/2 in float64, returned in
    M's dtype. If float64 ``eigh`` still fails (or M is not finite), the documented fallback
    is the DIAGONAL approximation Q = I, λ = diag(S): exact for a diagonal factor, and PSD
    when S is, so the damped inverse (A + πγI)⁻¹ stays well defined (non-finite entries are
    left to the optimizer's step rejection), with a ``RuntimeWarning`` saying so.
    """
    symmetric = 0.5 * (factor.to(torch.float64) + factor.to(torch.float64).T)
    try:
        if not bool(torch.isfinite(symmetric).all()):
            raise torch.linalg.LinAlgError("non-finite factor")
        values, vectors = torch.linalg.eigh(symmetric)
    except torch.linalg.LinAlgError as error:
        warnings.warn(f"K-FAC: the eigendecomposition of a {factor.shape[0]}×{factor.shape[0]} "
                      f"factor failed in float64 ({error}); using its diagonal instead",
                      RuntimeWarning, stacklevel=2)
        values = symmetric.diagonal().clone()
        vectors = torch.eye(symmetric.shape[0], dtype=torch.float64, device=factor.device)
    return values.to(factor.dtype), vectors.to(factor.dtype)


def pi_correction(factors: KroneckerFactors) -> float:
    """π = √((tr(A)/dim A) / (tr(G)/dim G)) (Martens & Grosse 2015, §6.3, the trace norm);
    1 when either trace is 0 (a layer without signal)."""
    a = float(factors.A.diagonal().sum()) / factors.A.shape[0]
    g = float(factors.G.diagonal().sum()) / factors.G.shape[0]
    if not (a > 0 and g > 0 and math.isfinite(a) and math.isfinite(g)):
        return 1.0
    return math.sqrt(a / g)


def join(block: LinearBlock, pieces: dict[str, Tensor]) -> Tensor:
    """V̄ = [V_W  v_b] (``[..., out, in + 1]``) from parameter-shaped pieces (a kernel
    ``[..., out, c, kh, kw]`` reshaped row-major to ``[..., out, c·kh·kw]``)."""
    weight = pieces[block.weight]
    if block.conv is not None:
        weight = weight.flatten(-3)
    if block.transposed:
        weight = weight.transpose(-1, -2)
    if block.bias is None:
        return weight
    return torch.cat([weight, pieces[block.bias].unsqueeze(-1)], dim=-1)


def split(block: LinearBlock, joined: Tensor) -> dict[str, Tensor]:
    """The inverse of :func:`join`."""
    weight = joined if block.bias is None else joined[..., :-1]
    if block.conv is not None:
        weight = weight.unflatten(-1, (-1, *block.conv.kernel_size))
    if block.transposed:
        weight = weight.transpose(-1, -2)
    if block.bias is None:
        return {block.weight: weight}
    return {block.weight: weight, block.bias: joined[..., -1]}
