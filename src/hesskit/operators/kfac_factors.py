"""K-FAC's Kronecker factors for ``nn.Linear`` (and ``nn.Conv2d``) layers, and their inverses.

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
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hesskit.distributed import all_reduce_sums
from hesskit.errors import UnsupportedArchitectureError
from hesskit.losses import Loss
from hesskit.operators.fisher import sample_key
from hesskit.operators.kfac_conv import ConvGeometry, conv_factors
from hesskit.problem import Batch, Problem


class FactorTargets(enum.Enum):
    """Which targets the output gradients g of the G factor are computed with."""

    SAMPLED = "sampled"
    """ŷ ~ p(y | z), one draw per sample: the Fisher (Martens & Grosse 2015, §5)."""

    EMPIRICAL = "empirical"
    """The observed targets: the empirical Fisher (an option; biased, Kunstner et al. 2019)."""

    EXPECTED = "expected"
    """E_ŷ[r rᵀ] = H_ℓ exactly, by backpropagating the k columns of H_ℓ's square root."""


@dataclass(frozen=True)
class LinearBlock:
    """One layer that K-FAC covers (``nn.Linear``, or ``nn.Conv2d`` when ``conv`` is set).

    Attributes:
        module: the module's name in ``model.named_modules()``.
        weight: the name of its weight ``[out, in]`` (a kernel ``[out, c, kh, kw]``).
        bias: the name of its bias ``[out]``, or None (no homogeneous coordinate).
        in_features, out_features: the layer's sizes as a matrix (in = c·kh·kw for a kernel).
        conv: the convolution's geometry (None: a Linear layer).
    """

    module: str
    weight: str
    bias: str | None
    in_features: int
    out_features: int
    conv: ConvGeometry | None = None

    @property
    def input_dim(self) -> int:
        """dim A: the input size plus one for the bias' homogeneous coordinate."""
        return self.in_features + (self.bias is not None)


@dataclass
class KroneckerFactors:
    """A (``[in + 1, in + 1]``) and G (``[out, out]``) of one layer."""

    A: Tensor
    G: Tensor

    def clone(self) -> KroneckerFactors:
        return KroneckerFactors(self.A.clone(), self.G.clone())


def kfac_blocks(model: nn.Module, names: Iterable[str]) -> list[LinearBlock]:
    """The ``nn.Linear`` and coverable ``nn.Conv2d`` layers of ``model`` whose weight is
    among the parameters ``names`` (:class:`~hesskit.operators.kfac_conv.ConvGeometry`
    says which convolutions are coverable).

    A bias counts (homogeneous coordinate) only when it is among ``names`` too; other
    parameters (and layers with a weight outside ``names``) are not covered.
    """
    wanted = set(names)
    blocks = []
    for module_name, module in model.named_modules():
        geometry = ConvGeometry.of(module) if isinstance(module, nn.Conv2d) else None
        if not (isinstance(module, nn.Linear) or geometry is not None):
            continue
        prefix = f"{module_name}." if module_name else ""
        weight = f"{prefix}weight"
        if weight not in wanted:
            continue
        bias = f"{prefix}bias" if module.bias is not None and f"{prefix}bias" in wanted else None
        out_features = module.weight.shape[0]
        in_features = module.weight[0].numel()
        blocks.append(LinearBlock(module_name, weight, bias, in_features, out_features,
                                  geometry))
    return blocks


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

    Raises:
        UnsupportedArchitectureError: a covered layer is called more than once per forward
            pass (shared weights) or with inputs that are not ``[n, in]``.
    """
    if targets is FactorTargets.SAMPLED:
        problem.loss.require_likelihood("K-FAC with sampled targets")
    sums: dict[str, KroneckerFactors] = {}
    for batch in problem.batches():
        share = batch.num_samples / problem.num_data
        factors = _batch_factors(problem, blocks, batch, targets, generator, seed)
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
) -> dict[str, tuple[Tensor, Tensor]]:
    records: dict[str, list[tuple[Tensor, Tensor]]] = {b.module: [] for b in blocks}
    modules = dict(problem.model.named_modules())
    handles = [
        modules[b.module].register_forward_hook(_recorder(records[b.module])) for b in blocks
    ]
    params = {n: p.detach().requires_grad_(True) for n, p in problem.parameters().items()}
    try:
        with torch.enable_grad():
            z = problem.output(params, batch.inputs)
    finally:
        for handle in handles:
            handle.remove()
    for b in blocks:
        _check_record(b, records[b.module])
    outputs = [records[b.module][0][1] for b in blocks]
    deltas = _output_gradients(problem, z, batch, outputs, targets, generator, seed)
    factors = {}
    for b, block_deltas in zip(blocks, zip(*deltas, strict=True), strict=True):
        a = records[b.module][0][0].detach()
        work = factor_dtype(a.dtype)
        a, block_deltas = a.to(work), [d.to(work) for d in block_deltas]
        if b.conv is not None:
            factors[b.weight] = conv_factors(a, list(block_deltas), b.bias is not None, b.conv)
            continue
        if b.bias is not None:
            a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
        A = a.T @ a / a.shape[0]
        G = sum(d.T @ d for d in block_deltas)
        factors[b.weight] = (A, G)
    return factors


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
    if len(record) != 1:
        raise UnsupportedArchitectureError(
            f"K-FAC: layer {block.module!r} ran {len(record)} times in one forward pass; "
            "K-FAC covers a Linear layer used exactly once (no shared weights); leave its "
            "parameters out of the optimizer or the operator"
        )
    a = record[0][0]
    if block.conv is not None and a.ndim != 4:
        raise UnsupportedArchitectureError(
            f"K-FAC: convolution {block.module!r} got inputs of shape {tuple(a.shape)}; KFC "
            "here covers batched [n, c, H, W] inputs only; add the batch dimension"
        )
    if block.conv is None and a.ndim != 2:
        raise UnsupportedArchitectureError(
            f"K-FAC: layer {block.module!r} got inputs of shape {tuple(a.shape)}; K-FAC here "
            "covers Linear layers on [n, in] inputs only; flatten the extra dimensions "
            "into the batch before the layer"
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
    left to the optimizer's step rejection).
    """
    symmetric = 0.5 * (factor.to(torch.float64) + factor.to(torch.float64).T)
    try:
        if not bool(torch.isfinite(symmetric).all()):
            raise torch.linalg.LinAlgError("non-finite factor")
        values, vectors = torch.linalg.eigh(symmetric)
    except torch.linalg.LinAlgError:
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
    if block.bias is None:
        return weight
    return torch.cat([weight, pieces[block.bias].unsqueeze(-1)], dim=-1)


def split(block: LinearBlock, joined: Tensor) -> dict[str, Tensor]:
    """The inverse of :func:`join`."""
    weight = joined if block.bias is None else joined[..., :-1]
    if block.conv is not None:
        weight = weight.unflatten(-1, (-1, *block.conv.kernel_size))
    if block.bias is None:
        return {block.weight: weight}
    return {block.weight: weight, block.bias: joined[..., -1]}
