"""Models wrapped by ``torch.compile``: the original module and its parameter names.

``torch.compile(model)`` returns an ``OptimizedModule`` whose parameters are the original's
under names with the prefix ``_orig_mod.``. hesskit works on the original module and its
own names, so that layouts, ``block([...])`` and reports read the same before and after
compiling, and accepts the prefixed names too.
"""

from __future__ import annotations

from torch import nn

COMPILED_PREFIX = "_orig_mod."
"""What ``torch.compile(model)`` puts before every parameter name of ``model``."""


def uncompiled(model: nn.Module) -> nn.Module:
    """The module ``torch.compile`` wrapped (``model._orig_mod``), else ``model`` itself.

    A compiled module shares its parameters with the original, whose names lack the
    ``_orig_mod.`` prefix; hesskit's layouts, blocks and reports use those names, so that
    ``block(["0.weight"])`` means the same before and after ``torch.compile``.
    """
    original = getattr(model, "_orig_mod", None)
    return uncompiled(original) if isinstance(original, nn.Module) else model


def parameter_name(name: str) -> str:
    """``name`` without the ``_orig_mod.`` prefix that ``torch.compile`` adds.

    >>> parameter_name("_orig_mod.0.weight")
    '0.weight'
    """
    while name.startswith(COMPILED_PREFIX):
        name = name[len(COMPILED_PREFIX):]
    return name
