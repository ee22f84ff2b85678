"""``--app module:attr`` / ``--app path/to/file.py:attr``: where undo handlers come from.

The attribute is an :class:`~retract.OperationRegistry`, or a zero-argument callable
(sync or async) returning one, e.g. ``myapp.undo:registry`` or ``myapp:make_registry``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..journal import OperationRegistry

__all__ = ("AppLoadError", "AppSpec", "load_target", "parse_app", "resolve_registry")


class AppLoadError(Exception):
    """The ``--app`` target cannot be imported or is not a registry (exit code 1)."""


@dataclass(frozen=True, slots=True)
class AppSpec:
    """A parsed ``--app`` value: a module name or a file path, and a dotted attribute."""

    text: str
    module: str | None
    path: Path | None
    attribute: str


def parse_app(text: str) -> AppSpec:
    """Parse ``module:attr`` or ``path/to/file.py:attr`` (an argparse ``type``).

    :raises argparse.ArgumentTypeError: the value has no ``:attr`` part (exit code 2).
    """
    # rpartition: a Windows path ("C:\\x.py:reg") has a colon of its own.
    target, colon, attribute = text.rpartition(":")
    if not colon or not target or not attribute:
        raise argparse.ArgumentTypeError(
            f"expected module:attribute or path/to/file.py:attribute, got {text!r} "
            "(e.g. --app myapp.undo:registry)"
        )
    if target.endswith(".py") or "/" in target or os.sep in target:
        return AppSpec(text, None, Path(target), attribute)
    return AppSpec(text, target, None, attribute)


def load_target(spec: AppSpec) -> object:
    """Import the module (or run the file) and return the named attribute.

    Like ``python -m``/uvicorn, a module name is looked up from the current directory
    first; a file can import the modules next to it, as a script can.

    :raises AppLoadError: the module or file cannot be loaded, or lacks the attribute.
    """
    module = _load_file(spec) if spec.path is not None else _load_module(spec)
    value: object = module
    for name in spec.attribute.split("."):
        try:
            value = getattr(value, name)
        except AttributeError:
            raise AppLoadError(
                f"--app {spec.text}: {module.__name__!r} has no attribute {spec.attribute!r}"
            ) from None
    return value


async def resolve_registry(spec: AppSpec, target: object) -> OperationRegistry:
    """The registry itself, or what the factory returns (awaited if it is a coroutine).

    :raises AppLoadError: the target is neither a registry nor a factory of one.
    """
    value = target
    if not isinstance(value, OperationRegistry) and callable(value):
        try:
            value = value()
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            raise AppLoadError(
                f"--app {spec.text}: calling {spec.attribute}() failed: {type(exc).__name__}: {exc}"
            ) from exc
    if not isinstance(value, OperationRegistry):
        raise AppLoadError(
            f"--app {spec.text}: expected an OperationRegistry or a zero-argument "
            f"function returning one, got {type(value).__name__}"
        )
    return value


def _load_module(spec: AppSpec) -> ModuleType:
    assert spec.module is not None  # noqa: S101
    _prepend_path(os.getcwd())
    try:
        return importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            spec.module == exc.name or spec.module.startswith(exc.name + ".")
        ):
            raise AppLoadError(
                f"--app {spec.text}: no module named {exc.name!r} (looked in the current "
                "directory and sys.path; use --app path/to/file.py:attr for a file)"
            ) from exc
        raise AppLoadError(f"--app {spec.text}: importing it failed: {exc}") from exc
    except Exception as exc:
        raise AppLoadError(
            f"--app {spec.text}: importing it failed: {type(exc).__name__}: {exc}"
        ) from exc


def _load_file(spec: AppSpec) -> ModuleType:
    assert spec.path is not None  # noqa: S101
    path = spec.path.resolve()
    if not path.is_file():
        raise AppLoadError(f"--app {spec.text}: no such file {str(spec.path)!r}")
    # A stable, unique module name: two files called handlers.py must not collide.
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    name = f"_retract_app_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise AppLoadError(f"--app {spec.text}: {str(path)!r} cannot be loaded as Python")
    module = importlib.util.module_from_spec(module_spec)
    _prepend_path(str(path.parent))
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise AppLoadError(
            f"--app {spec.text}: running {str(spec.path)!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return module


def _prepend_path(directory: str) -> None:
    if directory not in sys.path:
        sys.path.insert(0, directory)
