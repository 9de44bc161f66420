"""Which optimizers ``hesskit train`` runs data parallel, and the check before such a run."""

from __future__ import annotations

from hesskit.errors import InvalidArgumentError

DATA_PARALLEL_OPTIMIZERS = ("hf", "kfac", "sophia", "sophia-h", "adahessian", "shampoo")
"""The methods that sum their closure's loss share, gradient and curvature statistics over
the ranks themselves (``torch.distributed``), so that every rank takes the same step."""


def check_data_parallel(optimizer: str, batch_size: int, ranks: int,
                        curvature: object = None) -> None:
    """Refuse a method that does not sum over the ranks, a batch smaller than the number of
    ranks, or curvature tracking (``curvature`` not None: one process only)."""
    if curvature is not None:
        raise InvalidArgumentError("--track-curvature runs in one process; train without "
                                   "torchrun to track curvature")
    if optimizer not in DATA_PARALLEL_OPTIMIZERS:
        raise InvalidArgumentError(
            f"data-parallel training (torchrun with {ranks} processes) supports --optimizer "
            f"{', '.join(DATA_PARALLEL_OPTIMIZERS)}; run {optimizer} in one process")
    if batch_size < ranks:
        raise InvalidArgumentError(f"a batch of {batch_size} samples cannot be split over "
                                   f"{ranks} processes; use a larger --batch-size")
