"""The data of a ``Problem`` as batches ``(inputs, targets)``, read again on every pass.

Three forms of data, told apart without reading a stream twice:

* one batch: a pair ``(inputs, targets)`` (a tuple of two whose inputs or targets is a
  tensor or a dict). A single batch whose inputs AND targets are both tuples or lists is
  ambiguous with a sequence of two batches: wrap it in a list, ``[((x1, x2), (y1, y2))]``;
* in memory: a list or tuple of batches, and any one-shot iterator (a generator, ``iter(...)``)
  which is read ONCE into a list, since it cannot be read again;
* a stream: any other re-iterable (a ``torch.utils.data.DataLoader``, a custom class with
  ``__iter__``). It is iterated batch by batch on every pass and never copied into a list;
  only one batch is alive at a time (plus what the caller keeps).

A ``DataLoader`` that shuffles yields different batches on every pass. Sums over all
samples (the loss, its gradient, every curvature product) do not change, but an operator
that caches per-batch work would pair one pass's batch with another's: a warning says so.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from torch import Tensor
from torch.utils.data import DataLoader, RandomSampler

from hesskit.errors import InvalidArgumentError
from hesskit.tensor_tree import Tree

Pair = tuple[Tree, Tree]


class BatchSource:
    """Re-readable raw batches: ``passes()`` yields ``(position, inputs, targets)``.

    Attributes:
        streamed: the batches are read from the user's iterable on every pass (not held).
    """

    def __init__(self, data: Any) -> None:
        self._held: list[Any] | None = None
        self._stream: Iterable[Any] | None = None
        if is_single_batch(data):
            self._held = [data]
        elif isinstance(data, (Iterator, list, tuple)):  # a one-shot iterator: read once
            self._held = list(data)
        elif isinstance(data, Iterable) and not isinstance(data, (Tensor, Mapping, str)):
            self._stream = data
            _warn_if_shuffled(data)
        else:
            raise InvalidArgumentError(
                f"data of type {type(data).__name__} is neither a batch (inputs, targets) nor "
                "an iterable of batches; pass (X, y), a list of (X, y) or a DataLoader"
            )
        self.streamed = self._stream is not None

    def length(self) -> int | None:
        """The number of raw batches when known without reading (a list, a ``DataLoader``)."""
        if self._held is not None:
            return len(self._held)
        try:
            return len(self._stream)  # type: ignore[arg-type]
        except TypeError:
            return None

    def passes(self) -> Iterator[tuple[int, Tree, Tree]]:
        """One pass over the data: ``(position, inputs, targets)`` for every raw batch."""
        batches = self._held if self._held is not None else self._stream
        for position, batch in enumerate(batches):  # type: ignore[arg-type]
            inputs, targets = as_pair(batch, position)
            yield position, inputs, targets


def is_single_batch(data: Any) -> bool:
    """``data`` is one ``(inputs, targets)`` pair rather than a sequence of batches."""
    if not isinstance(data, tuple) or len(data) != 2:
        return False
    return any(isinstance(side, (Tensor, Mapping)) for side in data)


def as_pair(batch: Any, position: int) -> Pair:
    """``batch`` as ``(inputs, targets)``, or an error that says what a batch must be."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    shape = f"a {type(batch).__name__}"
    if isinstance(batch, (tuple, list)):
        shape += f" of {len(batch)} entries"
    raise InvalidArgumentError(
        f"batch {position} is {shape}; each batch must be a pair (inputs, targets), with "
        "several input tensors grouped as ((x1, x2), y) (a DataLoader collate_fn can do that)"
    )


def _warn_if_shuffled(data: Iterable[Any]) -> None:
    if not isinstance(data, DataLoader):
        return
    sampler = data.batch_sampler.sampler if data.batch_sampler is not None else data.sampler
    if isinstance(sampler, RandomSampler):
        warnings.warn(
            "this DataLoader shuffles, so every pass yields different batches: the loss, "
            "gradient and curvature products are sums over all samples and do not change, "
            "but operators that cache per-batch work (cache=True) would mix passes; "
            "use shuffle=False for curvature",
            stacklevel=3,
        )
