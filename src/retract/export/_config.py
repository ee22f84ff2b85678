"""Observers and exporters built from a JSON or TOML file.

::

    {
        "observers": [
            {"kind": "jsonl", "path": "changes.jsonl", "fsync": true, "max_batch": 200},
            {"kind": "http", "url": "http://127.0.0.1:8080/changes", "retries": 3},
            {"kind": "telemetry"},
            {"kind": "log", "level": "INFO"},
        ]
    }

The TOML twin holds the same entries as ``[[observers]]`` tables. Each entry's
``kind`` picks what is built; its other fields are that thing's arguments (a relative
``path`` is taken from the file's folder). An unknown kind, an unknown or missing
field, or a bad value is a :class:`ConfigError` that names the file, the entry and the
field. Kinds: ``jsonl``, ``http``, ``s3``, ``kafka`` (exporters), ``telemetry`` (the
Prometheus counter), ``collector`` (a :class:`~retract.ChangeCollector`) and ``log``
(each change logged at ``level`` on ``logger_name``).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from .._errors import RetractError
from ..tracking import Change, ChangeCollector

if TYPE_CHECKING:
    from ..tracking._base import Tracked
    from ._base import Exporter

__all__ = ("ConfigError", "ObserverSet", "load_observers_from_json", "load_observers_from_toml")

logger = logging.getLogger("retract")

Observer = Callable[[Change], object]


class ConfigError(RetractError, ValueError):
    """An observer file that cannot be used; the message says where and why."""


class ObserverSet:
    """What a file described: plain observers and exporters, attached together.

    ::

        async with load_observers_from_json("observers.json") as observers:
            observers.attach(config, source="config")
            ...
        # leaving the block flushes and closes the exporters
    """

    def __init__(self, observers: list[Observer], exporters: list[Exporter]) -> None:
        self.observers = observers
        self.exporters = exporters

    def attach(self, container: Tracked, *, source: str | None = None) -> None:
        """Add every observer to ``container`` and attach every exporter to it."""
        for observer in self.observers:
            container.tracking_add_observer(observer)
        for exporter in self.exporters:
            exporter.attach(container, source=source)

    async def aclose(self) -> None:
        """Flush and close every exporter (each one, even if another fails)."""
        errors: list[BaseException] = []
        for exporter in self.exporters:
            try:
                await exporter.aclose()
            except Exception as error:
                errors.append(error)
        if errors:
            raise errors[0]

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def load_observers_from_json(path: str | os.PathLike[str]) -> ObserverSet:
    """Build the observers and exporters a JSON file lists (see the module's docs)."""
    return _load(Path(path), json.loads, json.JSONDecodeError, "JSON")


def load_observers_from_toml(path: str | os.PathLike[str]) -> ObserverSet:
    """Build the observers and exporters a TOML file lists as ``[[observers]]`` tables."""
    return _load(Path(path), tomllib.loads, tomllib.TOMLDecodeError, "TOML")


def _load(
    source: Path, parse: Callable[[str], Any], invalid: type[ValueError], language: str
) -> ObserverSet:
    try:
        data = parse(_read(source))
    except invalid as error:
        raise ConfigError(f"{source}: not valid {language}: {error}") from error
    return _build(data, source)


def _read(source: Path) -> str:
    try:
        return source.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{source}: not UTF-8 text: {error}") from error
    except OSError as error:
        raise ConfigError(f"{source}: cannot be read: {error.strerror or error}") from error


# -- building -----------------------------------------------------------------------


def _build(data: Any, source: Path) -> ObserverSet:
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"observers"})
        if unknown:
            raise ConfigError(
                f"{source}: unknown top-level key(s) {', '.join(map(repr, unknown))}; "
                'the file holds one list, "observers"'
            )
        entries = data.get("observers", [])
    else:
        entries = data
    if not isinstance(entries, list):
        raise ConfigError(f'{source}: "observers" must be a list of tables, not {entries!r}')
    observers: list[Observer] = []
    exporters: list[Exporter] = []
    for index, entry in enumerate(entries, 1):
        where = f"{source}: observer #{index}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table with a kind, not {entry!r}")
        fields = dict(entry)
        kind = fields.pop("kind", None)
        if not isinstance(kind, str) or kind not in _KINDS:
            raise ConfigError(
                f"{where} has kind {kind!r}; the kinds are {', '.join(sorted(_KINDS))}"
            )
        path = fields.get("path")
        if kind == "jsonl" and isinstance(path, str) and not Path(path).is_absolute():
            fields["path"] = source.parent / path  # relative to the file that says it
        built = _make(_KINDS[kind](), fields, f"{where} ({kind})")
        if kind in _EXPORTERS:
            exporters.append(built)
        else:
            observers.append(built)
    return ObserverSet(observers, exporters)


def _make(factory: Callable[..., Any], fields: dict[str, Any], where: str) -> Any:
    """``factory(**fields)``, with an unknown or missing field named clearly."""
    allowed = _parameters(factory)
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
            f"its fields are {', '.join(sorted(allowed))}"
        )
    try:
        inspect.signature(factory).bind(**fields)
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from error
    try:
        return factory(**fields)
    except (TypeError, ValueError, OSError) as error:
        raise ConfigError(f"{where}: {error}") from error


def _parameters(factory: Callable[..., Any]) -> set[str]:
    names: set[str] = set()
    for klass in getattr(factory, "__mro__", (factory,)):
        init = getattr(klass, "__init__", None) if isinstance(klass, type) else klass
        if init is None or init is object.__init__:
            continue
        for parameter in inspect.signature(init).parameters.values():
            if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD):
                names.add(parameter.name)
    names.discard("self")
    names.discard("client")  # live objects cannot come from a file
    names.discard("producer")
    names.discard("session")
    return names


def _jsonl() -> Callable[..., Any]:
    from ._jsonl import JsonLinesExporter  # noqa: PLC0415

    return JsonLinesExporter


def _http() -> Callable[..., Any]:
    from ._http import HttpExporter  # noqa: PLC0415

    return HttpExporter


def _s3() -> Callable[..., Any]:
    from ._s3 import S3Exporter  # noqa: PLC0415

    return S3Exporter


def _kafka() -> Callable[..., Any]:
    from ._kafka import KafkaExporter  # noqa: PLC0415

    return KafkaExporter


def _telemetry() -> Callable[..., Any]:
    from ._prometheus import telemetry_observer  # noqa: PLC0415

    def telemetry() -> Observer:  # a counter or registry object cannot come from a file
        return telemetry_observer()

    return telemetry


def _collector() -> Callable[..., Any]:
    def collector() -> Observer:
        return ChangeCollector()

    return collector


def _log() -> Callable[..., Any]:
    def log(level: str = "DEBUG", logger_name: str = "retract.changes") -> Observer:
        named: object = level
        number = logging.getLevelName(level.upper()) if isinstance(named, str) else None
        if not isinstance(number, int):
            raise ValueError(f"level must be a logging level name such as INFO, not {level!r}")
        target = logging.getLogger(logger_name)

        def observe(change: Change) -> None:
            target.log(
                number, "%s %s %r -> %r", change.action, list(change.path), change.old, change.new
            )

        return observe

    return log


_KINDS: dict[str, Callable[[], Callable[..., Any]]] = {
    "jsonl": _jsonl,
    "http": _http,
    "s3": _s3,
    "kafka": _kafka,
    "telemetry": _telemetry,
    "collector": _collector,
    "log": _log,
}
_EXPORTERS = frozenset({"jsonl", "http", "s3", "kafka"})
