"""The schema check of a checkpoint: is its content what this run can resume from?

The SHA-256 checksum (:mod:`hesskit.training.checkpoint`) proves that a file is the one
hesskit wrote. This module proves that what it holds fits the run about to resume, before
anything is loaded into the model or the optimizer or written to disk:

* every entry a resume reads is present (:data:`REQUIRED_ENTRIES`);
* the model's entries are exactly the model's, each with the model's shape;
* the optimizer's state has the entries of the optimizer that will load it: the same
  top-level and optimizer-wide entries as a freshly built one, the same parameter groups
  (count, sizes, settings), and for every parameter with state the entries its method keeps
  (:data:`PARAMETER_STATE`), shaped like the parameter;
* no floating-point tensor in the model or the optimizer state, and no optimizer-wide
  number, is NaN or infinite.

Each failure is one :class:`~hesskit.errors.DataError` that names the file and the entry.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hesskit.errors import DataError, InvalidArgumentError
from hesskit.finite import non_finite_summary
from hesskit.training.checkpoint import read_checkpoint, restore_rng_state

REQUIRED_ENTRIES = ("header", "model", "optimizer", "sampler", "rng", "products", "counters",
                    "log_bytes")
"""The top-level entries of a checkpoint that a resume reads (``"log"``, the copy of the
run log, is optional: checkpoints from before copies existed lack it)."""

PARAMETER_STATE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "adam": (("exp_avg", "exp_avg_sq"), ("step",)),
    "rmsprop": (("square_avg",), ("step",)),
    "sgd": (("momentum_buffer",), ()),
    "adahessian": (("exp_avg", "exp_hessian_diag_sq"), ("step",)),
    "sophia": (("exp_avg", "hessian"), ()),
    "sophia-h": (("exp_avg", "hessian"), ()),
    "shampoo": (("exp_avg", "graft_sq"), ("step",)),
    "kfac": (("previous_update",), ()),
    "lbfgs": ((), ("func_evals", "n_iter")),
    "hf": ((), ()),
    "shf": ((), ()),
    "newton": ((), ()),
}
"""Per registry name: the entries each parameter's state must hold once it has any state,
as (entries shaped like the parameter, other entries). L-BFGS keeps its state on the first
parameter only (torch's arrangement); the Hessian-free methods and damped Newton keep
theirs optimizer-wide, checked against a freshly built optimizer."""

COUNTERS = ("iteration", "wall_time", "samples")
"""The run's counters a checkpoint holds (``hesskit.training.loop``)."""

REMEDY = ("restore the file from a copy, or start a new run with another --out "
          "(or --overwrite, which moves this run aside)")


def check_checkpoint(saved: Any, path: Path, *, header: dict[str, Any], model: nn.Module,
                     optimizer: torch.optim.Optimizer, optimizer_name: str) -> None:
    """Raise one error when ``saved`` cannot resume this run (see the module docstring).

    Args:
        saved: the checkpoint's state (:func:`hesskit.training.checkpoint.read_checkpoint`).
        path: its file, for the messages.
        header: the run header of the run about to resume (its settings must match).
        model: the model that will load it.
        optimizer: the freshly built optimizer that will load it.
        optimizer_name: its registry name.

    Raises:
        DataError: an entry is missing, misshapen or not finite.
        InvalidArgumentError: the checkpoint was made with other settings.
    """
    where = f"checkpoint {str(path)!r}"
    if not isinstance(saved, Mapping):
        raise DataError(f"{where} holds a {type(saved).__name__}, not a checkpoint; {REMEDY}")
    missing = [key for key in REQUIRED_ENTRIES if key not in saved]
    if missing:
        raise DataError(f"{where} has no {', '.join(map(repr, missing))} entry; {REMEDY}")
    if not isinstance(saved["header"], Mapping):
        raise DataError(f"{where}: the header is not a dict; {REMEDY}")
    check_same_settings(saved["header"], header)
    _check_model(saved["model"], model, where)
    _check_optimizer(saved["optimizer"], optimizer, optimizer_name, where)
    for name, value in (("products", saved["products"]), ("log_bytes", saved["log_bytes"])):
        if not isinstance(value, int) or value < 0:
            raise DataError(f"{where}: {name!r} is {value!r}, not a count; {REMEDY}")
    counters = saved["counters"]
    if not (isinstance(counters, Mapping) and set(COUNTERS) <= set(counters)):
        raise DataError(f"{where}: 'counters' lacks one of {', '.join(COUNTERS)}; {REMEDY}")


def check_same_settings(saved: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """Refuse a checkpoint made with other settings than the run about to resume."""
    keys = ("problem", "optimizer", "seed", "batch_size", "lr", "weight_decay")
    changed = [key for key in keys if saved.get(key) != now.get(key)]
    if changed:
        details = ", ".join(f"{key} {saved.get(key)!r} → {now.get(key)!r}" for key in changed)
        raise InvalidArgumentError(
            f"the checkpoint was made with different settings ({details}); resume with the "
            "same settings or choose another --out"
        )


def load_trusted_checkpoint(path: Path, *, header: dict[str, Any], model: nn.Module,
                            optimizer: torch.optim.Optimizer, optimizer_name: str,
                            sampler: Any, announce: bool = True) -> dict[str, Any]:
    """Read the checkpoint at ``path``, prove it (checksum, then :func:`check_checkpoint`)
    and only then load it into the model, optimizer, sampler and global generators; return
    its state. Nothing is written. A checkpoint from before checksums is said so once on
    stderr (when ``announce``).

    Raises:
        DataError: the file is unreadable or damaged, an entry is missing, misshapen or not
            finite, or still does not load (e.g. a damaged generator state in a checkpoint
            without a checksum).
        InvalidArgumentError: the checkpoint was made with other settings.
    """
    found = read_checkpoint(path)
    saved = found.state
    check_checkpoint(saved, path, header=header, model=model, optimizer=optimizer,
                     optimizer_name=optimizer_name)
    try:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        sampler.load_state_dict(saved["sampler"])
        restore_rng_state(saved["rng"])
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as error:
        raise DataError(f"checkpoint {str(path)!r} does not load ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''}); "
                        f"{REMEDY}") from None
    if not found.checksum_verified and announce:
        print(f"hesskit: note: checkpoint {str(path)!r} has no checksum (written by an older "
              "hesskit); resuming from it after checking its entries only",
              file=sys.stderr, flush=True)
    return saved


def _check_model(state: Any, model: nn.Module, where: str) -> None:
    expected = model.state_dict()
    if not isinstance(state, Mapping):
        raise DataError(f"{where}: the model entry is not a state dict; {REMEDY}")
    missing = [key for key in expected if key not in state]
    extra = [key for key in state if key not in expected]
    if missing or extra:
        what = (f"lacks {', '.join(map(repr, missing[:3]))}" if missing
                else f"has {', '.join(map(repr, extra[:3]))}, which the model has not")
        raise DataError(f"{where}: the saved model {what} (a checkpoint of another model?); "
                        f"{REMEDY}")
    for key, tensor in expected.items():
        value = state[key]
        if not isinstance(value, Tensor) or value.shape != tensor.shape:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise DataError(f"{where}: model entry {key!r} has shape {shape}, the model "
                            f"{tuple(tensor.shape)}; {REMEDY}")
        _check_finite(value, f"model entry {key!r}", where)


def _check_optimizer(state: Any, optimizer: torch.optim.Optimizer, name: str,
                     where: str) -> None:
    fresh = optimizer.state_dict()
    if not isinstance(state, Mapping):
        raise DataError(f"{where}: the optimizer entry is not a state dict; {REMEDY}")
    for key, reference in fresh.items():
        if key not in state:
            raise DataError(f"{where}: the optimizer state has no {key!r} entry (it is not "
                            f"{name}'s state); {REMEDY}")
        if isinstance(reference, Mapping) and key != "state":
            _check_wide_state(state[key], reference, f"optimizer state {key!r}", where)
    _check_groups(state["param_groups"], fresh["param_groups"], where)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    _check_parameter_state(state["state"], parameters, name, where)


def _check_wide_state(state: Any, reference: Mapping, label: str, where: str) -> None:
    """Optimizer-wide state: every entry of a fresh optimizer's, same tensor shapes, finite."""
    if not isinstance(state, Mapping):
        raise DataError(f"{where}: {label} is not a dict; {REMEDY}")
    for key, value in reference.items():
        if key not in state:
            raise DataError(f"{where}: {label} has no {key!r} entry; {REMEDY}")
        saved = state[key]
        if isinstance(value, Tensor) and value.is_floating_point() and (
                not isinstance(saved, Tensor) or saved.shape != value.shape):
            raise DataError(f"{where}: {label} entry {key!r} has the wrong shape; {REMEDY}")
    for path, key, value in _leaves(state, label):
        undefined_allowed = isinstance(key, str) and key.startswith("last_")  # diagnostics
        if isinstance(value, float) and not math.isfinite(value) and not undefined_allowed:
            raise DataError(f"{where}: {path} is {value}; {REMEDY}")
        if isinstance(value, Tensor):
            _check_finite(value, path, where)


def _check_groups(groups: Any, reference: list[dict], where: str) -> None:
    if not isinstance(groups, list) or len(groups) != len(reference):
        raise DataError(f"{where}: the optimizer state has another number of parameter "
                        f"groups than the optimizer ({len(reference)}); {REMEDY}")
    for index, (group, expected) in enumerate(zip(groups, reference, strict=True)):
        missing = [key for key in expected if key not in group]
        if missing:
            raise DataError(f"{where}: parameter group {index} lacks {missing[0]!r} (another "
                            f"optimizer's state?); {REMEDY}")
        if len(group["params"]) != len(expected["params"]):
            raise DataError(f"{where}: parameter group {index} holds {len(group['params'])} "
                            f"parameters, the model {len(expected['params'])}; {REMEDY}")


def _check_parameter_state(state: Any, parameters: list[Tensor], name: str,
                           where: str) -> None:
    if not isinstance(state, Mapping):
        raise DataError(f"{where}: the optimizer's per-parameter state is not a dict; {REMEDY}")
    shaped, other = PARAMETER_STATE.get(name, ((), ()))
    for index, entries in state.items():
        if not isinstance(index, int) or not 0 <= index < len(parameters):
            raise DataError(f"{where}: the optimizer state names parameter {index!r}, and the "
                            f"model has {len(parameters)}; {REMEDY}")
        label = f"optimizer state of parameter {index}"
        if not isinstance(entries, Mapping):
            raise DataError(f"{where}: {label} is not a dict; {REMEDY}")
        missing = [key for key in (*shaped, *other) if key not in entries]
        if missing:
            raise DataError(f"{where}: {label} has no {missing[0]!r} entry, which {name} "
                            f"needs; {REMEDY}")
        for key in shaped:
            value = entries[key]
            if not isinstance(value, Tensor) or value.shape != parameters[index].shape:
                raise DataError(f"{where}: {label}, entry {key!r}, is not shaped like the "
                                f"parameter {tuple(parameters[index].shape)}; {REMEDY}")
        for path, _, value in _leaves(entries, label):
            if isinstance(value, Tensor):
                _check_finite(value, path, where)


def _leaves(tree: Any, label: str, key: Any = None) -> Iterator[tuple[str, Any, Any]]:
    """(label with its key path, last key, value) of every non-container value in nested
    dicts and lists. Diagnostics named ``last_*`` (ρ, α) may be NaN until first measured:
    they steer nothing, so callers let them be."""
    if isinstance(tree, Mapping):
        for name, value in tree.items():
            yield from _leaves(value, f"{label} {name!r}", name)
    elif isinstance(tree, (list, tuple)):
        for position, value in enumerate(tree):
            yield from _leaves(value, f"{label} [{position}]", key)
    else:
        yield label, key, tree


def _check_finite(tensor: Tensor, label: str, where: str) -> None:
    summary = non_finite_summary(tensor)
    if summary is not None:
        raise DataError(f"{where}: {label} has {summary}; {REMEDY}")
