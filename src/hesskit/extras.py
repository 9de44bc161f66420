"""Optional packages: what each extra brings, and one clear error when one is missing.

The library itself (operators, dense matrices, estimators, solvers, optimizers, training)
needs torch, NumPy and SciPy only. The rest is optional, installed by an extra:

==================  =====================================  ==============================
extra               packages                               what needs them
==================  =====================================  ==============================
``cli``             matplotlib, rich, scikit-learn,        the ``hesskit`` command, its
                    mnist1d                                plots and HTML pages, live
                                                           progress bars, the bundled
                                                           8×8 digits, MNIST-1D
``dev``             the ``cli`` extra, pytest,             the tests, ``make docs``
                    hypothesis, ruff, selenium, mkdocs
``bench``           curvlinops, BackPACK                   the peer benchmarks only
==================  =====================================  ==============================

:func:`require` imports an optional module or raises :class:`MissingExtraError` saying
what to install; the CLI turns a missing optional module into the same one line, exit 2.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from hesskit.errors import MissingExtraError

OPTIONAL_PACKAGES = {
    "matplotlib": "matplotlib",
    "rich": "rich",
    "sklearn": "scikit-learn",
    "mnist1d": "mnist1d",
}
"""Top-level module → the package that installs it, for every module of the ``cli`` extra."""
INSTALL_HINT = "pip install 'hesskit[cli]'"


def missing_extra_message(module: str, purpose: str = "this") -> str:
    """The sentence for a missing optional ``module`` (a dotted name is fine)."""
    root = module.split(".")[0]
    package = OPTIONAL_PACKAGES.get(root, root)
    return (f"{purpose} needs {package}, which is not installed; install hesskit's cli "
            f"extra: {INSTALL_HINT}")


def require(module: str, purpose: str) -> ModuleType:
    """``importlib.import_module(module)``, or :class:`MissingExtraError` naming the extra.

    Args:
        module: the optional module, e.g. ``"sklearn.datasets"``.
        purpose: what needs it, for the message (``"the digits data set"``).
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] != module.split(".")[0]:
            raise  # the optional package is there but one of ITS imports failed
        raise MissingExtraError(missing_extra_message(module, purpose)) from None


def is_optional_module(name: str | None) -> bool:
    """Whether ``name`` (a ``ModuleNotFoundError.name``) belongs to an optional package."""
    return name is not None and name.split(".")[0] in OPTIONAL_PACKAGES
