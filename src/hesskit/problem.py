"""A model, a loss and data seen as pure functions of the parameters.

``Problem`` is the functional view every curvature computation starts from:

    f(θ, X) = model with parameters θ applied to X     (``torch.func.functional_call``)
    L(θ)    = Σ_b w_b ℓ(f(θ, X_b), y_b)                (w_b from the loss's reduction)

so that L is the same reduction over all N samples as ``loss(model(X_all), y_all)``, even
when the last batch is smaller. Parameters outside the chosen set, and buffers, stay fixed
at the model's current values.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from hesskit.errors import InvalidArgumentError
from hesskit.layout import ParameterLayout
from hesskit.losses import Loss, as_loss

Data = tuple[Tensor, Tensor] | Iterable[tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Batch:
    """One batch of data and its weight w_b in the total loss."""

    index: int
    inputs: Tensor
    targets: Tensor
    weight: float


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
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        data: Data,
        params: Iterable[str] | None = None,
    ) -> None:
        self.model = model
        self.loss = as_loss(loss)
        self._batches = _as_batches(data)
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
        self.num_data = sum(len(x) for x, _ in self._batches)
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
        device = self.device
        for index, (inputs, targets) in enumerate(self._batches):
            weight = self.loss.batch_weight(len(inputs), self.num_data)
            yield Batch(index, inputs.to(device), targets.to(device), weight)

    @property
    def num_batches(self) -> int:
        return len(self._batches)

    def output(self, params: Mapping[str, Tensor], inputs: Tensor) -> Tensor:
        """f(θ, X): the model's output with parameters θ (others and buffers as in the model)."""
        return functional_call(self.model, dict(params), (inputs,))

    def batch_loss(self, params: Mapping[str, Tensor], inputs: Tensor, targets: Tensor) -> Tensor:
        """ℓ(f(θ, X_b), y_b): one batch's loss with its own reduction (not weighted)."""
        return self.loss.value(self.output(params, inputs), targets)

    def total_loss(self, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """L(θ) = Σ_b w_b ℓ_b, the loss over all samples (differentiable in ``params``)."""
        params = self.parameters() if params is None else params
        return sum(
            batch.weight * self.batch_loss(params, batch.inputs, batch.targets)
            for batch in self.batches()
        )

    def gradient(self, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """∇L(θ) as a flat vector of length N (one backward pass per batch)."""
        params = self.parameters() if params is None else params
        total = torch.zeros(self.num_params, dtype=self.dtype, device=self.device)
        for batch in self.batches():
            values = {name: p.detach().requires_grad_(True) for name, p in params.items()}
            loss = self.batch_loss(values, batch.inputs, batch.targets)
            grads = torch.autograd.grad(loss, list(values.values()))
            total += batch.weight * self.layout.flatten(grads)
        return total


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
