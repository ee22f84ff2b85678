"""OpenTelemetry metrics: the same counts as the Prometheus ones, through a Meter.

Needs the ``otel`` extra (opentelemetry-api); the application brings the SDK and its
exporter, as OpenTelemetry intends. Only this module imports opentelemetry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..tracking import Change

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation

    from ..journal import MetricsCollector

__all__ = ("otel_journal_metrics", "otel_observer")

_ACTIONS = ("add", "replace", "remove", "splice", "assign")


def _meter(meter: Meter | None) -> Meter:
    try:
        from opentelemetry import metrics  # noqa: PLC0415
    except ImportError as error:  # pragma: no cover - the extra is installed in tests
        raise ImportError(
            "retract's OpenTelemetry metrics need opentelemetry-api: pip install 'retract[otel]'"
        ) from error
    return meter if meter is not None else metrics.get_meter("retract")


def otel_observer(meter: Meter | None = None) -> Callable[[Change], None]:
    """An observer counting changes in ``retract.tracked.changes`` by ``action``.

    :param meter: the Meter to create the counter with (default: the global provider's
        ``retract`` meter). Making the observer again is harmless: OpenTelemetry hands
        back the same instrument for the same name.
    """
    counter = _meter(meter).create_counter(
        "retract.tracked.changes", unit="{change}", description="Changes recorded, by action"
    )
    attributes = {action: {"action": action} for action in _ACTIONS}
    add = counter.add

    def observe(change: Change) -> None:
        add(1, attributes.get(change.action) or {"action": change.action})

    return observe


def otel_journal_metrics(metrics: MetricsCollector, meter: Meter | None = None) -> None:
    """Observable counters reading ``metrics`` (a MetricsCollector) at each collection.

    ``retract.journal.sessions.created``, ``retract.journal.sessions.ended`` (by
    ``status``), ``retract.journal.operations.recorded``, ``.operations.undone``,
    ``.undo.failures``, ``.undo.runs`` and ``.undo.duration`` (seconds, summed).
    Call it once per meter: OpenTelemetry keeps the first instrument made under a name,
    so a second call on the same meter would keep reading the first ``metrics``.
    """
    for name in ("sessions_created", "operations_recorded", "sessions_ended", "total_undo_time"):
        if not hasattr(metrics, name):
            raise TypeError(f"metrics must be a retract MetricsCollector, not {metrics!r}")
    made = _meter(meter)

    def reading(read: Callable[[], Any]) -> Callable[[CallbackOptions], Iterable[Observation]]:
        from opentelemetry.metrics import Observation  # noqa: PLC0415

        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(read())]

        return callback

    def ended(_options: CallbackOptions) -> Iterable[Observation]:
        from opentelemetry.metrics import Observation  # noqa: PLC0415

        return [Observation(n, {"status": s}) for s, n in sorted(metrics.sessions_ended.items())]

    counters: list[tuple[str, str, Callable[..., Iterable[Observation]]]] = [
        ("sessions.created", "{session}", reading(lambda: metrics.sessions_created)),
        ("sessions.ended", "{session}", ended),
        ("operations.recorded", "{operation}", reading(lambda: metrics.operations_recorded)),
        ("operations.undone", "{operation}", reading(lambda: metrics.operations_undone)),
        ("undo.failures", "{operation}", reading(lambda: metrics.undo_failures)),
        ("undo.runs", "{run}", reading(lambda: metrics.sessions_undone)),
        ("undo.duration", "s", reading(lambda: metrics.total_undo_time)),
    ]
    for name, unit, callback in counters:
        made.create_observable_counter(f"retract.journal.{name}", callbacks=[callback], unit=unit)
