"""``martens2010``: Hessian-free with exactly the settings of Martens' released HFDemo code.

Every setting and its source (Martens 2010, ICML; HFDemo ``nnet_train_2.m``,
``conjgrad_1.m``, ``nnet_demo_2.m``, line numbers of the original release):

=========================  ===========================================================
gradient, backtracking,    the full training set (``nnet_train_2.m`` header: "the gradient
line search                and line-search are still computed using the full training set")
curvature B                Gauss-Newton (``mattype = 'gn'``, ``nnet_demo_2.m``) on chunk
                           (k − 1) mod ``numchunks`` of a shuffled partition (line 940)
λ₀, LM rule                45; ×3/2 if ρ < ¼ or NaN, ×2/3 if ρ > ¾ (lines 100–116, 1392)
ρ                          chunk objective change over the undamped model; −∞ on a rise
                           (lines 1340–1353)
CG                         ≤ 250 iterations (line 1255), progress rule ε = 5e-4, k =
                           max(10, 0.1 i) (``conjgrad_1.m`` lines 4–7, 80), warm start
                           0.95 × previous (line 1244)
kept iterates              ⌈5·1.3^j⌉ and the last (``conjgrad_1.m`` lines 13–14, 69–73)
preconditioner             [Σ_i g_i ⊙ g_i / n + wd + λ]^¾ over the full set (line 1264)
line search                Armijo c = 10⁻², shrink 0.8, 60 tries (lines 1361–1385)
weight cost                (wd/2)‖θ‖² over all parameters, biases included (lines 786, 1114)
=========================  ===========================================================

The preconditioner's statistic comes from the gradient pass, as Martens' does, where
hesskit proves that exact (a chain of ``nn.Linear`` layers and elementwise activations,
:mod:`hesskit.estimators.gradient_squares`); elsewhere it is a separate per-sample pass,
counted by ``statistic_passes``.
"""

from __future__ import annotations

from torch import nn

from hesskit.operators.gauss_newton import gauss_newton_operator
from hesskit.optim.damping import LevenbergMarquardt
from hesskit.optim.hessian_free.chunks import CurvatureChunk, RoundRobinChunks, chunk_loss
from hesskit.optim.hessian_free.optimizer import HessianFree
from hesskit.optim.hessian_free.preconditioners import gradient_pass_preconditioner
from hesskit.optim.hessian_free.settings import CGSettings
from hesskit.problem import Problem
from hesskit.tensor_tree import select


def martens2010(
    model: nn.Module,
    loss: nn.Module,
    data: tuple[object, object],
    *,
    numchunks: int,
    weight_decay: float,
    seed: int = 0,
    initial_damping: float = 45.0,
    max_cg_iterations: int = 250,
) -> HessianFree:
    """Hessian-free over ``model.parameters()`` with HFDemo's settings (module docstring).

    Args:
        model: the network; ``loss(model(X), y)`` must be the per-case MEAN loss (λ₀ = 45
            is for λ added to the curvature of the mean, ``nnet_train_2.m`` lines 105–115).
        loss: the loss module.
        data: the full training set ``(inputs, targets)``, any input form
            :mod:`hesskit.tensor_tree` knows.
        numchunks: curvature chunks (Martens: CURVES 4, MNIST 8, ``nnet_demo_2.m``).
        weight_decay: the weight cost wd (Martens: CURVES 2e-5, MNIST 1e-5); HF adds it,
            so the closure must return the loss WITHOUT it.
        seed: seeds the one shuffle of the chunk partition.
        initial_damping: λ₀ (``initlambda = 45``, line 116).
        max_cg_iterations: ``maxiters`` (250, line 1255).

    Returns:
        The optimizer. Drive it with ``step(closure)`` where the closure clears the
        gradients, computes ``loss(model(X), y)`` on ``data``, calls ``backward()`` and
        returns it. ``optimizer.statistic_passes`` counts the preconditioner's separate
        per-sample passes over ``data``: none where diag(EF) is proved to come from the
        closure's own backward pass (Martens' ``grad2``, lines 1086–1087, 1106; a chain of
        ``nn.Linear`` layers and elementwise activations, see
        :mod:`hesskit.estimators.gradient_squares`), one a step otherwise.

    Cost per step: one gradient on ``data`` (with the preconditioner's squares in its
    backward pass, or a separate per-sample pass on ``data`` where that is not proved),
    CG's products + 1 (ρ) on a chunk, two forward passes on the chunk (ρ), and the
    backtracking's and line search's forward passes on ``data``.
    """
    problem = Problem(model, loss, data)
    chunks = RoundRobinChunks(problem.num_data, numchunks, seed=seed)
    chunk_problems = [Problem(model, loss, select(data, index)) for index in chunks.partition]
    optimizer: HessianFree

    def extra_pass() -> None:
        optimizer.statistic_passes += 1  # type: ignore[attr-defined]

    def curvature() -> CurvatureChunk:
        chunk = chunk_problems[chunks.index(int(optimizer.hf_state["steps"]))]
        return CurvatureChunk(gauss_newton_operator(chunk), loss=chunk_loss(chunk))

    optimizer = HessianFree(
        model.parameters(),
        curvature=curvature,
        damping=LevenbergMarquardt(initial=initial_damping),
        cg=CGSettings(max_iterations=max_cg_iterations),
        preconditioner=gradient_pass_preconditioner(
            model, loss, lambda: data, on_extra_pass=extra_pass
        ),
        weight_decay=weight_decay,
    )
    optimizer.chunks = chunks  # type: ignore[attr-defined]
    optimizer.statistic_passes = 0  # type: ignore[attr-defined]
    return optimizer
