"""The Fisher information (Monte-Carlo) and the empirical Fisher as linear operators.

Write the total loss as a weighted sum over the N samples, L(θ) = Σ_i a_i ℓ_i(θ), where
ℓ_i = ℓ(f(θ, x_i), y_i) is sample i's loss summed over its outputs and a_i = w_b c_b is
the weight the reduction gives it: a_i = 1/N for ``"sample_mean"`` and for cross-entropy
with ``"mean"``, 1/(N k) for MSE and BCE with ``"mean"`` (k outputs per sample), 1 for
``"sum"``. With r_i = ∇_z ℓ_i the (unscaled) gradient in the outputs and J_i = ∂z_i/∂θ:

* Fisher:            F  = Σ_i a_i J_iᵀ E_{ŷ ~ p(y|z_i)}[r_i(ŷ) r_i(ŷ)ᵀ] J_i,
  estimated with S targets ŷ_is drawn per sample:
                     F̂  = Σ_i a_i J_iᵀ (1/S Σ_s r_i(ŷ_is) r_i(ŷ_is)ᵀ) J_i;
* empirical Fisher:  EF = Σ_i a_i ∇ℓ_i ∇ℓ_iᵀ = Σ_i a_i J_iᵀ r_i(y_i) r_i(y_i)ᵀ J_i.

So for cross-entropy with ``"mean"``, EF = (1/N) Σ_i g_i g_iᵀ with g_i the gradient of
sample i's own loss; it is NOT (Σ_i ĝ_i ĝ_iᵀ) with ĝ_i = g_i/N the sample's share of ∇L.
These weights make F, EF and the Gauss-Newton matrix G comparable: for the losses here
(MSE = Gaussian with variance ½, cross-entropy, BCE), E[r rᵀ] = ∂²ℓ_i/∂z², so E[F̂] = G.
Both are symmetric and positive semi-definite. Kunstner et al. (2019) on the difference.

Cost: as the Gauss-Newton operator (the same cached linearization per batch); the
output gradients r are drawn once per batch and always kept (S·n·k numbers), so the
operator is one fixed matrix even with ``cache=False``.

Reproducible draws: with ``seed=s`` the S targets of sample i are drawn from a generator
seeded with a hash of (s, global index of i), so F̂ does not depend on how the data are
split into batches or over ``torch.distributed`` ranks (one generator re-seed per sample;
a distributed problem requires it). With ``generator`` the draws follow one stream, batch
by batch, as they come.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor
from torch.func import grad

from hesskit.errors import InvalidArgumentError
from hesskit.operators.diagonals import exact_diagonal
from hesskit.operators.gauss_newton import LinearizedOutputOperator
from hesskit.problem import Batch, Problem

Params = dict[str, Tensor]


class _OutputOuterProductOperator(LinearizedOutputOperator):
    """Σ_b w_b J_bᵀ M_b J_b with M_b = c_b/S Σ_s blockdiag_i(r_is r_isᵀ)."""

    symmetric = True
    psd = True

    def __init__(self, problem: Problem, cache: bool | None = None) -> None:
        super().__init__(problem, cache=cache)
        self._output_gradients: dict[int, Tensor] = {}

    @abstractmethod
    def _targets(self, z: Tensor, batch: Batch) -> Tensor:
        """Targets for the outer products: ``[S * n, ...]`` (S blocks of n)."""

    def output_gradients(self, batch: Batch, z: Tensor) -> Tensor:
        """r_is = ∇_z ℓ_i(z_i, ŷ_is), ``[S, *z.shape]``, made once per batch and kept."""
        if batch.index not in self._output_gradients:
            targets = self._targets(z, batch)
            repeats = targets.shape[0] // z.shape[0]
            z_rep = z.repeat(repeats, *([1] * (z.ndim - 1)))
            loss = self.problem.loss
            r = grad(lambda out: loss.value(out, targets))(z_rep) / loss.scale(z_rep, targets)
            self._output_gradients[batch.index] = r.reshape(repeats, *z.shape)
        return self._output_gradients[batch.index]

    def _matmat_batch(self, batch: Batch, V: Params) -> Params:
        lin = self.linearization(batch)
        z = lin.outputs
        r = self.output_gradients(batch, z)
        scale = self.problem.loss.scale(z, batch.targets) / r.shape[0]

        def product(v: Params) -> Params:
            u = lin.jacobian_vector(v)
            dots = (r * u).reshape(*r.shape[:2], -1).sum(-1)  # [S, n]
            weighted = r * dots.reshape(*dots.shape, *([1] * (z.ndim - 1)))
            return lin.jacobian_transpose_vector(scale * weighted.sum(0))

        return lin.apply(product, V)


class FisherOperator(_OutputOuterProductOperator):
    """F̂ = Σ_i a_i J_iᵀ (1/S Σ_s r_is r_isᵀ) J_i, targets ŷ_is ~ p(y | z_i); E[F̂] = G.

    Args:
        problem: the model, loss and data.
        samples: S, the number of targets drawn per data point.
        generator: a ``torch.Generator`` or an integer seed for the draws; ``None`` uses
            torch's global random state. Draws happen on the first product, batch by batch.
        cache: as for ``GaussNewtonOperator``.
        seed: instead of ``generator``: key each sample's draws by (seed, its global
            index), independent of the batching and of the number of ranks (see the module
            docstring). Required when the problem is distributed.
    """

    def __init__(
        self,
        problem: Problem,
        samples: int = 1,
        generator: torch.Generator | int | None = None,
        cache: bool | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise InvalidArgumentError(
                f"samples must be a positive integer, got {samples!r}; pass e.g. samples=1"
            )
        super().__init__(problem, cache=cache)
        self.samples = samples
        if isinstance(generator, int) and not isinstance(generator, bool):
            generator = torch.Generator(device=self.device).manual_seed(generator)
        elif generator is not None and not isinstance(generator, torch.Generator):
            raise InvalidArgumentError(
                f"generator must be a torch.Generator, an int seed or None, got {generator!r}"
            )
        self.generator = generator
        self.seed = _check_seed(seed, generator, problem)

    def _restricted(self, problem: Problem) -> FisherOperator:
        """The same draws only with ``seed`` (keyed by sample); with a generator, new ones."""
        return FisherOperator(problem, self.samples, self.generator, self.cache, seed=self.seed)

    def _targets(self, z: Tensor, batch: Batch) -> Tensor:
        if self.seed is not None:
            return self._keyed_targets(z, batch)
        z_rep = z.repeat(self.samples, *([1] * (z.ndim - 1)))
        return self.problem.loss.sample_targets(z_rep, generator=self.generator)

    def _keyed_targets(self, z: Tensor, batch: Batch) -> Tensor:
        """S targets per sample, sample i's from a generator keyed by (seed, global i)."""
        generator = torch.Generator(device=self.device)
        draws = []
        for i in range(z.shape[0]):
            generator.manual_seed(sample_key(self.seed, batch.start + i))
            z_i = z[i : i + 1].expand(self.samples, *z.shape[1:])
            draws.append(self.problem.loss.sample_targets(z_i, generator=generator))
        targets = torch.stack(draws, dim=1)  # [S, n, ...]
        return targets.reshape(self.samples * z.shape[0], *targets.shape[2:])


_MASK64 = 2**64 - 1


def sample_key(seed: int, index: int) -> int:
    """A 64-bit seed for sample ``index`` under ``seed`` (splitmix64 of the pair).

    Its low 32 bits are well mixed, which matters because torch's CPU generator keeps only
    those: two of n samples share a stream with probability about n²/2³³, harmless for a
    Monte-Carlo average.
    """
    x = (seed * 0x9E3779B97F4A7C15 + index + 1) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _check_seed(seed: int | None, generator: object, problem: Problem) -> int | None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidArgumentError(f"seed must be an integer or None, got {seed!r}")
    if seed is not None and generator is not None:
        raise InvalidArgumentError(
            "pass either generator or seed to the Fisher operator, not both"
        )
    if seed is None and problem.distributed:
        raise InvalidArgumentError(
            "a Fisher operator on a distributed problem needs seed=INT, so that each "
            "sample's targets are keyed by its global index and no rank repeats another's "
            "draws; pass e.g. seed=0"
        )
    return seed


class EmpiricalFisherOperator(_OutputOuterProductOperator):
    """EF = Σ_i a_i ∇ℓ_i ∇ℓ_iᵀ with the observed targets (see the module docstring)."""

    def _targets(self, z: Tensor, batch: Batch) -> Tensor:
        return batch.targets

    def diagonal(self) -> Tensor:
        """diag(EF) = Σ_i a_i ∇ℓ_i ⊙ ∇ℓ_i exactly (through the proved chain, else per-sample
        gradients under ``vmap``)."""
        return exact_diagonal(self.problem, "ef", params=self.params)


def fisher_operator(
    problem: Problem,
    samples: int = 1,
    generator: torch.Generator | int | None = None,
    cache: bool | None = None,
    *,
    seed: int | None = None,
) -> FisherOperator:
    """The Monte-Carlo Fisher of ``problem`` with ``samples`` targets per data point."""
    return FisherOperator(problem, samples=samples, generator=generator, cache=cache, seed=seed)


def empirical_fisher_operator(
    problem: Problem, cache: bool | None = None
) -> EmpiricalFisherOperator:
    """The empirical Fisher Σ_i a_i ∇ℓ_i ∇ℓ_iᵀ of ``problem``."""
    return EmpiricalFisherOperator(problem, cache=cache)
