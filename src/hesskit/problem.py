"""A model, a loss and data seen as pure functions of the parameters.

``Problem`` is the functional view every curvature computation starts from:

    f(θ, X) = model with parameters θ applied to X     (``torch.func.functional_call``)
    L(θ)    = Σ_b w_b ℓ(f(θ, X_b), y_b)                (w_b from the loss's reduction)

Parameters outside the chosen set, and buffers, stay fixed at the model's current values.

Inputs and targets: a batch is ``(inputs, targets)``, each a tensor, a tuple / list of
tensors (the inputs are passed to ``forward`` as positional arguments) or a dict (keyword
arguments when its keys name ``forward``'s parameters, as for a Hugging Face model, else ONE
argument); the samples lie along dimension 0 of every tensor; an output with ``logits`` is
read as its logits (:mod:`hesskit.tensor_tree`).

Data: one batch, a list of batches, or a stream (a ``DataLoader`` or any re-iterable), which
is read batch by batch on every pass and never copied (:mod:`hesskit.batch_source`).

Exact means across batches: with ``reduction="mean"`` batch b's loss is its sum S_b divided
by its normalizer d_b (its element count for MSE; its count of non-ignored targets, or Σ of
its target weights, for cross-entropy), and L = Σ_b S_b / Σ_b d_b, so
w_b = d_b / Σ_b' d_b' (``loss.normalizer(targets)``, summed in one pass at construction).
Under ``"sum"``, w_b = 1. A loss without ``normalizer`` uses ``loss.batch_weight(n_b, N)``
(n_b / N). Either way L is the same reduction over all N samples as
``loss(model(X_all), y_all)``, even when the last batch is smaller.

The model as one function: every evaluation runs inside :meth:`Problem.functional_mode`
(:mod:`hesskit.functional_view`): train-mode BatchNorm normalises with batch statistics and
updates none of its buffers (every buffer stays bitwise unchanged), dropout acts as in eval
mode however it is called, other random operations are refused, attention uses the math
kernel (it has a double backward); operators check each batch's outputs against one more
forward pass (:meth:`Problem.check_deterministic`).

Non-finite values: data are checked as batches are read (once at construction for data in
memory, on every pass for streams), parameters by :meth:`Problem.check_finite_parameters`
(called by ``total_loss`` and ``gradient``); a NaN or Inf raises ONE ``NonFiniteError``
that names the tensor and the index of its first bad entry.

Data parallel: inside a ``torch.distributed`` process group each rank passes its own shard
of the data. N (and Σ_b d_b) are then GLOBAL (one collective each at construction), so the
weights w_b are global, the ranks' shares Σ_{b on rank r} w_b ℓ_b sum to L, and
``total_loss``, ``gradient`` and every curvature operator built on the problem sum over the
ranks (one all-reduce each). A sample's global index is its rank's offset plus its local
index: the data as if the shards were concatenated in rank order (``shard_range`` order).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from hesskit import tensor_tree
from hesskit.batch_source import BatchSource
from hesskit.compiled import parameter_name, uncompiled
from hesskit.distributed import (
    all_reduce_sum,
    counts_per_rank,
    is_distributed,
    rank,
    sum_over_ranks,
)
from hesskit.errors import InvalidArgumentError
from hesskit.finite import PARAMETER_REMEDY, check_finite
from hesskit.functional_view import DropoutMode, as_dropout_mode, couples_samples, functional_mode
from hesskit.layout import ParameterLayout
from hesskit.losses import as_loss
from hesskit.tensor_tree import Tree, model_arguments, network_output, to_device

Data = tuple[Tree, Tree] | Iterable[tuple[Tree, Tree]]
CheckedBatch = tuple[int, Tree, Tree, int, float]
"""(position in the data, inputs, targets, n_b, d_b) of one validated raw batch."""


@dataclass(frozen=True)
class Batch:
    """One batch of data, its weight w_b in the total loss and the global index of its first
    sample (``start``; counts the samples of lower ranks when distributed). ``inputs`` and
    ``targets`` are trees (a tensor, a tuple / list / dict of tensors)."""

    index: int
    inputs: Tree
    targets: Tree
    weight: float
    start: int = 0

    @property
    def num_samples(self) -> int:
        """n_b, the samples in this batch."""
        return tensor_tree.num_samples(self.inputs)


class Problem:
    """An ``nn.Module``, a loss and data, as functions of the chosen parameters.

    L(θ) = Σ_b w_b ℓ_b with w_b = d_b / Σ_b' d_b' for d_b = ``loss.normalizer(y_b)``
    (reduction "mean": the exact mean over all batches), w_b = 1 for "sum", and n_b / N
    for a loss without ``normalizer`` or when ``num_data`` is given (module docstring).

    Args:
        model: any ``torch.nn.Module``; ``model(*inputs)`` for tuple inputs.
        loss: a ``hesskit.losses.Loss``, a torch loss module (``nn.MSELoss``,
            ``nn.CrossEntropyLoss``, ... converted to its closed-form twin), or any function
            ``loss(output, target) -> scalar`` (differentiated by autodiff), as
            :func:`hesskit.losses.as_loss` says.
        data: one batch ``(inputs, targets)``, a list of batches, or a re-iterable of them
            (a ``DataLoader``), read anew on every pass; a one-shot iterator (a generator)
            is read once into a list.
        params: names of the parameters to differentiate (default: all that require grad),
            in ``model.named_parameters()`` order.
        distributed: ``data`` is this rank's shard and sums run over all ranks. ``None``
            (default): whenever a process group with more than one rank is initialised;
            ``False``: a purely local problem even inside a process group. Every rank must
            construct its distributed problems in the same order (construction is a
            collective), with identical parameters.
        num_data: the samples ``data`` holds (this rank's shard when distributed), if
            known: a stream is then not read at construction, and batches are weighted
            n_b / N, the exact mean only when every sample has the same normalizer (no
            ignored targets, no class weights). Checked at the end of every pass.
        dropout: how dropout in training mode acts in hesskit's evaluations
            (:class:`~hesskit.functional_view.DropoutMode`; default: as in eval mode).

    Attributes:
        num_data: N, the number of samples over all ranks.
        local_num_data: the samples held by this rank (N when not distributed).
        data_offset: global index of this rank's first sample (0 when not distributed).
        distributed: whether sums run over the ranks.
        streamed: the batches are read from ``data`` on every pass (not held in memory).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module | Callable[[Any, Any], Tensor],
        data: Data,
        params: Iterable[str] | None = None,
        *,
        distributed: bool | None = None,
        num_data: int | None = None,
        dropout: DropoutMode | str = DropoutMode.EVAL,
    ) -> None:
        self.model = uncompiled(model)
        self.loss = as_loss(loss)
        self.dropout = as_dropout_mode(dropout)
        self._source = BatchSource(data)
        self.streamed = self._source.streamed
        self.distributed = _resolve_distributed(distributed)
        self.layout = ParameterLayout.from_tensors(_chosen_parameters(self.model, params))
        normalizer = getattr(self.loss, "normalizer", None)
        self._normalizer = (
            normalizer if callable(normalizer) and num_data is None
            and self.loss.reduction != "sum" else None
        )
        self._held: list[CheckedBatch] | None = None
        self._num_batches: int | None = None
        local_total = self._first_pass(num_data)
        self.num_data, self.data_offset = self.local_num_data, 0
        self._normalizer_total = local_total
        if self.distributed:
            counts = counts_per_rank(self.local_num_data)
            self.num_data, self.data_offset = sum(counts), sum(counts[: rank()])
            if self._normalizer is not None:
                self._normalizer_total = float(sum_over_ranks(float(local_total)))
        if self.num_data == 0 or (self._normalizer is not None and self._normalizer_total == 0):
            raise InvalidArgumentError(
                "the data hold no samples (or every target is ignored); pass at least one "
                "batch with samples to average over"
            )

    def _first_pass(self, num_data: int | None) -> float:
        """Sets ``local_num_data`` (and holds the batches of in-memory data); returns the
        local Σ_b d_b. Streams are read once, and not at all when ``num_data`` is given."""
        if self.streamed and num_data is not None:
            self.local_num_data = int(num_data)
            return 0.0
        held, count, total, batches = [], 0, 0.0, 0
        for item in self._checked_pass(count_check=False):
            _, _, _, n, d = item
            count, total, batches = count + n, total + d, batches + 1
            if not self.streamed:
                held.append(item)
        if not self.streamed:
            self._held = held
        self._num_batches = batches
        if num_data is not None and num_data != count:
            raise InvalidArgumentError(
                f"num_data={num_data} but the data hold {count} samples; pass the true count "
                "or leave num_data unset"
            )
        self.local_num_data = count
        return total

    def _checked_pass(self, count_check: bool = True) -> Iterator[CheckedBatch]:
        """One pass over the raw batches, each validated (sample counts, finiteness) and
        with its n_b and d_b; batches with no samples (or d_b = 0) are left out."""
        count = 0
        for position, inputs, targets in self._source.passes():
            where = f"batch {position}"
            n = _batch_size(inputs, targets, where)
            if n == 0:
                continue
            check_finite(inputs, "inputs", where=where)
            check_finite(targets, "targets", where=where)
            d = float(self._normalizer(targets)) if self._normalizer is not None else float(n)
            if d == 0:
                continue
            count += n
            yield position, inputs, targets, n, d
        if count_check and count != self.local_num_data:
            raise InvalidArgumentError(
                f"the data yielded {count} samples on this pass but {self.local_num_data} were "
                "counted (or given as num_data) at construction; pass data that yield the same "
                "samples on every pass"
            )

    @property
    def num_params(self) -> int:
        return self.layout.num_params

    @property
    def dtype(self) -> torch.dtype:
        return dict(self.model.named_parameters())[self.layout.names[0]].dtype

    @property
    def device(self) -> torch.device:
        return dict(self.model.named_parameters())[self.layout.names[0]].device

    @property
    def couples_samples(self) -> bool:
        """A sample's output depends on the other samples of its batch (train-mode
        BatchNorm), so per-sample quantities are not those of the batch function."""
        return couples_samples(self.model)

    def parameters(self) -> dict[str, Tensor]:
        """The current values of the chosen parameters, detached (they share storage)."""
        named = dict(self.model.named_parameters())
        return {name: named[name].detach() for name in self.layout.names}

    def batches(self) -> Iterator[Batch]:
        """The batches with their weights w_b, moved to the model's device (a stream is read
        anew, batch by batch)."""
        device, start = self.device, self.data_offset
        items = self._held if self._held is not None else self._checked_pass()
        for index, (_, inputs, targets, n, d) in enumerate(items):
            weight = self._batch_weight(n, d)
            yield Batch(index, to_device(inputs, device), to_device(targets, device), weight, start)
            start += n

    def _batch_weight(self, n: int, d: float) -> float:
        if self._normalizer is None:
            return self.loss.batch_weight(n, self.num_data)
        return d / self._normalizer_total

    @property
    def num_batches(self) -> int:
        """The number of (non-empty) batches; for a stream given ``num_data``, its ``len``,
        else counted in one pass (then kept)."""
        if self._num_batches is None:
            length = self._source.length()
            self._num_batches = (
                length if length is not None else sum(1 for _ in self._checked_pass())
            )
        return self._num_batches

    def with_params(self, names: Iterable[str]) -> Problem:
        """The same model, loss and data with only the parameters ``names`` differentiated
        (the rest fixed at the model's values). Shares the data and the counts: no pass
        over a stream, no collective."""
        other = copy.copy(self)
        other.layout = ParameterLayout.from_tensors(_chosen_parameters(self.model, names))
        return other

    def functional_mode(self) -> AbstractContextManager[None]:
        """The context in which the model is the fixed function f(θ, X) (batch statistics,
        no buffer updates, dropout per ``self.dropout``, math attention kernel); every
        evaluation of :meth:`output` runs in it. Code that calls ``self.model`` itself
        should enter it too."""
        return functional_mode(self.model, dropout=self.dropout)

    def output(self, params: Mapping[str, Tensor], inputs: Tree) -> Any:
        """f(θ, X): the model's output with parameters θ (others and buffers as in the
        model), called as ``model(*inputs)`` for a tuple, ``model(**inputs)`` for a dict
        of ``forward``'s keyword arguments, ``model(inputs)`` otherwise; of an output
        with ``logits`` (a Hugging Face ``ModelOutput``), its logits
        (:mod:`hesskit.tensor_tree`)."""
        args, kwargs = model_arguments(inputs, self.model)
        with self.functional_mode():
            result = functional_call(self.model, dict(params), args, kwargs)
        return network_output(result)

    def check_deterministic(
        self, params: Mapping[str, Tensor], inputs: Tree, outputs: Tensor
    ) -> None:
        """Raise unless one more forward pass at ``params`` gives ``outputs`` bit for bit.

        Curvature operators call it with the outputs of the forward pass they linearize,
        once per batch they build (curvlinops' ``check_deterministic`` in spirit): dropout
        and known random operations are already switched off or refused inside
        :meth:`functional_mode`; this catches whatever else makes ``forward`` change
        between calls (Python-level randomness, state kept on the module). Cost: one
        forward pass (its graph freed at once).

        Raises:
            InvalidArgumentError: the outputs differ.
        """
        with torch.enable_grad():  # some kernels (LSTM) differ in the last bit without grad
            tracked = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            again = self.output(tracked, inputs)
        if not (isinstance(again, Tensor) and torch.equal(again.detach(), outputs.detach())):
            raise nondeterministic_error("a second forward pass")

    def batch_loss(self, params: Mapping[str, Tensor], inputs: Tree, targets: Tree) -> Tensor:
        """ℓ(f(θ, X_b), y_b): one batch's loss with its own reduction (not weighted)."""
        return self.loss.value(self.output(params, inputs), targets)

    def check_finite_parameters(self, params: Mapping[str, Tensor] | None = None) -> None:
        """Raise ``NonFiniteError`` naming the first parameter (``params``, default the
        chosen ones at their current values; then the model's other parameters) or buffer
        with a NaN or Inf entry. Cost: one ``isfinite`` per tensor."""
        params = self.parameters() if params is None else params
        for name, value in params.items():
            check_finite(value, f"parameter {name!r}", remedy=PARAMETER_REMEDY)
        for name, value in self.model.named_parameters():
            if name not in params:
                check_finite(value.detach(), f"parameter {name!r}", remedy=PARAMETER_REMEDY)
        for name, value in self.model.named_buffers():
            check_finite(value, f"buffer {name!r}", remedy=PARAMETER_REMEDY)

    def local_loss(self, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """Σ_b w_b ℓ_b over this rank's batches (differentiable in ``params``).

        Not distributed, this is L(θ). Distributed, it is this rank's share of L: the shares
        sum to L over the ranks, and so do their gradients (a closure for a distributed
        ``HessianFree`` returns it). Parameters are not checked for NaN here (an optimizer
        evaluates trial points and rejects a non-finite value itself).
        """
        params = self.parameters() if params is None else params
        accumulate = accumulation_dtype(self.dtype)
        total = torch.zeros((), dtype=accumulate, device=self.device)
        for batch in self.batches():
            loss = self.batch_loss(params, batch.inputs, batch.targets)
            total = total + batch.weight * loss.to(accumulate)
        return total.to(self.dtype) if accumulate is not self.dtype else total

    def total_loss(self, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """L(θ) = Σ_b w_b ℓ_b, the loss over all samples (one forward pass per batch).

        Differentiable in ``params`` when not distributed. Distributed, it is the value
        summed over the ranks (one all-reduce), detached: differentiate
        :meth:`local_loss` instead, or use :meth:`gradient`.
        """
        self.check_finite_parameters(params)
        if not self.distributed:
            return self.local_loss(params)
        return all_reduce_sum(self.local_loss(params).detach().reshape(1)).reshape(())

    def gradient(self, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """∇L(θ) as a flat vector of length N (one backward pass per batch; distributed,
        plus one all-reduce of N numbers)."""
        self.check_finite_parameters(params)
        params = self.parameters() if params is None else params
        accumulate = accumulation_dtype(self.dtype)
        total = torch.zeros(self.num_params, dtype=accumulate, device=self.device)
        for batch in self.batches():
            values = {name: p.detach().requires_grad_(True) for name, p in params.items()}
            loss = self.batch_loss(values, batch.inputs, batch.targets)
            grads = torch.autograd.grad(loss, list(values.values()))
            total += batch.weight * self.layout.flatten(grads).to(accumulate)
        total = all_reduce_sum(total) if self.distributed else total
        return total.to(self.dtype)


def nondeterministic_error(what: str) -> InvalidArgumentError:
    """The one error for a model that is not one fixed function: ``what`` (another forward
    pass at the same parameters) gave other outputs than the first."""
    return InvalidArgumentError(
        f"{what} of the model at the same parameters gave other outputs than the first, so "
        "it is not one fixed function (a random or stateful operation in forward that "
        "hesskit does not switch off); make forward deterministic while hesskit evaluates it"
    )


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for the 16-bit dtypes (bfloat16 keeps 8 significant bits: a sum over
    batches in it loses the small batches' share), else ``dtype`` itself."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _chosen_parameters(model: nn.Module, params: Iterable[str] | None) -> dict[str, Tensor]:
    named = dict(model.named_parameters())
    if params is None:
        names = [name for name, p in named.items() if p.requires_grad]
    else:
        wanted = {parameter_name(name) for name in params}
        unknown = sorted(wanted - set(named))
        if unknown:
            raise InvalidArgumentError(
                f"the model has no parameters named {unknown}; known: {', '.join(named)}"
            )
        names = [name for name in named if name in wanted]
    if not names:
        raise InvalidArgumentError("no parameters to differentiate; pass params=[names]")
    return {name: named[name] for name in names}


def _batch_size(inputs: Tree, targets: Tree, where: str) -> int:
    """n_b, the common first dimension of the batch's inputs and targets."""
    try:
        n = tensor_tree.num_samples(inputs, "inputs")
        m = tensor_tree.num_samples(targets, "targets")
    except InvalidArgumentError as error:
        raise InvalidArgumentError(f"{where}: {error}") from None
    if n != m:
        raise InvalidArgumentError(
            f"{where}: the inputs hold {n} samples but the targets {m} "
            f"(targets shapes: {_shapes(targets)}); pass one target per sample"
        )
    return n


def _shapes(tree: Tree) -> str:
    named = tensor_tree.named_tensors(tree, "targets")
    return ", ".join(f"{path} {tuple(t.shape)}" for path, t in named)


def _resolve_distributed(distributed: bool | None) -> bool:
    if distributed is None:
        return is_distributed()
    if distributed and not _process_group_exists():
        raise InvalidArgumentError(
            "distributed=True needs an initialised torch.distributed process group; call "
            "torch.distributed.init_process_group first (under torchrun), or pass "
            "distributed=None"
        )
    return bool(distributed) and is_distributed()


def _process_group_exists() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()
