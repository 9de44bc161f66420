"""Running the user's own code (``--model module:function``) so that its failures are one line.

``--model`` names a Python module and a function in it. The module is found as ``python -m``
finds it: the current directory comes first on ``sys.path``. A path ``path/to/file.py`` is
loaded from that file, with its folder first on ``sys.path`` (as ``python path/to/file.py``
does), so that it can import its neighbours.

Every exception raised while importing the module or calling the function becomes a
:class:`UserCodeError` whose message names the innermost frame in the user's files, e.g.
``your model function make() in mymod.py:12 raised ValueError: no data``. Exceptions raised
later, while hesskit runs the user's model (a shape mismatch in ``forward``), are described
the same way by :func:`describe_exception`, using the folders recorded in :data:`USER_ROOTS`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from hesskit.errors import HesskitError, InvalidArgumentError

USER_ROOTS: set[str] = set()
"""Folders the ``--model`` code was loaded from: a frame of a file below one of them, and
outside hesskit and the installed packages, is the user's (the frame to point them to)."""

_NOT_USER = tuple(
    str(Path(folder).resolve())
    for folder in {
        Path(__file__).resolve().parents[1],  # the hesskit package
        sys.prefix, sys.base_prefix, sys.exec_prefix,
    }
)

MAX_MESSAGE = 300
"""Longest exception text quoted in a one-line message (the rest is cut with "...")."""


class UserCodeError(HesskitError):
    """The user's own code raised while hesskit imported or called it; ``__cause__`` holds
    the original exception (shown in full with ``--traceback``)."""


def load_user_function(spec: str) -> tuple[Callable[[], Any], str]:
    """The function ``spec`` names (``module:function`` or ``path/to/file.py:function``).

    Returns:
        The function and its file as messages show it, e.g. ``mymod.py``.

    Raises:
        InvalidArgumentError: the spec is malformed, the module or function does not exist.
        UserCodeError: importing the module raised.
    """
    module_part, _, function_name = spec.rpartition(":")
    if not module_part or not function_name.isidentifier():
        raise InvalidArgumentError(
            f"--model {spec!r} must look like module:function or path/to/file.py:function"
        )
    module = _import_user_module(module_part, spec)
    function = getattr(module, function_name, None)
    where = display_path(getattr(module, "__file__", None) or module_part)
    if function is None:
        defined = sorted(
            name for name, value in vars(module).items()
            if inspect.isfunction(value) and not name.startswith("_")
        )
        listed = ", ".join(defined[:8]) or "no public functions"
        raise InvalidArgumentError(
            f"{where} has no function {function_name!r} (it defines {listed}); "
            f"fix the name after the colon in --model {spec}"
        )
    if not callable(function):
        raise InvalidArgumentError(
            f"{function_name} in {where} is a {type(function).__name__}, not a function; "
            "--model needs a function that returns (model, loss, data)"
        )
    _check_takes_no_arguments(function, f"{function_name}() in {where}")
    return function, where


def call_user_function(function: Callable[[], Any], where: str) -> Any:
    """``function()``, with any exception it raises turned into one :class:`UserCodeError`.

    ``where`` is the function's file, used when no frame of the traceback lies in it.
    """
    try:
        return function()
    except Exception as error:
        name = getattr(function, "__name__", "function")
        raise UserCodeError(
            f"your model function {name}() in {_location(error, where)} raised {_kind(error)}"
        ) from error


def _import_user_module(module_part: str, spec: str) -> ModuleType:
    is_path = module_part.endswith(".py") or "/" in module_part or os.sep in module_part
    if is_path:
        return _import_from_path(Path(module_part), spec)
    _put_first_on_path(Path.cwd())
    try:
        found = importlib.util.find_spec(module_part)
    except ModuleNotFoundError as error:
        if error.name is None or not module_part.startswith(error.name):
            raise _import_failure(module_part, error) from error
        found = None
    except Exception as error:  # a parent package raised while being imported
        raise _import_failure(module_part, error) from error
    if found is None:
        raise InvalidArgumentError(
            f"no module {module_part!r} in the current directory {str(Path.cwd())!r} or on "
            f"sys.path; run hesskit in the folder that holds it, or pass a path like "
            f"path/to/{module_part.replace('.', '/')}.py:{spec.rpartition(':')[2]}"
        )
    USER_ROOTS.add(str(Path.cwd().resolve()))
    if found.origin:
        USER_ROOTS.add(str(Path(found.origin).resolve().parent))
    try:
        return importlib.import_module(module_part)
    except Exception as error:
        raise _import_failure(module_part, error) from error


def _import_from_path(path: Path, spec: str) -> ModuleType:
    if not path.is_file():
        raise InvalidArgumentError(
            f"--model {spec!r}: there is no file {str(path)!r}; give the path of a .py file "
            "(relative to the current directory) before the colon"
        )
    path = path.resolve()
    _put_first_on_path(path.parent)
    name = path.stem if path.stem.isidentifier() else "hesskit_user_model"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise InvalidArgumentError(f"--model {spec!r}: {str(path)!r} cannot be loaded as Python")
    module = importlib.util.module_from_spec(module_spec)
    USER_ROOTS.add(str(path.parent))
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:
        sys.modules.pop(name, None)
        raise _import_failure(display_path(path), error) from error
    return module


def _import_failure(module_label: str, error: Exception) -> UserCodeError:
    return UserCodeError(
        f"your module {_location(error, module_label)} raised {_kind(error)} while --model "
        "imported it"
    )


def _put_first_on_path(folder: Path) -> None:
    entry = str(folder)
    if entry in sys.path:
        sys.path.remove(entry)
    sys.path.insert(0, entry)
    importlib.invalidate_caches()


def _check_takes_no_arguments(function: Callable[..., Any], label: str) -> None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return
    required = [
        name for name, parameter in signature.parameters.items()
        if parameter.default is inspect.Parameter.empty
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    ]
    if required:
        raise InvalidArgumentError(
            f"your model function {label} needs arguments ({', '.join(required)}); --model "
            "calls it with none: give them defaults or wrap it in a function without arguments"
        )


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the current directory when it lies below it, else absolute."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd()))
    except ValueError:
        return str(resolved)


def user_frame(error: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of ``error``'s traceback (or of a ``SyntaxError``'s source line)
    that lies in one of the user's files, if any."""
    if isinstance(error, SyntaxError) and error.filename and error.lineno:
        return traceback.FrameSummary(error.filename, error.lineno, "<module>")
    frames = traceback.extract_tb(error.__traceback__)
    for frame in reversed(frames):
        if is_user_file(frame.filename):
            return frame
    return None


def is_user_file(filename: str) -> bool:
    """Whether ``filename`` lies below a folder ``--model`` code came from, and outside
    hesskit and the Python installation."""
    if filename.startswith("<"):
        return False
    path = Path(filename).resolve()
    in_user_folder = any(path.is_relative_to(folder) for folder in USER_ROOTS)
    return in_user_folder and not any(path.is_relative_to(folder) for folder in _NOT_USER)


def _location(error: BaseException, fallback: str) -> str:
    """``file:line`` of the innermost frame of ``error`` in the user's files, or ``fallback``."""
    frame = user_frame(error)
    return fallback if frame is None else f"{display_path(frame.filename)}:{frame.lineno}"


def _kind(error: BaseException) -> str:
    """``ValueError: its text`` on one line (the type alone when the text is empty)."""
    text = one_line(_message_of(error))
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _message_of(error: BaseException) -> str:
    if isinstance(error, SyntaxError):
        return error.msg or ""
    if isinstance(error, KeyError) and len(error.args) == 1:
        return repr(error.args[0])
    return str(error)


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` with every run of whitespace (newlines too) as one space, cut at ``limit``."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def describe_exception(error: BaseException) -> str:
    """One line for an exception that escaped a command: where in the user's code it was
    raised when it was, otherwise its type and text."""
    frame = user_frame(error)
    if frame is not None:
        return (f"your code {frame.name}() in {display_path(frame.filename)}:{frame.lineno} "
                f"raised {_kind(error)}")
    return _kind(error)
