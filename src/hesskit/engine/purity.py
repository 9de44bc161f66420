"""Prove that a transform of the forward pass applies: no in-place changes (tracing), and
forward mode agreeing with reverse mode.

A traced linearization (``torch.func.linearize``) folds the primal values of one forward
pass into a graph and replays only its tangent part. When ``forward`` mutates a tensor in
place (``h += x`` in a residual block, ``F.relu(h, inplace=True)``, ``x.masked_fill_``),
the replayed graph is not a function of its tangent alone on torch 2.13: the first replay
is exact and later ones drift (``../shared/pitfalls``). :func:`in_place_operation` runs the
forward once under a ``TorchFunctionMode`` that sees every torch function and tensor
method, and returns the first in-place operation it saw, so that a caller traces only a
forward proved free of them. The proof is conservative: an in-place operation on a fresh
tensor that no gradient flows through also counts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.overrides import TorchFunctionMode

_IN_PLACE_DUNDERS = frozenset({
    "__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__",
    "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__",
    "__imatmul__",
})


def is_in_place(func: Callable, kwargs: dict | None) -> bool:
    """``func`` writes into an existing tensor: a name ending in ``_`` (``add_``,
    ``relu_``, ``copy_``), an in-place operator (``__iadd__``, ``__setitem__``) or an
    ``out=`` argument."""
    name = getattr(func, "__name__", "")
    if name in _IN_PLACE_DUNDERS or bool(kwargs and kwargs.get("out") is not None):
        return True
    return name.endswith("_") and not name.startswith("__") and not name.endswith("__")


class _InPlaceWatch(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.first: str | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.first is None and is_in_place(func, kwargs):
            self.first = getattr(func, "__name__", repr(func))
        return func(*args, **(kwargs or {}))


def in_place_operation(forward: Callable[[], object]) -> str | None:
    """The name of the first in-place operation that ``forward()`` runs, or None.

    Cost: one call of ``forward`` without gradients, and a Python check per torch call.
    """
    watch = _InPlaceWatch()
    with torch.no_grad(), watch:
        forward()
    return watch.first


def forward_mode_mismatch(model: torch.nn.Module) -> str | None:
    """Why forward-mode AD would disagree with reverse mode on ``model``, or None.

    ``nn.Embedding`` / ``nn.EmbeddingBag`` with a ``padding_idx`` (BERT, BART) hold their
    padding row constant in reverse mode (its gradient is zero by design) but not in
    forward mode, where a tangent of that row moves the output: a J v by ``jvp`` paired
    with a Jᵀ u by ``vjp`` would be the transposes of two different matrices. hesskit
    follows reverse mode (the gradient the model trains with), so such a model is kept off
    the forward-mode paths. Cost: one walk over the modules.
    """
    for name, module in model.named_modules():
        embedding = isinstance(module, (torch.nn.Embedding, torch.nn.EmbeddingBag))
        if embedding and module.padding_idx is not None:
            return (f"{type(module).__name__} {name or 'model'!r} has padding_idx="
                    f"{module.padding_idx}, whose row reverse mode holds constant")
    return None
