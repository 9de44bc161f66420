"""Where a Hessian-free step spends its time, and what a loss-only closure saves.

Martens' MNIST autoencoder (784-1000-500-250-30 and mirrored decoder, 2.8 M parameters;
the synthetic CURVES autoencoder if the MNIST files are missing) takes ``--steps`` HF steps
twice from the same initial weights, on a FIXED gradient batch (default the first 10,000
training cases) with a curvature batch of its first 10 % (Martens 2010, §4.3), Martens'
preconditioner, λ starting at his 45, and the CG, backtracking and line-search settings of
``hesskit.optim.HessianFree``:

* ``closure only``: every trial point (CG-iterate backtracking, Armijo line search) is
  evaluated through the gradient closure, whose gradient is thrown away, as an optimizer
  that follows ``torch.optim.LBFGS``'s closure contract has to;
* ``with loss_closure``: trial points are evaluated by a loss-only closure under
  ``torch.no_grad()`` (``HessianFree.step(closure, loss_closure=...)``, what
  ``hesskit train`` does).

* ``diag(EF) from the gradient pass``: as ``with loss_closure``, with the preconditioner's
  empirical-Fisher diagonal accumulated in the gradient closure's own backward pass
  (``hesskit.optim.hessian_free.preconditioners.gradient_pass_preconditioner``, BackPACK's
  SumGradSquared; proved exact for this Linear chain) instead of a separate per-sample
  pass, as Martens' ``grad2`` (HFDemo ``nnet_train_2.m`` lines 1086–1087, 1106).

Per variant it reports the median seconds per step and the total seconds in each phase:
the gradient at θ, the trial evaluations, the preconditioner's empirical-Fisher diagonal
and the curvature products (CG), plus the rest (CG's vector work, bookkeeping). Both
variants must take the same steps (checked: the final parameters agree to float rounding).
Torch runs on ``--threads`` threads (default 2), BLAS on 1; the machine may be shared:
compare the two variants of one run.

    .venv/bin/python benchmarks/hf_step.py   # writes benchmarks/results/hf_step.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch

from hesskit.estimators.exact_diagonal import empirical_fisher_diagonal
from hesskit.operators import damped, gauss_newton_operator
from hesskit.operators.counting import CountingOperator
from hesskit.optim import HessianFree, LevenbergMarquardt
from hesskit.optim.hessian_free.preconditioners import (
    DiagonalPreconditioner,
    gradient_pass_preconditioner,
)
from hesskit.problem import Problem
from hesskit.training.bench import environment
from martens_problem import load_problem

RESULTS = Path(__file__).resolve().parent / "results" / "hf_step.json"


class PhaseClock:
    """Seconds spent in each named phase (wall clock)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def timed(self, phase: str, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start
                self.calls[phase] = self.calls.get(phase, 0) + 1

        return wrapper


def run_variant(problem, initial_state, X, curvature_cases, steps, use_loss_closure,
                from_gradient_pass=False):
    """``steps`` HF steps from ``initial_state``; returns per-step seconds, phases, model."""
    model = copy.deepcopy(problem.model)
    model.load_state_dict(initial_state)
    loss_fn, wd = problem.loss, problem.weight_decay
    clock = PhaseClock()
    operators: list[CountingOperator] = []

    def objective():
        squares = sum(p.pow(2).sum() for p in model.parameters())
        return loss_fn(model(X), X) + 0.5 * wd * squares

    def closure():
        optimizer.zero_grad()
        value = objective()
        value.backward()
        return value

    def curvature():
        problem_c = Problem(model, loss_fn, (X[:curvature_cases], X[:curvature_cases]))
        operators.append(CountingOperator(damped(gauss_newton_operator(problem_c), wd)))
        return operators[-1]

    if from_gradient_pass:
        extra_passes = []
        hooked = gradient_pass_preconditioner(
            model, loss_fn, lambda: (X, X), on_extra_pass=lambda: extra_passes.append(1))
        preconditioner = dataclasses.replace(
            hooked, statistic=clock.timed("preconditioner diag(EF)", hooked.statistic))
    else:
        fisher = clock.timed("preconditioner diag(EF)",
                             lambda: empirical_fisher_diagonal(Problem(model, loss_fn, (X, X))))
        preconditioner = DiagonalPreconditioner(fisher)
    optimizer = HessianFree(
        model.parameters(), curvature=curvature,
        damping=LevenbergMarquardt(initial=problem.hf_initial_damping),
        preconditioner=preconditioner,
    )
    gradient_closure = clock.timed("gradient closure", closure)
    loss_closure = clock.timed("loss-only closure", objective)
    per_step = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.step(gradient_closure, loss_closure=loss_closure if use_loss_closure else None)
        per_step.append(time.perf_counter() - start)
    phases = dict(clock.seconds)
    phases["curvature products (CG)"] = sum(op.seconds for op in operators)
    phases["rest (CG vector work, bookkeeping)"] = sum(per_step) - sum(phases.values())
    return {
        "seconds_per_step_median": statistics.median(per_step),
        "seconds_per_step": per_step,
        "phase_seconds": phases,
        "phase_calls": dict(clock.calls),
        "curvature_products": sum(op.products for op in operators),
        "cg_iterations": optimizer.hf_state["cg_iterations"],
        "final_loss": float(objective().detach()),
        "separate_preconditioner_passes": (len(extra_passes) if from_gradient_pass
                                           else steps),
    }, model


def statistic_costs(problem, X, repeats):
    """Seconds of the three ways to reach θ's gradient and diag(EF), interleaved round by
    round (``products.interleaved_times``) so that load on a shared machine hits all alike:
    the plain gradient, the gradient with the squares accumulated in its backward pass (and
    the proof and flattening of ``empirical_fisher_diagonal``), and the separate pass."""
    from hesskit.estimators.gradient_squares import GradientSquares
    from products import interleaved_times

    model, loss_fn = problem.model, problem.loss
    squares = GradientSquares(model, loss_fn)

    def gradient():
        model.zero_grad()
        loss_fn(model(X), X).backward()

    def hooked():
        with squares.capture(X):
            gradient()
        if squares.empirical_fisher_diagonal() is None:
            raise RuntimeError(f"the hook path was refused: {squares.reason}")

    def separate():
        empirical_fisher_diagonal(Problem(model, loss_fn, (X, X)))

    times = interleaved_times({"gradient": gradient, "gradient + squares in its backward":
                               hooked, "separate per-sample pass": separate}, repeats, {})
    medians = {key: statistics.median(ts) for key, ts in times.items()}
    base = medians["gradient"]
    return {"seconds_median": medians, "repeats": repeats,
            "gradients": {key: value / base for key, value in medians.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gradient-cases", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--repeats", type=int, default=7,
                        help="interleaved rounds of the diag(EF) cost comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    problem = load_problem()
    X = problem.train[0][: args.gradient_cases]
    curvature_cases = max(1, len(X) // 10)
    initial = copy.deepcopy(problem.model.state_dict())
    costs = statistic_costs(problem, X, args.repeats)
    print("diag(EF), in gradients: " + ", ".join(
        f"{k} {v:.2f}" for k, v in costs["gradients"].items()))
    results, models = {}, {}
    variants = (("closure only", False, False), ("with loss_closure", True, False),
                ("diag(EF) from the gradient pass", True, True))
    for name, lean, hooked in variants:
        results[name], models[name] = run_variant(
            problem, initial, X, curvature_cases, args.steps, lean, hooked)
        print(f"{name:<18} {results[name]['seconds_per_step_median']:7.2f} s/step (median); "
              + ", ".join(f"{k} {v:.1f} s" for k, v in results[name]["phase_seconds"].items()))
    with torch.no_grad():
        drift = max(float((a - b).abs().max()) for a, b in zip(
            models["closure only"].parameters(), models["with loss_closure"].parameters(),
            strict=True))
        hook_drift = max(float((a - b).abs().max()) for a, b in zip(
            models["with loss_closure"].parameters(),
            models["diag(EF) from the gradient pass"].parameters(), strict=True))
    ratio = (results["closure only"]["seconds_per_step_median"]
             / results["with loss_closure"]["seconds_per_step_median"])
    lean, hooked = (results[name] for name in ("with loss_closure",
                                               "diag(EF) from the gradient pass"))
    hook_ratio = lean["seconds_per_step_median"] / hooked["seconds_per_step_median"]
    gradient = lean["phase_seconds"]["gradient closure"] / lean["phase_calls"]["gradient closure"]
    saved = (lean["phase_seconds"]["gradient closure"]
             + lean["phase_seconds"]["preconditioner diag(EF)"]
             - hooked["phase_seconds"]["gradient closure"]
             - hooked["phase_seconds"]["preconditioner diag(EF)"]) / args.steps
    print(f"speed-up per step (median): {ratio:.2f}x; max parameter difference {drift:.1e}")
    print(f"diag(EF) from the gradient pass: {hook_ratio:.2f}x per step (median), "
          f"{saved:.2f} s = {saved / gradient:.2f} gradients saved per step; "
          f"max parameter difference {hook_drift:.1e}")
    record = {
        "benchmark": "hf_step",
        "problem": problem.name,
        "gradient_cases": len(X),
        "curvature_cases": curvature_cases,
        "steps": args.steps,
        "variants": results,
        "speedup_per_step_median": ratio,
        "max_parameter_difference": drift,
        "statistic_costs": costs,
        "gradient_pass_statistic": {
            "speedup_per_step_median": hook_ratio,
            "seconds_saved_per_step": saved,
            "gradients_saved_per_step": saved / gradient,
            "max_parameter_difference": hook_drift,
        },
        "environment": {**environment(), "OPENBLAS_NUM_THREADS":
                        os.environ.get("OPENBLAS_NUM_THREADS", "unset")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
