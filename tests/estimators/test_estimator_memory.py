"""top_eigenpairs and spectral_density under a budget of a few MB on a model of N = 601,300,
where a basis of 100 Lanczos vectors (the code before thick restarts) needs 240 MB.

Peak memory is read from the kernel (VmHWM, reset through /proc/self/clear_refs), because
tracemalloc does not see torch's allocations. The measurement runs in a fresh process with
glibc's mmap threshold fixed at 64 KB (``MALLOC_MMAP_THRESHOLD_``), so that freed tensors
go back to the kernel and the resident set follows the live tensors rather than the
allocator's history. Each estimator's peak growth is compared with its budget plus the peak
growth of one product (the operator's own workspace for a forward and a backward pass,
which the budget does not cover), after one warm-up product.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

BUDGET = 15 * 10**6  # 6 vectors of N float32 numbers (2.4 MB each)
SLACK = 4 * 10**6  # page granularity, small tensors and Python objects


def _read_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_growth(run: Callable[[], object]) -> int:
    """Bytes by which the resident set grew at its peak while ``run()`` ran."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
    before = _read_status("VmRSS")
    run()
    return _read_status("VmHWM") - before


def measure() -> dict:
    """Run in the child process: the peak growths, the products and the basis size."""
    import torch
    from torch import nn

    from hesskit import Problem
    from hesskit.estimators import spectral_density, top_eigenpairs
    from hesskit.operators import hessian_operator

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 1000), nn.Tanh(), nn.Linear(1000, 300))
    X, Y = torch.randn(8, 300), torch.randn(8, 300)
    op = hessian_operator(Problem(model, nn.MSELoss(), (X, Y)))
    n = op.shape[0]
    op.matmat(torch.ones(n, 1))  # warm-up: lazy initialisation is not the estimators'
    result = {"n": n, "product": peak_growth(lambda: op.matmat(torch.ones(n, 1)))}
    top: dict = {}
    result["top"] = peak_growth(lambda: top.update(
        pairs=top_eigenpairs(op, 1, tol=1e-2, max_products=60, memory_budget=BUDGET)))
    result["top_products"] = top["pairs"].products
    result["top_converged"] = top["pairs"].converged
    result["restarted"] = peak_growth(lambda: top.update(pairs=top_eigenpairs(
        op, 1, tol=1e-2, max_products=60, memory_budget=BUDGET, reorthogonalize=True)))
    result["restarted_products"] = top["pairs"].products
    result["restarted_converged"] = top["pairs"].converged
    result["density"] = peak_growth(lambda: spectral_density(
        op, probes=1, steps=30, reorthogonalize=False, memory_budget=BUDGET))
    return result


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_top_eigenpairs_and_spectral_density_stay_within_a_few_mb():
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.run([sys.executable, __file__], env=env, capture_output=True,
                           text=True, check=True, timeout=300)
    found = json.loads(child.stdout.splitlines()[-1])
    assert found["n"] == 601_300
    assert 100 * found["n"] * 4 > 16 * BUDGET  # what the stored basis of 100 steps needs
    assert found["top_converged"]  # the default: the three-term recurrence
    assert found["restarted_converged"] and found["restarted_products"] > 4  # a basis of 4
    limit = BUDGET + found["product"] + SLACK
    assert found["top"] <= limit, found
    assert found["restarted"] <= limit, found
    assert found["density"] <= limit, found


if __name__ == "__main__":
    print(json.dumps(measure()))
