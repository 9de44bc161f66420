"""Exact diagonals of the Hessian, Gauss-Newton and empirical Fisher of a ``Problem``.

For the total loss L(θ) = Σ_b w_b c_b Σ_{i∈b} ℓ_i(θ) (c_b the batch's reduction factor,
w_b its weight, ℓ_i the unscaled per-sample loss):

* empirical Fisher, EF = Σ_b w_b c_b Σ_i g_i g_iᵀ with g_i = ∇ℓ_i (unscaled), so
  diag(EF) = Σ_b w_b c_b Σ_i g_i ⊙ g_i;
* Gauss-Newton, G = Σ_b w_b Σ_i J_iᵀ S_i S_iᵀ J_i (S_i from ``Loss.hessian_sqrt``, c_b
  included), so diag(G) = Σ_b w_b Σ_i Σ_c (J_iᵀ S_i)[:, c]²;
* Hessian: exact only for a chain the structural engine proves (:mod:`hesskit.engine`).

Two exact methods: backpropagation of per-sample curvature through a proved chain
(:func:`backprop_diagonal`; about k backward passes for k outputs), and, for G and EF on
any model, ``torch.func.vmap`` of per-sample vjp / grad (:func:`per_sample_diagonal`), which
materialises n·m·N numbers per batch (m = 1 for EF, the output dimension for G): thousands
of gradients on a 784-256-256-10 classifier with batch 512 against under ten for
backpropagation (benchmarks/diagonal.py). A model whose samples are coupled (train-mode
BatchNorm normalises with batch statistics) is no sum of per-sample functions, but
G = Jᵀ (blockdiag_i S_i S_iᵀ) J and EF = Σ_i a_i (Jᵀ r̂_i)(Jᵀ r̂_i)ᵀ still hold with J the
Jacobian of the whole batch's outputs and r̂_i = ∇_{z_i} ℓ_i placed on sample i, so their
diagonals are sums of squares of n·m vjps of the batch function, vmapped over those
output directions.

For a distributed ``Problem`` each rank sums over its own samples and one all-reduce of the
N-vector adds the ranks' parts.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, vjp, vmap

from hesskit.distributed import all_reduce_sum
from hesskit.engine import Table, chain_diagonal, primal_pass, problem_chain
from hesskit.errors import UnsupportedArchitectureError
from hesskit.problem import Batch, Problem
from hesskit.tensor_tree import map_tensors, num_samples, select

ELEMENT_BUDGET = 2**24
"""Largest per-sample intermediate (samples × N × columns) held at once by the vmap path."""

KINDS = ("hessian", "ggn", "ef")
Params = dict[str, Tensor]


def backprop_diagonal(problem: Problem, kind: str, params: Params | None = None) -> Tensor:
    """diag of H, G or EF (``kind``), flat ``[N]``, through the proved chain of every batch,
    at ``params`` (default: the model's current values).

    Raises:
        UnsupportedArchitectureError: the engine cannot prove the model a chain.
    """
    params = problem.parameters() if params is None else params
    problem.check_finite_parameters(params)
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    for batch in problem.batches():
        chain = problem_chain(problem, params, batch.inputs, table=Table.DIAGONAL)
        primal = primal_pass(chain, problem.loss, batch.targets, params)
        parts = chain_diagonal(primal, problem.loss, batch.targets, kind)
        for name, part in parts.items():
            total[name] += batch.weight * part
    return _summed_over_ranks(problem, problem.layout.flatten(total))


def per_sample_diagonal(problem: Problem, kind: str, params: Params | None = None) -> Tensor:
    """diag of G or EF (``kind``), flat ``[N]``, by per-sample ``vmap`` on any model.

    ``vmap`` over samples is used for a batch only where it is shown to apply: the model
    has no train-mode BatchNorm and :func:`independent_samples` finds the per-sample
    outputs equal to the batch's. A model that couples its samples has no per-sample
    function; its diagonals come from rows of the whole batch's output Jacobian instead
    (:func:`_coupled_batch`): exact, at n·m backward passes of the batch.
    """
    params = problem.parameters() if params is None else params
    problem.check_finite_parameters(params)
    total = torch.zeros(problem.num_params, dtype=problem.dtype, device=problem.device)
    for batch in problem.batches():
        separate = not problem.couples_samples and independent_samples(
            problem, params, batch.inputs
        )
        one_batch = _per_sample_batch if separate else _coupled_batch
        total += batch.weight * one_batch(problem, params, batch, kind)
    return _summed_over_ranks(problem, total)


def exact_diagonal(
    problem: Problem, kind: str, use_chain: bool | None = None, params: Params | None = None
) -> Tensor:
    """diag of H, G or EF exactly: the chain where proved, else (G, EF) per-sample vmap.

    Args:
        problem: the model, loss and data.
        kind: ``"hessian"``, ``"ggn"`` or ``"ef"``.
        use_chain: True: the chain or raise; False: vmap; None: the chain where proved.
        params: the parameter values (default: the model's current values).

    Raises:
        UnsupportedArchitectureError: no exact method applies (the Hessian of a model the
            engine cannot prove a chain; ``use_chain=True`` on such a model).
    """
    if use_chain is not False:
        try:
            return backprop_diagonal(problem, kind, params)
        except UnsupportedArchitectureError as reason:
            if use_chain or kind == "hessian":
                raise UnsupportedArchitectureError(
                    f"no exact {_NAMES[kind]} diagonal: {reason}; use hesskit.diagonal(...) "
                    "for a Hutchinson estimate with its standard error"
                ) from None
    return per_sample_diagonal(problem, kind, params)


_NAMES = {"hessian": "Hessian", "ggn": "Gauss-Newton", "ef": "empirical-Fisher"}


def _summed_over_ranks(problem: Problem, local: Tensor) -> Tensor:
    """A per-sample sum over this rank's data, summed over the ranks (one all-reduce)."""
    return all_reduce_sum(local.contiguous()) if problem.distributed else local


def _per_sample_batch(problem: Problem, params: dict, batch: Batch, kind: str) -> Tensor:
    loss, X, y = problem.loss, batch.inputs, batch.targets

    def one(tree: object) -> object:
        return map_tensors(tree, lambda t: t[None])

    if kind == "ef":
        with torch.no_grad():
            c = loss.scale(problem.output(params, X), y)

        def sample_loss(p: dict, x: object, t: object) -> Tensor:
            z = problem.output(p, one(x))
            return loss.value(z, one(t)) / loss.reduction_factor(z, one(t))

        def squares(p: dict, x: object, t: object) -> dict:
            return {n: g**2 for n, g in grad(sample_loss)(p, x, t).items()}

        per_sample, columns, weight = squares, 1, c
    else:
        with torch.no_grad():
            factor = loss.hessian_sqrt(problem.output(params, X), y)  # [n, k, m]

        def sample_columns(p: dict, x: object, s: Tensor) -> dict:
            _, pullback = vjp(lambda q: problem.output(q, one(x)).reshape(-1), p)
            (cols,) = vmap(pullback)(s.T)
            return {n: (col**2).sum(0) for n, col in cols.items()}

        per_sample, columns, weight, y = sample_columns, factor.shape[-1], 1.0, factor
    n = num_samples(X)
    chunk = max(1, ELEMENT_BUDGET // (problem.num_params * columns))
    total = torch.zeros(problem.num_params, dtype=problem.dtype, device=problem.device)
    try:
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            parts = vmap(per_sample, in_dims=(None, 0, 0))(
                params, select(X, part), select(y, part)
            )
            total += problem.layout.flatten({name: t.sum(0) for name, t in parts.items()})
    except RuntimeError:
        # Some modules have no vmap rule for their in-place internals (nn.LSTM / nn.GRU
        # flatten their weights in place): the same sums, one sample at a time.
        total.zero_()
        for i in range(n):
            parts = per_sample(params, select(X, i), select(y, i))
            total += problem.layout.flatten(parts)
    return weight * total


def independent_samples(problem: Problem, params: Params, inputs: object) -> bool:
    """The model's outputs on the batch equal its outputs on each sample alone (under
    ``vmap``, or one by one for modules without a vmap rule), to √ε relative: then sample
    i's output is a function of x_i only and per-sample ``vmap`` is the batch function.
    A model that mixes samples in ``forward`` (batch statistics, ``x - x.mean(0)``)
    fails it. Cost: two forward passes without gradients."""

    def alone(x: object) -> Tensor:
        return problem.output(params, map_tensors(x, lambda t: t[None]))[0]

    with torch.no_grad():
        together = problem.output(params, inputs)
        if not isinstance(together, Tensor):
            return False
        try:
            each = vmap(alone)(inputs)
        except RuntimeError:  # no vmap rule (nn.LSTM flattens its weights in place)
            each = torch.stack([alone(select(inputs, i)) for i in range(num_samples(inputs))])
    tolerance = torch.finfo(together.dtype).eps ** 0.5
    scale = float(together.abs().max()) if together.numel() else 0.0
    return bool(torch.allclose(each, together, rtol=tolerance, atol=tolerance * scale))


def _coupled_batch(problem: Problem, params: dict, batch: Batch, kind: str) -> Tensor:
    """diag(G_b) or diag(EF_b) / w_b for a batch whose samples are coupled: Σ_j (Jᵀ u_j)²
    over the output directions u_j = S_i[:, c] (G) or c_b·r̂_i (EF, scaled below) on
    sample i, by ``vmap`` over chunks of directions of one vjp of the whole batch."""
    loss, X, y = problem.loss, batch.inputs, batch.targets
    z, pullback = vjp(lambda q: problem.output(q, X), params)
    z = z.detach()
    n = z.shape[0]
    flat = z.reshape(n, -1)
    if kind == "ef":
        c = loss.scale(z, y)
        r = grad(lambda out: loss.value(out, y))(z).reshape(n, -1, 1) / c  # [n, k, 1]
        factor, weight = r, c
    else:
        factor, weight = loss.hessian_sqrt(z, y), 1.0  # [n, k, m]
    m = factor.shape[-1]
    count = n * m
    chunk = max(1, ELEMENT_BUDGET // max(1, problem.num_params + flat.numel()))
    total = torch.zeros(problem.num_params, dtype=problem.dtype, device=problem.device)
    for start in range(0, count, chunk):
        index = torch.arange(start, min(start + chunk, count), device=z.device)
        samples, columns = index // m, index % m
        directions = torch.zeros(len(index), *flat.shape, dtype=z.dtype, device=z.device)
        directions[torch.arange(len(index)), samples] = factor[samples, :, columns]
        (rows,) = vmap(pullback)(directions.reshape(len(index), *z.shape))
        total += problem.layout.flatten({name: (t**2).sum(0) for name, t in rows.items()})
    return weight * total
