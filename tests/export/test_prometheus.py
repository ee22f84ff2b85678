"""Prometheus telemetry: the tracked-changes counter and the journal collector."""

from __future__ import annotations

import asyncio
import sys
import urllib.request
from collections.abc import Iterator

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, Counter

from retract import (
    InMemoryStorage,
    Journal,
    MetricsCollector,
    OperationRecord,
    OperationRegistry,
    TrackedDict,
    TrackedList,
)
from retract.export._prometheus import journal_metrics, telemetry_observer

CHANGES = "retract_tracked_changes_total"


class Boom(Exception):
    """A session block failing on purpose."""


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh registry, so that no test sees another's series."""
    return CollectorRegistry()


def changes(registry: CollectorRegistry, action: str) -> float | None:
    return registry.get_sample_value(CHANGES, {"action": action})


def journal_sample(
    registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None
) -> float | None:
    return registry.get_sample_value(f"retract_journal_{name}", labels)


def test_observer_counts_dict_and_list_changes_by_action(registry: CollectorRegistry) -> None:
    """Each change of a dict and a list adds 1 to its action's series; others read 0."""
    observer = telemetry_observer(registry=registry)
    config: TrackedDict[str, int] = TrackedDict()
    items: TrackedList[int] = TrackedList()
    config.tracking_add_observer(observer)
    items.tracking_add_observer(observer)
    config["a"] = 1  # add
    config["a"] = 2  # replace
    config["b"] = 3  # add
    del config["a"]  # remove
    items.append(1)  # add
    items[0] = 5  # replace
    items[0:1] = [7, 8]  # splice
    assert changes(registry, "add") == 3
    assert changes(registry, "replace") == 2
    assert changes(registry, "remove") == 1
    assert changes(registry, "splice") == 1
    assert changes(registry, "assign") == 0
    config.clear()  # assign
    assert changes(registry, "assign") == 1


def test_observer_created_twice_shares_one_counter(registry: CollectorRegistry) -> None:
    """Observers made repeatedly for one registry (and containers) count into one series."""
    first = telemetry_observer(registry=registry)
    second = telemetry_observer(registry=registry)  # no "Duplicated timeseries"
    left: TrackedDict[str, int] = TrackedDict()
    right: TrackedDict[str, int] = TrackedDict()
    left.tracking_add_observer(first)
    right.tracking_add_observer(second)
    right.tracking_add_observer(telemetry_observer(registry=registry))
    left["x"] = 1
    right["y"] = 1
    assert changes(registry, "add") == 3
    other = CollectorRegistry()
    telemetry_observer(registry=other)
    assert changes(other, "add") == 0


def test_observer_recreates_a_counter_unregistered_meanwhile(registry: CollectorRegistry) -> None:
    """After the counter was unregistered, the next observer registers a new one."""
    telemetry_observer(registry=registry)
    old = registry._names_to_collectors[CHANGES]
    registry.unregister(old)
    observer = telemetry_observer(registry=registry)
    assert registry._names_to_collectors[CHANGES] is not old
    config: TrackedDict[str, int] = TrackedDict()
    config.tracking_add_observer(observer)
    config["a"] = 1
    assert changes(registry, "add") == 1


def test_observer_adopts_an_equivalent_counter_registered_elsewhere(
    registry: CollectorRegistry,
) -> None:
    """A compatible counter already holding the name is reused rather than clashing."""
    existing = Counter(
        "retract_tracked_changes", "made by someone else", ["action"], registry=registry
    )
    observer = telemetry_observer(registry=registry)
    config: TrackedDict[str, int] = TrackedDict()
    config.tracking_add_observer(observer)
    config["a"] = 1
    assert existing.labels("add")._value.get() == 1


def test_observer_uses_a_given_counter_with_an_action_label(registry: CollectorRegistry) -> None:
    """A counter passed in, labelled by ``action``, is the one incremented."""
    mine = Counter("app_config_changes", "Config changes", ["action"], registry=registry)
    config: TrackedDict[str, int] = TrackedDict()
    config.tracking_add_observer(telemetry_observer(mine))
    config["a"] = 1
    config["a"] = 2
    assert registry.get_sample_value("app_config_changes_total", {"action": "add"}) == 1
    assert registry.get_sample_value("app_config_changes_total", {"action": "replace"}) == 1
    assert changes(registry, "add") is None  # the default counter was not created


@pytest.mark.parametrize("labelnames", [[], ["kind"], ["action", "tree"]])
def test_counter_without_exactly_an_action_label_is_a_value_error(
    registry: CollectorRegistry, labelnames: list[str]
) -> None:
    """A counter whose label names are not exactly ``("action",)`` is refused by name."""
    wrong = Counter("app_wrong", "Wrong labels", labelnames, registry=registry)
    with pytest.raises(ValueError, match=r"exactly one label name, 'action'"):
        telemetry_observer(wrong)


def test_bound_child_or_other_metric_is_refused(registry: CollectorRegistry) -> None:
    """An already-labelled child is a ValueError; something not a Counter, a TypeError."""
    parent = Counter("app_parent", "Parent", ["action"], registry=registry)
    with pytest.raises(ValueError, match="no label values bound"):
        telemetry_observer(parent.labels("add"))
    gauge = prometheus_client.Gauge("app_gauge", "Gauge", ["action"], registry=registry)
    with pytest.raises(TypeError, match="must be a prometheus_client Counter"):
        telemetry_observer(gauge)  # type: ignore[arg-type]


def test_defaults_use_the_global_registry() -> None:
    """Without a registry, both functions register in prometheus_client.REGISTRY."""
    default = prometheus_client.REGISTRY
    had_counter = CHANGES in default._names_to_collectors
    collector = journal_metrics(MetricsCollector(), prefix="retract_test_default")
    try:
        config: TrackedDict[str, int] = TrackedDict()
        config.tracking_add_observer(telemetry_observer())
        before = default.get_sample_value(CHANGES, {"action": "add"})
        config["a"] = 1
        assert default.get_sample_value(CHANGES, {"action": "add"}) == (before or 0) + 1
        assert collector.registry is default
        assert default.get_sample_value("retract_test_default_sessions_created_total") == 0
    finally:
        collector.unregister()
        if not had_counter and CHANGES in default._names_to_collectors:
            default.unregister(default._names_to_collectors[CHANGES])
    assert default.get_sample_value("retract_test_default_sessions_created_total") is None


async def test_journal_metrics_reflect_a_real_session_and_its_undo(
    registry: CollectorRegistry,
) -> None:
    """Sessions by end status, operations, undo runs and seconds match the journal's work."""
    metrics = MetricsCollector()
    journal_metrics(metrics, registry=registry)
    assert journal_sample(registry, "sessions_created_total") == 0
    undo = OperationRegistry()

    @undo.handler("t.op")
    async def revert(op: OperationRecord) -> None:
        await asyncio.sleep(0)

    async with Journal(InMemoryStorage(), undo, metrics=metrics) as journal:
        async with journal.start_session() as session:
            await session.record_operation("t.op", {"i": 1})
            await session.record_operation("t.op", {"i": 2})
        with pytest.raises(Boom):
            async with journal.start_session() as failing:
                await failing.record_operation("t.op", {"i": 3})
                raise Boom
        await journal.undo_session(session.session_id)

    assert journal_sample(registry, "sessions_created_total") == 2
    assert journal_sample(registry, "sessions_ended_total", {"status": "completed"}) == 1
    assert journal_sample(registry, "sessions_ended_total", {"status": "failed"}) == 1
    assert journal_sample(registry, "operations_recorded_total") == 3
    assert journal_sample(registry, "operations_undone_total") == 2
    assert journal_sample(registry, "undo_failures_total") == 0
    assert journal_sample(registry, "undo_runs_total") == 1
    seconds = journal_sample(registry, "undo_seconds_total")
    assert seconds is not None
    assert seconds == metrics.total_undo_time
    assert seconds >= 0


def test_journal_metrics_are_read_at_scrape_time(registry: CollectorRegistry) -> None:
    """Counters change between scrapes as the MetricsCollector does, failures included."""
    metrics = MetricsCollector()
    journal_metrics(metrics, registry=registry)
    assert journal_sample(registry, "undo_runs_total") == 0
    metrics.record_undo(0.5, undone=3, failed=2)
    metrics.record_undo(1.5, undone=1)
    assert journal_sample(registry, "undo_runs_total") == 2
    assert journal_sample(registry, "undo_seconds_total") == 2.0
    assert journal_sample(registry, "operations_undone_total") == 4
    assert journal_sample(registry, "undo_failures_total") == 2


def test_journal_metrics_registered_twice_replaces_the_collector(
    registry: CollectorRegistry,
) -> None:
    """A second call for the same registry and prefix replaces the first; none raises."""
    old_metrics, new_metrics = MetricsCollector(), MetricsCollector()
    old_metrics.sessions_created = 5
    new_metrics.sessions_created = 7
    first = journal_metrics(old_metrics, registry=registry)
    second = journal_metrics(new_metrics, registry=registry)
    assert second is not first
    assert journal_sample(registry, "sessions_created_total") == 7
    first.unregister()  # already replaced: leaves the second in place
    assert journal_sample(registry, "sessions_created_total") == 7
    other = journal_metrics(old_metrics, registry=registry, prefix="other_journal")
    assert registry.get_sample_value("other_journal_sessions_created_total") == 5
    second.unregister()
    second.unregister()  # idempotent
    assert journal_sample(registry, "sessions_created_total") is None
    assert registry.get_sample_value("other_journal_sessions_created_total") == 5
    other.unregister()


def test_journal_metrics_validate_their_arguments(registry: CollectorRegistry) -> None:
    """Not a MetricsCollector is a TypeError; a bad prefix or a name clash, a ValueError."""
    with pytest.raises(TypeError, match=r"MetricsCollector.*lacks sessions_created"):
        journal_metrics(object(), registry=registry)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="valid Prometheus metric name"):
        journal_metrics(MetricsCollector(), registry=registry, prefix="no-dashes")
    Counter("retract_journal_undo_runs", "Someone else's", registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        journal_metrics(MetricsCollector(), registry=registry)


def test_without_prometheus_client_both_functions_name_the_extra(
    monkeypatch: pytest.MonkeyPatch, registry: CollectorRegistry
) -> None:
    """When prometheus-client cannot be imported, the ImportError says how to install it."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"pip install 'retract\[prometheus\]'"):
        telemetry_observer(registry=registry)
    with pytest.raises(ImportError, match=r"needs prometheus-client"):
        journal_metrics(MetricsCollector(), registry=registry)


@pytest.fixture
def metrics_url(registry: CollectorRegistry) -> Iterator[str]:
    """The /metrics address of an HTTP server exposing ``registry``; stopped afterwards."""
    server, thread = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
        body: bytes = response.read()
    return body.decode("utf-8")


async def test_scrape_over_http_shows_both_exporters(
    registry: CollectorRegistry, metrics_url: str
) -> None:
    """A real scrape of /metrics shows the changes counter and the journal counters."""
    metrics = MetricsCollector()
    journal_metrics(metrics, registry=registry)
    config: TrackedDict[str, int] = TrackedDict()
    config.tracking_add_observer(telemetry_observer(registry=registry))
    config["a"] = 1
    config["a"] = 2
    async with (
        Journal(InMemoryStorage(), metrics=metrics) as journal,
        journal.start_session() as session,
    ):
        await session.record_operation("t.op", {})
    text = await asyncio.to_thread(fetch, metrics_url)
    assert 'retract_tracked_changes_total{action="add"} 1.0' in text
    assert 'retract_tracked_changes_total{action="replace"} 1.0' in text
    assert "retract_journal_sessions_created_total 1.0" in text
    assert 'retract_journal_sessions_ended_total{status="completed"} 1.0' in text
    assert "retract_journal_operations_recorded_total 1.0" in text
    assert "retract_journal_undo_runs_total 0.0" in text
    assert "retract_journal_undo_seconds_total 0.0" in text
