"""Prove that one forward pass of a model is a chain the engine can differentiate by hand.

A model qualifies for the hand-written fast paths when one recorded forward pass is

    X = x_0 → x_1 = m_1(x_0) → … → z = x_L = m_L(x_{L−1})

with every m_l a leaf module from :mod:`hesskit.engine.layers`. Watching module calls is not
enough to know that (an in-place ``h.tanh_()`` between two modules keeps the tensor object
that the next module receives; a weight tied between two layers is one parameter), so
:func:`record_chain` *proves* it, and refuses with the reason otherwise:

1. the input is one tensor and the model's output is the output of its last module call;
2. every module that holds parameters is exactly an ``nn.Linear`` (or, for the diagonal
   table, an ``nn.Conv1d``/``nn.Conv2d``), no parameter is registered under two names
   (tied weights), and no such module is called twice;
3. every leaf module called is in the requested table (:class:`~hesskit.engine.layers.Table`;
   Dropout only while inactive) and receives the input shape it is proved for: ``[n, d]``
   for ``nn.Linear``, ``[n, C, *spatial]`` for convolutions, pooling and padding;
4. each module receives the very tensor the previous one returned;
5. no torch operation that returns a tensor runs inside the model's ``forward`` outside a
   leaf module call (a ``TorchFunctionMode`` sees every torch function and tensor method,
   including ``F.relu(h, inplace=True)``, ``h.tanh_()`` and ``x.view(...)``);
6. no recorded tensor is changed in place after it was recorded (tensor versions), and an
   in-place module's input is recorded as a copy taken before it runs.

What is refused goes to the generic ``torch.func`` path: a fast path is only taken when
it is proved to apply. The table is part of the proof: a CNN is a chain for the exact
diagonals (``table=Table.DIAGONAL``) but not for the Hessian-vector product or the dense
blocks, which record with the default ``Table.PRODUCT``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from hesskit.engine.layers import (
    AVERAGING,
    CONV,
    CONV_MODULES,
    LINEAR,
    PARAMETRIC_KINDS,
    PASSTHROUGH,
    SELECTION,
    Table,
    layer_kind,
    spatial_dims,
)
from hesskit.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class Step:
    """One module call of the chain: the module, its table kind and the value it received."""

    module: nn.Module
    kind: str
    inputs: Tensor


@dataclass(frozen=True)
class Chain:
    """A proved chain: its steps in call order, the model output, and parameter names.

    Attributes:
        steps: the module calls, first to last.
        output: the model output z (the last step's output).
        names: for every module with parameters (``nn.Linear``, convolutions) by ``id``:
            the full names of its weight and bias (None for a bias it does not have).
        table: the table the chain was proved in.
    """

    steps: list[Step]
    output: Tensor
    names: dict[int, tuple[str, str | None]] = field(repr=False)
    table: Table = Table.PRODUCT

    @property
    def flat(self) -> bool:
        """Every step is in :attr:`Table.PRODUCT` (a chain of flat Linear layers)."""
        return all(step.kind in Table.PRODUCT.value for step in self.steps)

    def linear_names(self, wanted: Mapping[str, object]) -> dict[int, tuple[str | None, ...]]:
        """(weight, bias) names of each Linear by ``id``, None where not in ``wanted``."""
        return {
            key: tuple(name if name is not None and name in wanted else None for name in pair)
            for key, pair in self.names.items()
        }

    def structure(self) -> tuple[int, ...]:
        """The ids of the called modules in order (equal for batches of the same chain)."""
        return tuple(id(step.module) for step in self.steps)


def check_parameters(
    model: nn.Module, table: Table = Table.PRODUCT
) -> dict[int, tuple[str, str | None]]:
    """Conditions 2 (parameters): the (weight, bias) names of every parametric layer by ``id``.

    Raises:
        UnsupportedArchitectureError: a module other than ``nn.Linear`` (or, in the
            diagonal table, a convolution) holds parameters, or a parameter is registered
            under two names.
    """
    holders: tuple[type[nn.Module], ...] = (nn.Linear,)
    if table is Table.DIAGONAL:
        holders += tuple(CONV_MODULES)
    owners: dict[int, str] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in owners:
            raise _refuse(f"the parameter {owners[id(parameter)]!r} is also {name!r} "
                          "(tied weights)")
        owners[id(parameter)] = name
    names: dict[int, tuple[str, str | None]] = {}
    for prefix, module in model.named_modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        if type(module) not in holders:
            allowed = " or ".join(f"an nn.{kind.__name__}" for kind in holders)
            raise _refuse(f"module {prefix or 'model'!r} ({type(module).__name__}) holds "
                          f"parameters but is not {allowed}")
        full = f"{prefix}." if prefix else ""
        bias = f"{full}bias" if module.bias is not None else None
        names[id(module)] = (f"{full}weight", bias)
    return names


def record_chain(
    model: nn.Module,
    inputs: object,
    params: Mapping[str, Tensor] | None = None,
    *,
    table: Table = Table.PRODUCT,
) -> Chain:
    """Run ``model(inputs)`` once (no grad) with ``params`` swapped in, and prove it a chain.

    Args:
        model: the network.
        inputs: its input; only a single tensor can be a chain.
        params: parameter values by name to use instead of the model's own (others and
            buffers as in the model), as ``torch.func.functional_call`` takes them.
        table: the layers allowed: ``Table.PRODUCT`` (default; what the Hessian-vector
            product and the dense blocks handle) or ``Table.DIAGONAL`` (also convolutions,
            pooling and padding, for the exact diagonals).

    Returns:
        The :class:`Chain`, whose step inputs are computed with ``params``.

    Raises:
        UnsupportedArchitectureError: any condition of the module docstring fails; the
            message says which.
    """
    if not isinstance(inputs, Tensor):
        raise _refuse("the model takes other than one tensor")
    names = check_parameters(model, table)
    watch = _Watch(model)
    try:
        with torch.no_grad(), watch:
            output = functional_call(model, dict(params or {}), (inputs,))
    finally:
        watch.remove()
    if watch.violation is not None:
        raise _refuse(watch.violation)
    return Chain(_check_sequence(watch.calls, inputs, output, table), output, names, table)


class _Watch(TorchFunctionMode):
    """Records the leaf module calls of one forward pass and any operation outside them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.calls: list[tuple[nn.Module, Tensor, Tensor, int, object]] = []
        self.violation: str | None = None
        self._inside_model = False
        self._inside_leaf = 0
        self._pending: list[tuple[Tensor, Tensor, int]] = []
        leaves = [m for m in model.modules() if next(m.children(), None) is None]
        self._handles = [model.register_forward_pre_hook(self._enter_model)]
        self._handles += [m.register_forward_pre_hook(self._before) for m in leaves]
        self._handles += [m.register_forward_hook(self._after) for m in leaves]
        self._handles.append(model.register_forward_hook(self._leave_model))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if (
            self._inside_model
            and not self._inside_leaf
            and self.violation is None
            and any(isinstance(leaf, Tensor) for leaf in tree_leaves(result))
        ):
            name = getattr(func, "__name__", repr(func))
            self.violation = (f"forward runs the torch operation {name!r} outside the "
                              "modules (a functional call, an in-place op or a residual "
                              "connection)")
        return result

    def _enter_model(self, module: nn.Module, args: tuple) -> None:
        self._inside_model = True

    def _leave_model(self, module: nn.Module, args: tuple, output: object) -> None:
        self._inside_model = False

    def _before(self, module: nn.Module, args: tuple) -> None:
        self._inside_leaf += 1
        if len(args) != 1 or not isinstance(args[0], Tensor):
            self._fail(f"{type(module).__name__} is called with other than one tensor")
            self._pending.append((None, None, 0))
            return
        given = args[0]
        value = given.clone() if getattr(module, "inplace", False) else given
        self._pending.append((given, value, value._version))

    def _after(self, module: nn.Module, args: tuple, output: object) -> None:
        self._inside_leaf -= 1
        given, value, version = self._pending.pop()
        if given is not None:
            self.calls.append((module, given, value, version, output))

    def _fail(self, reason: str) -> None:
        if self.violation is None:
            self.violation = reason


def _check_sequence(calls: list, inputs: Tensor, output: object, table: Table) -> list[Step]:
    """Conditions 1, 3, 4 and 6 on the recorded calls."""
    if not calls:
        raise _refuse("the forward pass calls no modules")
    steps: list[Step] = []
    previous: object = inputs
    linear_seen: set[int] = set()
    for module, given, value, version, result in calls:
        name = type(module).__name__
        kind = layer_kind(module)
        if kind is None:
            raise _refuse(f"layer {name} is not supported")
        if kind not in table.value:
            raise _refuse(f"layer {name} is supported for the exact diagonals only, not for "
                          "this fast path")
        if given is not previous:
            raise _refuse(f"the input of {name} is not the output of the layer before it "
                          "(a residual connection or an operation between modules)")
        if value._version != version:
            raise _refuse(f"the input of {name} was changed in place after it was used")
        if kind in PARAMETRIC_KINDS:
            if id(module) in linear_seen:
                raise _refuse(f"the layer {module} is called twice (shared weights)")
            linear_seen.add(id(module))
        if kind == LINEAR and value.ndim != 2:
            raise _refuse(f"an nn.Linear receives a {value.ndim}-d input; only [n, d]")
        elif kind == PASSTHROUGH:
            _check_passthrough(module, value)
        elif kind in (CONV, SELECTION, AVERAGING):
            _check_feature_map_layer(module, kind, value)
        steps.append(Step(module, kind, value))
        previous = result
    if output is not previous:
        raise _refuse("the model's output is not the output of its last module")
    return steps


def _check_passthrough(module: nn.Module, value: Tensor) -> None:
    if type(module) is nn.Flatten:
        start = module.start_dim % max(value.ndim, 1)
        if start == 0 or (module.end_dim % max(value.ndim, 1)) != value.ndim - 1:
            raise _refuse("nn.Flatten must keep the sample dimension and flatten the rest "
                          "(start_dim=1, end_dim=-1)")
    elif type(module) is nn.Dropout and module.training and module.p > 0:
        raise _refuse("nn.Dropout is active (train mode); call model.eval() first")


def _check_feature_map_layer(module: nn.Module, kind: str, value: Tensor) -> None:
    """Convolutions, pooling and padding act on ``[n, C, *spatial]``, one sample at a time."""
    name = type(module).__name__
    dims = spatial_dims(module)
    if value.ndim != dims + 2:
        raise _refuse(f"{name} receives a {value.ndim}-d input; only [n, C, *spatial] with "
                      f"{dims} spatial dimension(s), so that it acts on each sample alone")
    if kind == CONV and module.groups != 1:
        raise _refuse(f"{name} has groups={module.groups}; only groups=1 is supported")
    if kind == SELECTION and getattr(module, "return_indices", False):
        raise _refuse(f"{name} returns indices; use return_indices=False")


def _refuse(reason: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"the model is not a chain the structural engine can prove: {reason}"
    )


def problem_chain(
    problem: object,
    params: Mapping[str, Tensor],
    inputs: object,
    *,
    table: Table = Table.PRODUCT,
) -> Chain:
    """:func:`record_chain` of a ``Problem``'s model in ``table``, inside the problem's
    functional mode (its treatment of dropout, batch statistics and attention kernels)
    when it has one."""
    mode = getattr(problem, "functional_mode", None)
    with mode() if mode is not None else contextlib.nullcontext():
        return record_chain(problem.model, inputs, params, table=table)


def sequential_leaves(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The leaf modules of a (nested) ``nn.Sequential`` in call order, or None.

    A ``Sequential`` runs nothing between its modules, so its call order is its structure;
    None also when a module appears twice or a parameter is registered under two names
    (tied weights), where the order of the modules no longer tells which layer a
    parameter is in.
    """
    if not isinstance(model, nn.Sequential):
        return None
    leaves: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            inner = sequential_leaves(child)
            if inner is None:
                return None
            leaves += [(f"{name}.{sub}", module) for sub, module in inner]
        else:
            leaves.append((name, child))
    parameters = [id(p) for _, p in model.named_parameters(remove_duplicate=False)]
    holders = [id(m) for _, m in leaves if any(True for _ in m.parameters(recurse=False))]
    if len(set(parameters)) != len(parameters) or len(set(holders)) != len(holders):
        return None
    return leaves
