"""The ``--layers/--activation/--loss/--data/--data-dir`` and ``--model module:function`` options.

Commands that analyse a model (``hessian``, ``spectrum``, ``diagonal``) share these options and
turn them into a ``Problem`` with :func:`problem_from_args`. A user's own model is given as
``module:function`` or ``path/to/file.py:function`` (:data:`MODEL_CONTRACT`); importing and
calling it goes through :mod:`hesskit.cli.user_code`, so that its failures are one line.
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import torch
from torch import nn

from hesskit.cli.options import DATA_DIR_HELP, int_between, seed
from hesskit.cli.user_code import call_user_function, load_user_function
from hesskit.errors import InvalidArgumentError
from hesskit.models import mlp
from hesskit.problem import Problem

LOSSES = {"mse": nn.MSELoss, "cross_entropy": nn.CrossEntropyLoss}
DATA_SOURCES = ("digits", "mnist", "mnist1d", "random")
DATA_FEATURES = {"digits": 64, "mnist": 784, "mnist1d": 40}
"""Input features of each labelled data set (all three have 10 classes)."""
NUM_CLASSES = 10
DEFAULT_HIDDEN = (16, 10)
"""The built-in MLP's layers after the input layer when ``--layers`` is not given."""
MAX_LAYER_SIZE = 1_000_000
MAX_MLP_PARAMS = 50_000_000
MAX_SAMPLES = 10_000_000
TRAINING_CASES = {"digits": 1438, "mnist": 60000, "mnist1d": 4000}

MODEL_CONTRACT = (
    "your own model: MODULE:FUNCTION (MODULE imported from the current directory, as "
    "python -m does) or path/to/file.py:FUNCTION. FUNCTION takes no arguments and returns "
    "(model, loss, data): model an nn.Module; loss any torch loss module or a callable "
    "loss(output, target) -> scalar; data one batch (inputs, targets), a list of batches or "
    "a DataLoader, where inputs is a tensor, a tuple of tensors (passed to forward "
    "positionally) or a dict (keyword arguments when its keys name forward's parameters, "
    "as for a Hugging Face model, else one argument), samples along dimension 0; an "
    "output with .logits is read as its logits"
)


def layer_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of layer sizes such as 64,32,10"
        ) from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} needs at least two positive sizes")
    if max(sizes) > MAX_LAYER_SIZE:
        raise argparse.ArgumentTypeError(
            f"{text!r} has a layer wider than {MAX_LAYER_SIZE:,}; choose smaller sizes"
        )
    params = sum((a + 1) * b for a, b in itertools.pairwise(sizes))
    if params > MAX_MLP_PARAMS:
        raise argparse.ArgumentTypeError(
            f"{text!r} gives {params:,} parameters, more than the {MAX_MLP_PARAMS:,} the "
            "built-in MLP allows; choose smaller sizes"
        )
    return sizes


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (built-in MLP, or your own with --model)")
    hidden = ",".join(map(str, DEFAULT_HIDDEN))
    group.add_argument(
        "--layers",
        type=layer_sizes,
        default=None,
        help=f"layer sizes of the MLP (default: the data's features,{hidden}: "
             f"64,{hidden} for digits and random, 784,{hidden} for mnist, 40,{hidden} "
             "for mnist1d)",
    )
    group.add_argument("--activation", default="relu", help="hidden activation (default relu)")
    group.add_argument(
        "--loss",
        choices=sorted(LOSSES),
        default="cross_entropy",
        help="loss (default cross_entropy)",
    )
    group.add_argument(
        "--data",
        choices=DATA_SOURCES,
        default="digits",
        help="scikit-learn's bundled 8x8 digits, MNIST (files in --data-dir), MNIST-1D "
             "(generated offline) or Gaussian random data (default digits)",
    )
    group.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    offer = ", ".join(f"{name} {count}" for name, count in TRAINING_CASES.items())
    group.add_argument(
        "--samples",
        type=int_between(1, MAX_SAMPLES),
        default=256,
        help=f"number of training samples (default 256; the data sets offer {offer})",
    )
    group.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float64",
        help="floating-point type (default float64)",
    )
    group.add_argument("--seed", type=seed, default=0, help="seed for weights and data")
    add_user_model_option(group, extra="; it replaces --layers, --activation, --loss, --data, "
                          "--data-dir, --samples and --dtype")


def add_user_model_option(parser: argparse.ArgumentParser | Any, extra: str = "") -> None:
    """``--model MODULE:FUNCTION`` with the contract in its help (``extra`` appended)."""
    parser.add_argument("--model", metavar="MODULE:FUNCTION", type=model_spec_text,
                        default=None, help=MODEL_CONTRACT + extra)


def model_spec_text(text: str) -> str:
    """``--model``'s value, checked for its shape (``something:function``) only."""
    module_part, _, function_name = text.rpartition(":")
    if not module_part.strip() or not function_name.isidentifier():
        raise argparse.ArgumentTypeError(
            f"{text!r} must look like module:function or path/to/file.py:function"
        )
    return text


def problem_from_args(args: argparse.Namespace) -> Problem:
    """Build the ``Problem`` the options describe."""
    if args.model:
        model, loss, data = load_user_model(args.model)
        return Problem(model, loss, data)
    dtype = getattr(torch, args.dtype)
    layers = mlp_layers(args)
    torch.manual_seed(args.seed)
    model = mlp(layers, args.activation).to(dtype)
    inputs, targets = _data(args, layers, dtype)
    return Problem(model, LOSSES[args.loss](), (inputs, targets))


def model_description(args: argparse.Namespace) -> str | None:
    """The model and data the options chose, in words (None for commands without one)."""
    if getattr(args, "model", None):
        return f"your model {args.model}"
    if getattr(args, "problem", None):
        return f"benchmark problem {args.problem}"
    if not hasattr(args, "layers"):
        return None
    sizes = "-".join(map(str, mlp_layers(args)))
    return (f"MLP {sizes} ({args.activation}), {args.loss} loss, {args.samples} "
            f"{args.data} samples, {args.dtype}, seed {args.seed}")


def mlp_layers(args: argparse.Namespace) -> list[int]:
    """``--layers``, or the data's input features followed by :data:`DEFAULT_HIDDEN`."""
    if args.layers is not None:
        return list(args.layers)
    return [DATA_FEATURES.get(args.data, 64), *DEFAULT_HIDDEN]


def load_user_model(spec: str) -> tuple[nn.Module, Any, Any]:
    """Import the function ``spec`` names, call it and check the (model, loss, data) shape.

    Raises:
        InvalidArgumentError: bad spec, missing module or function, or a wrong return value.
        UserCodeError: the user's module or function raised.
    """
    function, where = load_user_function(spec)
    result = call_user_function(function, where)
    name = f"{getattr(function, '__name__', 'function')}() in {where}"
    if not (isinstance(result, (tuple, list)) and len(result) == 3):
        got = f"a {len(result)}-tuple" if isinstance(result, tuple) else type(result).__name__
        raise InvalidArgumentError(
            f"your model function {name} must return (model, loss, data), got {got}"
        )
    model, loss, data = result
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(
            f"your model function {name} returned a {type(model).__name__} as the model; "
            "the first of (model, loss, data) must be a torch.nn.Module"
        )
    if not callable(loss):
        raise InvalidArgumentError(
            f"your model function {name} returned a {type(loss).__name__} as the loss; the "
            "second of (model, loss, data) must be a torch loss module or a function "
            "loss(output, target)"
        )
    if data is None:
        raise InvalidArgumentError(
            f"your model function {name} returned None as the data; return one batch "
            "(inputs, targets), a list of batches or a DataLoader"
        )
    return model, loss, data


def _data(args: argparse.Namespace, layers: list[int],
          dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    n_in, n_out = layers[0], layers[-1]
    if args.data == "random":
        _check_random_data_fits(args.samples, n_in + n_out, dtype)
        generator = torch.Generator().manual_seed(args.seed)
        inputs = torch.randn(args.samples, n_in, generator=generator, dtype=dtype)
        if args.loss == "cross_entropy":
            return inputs, torch.randint(0, n_out, (args.samples,), generator=generator)
        return inputs, torch.randn(args.samples, n_out, generator=generator, dtype=dtype)
    from hesskit.data import load_dataset

    features = DATA_FEATURES[args.data]
    if n_in != features:
        raise InvalidArgumentError(
            f"{args.data} has {features} features but the first layer has {n_in}; use "
            f"--layers {features},..."
        )
    dataset = load_dataset(args.data, data_dir=getattr(args, "data_dir", None), dtype=dtype)
    available = int(dataset.train_x.shape[0])
    if args.samples > available:
        raise InvalidArgumentError(
            f"--samples {args.samples} is more than the {available} training cases of "
            f"{args.data}; use --samples {available} or fewer, or --data random"
        )
    inputs = dataset.train_x[: args.samples]
    labels = dataset.train_y[: args.samples]
    if n_out < NUM_CLASSES:
        what = ("has 10 classes" if args.loss == "cross_entropy"
                else "compared by --loss mse with one-hot labels has 10 classes")
        raise InvalidArgumentError(
            f"{args.data} {what} but the last layer has {n_out}; use --layers ...,10"
        )
    if args.loss == "cross_entropy":
        return inputs, labels
    return inputs, nn.functional.one_hot(labels.long(), n_out).to(dtype)


RANDOM_DATA_BYTES = 2 * 1024**3


def _check_random_data_fits(samples: int, width: int, dtype: torch.dtype) -> None:
    size = samples * width * torch.empty((), dtype=dtype).element_size()
    if size > RANDOM_DATA_BYTES:
        raise InvalidArgumentError(
            f"--samples {samples} random samples of {width} inputs and targets take "
            f"{size / 1024**3:.1f} GiB, above the {RANDOM_DATA_BYTES // 1024**3} GiB the "
            "random data may use; choose fewer --samples or smaller --layers"
        )
