"""Top eigenvalues of a network Hessian: products used and relative error, side by side.

Model: ReLU classifier 784-256-256-10 (269 322 parameters), cross-entropy, one batch of 512
random inputs (standard normal) and random labels, float64 (so that a relative error of
1e-3 is not blurred by float32 rounding), torch threads = 2, OPENBLAS_NUM_THREADS = 1.

Compared, each on the same Hessian operator wrapped in a product counter:
  * hesskit Lanczos ``top_eigenpairs`` at its defaults (tol 1e-3), k = 1 and k = 5;
  * SciPy ARPACK ``eigsh(which="LA", tol=1e-3)`` through ``op.to_scipy()``, k = 1 and 5;
  * hesskit ``power_iteration`` at its defaults (tol 1e-3), k = 1 and 5;
  * PyHessian-style power iteration (written here: PyHessian is not a dependency) with its
    defaults maxIter = 100, tol = 1e-3 on the relative change of the eigenvalue estimate,
    Gram-Schmidt deflation against the eigenvectors already found, k = 1 and 5.
If hessian-eigenthings is installed, its ``lanczos`` and ``deflated_power_iteration`` run at
their defaults (tol 1e-4, Lanczos ``max_iter = 2k``, ``which="LM"``; power ``max_iter = 100``)
on its own autograd ``HessianOperator`` over the same batch, its products counted the same way.
The reference eigenvalues come from ``eigsh(k=6, which="LA", tol=1e-10)``. The relative error
of a method is max_i |θ_i − λ_i| / |λ_i| over its k values. One gradient's time is recorded
as the baseline for the seconds per product.

Run:  .venv/bin/python benchmarks/eigen.py
Writes benchmarks/results/eigen.json (with an environment record) and prints a table.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy is imported

import datetime
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy
import torch
from scipy.sparse.linalg import eigsh
from torch import nn

from hesskit.estimators import power_iteration, top_eigenpairs
from hesskit.models import mlp
from hesskit.operators import CountingOperator, hessian_operator
from hesskit.problem import Problem

THREADS = 2
BATCH = 512
DTYPE = torch.float64
RESULTS = Path(__file__).parent / "results" / "eigen.json"


def relu_classifier() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = mlp([784, 256, 256, 10], "relu").to(DTYPE)
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(BATCH, 784, generator=generator, dtype=DTYPE)
    y = torch.randint(0, 10, (BATCH,), generator=generator)
    return model, X, y


def gradient_seconds(problem: Problem, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        problem.gradient()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run_method(op: CountingOperator, method: Callable[[], np.ndarray]) -> dict:
    op.reset()
    start = time.perf_counter()
    values = np.sort(np.asarray(method(), dtype=float))[::-1]
    return {"values": values.tolist(), "products": op.products,
            "seconds": time.perf_counter() - start}


def arpack(op: CountingOperator, k: int, tol: float) -> np.ndarray:
    return eigsh(op.to_scipy(), k=k, which="LA", tol=tol, return_eigenvectors=False)


def main() -> None:
    torch.set_num_threads(THREADS)
    model, X, y = relu_classifier()
    problem = Problem(model, nn.CrossEntropyLoss(), (X, y))
    op = CountingOperator(hessian_operator(problem))
    print(f"ReLU classifier 784-256-256-10: N = {problem.num_params}, batch {BATCH}, {DTYPE}")
    baseline = gradient_seconds(problem)
    reference = run_method(op, lambda: arpack(op, 6, 1e-10))
    exact = np.asarray(reference["values"])
    print(f"reference (eigsh tol 1e-10): {exact[:5]} in {reference['products']} products")
    methods: dict[str, Callable[[], np.ndarray]] = {}
    for k in (1, 5):
        methods[f"hesskit lanczos top-{k}"] = lambda k=k: _values(top_eigenpairs(op, k))
        methods[f"scipy eigsh top-{k} (tol 1e-3)"] = lambda k=k: arpack(op, k, 1e-3)
        methods[f"hesskit power iteration top-{k}"] = lambda k=k: _values(power_iteration(op, k))
    for k in (1, 5):
        methods[f"pyhessian-style power iteration top-{k}"] = lambda k=k: pyhessian_power(op, k)
    counted = CountingOperator(hessian_operator(problem))  # products of hessian-eigenthings
    methods.update(eigenthings_methods(model, X, y, counted))
    rows = {}
    for name, method in methods.items():
        counter = counted if name.startswith("hessian-eigenthings") else op
        row = run_method(counter, method)
        k = len(row["values"])
        row["relative_error"] = float(np.max(np.abs(np.asarray(row["values"]) - exact[:k])
                                             / np.abs(exact[:k])))
        rows[name] = row
        print(f"{name:42s} products {row['products']:5d}  rel. error {row['relative_error']:.2e}"
              f"  {row['seconds']:.1f} s")
    record = {
        "model": "ReLU MLP 784-256-256-10, cross-entropy, random data",
        "num_params": problem.num_params,
        "batch": BATCH,
        "dtype": str(DTYPE),
        "reference": {"method": "scipy eigsh k=6 which=LA tol=1e-10", **reference},
        "gradient_seconds": baseline,
        "methods": rows,
        "hessian_eigenthings": _eigenthings_version(),
        "environment": _environment(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(f"gradient {baseline * 1e3:.1f} ms; wrote {RESULTS}")


def pyhessian_power(op: CountingOperator, k: int, max_iter: int = 100,
                    tol: float = 1e-3) -> np.ndarray:
    """Top-k eigenvalues as PyHessian's ``hessian.eigenvalues`` computes them.

    For each eigenvalue: a standard normal start, then up to ``max_iter`` steps of
    v ← orthonormalize(v against found eigenvectors), Hv, θ = vᵀHv, v = Hv / ‖Hv‖, stopping
    when |θ − θ_prev| / (|θ_prev| + 1e-6) < tol. One product per step.
    """
    generator = torch.Generator().manual_seed(0)
    found: list[torch.Tensor] = []
    values = []
    for _ in range(k):
        v = torch.randn(op.shape[0], generator=generator, dtype=DTYPE)
        v = v / v.norm()
        value = None
        for _ in range(max_iter):
            for u in found:  # PyHessian's orthnormal(): Gram-Schmidt, then normalize
                v = v - torch.dot(v, u) * u
            v = v / v.norm()
            Hv = op.matvec(v)
            estimate = float(torch.dot(Hv, v))
            v = Hv / Hv.norm()
            if value is not None and abs(value - estimate) / (abs(value) + 1e-6) < tol:
                value = estimate
                break
            value = estimate
        found.append(v)
        values.append(value)
    return np.asarray(values)


def eigenthings_methods(model: nn.Module, X: torch.Tensor, y: torch.Tensor,
                        counted: CountingOperator) -> dict[str, Callable]:
    """hessian-eigenthings' top-k at its defaults, on its own operator (``counted`` counts)."""
    try:
        import hessian_eigenthings as he
    except ImportError:
        return {}
    own = he.HessianOperator(model, [(X, y)], he.supervised_loss(nn.CrossEntropyLoss()))

    def product(v: torch.Tensor) -> torch.Tensor:
        counted.products += 1
        return own.matvec(v)

    wrapped = he.LambdaOperator(product, size=own.size, device=own.device, dtype=own.dtype)
    methods = {}
    for k in (1, 5):
        methods[f"hessian-eigenthings lanczos top-{k}"] = (
            lambda k=k: he.lanczos(wrapped, k=k).eigenvalues.double().numpy())
        methods[f"hessian-eigenthings power iteration top-{k}"] = (
            lambda k=k: he.deflated_power_iteration(wrapped, k=k).eigenvalues.double().numpy())
    return methods


def _values(result) -> np.ndarray:
    return result.values.double().numpy()


def _eigenthings_version() -> str:
    try:
        import hessian_eigenthings
    except ImportError:
        return "not installed"
    return hessian_eigenthings.__version__


def _environment() -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch_threads": torch.get_num_threads(),
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
    }


if __name__ == "__main__":
    main()
