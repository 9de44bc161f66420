"""Named benchmark problems: a model, a loss, data, a weight cost and the error to report.

``make_problem(name)`` returns a :class:`BenchmarkProblem`. The names:

========================  ============================================================
``"curves-autoencoder"``  784-400-200-100-50-25-6 encoder + mirrored decoder on CURVES
                          (the original file if present, else the synthetic substitute)
``"mnist-autoencoder"``   784-1000-500-250-30 encoder + mirrored decoder on MNIST
``"digits-autoencoder"``  64-32-8 encoder + mirrored decoder on the 8×8 digits (CPU size)
``"digits-classifier"``   64-32-32-10 ReLU classifier on the 8×8 digits
``"mnist1d-classifier"``  40-64-64-10 ReLU classifier on MNIST-1D
========================  ============================================================

**The autoencoders** are the deep autoencoders of Hinton & Salakhutdinov (2006, Science)
as Martens (2010, "Deep learning via Hessian-free optimization", §6) trained them:

* logistic (sigmoid) hidden units, a LINEAR code layer (the narrowest), logistic outputs;
  the model returns the output *logits* z (the sigmoid is inside the loss);
* loss: cross-entropy between the targets (the inputs themselves, pixels in [0, 1]) and
  σ(z), summed over the pixels of a case and averaged over cases,
  ``ℓ = (1/n) Σ_i Σ_j softplus(z_ij) − x_ij z_ij`` (+ a constant in x), which is Martens'
  objective; it is ``hesskit.losses.BCEWithLogitsLoss(reduction="sample_mean")``, i.e.
  ``torch.nn.BCEWithLogitsLoss(reduction="sum")`` divided by the number of cases;
* Martens' sparse initialisation (§5): each unit gets exactly 15 non-zero incoming weights
  (all of them if it has fewer than 15 inputs) drawn from N(0, 1); every other weight and
  every bias is zero. (His Matlab code draws the 15 input indices with replacement, so a
  unit occasionally gets fewer; we draw them without replacement, as the paper states.)
* L2 weight cost λ (CURVES 2e-5, MNIST 1e-5). In Martens' code (``nnet_train_2.m``) the
  objective is ``loss + (λ/2)‖θ‖²`` over ALL parameters, biases included, and its gradient
  adds ``λθ``: the same convention as ``torch.optim.SGD(weight_decay=λ)``.
  :meth:`BenchmarkProblem.penalty` returns ``(λ/2)‖θ‖²``.
* Hessian-free as in his released code: λ₀ = 45 (:data:`MARTENS_INITIAL_DAMPING`) and his
  ``numchunks`` curvature chunks, CURVES 4 and MNIST 8 (:data:`CURVES_NUMCHUNKS`,
  :data:`MNIST_NUMCHUNKS`); the training loop's curvature batch is then 1/numchunks of the
  gradient batch (``BenchmarkProblem.hf_numchunks``).
* reported error (his ``errtype = 'L2'``): the squared error between σ(z) and the input,
  summed over the pixels of a case (NOT halved), averaged over all cases of the full
  training or test set; see :func:`autoencoder_squared_error`.

The digits autoencoder is the same recipe at a size a CPU trains in seconds (weight cost
1e-5), so Hessian-free behaviour can be checked quickly on the same kind of problem.

**The classifiers** use ReLU hidden units, ``torch.nn.CrossEntropyLoss()`` (mean over
cases), PyTorch's default initialisation drawn from the problem's seeded generator, no
weight cost, and report the classification error rate (:func:`classification_error`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import torch
from torch import Tensor, nn

from hesskit.data import load_dataset
from hesskit.errors import InvalidArgumentError
from hesskit.losses import BCEWithLogitsLoss
from hesskit.optim.weight_cost import weight_cost

SPARSE_CONNECTIONS = 15
"""Non-zero incoming weights per unit in Martens' sparse initialisation (2010, §5)."""
MARTENS_INITIAL_DAMPING = 45.0
"""``initlambda = 45`` of Martens' released HF code (HFDemo ``nnet_train_2.m`` line 116), λ
added to the curvature of the per-case MEAN objective; hesskit's Hessian-free default
(:data:`hesskit.optim.damping.MARTENS_INITIAL_DAMPING`) for every problem."""
CURVES_NUMCHUNKS = 4
"""Martens' curvature chunks for CURVES: the training set is cut into 4 chunks and step k
builds the curvature on chunk (k − 1) mod 4 (HFDemo: the ``numchunks`` argument of
``nnet_train_2.m``, its ``targetchunk = mod(epoch-1, numchunks)+1`` at line 940; the value
is set for CURVES in ``nnet_demo_2.m``)."""
MNIST_NUMCHUNKS = 8
"""Martens' curvature chunks for MNIST: 8 (the same ``numchunks`` argument of HFDemo
``nnet_train_2.m``; the value set for MNIST in ``nnet_demo_2.m``)."""
_EVAL_CHUNK = 5000


@dataclass
class BenchmarkProblem:
    """A ready-to-train problem.

    Attributes:
        name: the registry name.
        model: the network; for autoencoders it returns logits.
        loss: ``loss(model(X), y)`` is the data term of the objective.
        train: ``(X, y)`` training tensors (for autoencoders y is X itself).
        test: ``(X, y)`` test tensors.
        weight_decay: λ in the objective ``loss + (λ/2)‖θ‖²`` (all parameters).
        error_fn: ``error_fn(model, X, y) -> float``, the error reported for this problem.
        error_name: what ``error_fn`` measures, for tables and plots.
        description: the architecture, loss, initialisation and data, in words.
        hf_initial_damping: λ at Hessian-free's first step. Martens' released code starts
            his autoencoders at 45, with λ added to the curvature of the per-case *mean*
            objective, which is how hesskit's losses are normalised too; 45 for every
            problem (:data:`MARTENS_INITIAL_DAMPING`).
        hf_numchunks: Martens' ``numchunks`` for this problem (CURVES 4, MNIST 8): the
            training loop's curvature batch is 1/numchunks of the gradient batch, so that
            Hessian-free's round-robin chunks are his; ``None`` (problems he did not train):
            the loop's default fraction, 1/10.
    """

    name: str
    model: nn.Module
    loss: nn.Module
    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    weight_decay: float
    error_fn: Callable[[nn.Module, Tensor, Tensor], float]
    error_name: str
    description: str
    hf_initial_damping: float = MARTENS_INITIAL_DAMPING
    hf_numchunks: int | None = None

    def penalty(self) -> Tensor:
        """The weight cost ``(λ/2) Σ_p ‖p‖²`` over all model parameters (a scalar)."""
        return weight_cost(self.model.parameters(), self.weight_decay)

    def objective(self, X: Tensor, y: Tensor) -> Tensor:
        """``loss(model(X), y) + penalty()``: the function Martens minimises."""
        return self.loss(self.model(X), y) + self.penalty()


@dataclass(frozen=True)
class ProblemSpec:
    """What a named problem is made of: data set, layer widths, kind, weight cost, and
    Hessian-free's initial damping and curvature chunks (see :class:`BenchmarkProblem`)."""

    dataset: str
    layer_sizes: tuple[int, ...]
    is_autoencoder: bool
    weight_decay: float
    hf_initial_damping: float = MARTENS_INITIAL_DAMPING
    hf_numchunks: int | None = None


def _mirror(encoder: tuple[int, ...]) -> tuple[int, ...]:
    return encoder + encoder[-2::-1]


PROBLEMS: dict[str, ProblemSpec] = {
    "curves-autoencoder": ProblemSpec(
        "curves", _mirror((784, 400, 200, 100, 50, 25, 6)), True, 2e-5,
        hf_numchunks=CURVES_NUMCHUNKS,
    ),
    "mnist-autoencoder": ProblemSpec(
        "mnist", _mirror((784, 1000, 500, 250, 30)), True, 1e-5,
        hf_numchunks=MNIST_NUMCHUNKS,
    ),
    "digits-autoencoder": ProblemSpec("digits", _mirror((64, 32, 8)), True, 1e-5),
    "digits-classifier": ProblemSpec("digits", (64, 32, 32, 10), False, 0.0),
    "mnist1d-classifier": ProblemSpec("mnist1d", (40, 64, 64, 10), False, 0.0),
}
PROBLEM_NAMES = tuple(PROBLEMS)


def make_problem(
    name: str,
    *,
    seed: int = 0,
    data_dir: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    use_cache: bool = True,
) -> BenchmarkProblem:
    """Build the named problem: model (initialised from ``seed``), loss, data and error.

    Args:
        name: one of :data:`PROBLEM_NAMES`.
        seed: seeds the model's initialisation (a private generator; the global torch
            random state is neither used nor changed).
        data_dir: folder of user-supplied data files (MNIST, CURVES).
        dtype: floating-point dtype of the model and the inputs.
        use_cache: allow the data loader to read/write generated data in the cache.

    Raises:
        InvalidArgumentError: unknown name or non-float dtype.
        DataError: the data set's files are missing or damaged.
    """
    spec = _spec(name)
    model = build_model(name, seed=seed, dtype=dtype)
    data = load_dataset(spec.dataset, data_dir=data_dir, dtype=dtype, use_cache=use_cache)
    sizes = " - ".join(str(size) for size in spec.layer_sizes)
    if spec.is_autoencoder:
        return BenchmarkProblem(
            name=name,
            model=model,
            loss=BCEWithLogitsLoss(reduction="sample_mean"),
            train=(data.train_x, data.train_x),
            test=(data.test_x, data.test_x),
            weight_decay=spec.weight_decay,
            hf_initial_damping=spec.hf_initial_damping,
            hf_numchunks=spec.hf_numchunks,
            error_fn=autoencoder_squared_error,
            error_name="squared reconstruction error per case",
            description=(
                f"Deep autoencoder {sizes} (logistic hidden units, linear code layer, "
                f"logistic outputs), cross-entropy summed over pixels and averaged over "
                f"cases, Martens' sparse initialisation (seed {seed}), weight cost "
                f"{spec.weight_decay:g}. Data: {data.description}"
            ),
        )
    return BenchmarkProblem(
        name=name,
        model=model,
        loss=nn.CrossEntropyLoss(),
        train=(data.train_x, data.train_y),
        test=(data.test_x, data.test_y),
        weight_decay=spec.weight_decay,
        hf_initial_damping=spec.hf_initial_damping,
        hf_numchunks=spec.hf_numchunks,
        error_fn=classification_error,
        error_name="classification error rate",
        description=(
            f"ReLU classifier {sizes}, cross-entropy averaged over cases, PyTorch's "
            f"default initialisation (seed {seed}), no weight cost. Data: {data.description}"
        ),
    )


def build_model(name: str, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The freshly initialised network of problem ``name``, without loading its data."""
    spec = _spec(name)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidArgumentError(
            f"dtype must be a floating-point torch dtype such as torch.float32, not {dtype!r}"
        )
    generator = torch.Generator().manual_seed(seed)
    if spec.is_autoencoder:
        return martens_autoencoder(spec.layer_sizes, generator=generator, dtype=dtype)
    return relu_classifier(spec.layer_sizes, generator=generator, dtype=dtype)


def martens_autoencoder(
    layer_sizes: tuple[int, ...], *, generator: torch.Generator, dtype: torch.dtype
) -> nn.Sequential:
    """Linear layers between ``layer_sizes``; sigmoid after each, except the narrowest
    (linear code) and the last (logits); every layer sparsely initialised."""
    code = layer_sizes.index(min(layer_sizes))
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(pairwise(layer_sizes)):
        linear = nn.utils.skip_init(nn.Linear, fan_in, fan_out, dtype=dtype)
        sparse_init_(linear, generator=generator)
        layers.append(linear)
        if index + 1 not in (code, len(layer_sizes) - 1):
            layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def relu_classifier(
    layer_sizes: tuple[int, ...], *, generator: torch.Generator, dtype: torch.dtype
) -> nn.Sequential:
    """Linear layers between ``layer_sizes`` with ReLU between them; outputs are logits."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in pairwise(layer_sizes):
        linear = nn.utils.skip_init(nn.Linear, fan_in, fan_out, dtype=dtype)
        default_init_(linear, generator=generator)
        layers += [linear, nn.ReLU()]
    return nn.Sequential(*layers[:-1])


@torch.no_grad()
def sparse_init_(
    linear: nn.Linear, *, generator: torch.Generator, connections: int = SPARSE_CONNECTIONS
) -> None:
    """Martens' (2010, §5) sparse initialisation, in place.

    Each output unit (row of the weight) gets ``min(connections, fan_in)`` non-zero
    weights at distinct random inputs, drawn from N(0, 1); all other weights and the bias
    are zero.
    """
    fan_out, fan_in = linear.weight.shape
    count = min(connections, fan_in)
    columns = torch.rand(fan_out, fan_in, generator=generator).argsort(dim=1)[:, :count]
    values = torch.randn(fan_out, count, generator=generator, dtype=torch.float64)
    weight = torch.zeros(fan_out, fan_in, dtype=torch.float64)
    weight.scatter_(1, columns, values)
    linear.weight.copy_(weight)
    if linear.bias is not None:
        linear.bias.zero_()


@torch.no_grad()
def default_init_(linear: nn.Linear, *, generator: torch.Generator) -> None:
    """PyTorch's default ``nn.Linear`` initialisation, from ``generator``, in place.

    Weights and biases uniform in ±1/√fan_in (what ``kaiming_uniform_(a=√5)`` and the
    default bias rule amount to).
    """
    bound = 1.0 / math.sqrt(linear.in_features)
    linear.weight.uniform_(-bound, bound, generator=generator)
    if linear.bias is not None:
        linear.bias.uniform_(-bound, bound, generator=generator)


@torch.no_grad()
def autoencoder_squared_error(model: nn.Module, X: Tensor, Y: Tensor) -> float:
    """Martens' reported error: ``(1/n) Σ_i Σ_j (σ(z_ij) − y_ij)²`` with z = model(X).

    Summed over the output pixels of each case, not halved, averaged over the n cases;
    computed in chunks (memory O(chunk · width)) and accumulated in float64.
    """
    total = 0.0
    for start in range(0, X.shape[0], _EVAL_CHUNK):
        logits = model(X[start : start + _EVAL_CHUNK])
        residual = torch.sigmoid(logits) - Y[start : start + _EVAL_CHUNK]
        total += float(residual.double().square().sum())
    return total / X.shape[0]


@torch.no_grad()
def classification_error(model: nn.Module, X: Tensor, y: Tensor) -> float:
    """Fraction of cases whose largest logit is not at the true class."""
    wrong = 0
    for start in range(0, X.shape[0], _EVAL_CHUNK):
        predicted = model(X[start : start + _EVAL_CHUNK]).argmax(dim=-1)
        wrong += int((predicted != y[start : start + _EVAL_CHUNK]).sum())
    return wrong / X.shape[0]


def _spec(name: str) -> ProblemSpec:
    if name not in PROBLEMS:
        raise InvalidArgumentError(
            f"unknown problem {name!r}; choose one of {', '.join(PROBLEM_NAMES)}"
        )
    return PROBLEMS[name]
