"""Curvature at GPT-2 scale: products, eigenvalues, trace and spectral density, with memory.

Model: ``transformers.GPT2LMHeadModel`` from a config (no download): the full 50,257-token
vocabulary, 128 positions, dropout 0, eager attention (double backward through it), in
eval mode; data: 4 sequences of 128 random tokens (seeded), next-token cross-entropy over
the 4 × 127 predicted positions; float32; torch threads 2. Sizes (layers × width):
4×256 (16 M parameters), 6×512 (45 M), 12×768 (GPT-2 small, 124 M), 24×1024 (GPT-2
medium, 355 M; listed, not run here).

Every case runs in its own process, after one warm-up gradient, and records the wall time
of the call and its peak memory: the growth of the resident set above its level at the
start of the call (VmHWM after resetting it through /proc/self/clear_refs), with glibc's
mmap threshold fixed at 64 KB (``MALLOC_MMAP_THRESHOLD_``) so that freed tensors leave the
resident set. Ratios are to the median of 3 gradients timed in the same process.

Cases: ``gradient``; ``hvp`` / ``ggn``: a fresh operator's first product (it builds the
linearisation) and the median of 3 further products; ``pyhessian_hvp``: PyHessian's
products (``torch.autograd.grad`` with ``create_graph=True``, then one double backward
per product through the kept graph; "fresh" is building the graph and the first product,
as for ``hvp``); ``top1`` / ``top5``: ``top_eigenpairs`` (tol 1e-2) by the three-term
recurrence (``reorthogonalize=False``, 5 N-vectors: the default where the memory budget
cannot hold a whole run's basis); ``top1_restarted``: the same with a thick-restart basis
of ``--basis`` vectors; ``trace``: Hutchinson with ``--trace-probes`` products, one at a
time; ``density``: ``spectral_density`` 1 probe × 90 steps without a stored basis
(Ghorbani et al. 2019); ``blocks``: the top eigenvalue of each transformer block's
Hessian (``op.block``: the block's parameters only; ``--layers`` picks blocks),
three-term; ``pyhessian_power``: PyHessian's power iteration (3 N-vectors, its defaults:
100 iterations, tol 1e-3 on the relative change); ``eigsh``: SciPy's
``eigsh(k=1, which="LA", tol=1e-2)`` on ``op.to_scipy()``.

Run:  .venv/bin/python benchmarks/scale.py [--sizes 4x256] [--cases gradient,hvp,...]
Writes benchmarks/results/scale.json (with an environment record; merged with the cases
already there) and prints a table.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy is imported

import argparse
import datetime
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

THREADS = 2
SEQUENCES, TOKENS, VOCAB = 4, 128, 50257
SIZES = {"4x256": (4, 256), "6x512": (6, 512), "12x768": (12, 768), "24x1024": (24, 1024)}
CASES = ("gradient", "hvp", "ggn", "pyhessian_hvp", "top1", "top5", "top1_restarted",
         "trace", "density", "blocks", "pyhessian_power", "eigsh")
RESULTS = Path(__file__).parent / "results" / "scale.json"


class NextTokenLogits(nn.Module):
    """input ids ``[B, T]`` → logits of the next token ``[B, V, T−1]`` (class dimension 1,
    as ``nn.CrossEntropyLoss`` takes tokens)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=ids).logits[:, :-1].transpose(1, 2)


def gpt2_problem(size: str):
    from transformers import GPT2Config, GPT2LMHeadModel

    from hesskit import Problem

    layers, width = SIZES[size]
    config = GPT2Config(vocab_size=VOCAB, n_positions=TOKENS, n_embd=width, n_layer=layers,
                        n_head=width // 64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    config._attn_implementation = "eager"  # double backward through attention
    lm = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, VOCAB, (SEQUENCES, TOKENS), generator=torch.Generator().manual_seed(0))
    model = NextTokenLogits(lm)
    return Problem(model, nn.CrossEntropyLoss(), (ids, ids[:, 1:])), model, ids


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def measured(call: Callable[[], object]) -> tuple[object, float, int]:
    """(result, seconds, peak resident growth in bytes) of one call."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    return result, seconds, _status("VmHWM") - before


def pyhessian_products(model: nn.Module, ids: torch.Tensor):
    """PyHessian's way (``pyhessian/hessian.py``, ``utils.hessian_vector_product``): the
    gradient with ``create_graph=True`` once, then ``torch.autograd.grad(g, θ, v,
    retain_graph=True)`` per product."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = nn.functional.cross_entropy(model(ids), ids[:, 1:])
    grads = torch.autograd.grad(loss, params, create_graph=True)

    def product(v: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True))

    return params, product


def pyhessian_power(product, params, max_iterations: int = 100, tol: float = 1e-3) -> dict:
    """PyHessian's ``eigenvalues(maxIter=100, tol=1e-3, top_n=1)``: v ← Hv/‖Hv‖ until the
    Rayleigh quotient changes by less than tol relative (3 N-vectors: v, Hv, and a copy)."""
    generator = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=generator) for p in params]
    norm = torch.sqrt(sum((x * x).sum() for x in v))
    v = [x / norm for x in v]
    eigenvalue = None
    iteration = 0
    while iteration < max_iterations:
        iteration += 1
        Hv = product(v)
        value = float(sum((a * b).sum() for a, b in zip(Hv, v, strict=True)))
        norm = torch.sqrt(sum((x * x).sum() for x in Hv))
        v = [x / norm for x in Hv]
        if eigenvalue is not None and abs(eigenvalue - value) / (abs(eigenvalue) + 1e-6) < tol:
            eigenvalue = value
            break
        eigenvalue = value
    return {"value": eigenvalue, "products": iteration}


def run_case(size: str, case: str, args: argparse.Namespace) -> dict:
    """One case in this process (the child): its record."""
    from hesskit.estimators import hutchinson_trace, spectral_density, top_eigenpairs
    from hesskit.operators import CountingOperator, gauss_newton_operator, hessian_operator

    torch.set_num_threads(THREADS)
    problem, model, ids = gpt2_problem(size)
    n = problem.num_params
    problem.gradient()  # warm-up
    gradient_times = []
    for _ in range(3):
        start = time.perf_counter()
        problem.gradient()
        gradient_times.append(time.perf_counter() - start)
    record: dict = {"size": size, "case": case, "num_params": n,
                    "gradient_seconds": statistics.median(gradient_times)}
    if case == "gradient":
        _, record["seconds"], record["peak_bytes"] = measured(problem.gradient)
    elif case in ("hvp", "ggn"):
        build = hessian_operator if case == "hvp" else gauss_newton_operator
        op = build(problem)
        v = torch.randn(n, 1, generator=torch.Generator().manual_seed(1))
        _, record["fresh_seconds"], record["fresh_peak_bytes"] = measured(lambda: op.matmat(v))
        reused = [measured(lambda: op.matmat(v)) for _ in range(3)]
        record["reused_seconds"] = statistics.median(r[1] for r in reused)
        record["reused_peak_bytes"] = max(r[2] for r in reused)
    elif case in ("pyhessian_hvp", "pyhessian_power"):
        v = [torch.randn(p.shape) for p in model.parameters() if p.requires_grad]

        def build_and_multiply():  # as hvp's fresh product: build the graph, one product
            params, product = pyhessian_products(model, ids)
            return (params, product), product(v) if case == "pyhessian_hvp" else None

        ((params, product), _), record["fresh_seconds"], record["fresh_peak_bytes"] = measured(
            build_and_multiply)
        if case == "pyhessian_hvp":
            reused = [measured(lambda: product(v)) for _ in range(3)]
            record["reused_seconds"] = statistics.median(r[1] for r in reused)
            record["reused_peak_bytes"] = max(r[2] for r in reused)
        else:
            found, record["seconds"], record["peak_bytes"] = measured(
                lambda: pyhessian_power(product, params))
            record.update(found)
    else:
        op = CountingOperator(hessian_operator(problem))
        if case in ("top1", "top5", "top1_restarted"):
            k = 5 if case == "top5" else 1
            # top1/top5: the three-term recurrence (the default where the budget cannot
            # hold a whole run's basis); top1_restarted: a thick-restart basis of --basis
            basis = {"max_vectors": args.basis} if case == "top1_restarted" else {
                "reorthogonalize": False}
            pairs, record["seconds"], record["peak_bytes"] = measured(
                lambda: top_eigenpairs(op, k, tol=1e-2, max_products=args.max_products,
                                       **basis))
            record.update(values=pairs.values.tolist(), products=pairs.products,
                          converged=pairs.converged, error_bounds=pairs.error_bounds.tolist(),
                          **basis)
        elif case == "trace":
            found, record["seconds"], record["peak_bytes"] = measured(
                lambda: hutchinson_trace(op, args.trace_probes, chunk_size=1))
            record.update(value=found.value, stderr=found.stderr, products=found.products)
        elif case == "density":
            rule, record["seconds"], record["peak_bytes"] = measured(
                lambda: spectral_density(op, probes=1, steps=90, reorthogonalize=False))
            record.update(products=rule.products, trace=rule.trace(),
                          nodes=rule.nodes[0].tolist(), weights=rule.weights[0].tolist())
        elif case == "blocks":
            record["blocks"] = []
            layers = range(SIZES[size][0]) if args.layers == "all" else [
                int(x) for x in args.layers.split(",")]
            for layer in layers:
                prefix = f"lm.transformer.h.{layer}."
                names = [name for name in problem.layout.names if name.startswith(prefix)]
                block = CountingOperator(op.block(names))
                pairs, seconds, peak = measured(lambda block=block: top_eigenpairs(
                    block, 1, tol=1e-2, max_products=args.max_products,
                    reorthogonalize=False))
                record["blocks"].append({"layer": layer, "value": float(pairs.values[0]),
                                         "products": pairs.products, "seconds": seconds,
                                         "peak_bytes": peak, "converged": pairs.converged})
        elif case == "eigsh":
            from scipy.sparse.linalg import eigsh

            values, record["seconds"], record["peak_bytes"] = measured(
                lambda: eigsh(op.to_scipy(), k=1, which="LA", tol=1e-2,
                              return_eigenvectors=False))
            record.update(values=[float(x) for x in values], products=op.products)
    return record


def environment() -> dict:
    import transformers

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "torch_threads": THREADS,
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "MALLOC_MMAP_THRESHOLD_": "65536", "dtype": "float32",
        "load_average_at_start": os.getloadavg(),
        "note": "2 cores shared with other jobs while measured; compare ratios, not seconds",
    }


def run_in_child(size: str, case: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(THREADS),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, __file__, "--child", "--sizes", size, "--cases", case,
               "--basis", str(args.basis), "--max-products", str(args.max_products),
               "--trace-probes", str(args.trace_probes), "--layers", args.layers]
    child = subprocess.run(command, env=env, capture_output=True, text=True)
    if child.returncode != 0:
        return {"size": size, "case": case, "error": (child.stderr or "")[-2000:],
                "returncode": child.returncode}
    return json.loads(child.stdout.splitlines()[-1])


def summary(record: dict) -> str:
    g = record.get("gradient_seconds")
    if "error" in record:
        return f"{record['size']:>7} {record['case']:<16} FAILED (exit {record['returncode']})"

    def part(seconds_key: str, peak_key: str) -> str:
        return (f"{record[seconds_key]:8.2f} s ({record[seconds_key] / g:5.2f} gradients), "
                f"+{record[peak_key] / 1e9:5.2f} GB")

    line = f"{record['size']:>7} {record['case']:<16}"
    if "fresh_seconds" in record and "reused_seconds" in record:
        return line + "fresh " + part("fresh_seconds", "fresh_peak_bytes") + "; reused " + \
            part("reused_seconds", "reused_peak_bytes")
    if "blocks" in record:
        values = ", ".join(f"{b['value']:.3g}" for b in record["blocks"])
        seconds = sum(b["seconds"] for b in record["blocks"])
        peak = max(b["peak_bytes"] for b in record["blocks"])
        return line + f"{seconds:8.1f} s, +{peak / 1e9:.2f} GB: {values}"
    extra = {k: record[k] for k in ("values", "value", "products", "converged") if k in record}
    return line + part("seconds", "peak_bytes") + f" {extra}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4x256")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--basis", type=int, default=4,
                        help="max_vectors of top1_restarted (default 4)")
    parser.add_argument("--max-products", type=int, default=300)
    parser.add_argument("--trace-probes", type=int, default=10)
    parser.add_argument("--layers", default="all",
                        help="transformer blocks of the blocks case: all, or indices 0,5,11")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes, cases = args.sizes.split(","), args.cases.split(",")
    if args.child:
        print(json.dumps(run_case(sizes[0], cases[0], args)))
        return
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"records": []}
    records = {(r["size"], r["case"]): r for r in saved["records"]}
    for size in sizes:
        for case in cases:
            before = environment()
            record = run_in_child(size, case, args)
            record["environment"] = {**before, "load_average_at_end": os.getloadavg()}
            records[(size, case)] = record
            print(summary(record), flush=True)
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps({"records": list(records.values())}, indent=1) + "\n")


if __name__ == "__main__":
    main()
