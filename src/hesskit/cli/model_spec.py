"""The ``--layers/--activation/--loss/--data`` and ``--model module:function`` options.

Commands that analyse a model (``hessian``, ``spectrum``, ``diagonal``) share these options and
turn them into a ``Problem`` with :func:`problem_from_args`. A user's own model is given as
``package.module:function``; the function takes no arguments and returns
``(model, loss, data)`` with ``data`` either ``(inputs, targets)`` or an iterable of batches.
"""

from __future__ import annotations

import argparse
import importlib

import torch
from torch import nn

from hesskit.cli.options import positive_int
from hesskit.errors import InvalidArgumentError
from hesskit.models import mlp
from hesskit.problem import Problem

LOSSES = {"mse": nn.MSELoss, "cross_entropy": nn.CrossEntropyLoss}
DATA_SOURCES = ("digits", "random")


def layer_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of layer sizes such as 64,32,10"
        ) from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} needs at least two positive sizes")
    return sizes


def add_model_options(parser: argparse.ArgumentParser, default_layers: str = "64,16,10") -> None:
    group = parser.add_argument_group("model (built-in MLP, or your own with --model)")
    group.add_argument(
        "--layers",
        type=layer_sizes,
        default=layer_sizes(default_layers),
        help=f"layer sizes of the MLP (default {default_layers})",
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
        help="bundled scikit-learn digits or random data (default digits)",
    )
    group.add_argument(
        "--samples", type=positive_int, default=256, help="number of samples (default 256)"
    )
    group.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float64",
        help="floating-point type (default float64)",
    )
    group.add_argument("--seed", type=int, default=0, help="seed for weights and data")
    group.add_argument(
        "--model",
        metavar="MODULE:FUNCTION",
        default=None,
        help="your own model: a function returning (model, loss, data)",
    )


def problem_from_args(args: argparse.Namespace) -> Problem:
    """Build the ``Problem`` the options describe."""
    if args.model:
        model, loss, data = _load_user_model(args.model)
        return Problem(model, loss, data)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    model = mlp(args.layers, args.activation).to(dtype)
    inputs, targets = _data(args, dtype)
    return Problem(model, LOSSES[args.loss](), (inputs, targets))


def _data(args: argparse.Namespace, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    n_in, n_out = args.layers[0], args.layers[-1]
    if args.data == "digits":
        from hesskit.data import load_dataset

        digits = load_dataset("digits", dtype=dtype)
        inputs = digits.train_x[: args.samples]
        if inputs.shape[1] != n_in:
            raise InvalidArgumentError(
                f"digits have 64 features but the first layer has {n_in}; use --layers 64,..."
            )
        labels = digits.train_y[: args.samples]
        if args.loss == "cross_entropy":
            if n_out < 10:
                raise InvalidArgumentError(
                    f"digits have 10 classes but the last layer has {n_out}; use --layers ...,10"
                )
            return inputs, labels
        return inputs, nn.functional.one_hot(labels.long(), n_out).to(dtype)
    generator = torch.Generator().manual_seed(args.seed)
    inputs = torch.randn(args.samples, n_in, generator=generator, dtype=dtype)
    if args.loss == "cross_entropy":
        return inputs, torch.randint(0, n_out, (args.samples,), generator=generator)
    return inputs, torch.randn(args.samples, n_out, generator=generator, dtype=dtype)


def _load_user_model(spec: str) -> tuple[nn.Module, nn.Module, object]:
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise InvalidArgumentError(f"--model {spec!r} must look like package.module:function")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise InvalidArgumentError(f"cannot load --model {spec!r}: {error}") from None
    result = function()
    if not (isinstance(result, tuple) and len(result) == 3):
        raise InvalidArgumentError(
            f"--model {spec!r} must return (model, loss, data), got {type(result).__name__}"
        )
    return result
