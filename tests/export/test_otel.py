"""OpenTelemetry: changes by action, and the journal's counters, through a Meter."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from retract import InMemoryStorage, Journal, MetricsCollector, TrackedDict, TrackedList
from retract.export._otel import otel_journal_metrics, otel_observer


def points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], float]]]:
    data = reader.get_metrics_data()
    found: dict[str, list[tuple[dict[str, Any], float]]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = [
                    (dict(point.attributes or {}), point.value)  # type: ignore[union-attr]
                    for point in metric.data.data_points
                ]
    return found


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


def test_changes_are_counted_by_action(reader: InMemoryMetricReader) -> None:
    """Each change adds one to retract.tracked.changes with its action."""
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    config: TrackedDict[str, Any] = TrackedDict()
    items: TrackedList[int] = TrackedList([3, 1])
    config.tracking_add_observer(otel_observer(meter))
    items.tracking_add_observer(otel_observer(meter))  # made twice: the same counter
    config["a"] = 1
    config["a"] = 2
    del config["a"]
    items.sort()
    counts = {attrs["action"]: value for attrs, value in points(reader)["retract.tracked.changes"]}
    assert counts == {"add": 1, "replace": 1, "remove": 1, "assign": 1}


async def test_journal_counters_are_read_at_collection(reader: InMemoryMetricReader) -> None:
    """Sessions, operations and undo runs appear as observable counters."""
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    metrics = MetricsCollector()
    otel_journal_metrics(metrics, meter)
    async with Journal(InMemoryStorage(), metrics=metrics) as journal:
        journal.registry.handler("t.op")(lambda op: None)
        async with journal.start_session() as session:
            await session.record_operation("t.op", {})
            await session.record_operation("t.op", {})
        await journal.undo_session(session.session_id)
    found = points(reader)
    assert found["retract.journal.sessions.created"] == [({}, 1)]
    assert found["retract.journal.operations.recorded"] == [({}, 2)]
    assert found["retract.journal.operations.undone"] == [({}, 2)]
    assert found["retract.journal.undo.runs"] == [({}, 1)]
    ended = {attrs["status"]: value for attrs, value in found["retract.journal.sessions.ended"]}
    assert ended == {"completed": 1, "rolled_back": 1}
    assert found["retract.journal.undo.duration"][0][1] >= 0


def test_journal_metrics_need_a_metrics_collector() -> None:
    """Anything else is a TypeError that says what is expected."""
    with pytest.raises(TypeError, match="must be a retract MetricsCollector"):
        otel_journal_metrics(object())  # type: ignore[arg-type]
