"""Seeded random probe vectors shared by the stochastic estimators.

Every estimator takes an explicit ``generator``; when none is given it uses a fresh
generator seeded with ``seed`` (default 0), so a result is reproducible by default.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hesskit.errors import InvalidArgumentError


def make_generator(generator: torch.Generator | None, seed: int = 0) -> torch.Generator:
    """``generator`` itself, or a new CPU generator seeded with ``seed``."""
    if generator is not None:
        return generator
    return torch.Generator().manual_seed(int(seed))


def rademacher(
    shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """Independent ±1 entries with probability ½ each (drawn on the generator's device).

    The bits are drawn as int8 (the same draws as int64, one eighth of the memory) and
    mapped to ±1 in place, so the peak is the result plus N·P bytes.
    """
    bits = torch.randint(0, 2, shape, generator=generator, device=generator.device,
                         dtype=torch.int8)
    return bits.to(dtype=dtype, device=device).mul_(2).sub_(1)


def gaussian(
    shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """Independent standard normal entries (drawn on the generator's device)."""
    draw = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float64)
    return draw.to(dtype=dtype, device=device)


def check_count(name: str, value: int, minimum: int) -> int:
    """``value`` if it is an integer ≥ ``minimum``; otherwise a one-line error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(
            f"{name} must be an integer of at least {minimum}, got {value!r}"
        )
    return value
