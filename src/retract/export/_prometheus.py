"""Prometheus telemetry: tracked changes by action, and a journal's MetricsCollector.

Both functions need the ``prometheus`` extra (prometheus-client), imported only when
they are called. Both are safe to call again for the same registry: the changes
counter is shared, and a journal collector replaces the earlier one.
"""

from __future__ import annotations

import contextlib
import re
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, cast, get_args

from ..tracking._change import Action, Change

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter
    from prometheus_client.metrics_core import Metric

    from ..journal._metrics import MetricsCollector

__all__ = ("JournalCollector", "journal_metrics", "telemetry_observer")

#: The counter :func:`telemetry_observer` creates (the ``_total`` sample is exposed).
CHANGES_COUNTER = "retract_tracked_changes"
CHANGES_HELP = "Changes recorded by tracked containers, by action"

#: A valid Prometheus metric name (and so a valid prefix).
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")

#: What journal_metrics() reads from the collector it is given.
_METRICS_FIELDS = (
    "sessions_created",
    "operations_recorded",
    "sessions_undone",
    "operations_undone",
    "undo_failures",
    "total_undo_time",
    "sessions_ended",
)

_lock = threading.Lock()
_counters: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, JournalCollector]] = (
    weakref.WeakKeyDictionary()
)


def _prometheus() -> None:
    """Raise a helpful ImportError when prometheus-client is not installed."""
    try:
        import prometheus_client  # noqa: F401, PLC0415
    except ImportError as error:
        raise ImportError(
            "retract's Prometheus telemetry needs prometheus-client: "
            "pip install 'retract[prometheus]'"
        ) from error


def _default_registry() -> CollectorRegistry:
    from prometheus_client import REGISTRY  # noqa: PLC0415

    return REGISTRY


#: What :func:`_registered` answers when the registry does not say.
_UNKNOWN = object()


def _registered(registry: CollectorRegistry, name: str) -> object:
    """The collector registered under ``name``: None if none, _UNKNOWN if unknowable."""
    names = getattr(registry, "_names_to_collectors", None)
    return names.get(name) if isinstance(names, dict) else _UNKNOWN


def _is_action_counter(counter: object) -> bool:
    """Whether ``counter`` is an unlabelled-yet Counter whose only label name is ``action``."""
    from prometheus_client import Counter  # noqa: PLC0415

    return (
        isinstance(counter, Counter)
        and tuple(getattr(counter, "_labelnames", ())) == ("action",)
        and not getattr(counter, "_labelvalues", ())
    )


def _changes_counter(registry: CollectorRegistry) -> Counter:
    """Get or create ``retract_tracked_changes_total`` in ``registry``; one per registry."""
    from prometheus_client import Counter  # noqa: PLC0415

    with _lock:
        counter = _counters.get(registry)
        # reuse it unless someone unregistered it since
        if counter is not None and _registered(registry, CHANGES_COUNTER) in (counter, _UNKNOWN):
            return counter
        try:
            counter = Counter(CHANGES_COUNTER, CHANGES_HELP, ["action"], registry=registry)
        except ValueError:
            # registered by someone else (another copy of this module, say): adopt it
            # when it is the same kind of counter, else report the clash as it is
            existing = _registered(registry, CHANGES_COUNTER)
            if not _is_action_counter(existing):
                raise
            counter = cast("Counter", existing)
        _counters[registry] = counter
        return counter


def telemetry_observer(
    counter: Counter | None = None, registry: CollectorRegistry | None = None
) -> Callable[[Change], None]:
    """An observer that counts each change in a Counter labelled by ``action``.

    ::

        config.tracking_add_observer(telemetry_observer())

    Without ``counter``, it counts in ``retract_tracked_changes_total`` of ``registry``
    (prometheus_client's default one if omitted), which it creates the first time;
    every later call for the same registry reuses that counter, so creating the
    observer twice, or for many containers, never raises "Duplicated timeseries".
    The series of every action start at 0.

    :param counter: a Counter of your own whose only label name is ``action``.
    :param registry: where the default counter lives; ignored with ``counter``.
    :raises ValueError: ``counter`` has label names other than exactly ``("action",)``.
    :raises TypeError: ``counter`` is not a prometheus_client Counter.
    :raises ImportError: prometheus-client is not installed.
    """
    _prometheus()
    from prometheus_client import Counter as CounterType  # noqa: PLC0415

    if counter is None:
        counter = _changes_counter(registry if registry is not None else _default_registry())
    elif not isinstance(counter, CounterType):
        raise TypeError(f"counter must be a prometheus_client Counter, not {counter!r}")
    elif not _is_action_counter(counter):
        labels = tuple(getattr(counter, "_labelnames", ()))
        raise ValueError(
            "counter must have exactly one label name, 'action' (e.g. "
            "Counter(name, help, ['action'])), and no label values bound; "
            f"it has label names {labels!r}"
        )
    parent = counter
    children: dict[str, Counter] = {action: parent.labels(action) for action in get_args(Action)}

    def count_change(change: Change) -> None:
        """Add 1 to the change's action in the counter."""
        child = children.get(change.action)
        if child is None:  # an action this version does not know about
            child = children.setdefault(change.action, parent.labels(change.action))
        child.inc()

    return count_change


class JournalCollector:
    """A Prometheus collector reading a journal's :class:`MetricsCollector` at scrape time.

    Made and registered by :func:`journal_metrics`; :meth:`unregister` removes it.
    """

    def __init__(self, metrics: MetricsCollector, registry: CollectorRegistry, prefix: str) -> None:
        self.metrics = metrics
        self.registry = registry
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"<JournalCollector prefix={self.prefix!r} metrics={self.metrics!r}>"

    def _families(self, *, values: bool) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily  # noqa: PLC0415

        m = self.metrics
        p = self.prefix

        def counter(name: str, help_text: str, value: float, unit: str = "") -> Metric:
            return CounterMetricFamily(
                f"{p}_{name}", help_text, value=value if values else None, unit=unit
            )

        yield counter("sessions_created_total", "Sessions started", m.sessions_created)
        ended = CounterMetricFamily(
            f"{p}_sessions_ended_total", "Sessions ended, by status", labels=["status"]
        )
        if values:
            # dict() copies in one step, so a session ending meanwhile cannot break it
            for status, count in sorted(dict(m.sessions_ended).items()):
                ended.add_metric([str(status)], count)
        yield ended
        yield counter("operations_recorded_total", "Operations journaled", m.operations_recorded)
        yield counter("operations_undone_total", "Operations undone", m.operations_undone)
        yield counter("undo_failures_total", "Operations whose undo failed", m.undo_failures)
        yield counter("undo_runs_total", "Undo runs of sessions", m.sessions_undone)
        yield counter(
            "undo_seconds_total",
            "Seconds spent in undo runs; divide by undo_runs_total for the mean",
            m.total_undo_time,
            unit="seconds",
        )

    def collect(self) -> Iterator[Metric]:
        """The current counters, read from the MetricsCollector now."""
        return self._families(values=True)

    def describe(self) -> Iterator[Metric]:
        """The metric names (no samples), so the registry detects clashes."""
        return self._families(values=False)

    def unregister(self) -> None:
        """Remove this collector from its registry; does nothing if already removed."""
        with _lock:
            self._unregister()

    def _unregister(self) -> None:
        mine = _collectors.get(self.registry)
        if mine is not None and mine.get(self.prefix) is self:
            del mine[self.prefix]
        with contextlib.suppress(KeyError):
            self.registry.unregister(self)


def journal_metrics(
    metrics: MetricsCollector,
    registry: CollectorRegistry | None = None,
    prefix: str = "retract_journal",
) -> JournalCollector:
    """Expose a journal's :class:`MetricsCollector` to Prometheus, read at each scrape.

    ::

        metrics = MetricsCollector()
        journal_metrics(metrics)
        async with Journal(SQLiteStorage("history.db"), metrics=metrics) as journal:
            ...

    Registers counters ``{prefix}_sessions_created_total``,
    ``{prefix}_sessions_ended_total{status}``, ``{prefix}_operations_recorded_total``,
    ``{prefix}_operations_undone_total``, ``{prefix}_undo_failures_total``,
    ``{prefix}_undo_runs_total`` and ``{prefix}_undo_seconds_total`` (the summed
    durations: ``rate(..._undo_seconds_total) / rate(..._undo_runs_total)`` is the
    mean undo time).

    Called again for the same registry and prefix, it unregisters the earlier
    collector and registers the new one instead of raising.

    :param registry: prometheus_client's default registry if omitted.
    :return: the registered collector; its ``unregister()`` removes it.
    :raises TypeError: ``metrics`` lacks the MetricsCollector counters.
    :raises ValueError: ``prefix`` is not a valid metric name, or another collector
        already owns one of the names.
    :raises ImportError: prometheus-client is not installed.
    """
    missing = [name for name in _METRICS_FIELDS if not hasattr(metrics, name)]
    if missing or not isinstance(getattr(metrics, "sessions_ended", None), Mapping):
        raise TypeError(
            "metrics must be a retract MetricsCollector (the one passed as "
            f"Journal(metrics=...)); {type(metrics).__name__} lacks "
            + (", ".join(missing) if missing else "a sessions_ended mapping")
        )
    if not _METRIC_NAME.fullmatch(prefix):
        raise ValueError(f"prefix must be a valid Prometheus metric name, not {prefix!r}")
    _prometheus()
    if registry is None:
        registry = _default_registry()
    collector = JournalCollector(metrics, registry, prefix)
    with _lock:
        mine = _collectors.setdefault(registry, {})
        earlier = mine.get(prefix)
        if earlier is not None:
            earlier._unregister()
        registry.register(collector)
        mine[prefix] = collector
    return collector
