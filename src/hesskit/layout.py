"""Where each parameter lives in a flat vector of length N, and the label of every entry.

Every flat vector, dense matrix row and curvature product in hesskit uses this one layout:
the parameter tensors in ``model.named_parameters()`` order, each flattened in row-major
order and concatenated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hesskit.errors import InvalidArgumentError


@dataclass(frozen=True)
class ParameterLayout:
    """Names and shapes of the parameter tensors, in the order of the flat vector.

    Attributes:
        names: parameter names as in ``model.named_parameters()`` (``"layer2.weight"``).
        shapes: the shape of each parameter tensor.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor]) -> ParameterLayout:
        return cls(tuple(tensors), tuple(torch.Size(t.shape) for t in tensors.values()))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(shape) for shape in self.shapes)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Start of each parameter in the flat vector."""
        starts, total = [], 0
        for size in self.sizes:
            starts.append(total)
            total += size
        return tuple(starts)

    @property
    def num_params(self) -> int:
        """N, the length of the flat vector."""
        return sum(self.sizes)

    def slice(self, name: str) -> slice:
        """The range of the flat vector that holds parameter ``name``."""
        index = self._index(name)
        start = self.offsets[index]
        return slice(start, start + self.sizes[index])

    def flatten(
        self, tensors: Mapping[str, Tensor] | Sequence[Tensor], batch_dims: int = 0
    ) -> Tensor:
        """Concatenate parameter-shaped tensors into a flat vector (or ``[*batch, N]``).

        Args:
            tensors: one tensor per parameter, as a dict keyed by name or a sequence in order;
                each shaped ``(*batch, *shape)``.
            batch_dims: number of leading dimensions that are not part of the parameter.
        """
        parts = self._as_sequence(tensors)
        flat = []
        for part, shape in zip(parts, self.shapes, strict=True):
            if tuple(part.shape[batch_dims:]) != tuple(shape):
                raise InvalidArgumentError(
                    f"a tensor of shape {tuple(part.shape[batch_dims:])} was given where the "
                    f"parameter has shape {tuple(shape)}; pass tensors shaped like the parameters"
                )
            flat.append(part.reshape(*part.shape[:batch_dims], -1))
        return torch.cat(flat, dim=-1)

    def unflatten(self, vector: Tensor) -> dict[str, Tensor]:
        """Split a flat ``[*batch, N]`` tensor into parameter-shaped views ``[*batch, *shape]``."""
        if vector.shape[-1] != self.num_params:
            raise InvalidArgumentError(
                f"a vector of length {vector.shape[-1]} was given for {self.num_params} "
                "parameters; pass one entry per parameter"
            )
        batch = vector.shape[:-1]
        pieces = torch.split(vector, self.sizes, dim=-1)
        return {
            name: piece.reshape(*batch, *shape)
            for name, piece, shape in zip(self.names, pieces, self.shapes, strict=True)
        }

    def locate(self, index: int) -> tuple[str, tuple[int, ...]]:
        """The parameter name and multi-index of flat entry ``index``."""
        if not 0 <= index < self.num_params:
            raise InvalidArgumentError(f"index {index} is outside 0..{self.num_params - 1}")
        for name, shape, start, size in zip(
            self.names, self.shapes, self.offsets, self.sizes, strict=True
        ):
            if index < start + size:
                offset, position = index - start, []
                for dim in reversed(shape):
                    position.append(offset % dim)
                    offset //= dim
                return name, tuple(reversed(position))
        raise AssertionError("unreachable")

    def label(self, index: int) -> str:
        """A readable label of flat entry ``index``, e.g. ``"layer2.weight[3, 1]"``."""
        name, position = self.locate(index)
        return f"{name}[{', '.join(map(str, position))}]" if position else name

    def labels(self) -> list[str]:
        """Labels of all N entries, in order."""
        return [self.label(i) for i in range(self.num_params)]

    def _index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise InvalidArgumentError(
                f"no parameter named {name!r}; known: {', '.join(self.names)}"
            ) from None

    def _as_sequence(self, tensors: Mapping[str, Tensor] | Sequence[Tensor]) -> list[Tensor]:
        if isinstance(tensors, Mapping):
            missing = [name for name in self.names if name not in tensors]
            if missing:
                raise InvalidArgumentError(f"missing tensors for parameters {missing}")
            return [tensors[name] for name in self.names]
        if len(tensors) != len(self.names):
            raise InvalidArgumentError(
                f"{len(tensors)} tensors were given for {len(self.names)} parameters"
            )
        return list(tensors)
