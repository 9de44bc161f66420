"""A model, a loss and data seen as pure functions of the parameters.

``Problem`` is the functional view every curvature computation starts from:

    f(θ, X) = model with parameters θ applied to X     (``torch.func.functional_call``)
    L(θ)    = Σ_b w_b ℓ(f(θ, X_b), y_b)                (w_b from the loss's reduction)

so that L is the same reduction over all N samples as ``loss(model(X_all), y_all)``, even
when the last batch is smaller. Parameters outside the chosen set, and buffers, stay fixed
at the model's current values.

Data parallel: inside a ``torch.distributed`` process group each rank passes its own shard
of the data. N is then the GLOBAL sample count (one collective at construction), so the
weights w_b = n_b / N are global, the ranks' shares Σ_{b on rank r} w_b ℓ_b sum to L, and
``total_loss``, ``gradient`` and every curvature operator built on the problem sum over the
ranks (one all-reduce each). A sample's global index is its rank's offset plus its local
index: the data as if the shards were concatenated in rank order (``shard_range`` order).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from hesskit.distributed import all_reduce_sum, counts_per_rank, is_distributed, rank
from hesskit.errors import InvalidArgumentError
from hesskit.layout import ParameterLayout
from hesskit.losses import as_loss

Data = tuple[Tensor, Tensor] | Iterable[tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Batch:
    """One batch of data, its weight w_b in the total loss and the global index of its first
    sample (``start``; counts the samples of lower ranks when distributed)."""

    index: int
    inputs: Tensor
    targets: Tensor
    weight: float
    start: int = 0


class Problem:
    """An ``nn.Module``, a loss and data, as functions of the chosen parameters.

    Args:
        model: any ``torch.nn.Module``.
        loss: a ``hesskit.losses.Loss`` or ``nn.MSELoss`` / ``nn.CrossEntropyLoss`` /
            ``nn.BCEWithLogitsLoss`` (converted).
        data: one batch ``(inputs, targets)`` or a re-iterable of batches (a list or a
            ``DataLoader``); a one-shot iterator is read once into a list.
        params: names of the parameters to differentiate (default: all that require grad),
            in ``model.named_parameters()`` order.
        distributed: ``data`` is this rank's shard and sums run over all ranks. ``None``
            (default): whenever a process group with more than one rank is initialised;
            ``False``: a purely local problem even inside a process group. Every rank must
            construct its distributed problems in the same order (construction is a
            collective), with identical parameters.

    Attributes:
        num_data: N, the number of samples over all ranks.
        local_num_data: the samples held by this rank (N when not distributed).
        data_offset: global index of this rank's first sample (0 when not distributed).
        distributed: whether sums run over the ranks.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        data: Data,
        params: Iterable[str] | None = None,
        *,
        distributed: bool | None = None,
    ) -> None:
        self.model = model
        self.loss = as_loss(loss)
        self._batches = _as_batches(data)
        self.distributed = _resolve_distributed(distributed)
        named = dict(model.named_parameters())
        if params is None:
            names = [name for name, p in named.items() if p.requires_grad]
        else:
            wanted = set(params)
            unknown = sorted(wanted - set(named))
            if unknown:
                raise InvalidArgumentError(
                    f"the model has no parameters named {unknown}; known: {', '.join(named)}"
                )
            names = [name for name in named if name in wanted]
        if not names:
            raise InvalidArgumentError("no parameters to differentiate; pass params=[names]")
        self.layout = ParameterLayout.from_tensors({name: named[name] for name in names})
        self.local_num_data = sum(len(x) for x, _ in self._batches)
        self.num_data, self.data_offset = self.local_num_data, 0
        if self.distributed:
            counts = counts_per_rank(self.local_num_data)
            self.num_data, self.data_offset = sum(counts), sum(counts[: rank()])
            self._batches = [(x, y) for x, y in self._batches if len(x) > 0]
        if self.num_data == 0:
            raise InvalidArgumentError("the data hold no samples; pass at least one batch")

    @property
    def num_params(self) -> int:
        return self.layout.num_params

    @property
    def dtype(self) -> torch.dtype:
        return dict(self.model.named_parameters())[self.layout.names[0]].dtype

    @property
    def device(self) -> torch.device:
        return dict(self.model.named_parameters())[self.layout.names[0]].device

    def parameters(self) -> dict[str, Tensor]:
        """The current values of the chosen parameters, detached (they share storage)."""
        named = dict(self.model.named_parameters())
        return {name: named[name].detach() for name in self.layout.names}

    def batches(self) -> Iterator[Batch]:
        """The batches with their weights w_b, moved to the model's device."""
        device, start = self.device, self.data_offset
        for index, (inputs, targets) in enumerate(self._batches):
            weight = self.loss.batch_weight(len(inputs), self.num_data)
            yield Batch(index, inputs.to(device), targets.to(device), weight, start)
            start += len(inputs)

    @property
    def num_batches(self) -> int:
        return len(self._batches)

    def output(self, params: Mapping[str, Tensor], inputs: Tensor) -> Tensor:
        """f(θ, X): the model's output with parameters θ (others and buffers as in the model)."""
        return functional_call(self.model, dict(params), (inputs,))

    def batch_loss(self, params: Mapping[str, Tensor], inputs: Tensor, targets: Tensor) -> Tensor:
        """ℓ(f(θ, X_b), y_b): one batch's loss with its own reduction (not weighted)."""
        return self.loss.value(self.output(params, inputs), targets)

    def local_loss(self, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """Σ_b w_b ℓ_b over this rank's batches (differentiable in ``params``).

        Not distributed, this is L(θ). Distributed, it is this rank's share of L: the shares
        sum to L over the ranks, and so do their gradients (a closure for a distributed
        ``HessianFree`` returns it).
        """
        params = self.parameters() if params is None else params
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        for batch in self.batches():
            total = total + batch.weight * self.batch_loss(params, batch.inputs, batch.targets)
        return total

    def total_loss(self, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """L(θ) = Σ_b w_b ℓ_b, the loss over all samples.

        Differentiable in ``params`` when not distributed. Distributed, it is the value
        summed over the ranks (one all-reduce), detached: differentiate
        :meth:`local_loss` instead, or use :meth:`gradient`.
        """
        if not self.distributed:
            params = self.parameters() if params is None else params
            return sum(
                batch.weight * self.batch_loss(params, batch.inputs, batch.targets)
                for batch in self.batches()
            )
        return all_reduce_sum(self.local_loss(params).detach().reshape(1)).reshape(())

    def gradient(self, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """∇L(θ) as a flat vector of length N (one backward pass per batch; distributed,
        plus one all-reduce of N numbers)."""
        params = self.parameters() if params is None else params
        total = torch.zeros(self.num_params, dtype=self.dtype, device=self.device)
        for batch in self.batches():
            values = {name: p.detach().requires_grad_(True) for name, p in params.items()}
            loss = self.batch_loss(values, batch.inputs, batch.targets)
            grads = torch.autograd.grad(loss, list(values.values()))
            total += batch.weight * self.layout.flatten(grads)
        return all_reduce_sum(total) if self.distributed else total


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


def _as_batches(data: Data) -> list[tuple[Tensor, Tensor]]:
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        batches = [data]
    else:
        batches = [tuple(batch) for batch in data]
    for inputs, targets in batches:
        if len(inputs) != len(targets):
            raise InvalidArgumentError(
                f"a batch has {len(inputs)} inputs but {len(targets)} targets; "
                "pass one target per input"
            )
    return batches
