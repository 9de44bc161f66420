"""Curvature-vector products on models that are not MLPs, against one gradient and curvlinops.

Three models, each on one fixed random batch (seed 0, float32):

* ``cnn``: Conv2d 1→16 (3×3, padding 1), ReLU, MaxPool 2, Conv2d 16→32, ReLU, MaxPool 2,
  Flatten, Linear(32·7·7 → 384), ReLU, Linear(384 → 10); 256 MNIST-sized images, cross-
  entropy. 384 dense units (not 128) give N ≈ 611 k, the size the issue measured at.
* ``resnet``: a 3×3 convolution stem 1→16, two residual blocks of two 3×3 convolutions
  (16 channels, ReLU, identity skip), global average pooling, Linear(16 → 10); 256 images.
* ``resnet_inplace``: the same residual net with the skip added in place
  (``out = conv2(relu(conv1(x))); out += x``, as torchvision's and Hugging Face's ResNets
  write it), where a traced linearization is unsafe and hesskit stays with forward mode.
* ``transformer``: nn.Embedding(100, 64), two ``nn.TransformerEncoderLayer(64, nhead=4,
  dim_feedforward=128, dropout=0.0, batch_first=True)``, mean over 32 tokens, Linear(64→10);
  64 sequences, cross-entropy.

Timed side by side, interleaved round by round: one gradient (forward + backward with
torch's loss: the baseline), hesskit's Gauss-Newton- and Hessian-vector products "fresh"
(operator built, then one product) and "reused" (one more product on the built operator),
a PyHessian-style double backward through a kept gradient graph (context), and curvlinops'
``GGNLinearOperator`` / ``HessianLinearOperator`` matvec (built once, without its
determinism probe, as in ``products.py``). Ratios are per round (product time / gradient
time of the same round), medians over the rounds.

Attention: torch's default CPU attention kernel (flash) has no second derivative, so a
curvature product through the transformer needs the MATH kernel
(``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``). curvlinops is always wrapped in it.
hesskit is run unwrapped first; only if that fails is it wrapped too, and the JSON says so
(``attention_kernel``). The transformer reports two baselines: the gradient with the default
kernel (``ratio_to_gradient``) and with MATH (``ratio_to_math_gradient``).

Run:  .venv/bin/python benchmarks/architectures.py [--repeats 15] [--quick] [--threads 2]
Writes benchmarks/results/architectures.json (with an environment record) and prints a table.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy is imported

import argparse
import contextlib
import json
import platform
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional
from torch.nn.attention import SDPBackend, sdpa_kernel

from hesskit import losses
from hesskit.operators import gauss_newton_operator, hessian_operator
from hesskit.problem import Problem
from products import _guarded, _reraise, _version, environment, interleaved_times

THREADS = 2
WARM_PRODUCTS = 4
"""Products on the "reused" operators before timing: the GGN's J v is traced at the third
product of a batch and re-checked on products 2^k (operators/gauss_newton.py), so the
timed products are the steady state a CG or Lanczos run sees (its checks at 8, 16, ...
cost one forward-mode J v each)."""
RESULTS = Path(__file__).parent / "results" / "architectures.json"
PEER_PREFIX = "curvlinops "
GRADIENT, MATH_GRADIENT = "gradient", "gradient (MATH attention)"


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(x))), then ReLU: two 3×3 convolutions with an identity skip."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.relu(x + self.conv2(functional.relu(self.conv1(x))))


class InPlaceResidualBlock(ResidualBlock):
    """The same block with the skip added in place (``out += x``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(functional.relu(self.conv1(x)))
        out += x
        return functional.relu(out)


class TokenClassifier(nn.Module):
    """Embedding, two transformer encoder layers, mean over the sequence, a linear head."""

    def __init__(self, vocab: int = 100, width: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, width)
        self.layers = nn.Sequential(*(
            nn.TransformerEncoderLayer(
                width, nhead=4, dim_feedforward=128, dropout=0.0, batch_first=True
            )
            for _ in range(layers)
        ))
        self.head = nn.Linear(width, 10)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.embedding(tokens)).mean(dim=1))


def cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 384), nn.ReLU(), nn.Linear(384, 10),
    )
    return model, torch.rand(256, 1, 28, 28), torch.randint(0, 10, (256,))


def resnet() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), ResidualBlock(16), ResidualBlock(16),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )
    return model, torch.rand(256, 1, 28, 28), torch.randint(0, 10, (256,))


def resnet_inplace() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), InPlaceResidualBlock(16),
        InPlaceResidualBlock(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )
    return model, torch.rand(256, 1, 28, 28), torch.randint(0, 10, (256,))


def transformer() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return TokenClassifier(), torch.randint(0, 100, (64, 32)), torch.randint(0, 10, (64,))


MODELS = {"cnn": cnn, "resnet": resnet, "resnet_inplace": resnet_inplace,
          "transformer": transformer}


def _math_attention() -> contextlib.AbstractContextManager:
    return sdpa_kernel(SDPBackend.MATH)


def _hesskit_context(problem: Problem, is_transformer: bool) -> tuple[Callable, str]:
    """A context factory for hesskit's calls, and the attention kernel it amounts to."""
    if not is_transformer:
        return contextlib.nullcontext, "no attention"
    v = torch.zeros(problem.num_params)
    try:
        gauss_newton_operator(problem).matvec(v)
        hessian_operator(problem).matvec(v)
    except RuntimeError as error:
        if "not implemented" not in str(error):
            raise
        return _math_attention, "MATH, wrapped by this benchmark (hesskit does not select it)"
    return contextlib.nullcontext, "chosen by hesskit (not wrapped)"


def _within(context: Callable, call: Callable[[], object]) -> Callable[[], object]:
    def run():
        with context():
            return call()

    return run


def methods(model, X, y, is_transformer: bool) -> tuple[dict[str, Callable[[], object]], dict]:
    """Zero-argument callables, one per measurement, all on the same batch and vector, and
    what hesskit chose (attention kernel, Hessian method)."""
    params = list(model.parameters())
    problem = Problem(model, losses.CrossEntropyLoss(), (X, y))
    v = torch.randn(problem.num_params)
    vs = [t.detach() for t in problem.layout.unflatten(v).values()]
    context, kernel = _hesskit_context(problem, is_transformer)
    with context():
        gauss_newton, hessian = gauss_newton_operator(problem), hessian_operator(problem)
        for _ in range(WARM_PRODUCTS):  # build the linearizations; trace and check J v
            gauss_newton.matvec(v), hessian.matvec(v)

    def gradient():
        return torch.autograd.grad(functional.cross_entropy(model(X), y), params)

    with _math_attention():
        kept = torch.autograd.grad(
            functional.cross_entropy(model(X), y), params, create_graph=True
        )

    calls = {GRADIENT: gradient}
    if is_transformer:
        calls[MATH_GRADIENT] = _within(_math_attention, gradient)
    calls.update({
        "hesskit GGN-vp fresh": _within(
            context, lambda: gauss_newton_operator(problem).matvec(v)
        ),
        "hesskit GGN-vp reused": _within(context, lambda: gauss_newton.matvec(v)),
        "hesskit HVP fresh": _within(context, lambda: hessian_operator(problem).matvec(v)),
        "hesskit HVP reused": _within(context, lambda: hessian.matvec(v)),
        "autograd HVP graph kept (PyHessian-style)": (
            lambda: torch.autograd.grad(kept, params, vs, retain_graph=True)
        ),
    })
    calls.update(curvlinops_methods(model, X, y, vs))
    return calls, {"attention_kernel": kernel, "hessian_method": hessian.method.name}


def curvlinops_methods(model, X, y, vs) -> dict[str, Callable[[], object]]:
    """curvlinops' GGN and Hessian matvec on the same batch and vector, under MATH attention."""
    try:
        import curvlinops
    except ImportError:
        return {}
    params = list(model.parameters())
    calls: dict[str, Callable[[], object]] = {}
    for name in ("GGNLinearOperator", "HessianLinearOperator"):
        key = f"curvlinops {name} matvec"
        try:
            op = getattr(curvlinops, name)(
                model, nn.CrossEntropyLoss(), params, [(X, y)], check_deterministic=False,
                num_data=len(X),
            )
        except Exception as error:  # recorded by _guarded when the call runs
            calls[key] = lambda error=error: _reraise(error)
        else:
            calls[key] = _within(_math_attention, lambda op=op: op @ vs)
    return calls


def _medians_of_ratios(times: dict[str, list[float]], baseline: str) -> dict[str, float]:
    return {
        key: statistics.median(t / g for t, g in zip(ts, times[baseline], strict=True))
        for key, ts in times.items()
    }


def measure(name: str, repeats: int) -> dict:
    torch.manual_seed(0)
    model, X, y = MODELS[name]()
    is_transformer = name == "transformer"
    errors: dict[str, str] = {}
    calls, chosen = methods(model, X, y, is_transformer)
    calls = {key: _guarded(call, errors, key) if key.startswith(PEER_PREFIX) else call
             for key, call in calls.items()}
    times = interleaved_times(calls, repeats, errors)
    result = {
        "num_params": sum(p.numel() for p in model.parameters()),
        "batch_size": len(X),
        "hessian_method": chosen["hessian_method"],
        "attention_kernel": {
            "hesskit": chosen["attention_kernel"], "curvlinops": "MATH, wrapped by this benchmark"
        } if is_transformer else None,
        "median_seconds": {key: statistics.median(ts) for key, ts in times.items()},
        "ratio_to_gradient": _medians_of_ratios(times, GRADIENT),
        "peer_errors": errors,
    }
    if is_transformer:
        result["ratio_to_math_gradient"] = _medians_of_ratios(times, MATH_GRADIENT)
    return result


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
            text=True, cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--quick", action="store_true", help="3 rounds (a smoke run)")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write JSON")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    env = environment()
    env.update(cpu_model=_cpu_model(), git_commit=_git_commit())
    repeats = 3 if args.quick else args.repeats
    results = {name: measure(name, repeats) for name in args.models}
    env["load_average_at_end"] = os.getloadavg()
    curvlinops = _version("curvlinops")
    record = {"environment": env, "repeats": repeats, "curvlinops": curvlinops,
              "models": results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    for name, result in results.items():
        print(f"\n{name}: N = {result['num_params']:,}, batch {result['batch_size']}, "
              f"Hessian method {result['hessian_method']}")
        if result["attention_kernel"]:
            print(f"  attention kernel: {result['attention_kernel']}")
        math = result.get("ratio_to_math_gradient")
        for key, ratio in result["ratio_to_gradient"].items():
            seconds = result["median_seconds"][key]
            extra = f"   {math[key]:5.2f}x MATH gradient" if math else ""
            print(f"  {key:44s} {1e3 * seconds:9.1f} ms   {ratio:5.2f}x gradient{extra}")
        for key, message in result["peer_errors"].items():
            print(f"  {key}: FAILED {message}")
    print(f"\ncurvlinops {curvlinops}; load average {env['load_average_at_start']} at start, "
          f"{env['load_average_at_end']} at end\nwrote {args.output}")


if __name__ == "__main__":
    main()
