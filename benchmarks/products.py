"""Curvature-vector products against one gradient, measured side by side in one process.

For each model the script times, on one fixed batch and interleaved round by round:
one gradient (forward + backward with torch's own loss: the baseline), hesskit's Hessian-
and Gauss-Newton-vector products "fresh" (operator built, then one product: includes the
forward pass) and "reused" (one more product on the already built operator: the cached
linearization). For the Hessian it times the hand-written chain product (the default for
these MLPs) as a matvec and as a matmat of 8 vectors (time / 8), and the fallback
``use_chain=False`` (``torch.func.vjp(grad(ℓ))``: hesskit's previous implementation). Two
plain-autograd Hessian-vector products give context: double backward from scratch, and
PyHessian-style double backward with the gradient graph kept (the peer). Installed peers are
timed in the same rounds: curvlinops ``HessianLinearOperator`` / ``GGNLinearOperator`` matvec
(operator built once without its determinism probe; every product runs its own forward, as
curvlinops always does) and BackPACK's ``ggn_vector_product_from_plist`` fresh (forward +
product) and with the forward kept (one graph reused, ``retain_graph``). A peer that is not
installed is reported as such; one that fails records its error string instead of a time.
Ratios are per-round (product time / gradient time of the same round), medians over the
rounds. It also counts forward passes of the model during 50 products.

Run:  .venv/bin/python benchmarks/products.py [--repeats 15] [--quick] [--threads 2]
Writes benchmarks/results/products.json (with an environment record) and prints a table.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy is imported

import argparse
import datetime
import importlib.metadata
import itertools
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional

from hesskit import losses
from hesskit.operators import gauss_newton_operator, hessian_operator
from hesskit.problem import Problem

THREADS = 2
RESULTS = Path(__file__).parent / "results" / "products.json"
PEERS = ("curvlinops", "backpack", "hessian_eigenthings")
BENCHMARKED_PEERS = ("curvlinops", "backpack")  # hessian_eigenthings: see eigen.py
PEER_PREFIXES = ("curvlinops ", "backpack ")
MATMAT_COLUMNS = 8


def autoencoder() -> tuple[nn.Module, nn.Module, Callable, torch.Tensor, torch.Tensor]:
    """784-1000-500-250-30-250-500-1000-784, logistic hidden units, linear code, BCE."""
    sizes = [784, 1000, 500, 250, 30, 250, 500, 1000, 784]
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2 and fan_out != 30:
            layers.append(nn.Sigmoid())
    X = torch.rand(1000, 784)
    return (
        nn.Sequential(*layers),
        losses.BCEWithLogitsLoss(),
        functional.binary_cross_entropy_with_logits,
        X,
        X.clone(),
    )


def classifier() -> tuple[nn.Module, nn.Module, Callable, torch.Tensor, torch.Tensor]:
    """784-256-256-10 ReLU network with softmax cross-entropy."""
    model = nn.Sequential(
        nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    X, y = torch.rand(512, 784), torch.randint(0, 10, (512,))
    return model, losses.CrossEntropyLoss(), functional.cross_entropy, X, y


MODELS = {"autoencoder": autoencoder, "classifier": classifier}


def methods(model, loss, torch_loss, X, y) -> dict[str, Callable[[], object]]:
    """Zero-argument callables, one per measurement, all on the same batch."""
    params = list(model.parameters())
    problem = Problem(model, loss, (X, y))
    v = torch.randn(problem.num_params)
    V = torch.randn(problem.num_params, MATMAT_COLUMNS)
    hessian, gauss_newton = hessian_operator(problem), gauss_newton_operator(problem)
    previous = hessian_operator(problem, use_chain=False)  # torch.func: the fallback
    for op in (hessian, gauss_newton, previous):
        op.matvec(v)  # build the cached linearizations

    def gradient():
        return torch.autograd.grad(torch_loss(model(X), y), params)

    vs = [t.detach() for t in problem.layout.unflatten(v).values()]

    def autograd_hvp_fresh():
        g = torch.autograd.grad(torch_loss(model(X), y), params, create_graph=True)
        return torch.autograd.grad(g, params, vs)

    kept = torch.autograd.grad(torch_loss(model(X), y), params, create_graph=True)

    def autograd_hvp_graph_kept():
        return torch.autograd.grad(kept, params, vs, retain_graph=True)

    calls = {
        "gradient": gradient,
        "hesskit HVP fresh": lambda: hessian_operator(problem).matvec(v),
        "hesskit HVP reused": lambda: hessian.matvec(v),
        f"hesskit HVP reused, matmat of {MATMAT_COLUMNS} (per vector)": lambda: hessian.matmat(V),
        "previous hesskit HVP reused (torch.func, use_chain=False)": lambda: previous.matvec(v),
        "hesskit GGN-vp fresh": lambda: gauss_newton_operator(problem).matvec(v),
        "hesskit GGN-vp reused": lambda: gauss_newton.matvec(v),
        "autograd HVP fresh (double backward)": autograd_hvp_fresh,
        "autograd HVP graph kept (PyHessian-style)": autograd_hvp_graph_kept,
    }
    calls.update(peer_methods(model, torch_loss, X, y, vs))
    return calls


def peer_methods(model, torch_loss, X, y, vs) -> dict[str, Callable[[], object]]:
    """The installed peers' products on the same batch and vector (list format)."""
    params = list(model.parameters())
    calls: dict[str, Callable[[], object]] = {}
    criterion = _loss_module(torch_loss)
    try:
        import curvlinops
    except ImportError:
        pass
    else:
        for name in ("HessianLinearOperator", "GGNLinearOperator"):
            try:
                op = getattr(curvlinops, name)(
                    model, criterion, params, [(X, y)], check_deterministic=False,
                    num_data=len(X),
                )
            except Exception as error:  # recorded by _guarded when the call runs
                calls[f"curvlinops {name} matvec"] = lambda error=error: _reraise(error)
            else:
                calls[f"curvlinops {name} matvec"] = lambda op=op: op @ vs
    try:
        from backpack.hessianfree.ggnvp import ggn_vector_product_from_plist
    except ImportError:
        pass
    else:
        def backpack_ggnvp_fresh():
            output = model(X)
            return ggn_vector_product_from_plist(torch_loss(output, y), output, params, vs)

        kept_output = model(X)
        kept_loss = torch_loss(kept_output, y)
        calls["backpack ggn_vector_product fresh"] = backpack_ggnvp_fresh
        calls["backpack ggn_vector_product forward kept"] = (
            lambda: ggn_vector_product_from_plist(kept_loss, kept_output, params, vs)
        )
    return calls


def _loss_module(torch_loss: Callable) -> nn.Module:
    """The ``nn.Module`` criterion (mean reduction) that curvlinops needs for a functional loss."""
    if torch_loss is functional.cross_entropy:
        return nn.CrossEntropyLoss()
    return nn.BCEWithLogitsLoss()


def _reraise(error: Exception) -> None:
    raise error


def _guarded(call: Callable[[], object], errors: dict[str, str], key: str) -> Callable[[], object]:
    """``call`` that records its first exception's message in ``errors`` instead of raising."""

    def run():
        if key in errors:
            return None
        try:
            return call()
        except Exception as error:  # a peer's failure is a result, not a crash
            errors[key] = f"{type(error).__name__}: {error}"
            return None

    return run


def forward_passes_per_50_products(model, loss, X, y) -> dict[str, int]:
    counter = {"n": 0}
    handle = model.register_forward_hook(lambda *_: counter.__setitem__("n", counter["n"] + 1))
    problem = Problem(model, loss, (X, y))
    counts = {}
    for name, build in (("hessian", hessian_operator), ("gauss_newton", gauss_newton_operator)):
        counter["n"] = 0
        op = build(problem)
        for _ in range(50):
            op.matvec(torch.randn(problem.num_params))
        counts[name] = counter["n"]
    handle.remove()
    return counts


def hessian_method(model, loss, X, y) -> str:
    """The method hesskit's Hessian operator picks for the model (one product to find out)."""
    op = hessian_operator(Problem(model, loss, (X, y)))
    op.matvec(torch.zeros(op.shape[0]))
    return op.method.name


def interleaved_times(
    calls: dict[str, Callable[[], object]], repeats: int, errors: dict[str, str]
) -> dict[str, list[float]]:
    """Seconds of every call per round: one warm-up round, then ``repeats`` rounds in which
    each call runs once (interleaved, so load changes hit all alike); calls that recorded
    an error in ``errors`` are left out."""
    times: dict[str, list[float]] = {key: [] for key in calls}
    for call in calls.values():  # warm-up
        call()
    for _ in range(repeats):
        for key, call in calls.items():  # interleaved: every method once per round
            start = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - start)
    for key in errors:
        times.pop(key, None)
    return times


def measure(name: str, repeats: int) -> dict:
    torch.manual_seed(0)
    model, loss, torch_loss, X, y = MODELS[name]()
    errors: dict[str, str] = {}
    calls = methods(model, loss, torch_loss, X, y)
    calls = {key: _guarded(call, errors, key) if key.startswith(PEER_PREFIXES) else call
             for key, call in calls.items()}
    times = interleaved_times(calls, repeats, errors)
    for key, ts in times.items():
        if "matmat" in key:
            times[key] = [t / MATMAT_COLUMNS for t in ts]
    ratios = {
        key: statistics.median(t / g for t, g in zip(ts, times["gradient"], strict=True))
        for key, ts in times.items()
    }
    return {
        "num_params": sum(p.numel() for p in model.parameters()),
        "batch_size": len(X),
        "hessian_method": hessian_method(model, loss, X, y),
        "median_seconds": {key: statistics.median(ts) for key, ts in times.items()},
        "ratio_to_gradient": ratios,
        "forward_passes_per_50_products": forward_passes_per_50_products(model, loss, X, y),
        "peer_errors": errors,
    }


def peers() -> dict[str, str]:
    found = {}
    for module in PEERS:
        try:
            __import__(module)
            version = _version(module)
            found[module] = f"installed {version}" + (
                "" if module in BENCHMARKED_PEERS else " (not benchmarked here)")
        except ImportError:
            found[module] = "not installed"
    return found


def _version(module: str) -> str:
    distributions = {"curvlinops": "curvlinops-for-pytorch", "backpack": "backpack-for-pytorch",
                     "hessian_eigenthings": "hessian-eigenthings"}
    try:
        return importlib.metadata.version(distributions[module])
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def environment() -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "dtype": "float32",
        "load_average_at_start": os.getloadavg(),
        "note": "CPU shared with other jobs while measured; compare ratios, not seconds",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--quick", action="store_true", help="3 rounds (a smoke run)")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    env = environment()
    repeats = 3 if args.quick else args.repeats
    results = {name: measure(name, repeats) for name in MODELS}
    env["load_average_at_end"] = os.getloadavg()
    record = {"environment": env, "repeats": repeats, "peers": peers(), "models": results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    for name, result in results.items():
        print(f"\n{name}: N = {result['num_params']:,}, batch {result['batch_size']}, "
              f"Hessian method {result['hessian_method']}")
        for key, ratio in result["ratio_to_gradient"].items():
            seconds = result["median_seconds"][key]
            print(f"  {key:58s} {1e3 * seconds:9.1f} ms   {ratio:5.2f}x gradient")
        print(f"  forward passes per 50 products: {result['forward_passes_per_50_products']}")
        for key, message in result["peer_errors"].items():
            print(f"  {key}: FAILED {message}")
    print(f"\npeers: {record['peers']}\nwrote {args.output}")


if __name__ == "__main__":
    main()
