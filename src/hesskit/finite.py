"""NaN and Inf detection that says which tensor and where, before they spread.

One NaN in the data or the parameters makes every gradient, curvature product and
eigenvalue NaN, far from its cause. These checks stop at the source with ONE
:class:`~hesskit.errors.NonFiniteError` that names the tensor, counts its bad entries and
gives the index of the first. Cost when all is finite: one ``isfinite`` and one reduction
per floating tensor (a device synchronisation each on a GPU); integer and boolean tensors
are skipped, and so are tensors inside a ``torch.func`` transform (their values are
symbolic there: data-dependent checks would break ``vmap``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hesskit.errors import NonFiniteError
from hesskit.tensor_tree import Tree, named_tensors

DATA_REMEDY = "fix the data or drop those samples"
PARAMETER_REMEDY = (
    "the model's parameters and buffers must be finite: reload a checkpoint or "
    "re-initialise them (a diverged optimizer step is the usual cause)"
)


def non_finite_summary(tensor: Tensor) -> str | None:
    """``"4 NaN entries, first at [0, 7]"`` when ``tensor`` has NaN or ±Inf entries, else
    None (also for non-floating tensors and tensors under a ``torch.func`` transform)."""
    if not _checkable(tensor):
        return None
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return None
    nan, infinite = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
    counts = []
    if nan:
        counts.append(f"{nan} NaN")
    if infinite:
        counts.append(f"{infinite} infinite")
    first = (~finite).nonzero()[0].tolist()
    return f"{' and '.join(counts)} entries, first at {first}"


def check_finite(tree: Tree, name: str, *, where: str = "", remedy: str = DATA_REMEDY) -> None:
    """Raise ONE :class:`NonFiniteError` at the first tensor of ``tree`` with NaN or Inf.

    Args:
        tree: a tensor or a tuple / list / dict of tensors.
        name: its name in the message (``"inputs"``, ``"parameter 'fc.weight'"``).
        where: a prefix that locates it (``"batch 3"``).
        remedy: what the user should do, ending the message.
    """
    for path, tensor in named_tensors(tree, name):
        summary = non_finite_summary(tensor)
        if summary is not None:
            prefix = f"{where}, " if where else ""
            raise NonFiniteError(f"{prefix}{path} has {summary}; {remedy}")


def check_training_data(problem: object) -> None:
    """Refuse NaN or Inf in a training problem's data before any optimizer runs.

    ``problem`` has ``train`` and ``test`` pairs ``(inputs, targets)`` (a benchmark problem,
    or the user's data for ``--model``, where both are the same tensors). The message names
    the data, the tensor and the first bad index, so that a NaN in the data is not mistaken
    for a diverging optimizer.

    Raises:
        NonFiniteError: a floating entry of the inputs or targets is NaN or infinite.
    """
    seen: list[object] = []
    for split in ("train", "test"):
        pair = getattr(problem, split, None)
        if pair is None or any(pair is other for other in seen):
            continue
        seen.append(pair)
        inputs, targets = pair
        label = "the data" if split == "train" else "the test data"
        check_finite(inputs, "inputs", where=label)
        check_finite(targets, "targets", where=label)


def _checkable(tensor: Tensor) -> bool:
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return False
    return not torch._C._functorch.is_functorch_wrapped_tensor(tensor)
