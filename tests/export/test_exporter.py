"""Exporter: batching, retries with backoff, bounded buffering, flushing on close."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from retract import TrackedDict, TrackedList
from retract.export import Exporter, ExportError, RetryableExportError


class Recorder(Exporter):
    """Keeps every batch; fails the tries listed in ``fail`` (1-based) with ``error``."""

    def __init__(self, fail: dict[int, Exception] | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.batches_seen: list[list[dict[str, Any]]] = []
        self.tries = 0
        self.fail = fail or {}
        self.closed_sink = False
        self.gate: asyncio.Event | None = None

    async def send(self, batch: list[dict[str, Any]]) -> None:
        self.tries += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.tries in self.fail:
            raise self.fail[self.tries]
        self.batches_seen.append(list(batch))

    async def close_sink(self) -> None:
        self.closed_sink = True


def sent(exporter: Recorder) -> list[Any]:
    return [record["new"] for batch in exporter.batches_seen for record in batch]


async def settle(predicate: Any) -> None:
    """Wait until ``predicate()`` holds (the exporter works in its own task)."""
    async with asyncio.timeout(5):
        while not predicate():  # noqa: ASYNC110  (polling a counter another task bumps)
            await asyncio.sleep(0.001)


async def test_changes_are_sent_in_order_with_their_source() -> None:
    """Every change reaches send(), in order, tagged with the tree's source."""
    items: TrackedList[int] = TrackedList()
    async with Recorder(max_delay=0) as exporter:
        exporter.attach(items, source="items")
        for i in range(10):
            items.append(i)
    assert sent(exporter) == list(range(10))
    records = [record for batch in exporter.batches_seen for record in batch]
    assert {record["source"] for record in records} == {"items"}
    assert [record["seq"] for record in records] == list(range(1, 11))
    assert records[0]["path"] == [0]
    assert exporter.exported == 10
    assert exporter.closed_sink


async def test_max_batch_caps_each_batch() -> None:
    """No batch holds more than max_batch changes."""
    items: TrackedList[int] = TrackedList()
    async with Recorder(max_batch=3, max_delay=0.05) as exporter:
        exporter.attach(items)
        for i in range(10):
            items.append(i)
    assert all(len(batch) <= 3 for batch in exporter.batches_seen)
    assert sent(exporter) == list(range(10))


async def test_max_delay_groups_changes_made_together() -> None:
    """Changes made within max_delay of the first go out as one batch."""
    items: TrackedList[int] = TrackedList()
    async with Recorder(max_delay=5.0) as exporter:
        exporter.attach(items)
        for i in range(5):
            items.append(i)
        await asyncio.sleep(0)  # the exporter takes the first and waits for more
        items.append(5)
    assert exporter.batches_seen == [exporter.batches_seen[0]]
    assert sent(exporter) == list(range(6))


async def test_a_retryable_failure_is_retried_after_a_backoff() -> None:
    """RetryableExportError: the same batch is tried again, and delivered once."""
    items: TrackedList[int] = TrackedList()
    fail: dict[int, Exception] = {1: RetryableExportError("503"), 2: RetryableExportError("503")}
    async with Recorder(fail, max_delay=0, backoff=0.001) as exporter:
        exporter.attach(items)
        items.append(1)
    assert sent(exporter) == [1]
    assert (exporter.tries, exporter.failures, exporter.lost) == (3, 2, 0)


async def test_retries_end_and_the_batch_is_counted_lost() -> None:
    """After `retries` further tries the batch is given up, and later ones still go."""
    items: TrackedList[int] = TrackedList()
    fail: dict[int, Exception] = {n: RetryableExportError("down") for n in (1, 2, 3)}
    async with Recorder(fail, max_delay=0, retries=2, backoff=0.001) as exporter:
        exporter.attach(items)
        items.append(1)
        await settle(lambda: exporter.tries == 3)
        items.append(2)
    assert sent(exporter) == [2]
    assert (exporter.failures, exporter.lost, exporter.exported) == (3, 1, 1)


async def test_any_other_error_drops_the_batch_without_retrying() -> None:
    """A non-retryable error (a 4xx, a bug) drops that batch only."""
    items: TrackedList[int] = TrackedList()
    async with Recorder({1: ExportError("400")}, max_delay=0) as exporter:
        exporter.attach(items)
        items.append(1)
        await settle(lambda: exporter.tries == 1)
        items.append(2)
    assert sent(exporter) == [2]
    assert (exporter.tries, exporter.lost) == (2, 1)


async def test_a_slow_sink_never_blocks_the_writes_and_the_buffer_is_bounded() -> None:
    """While send() is stuck, writes go on; at most max_buffer changes wait."""
    items: TrackedList[int] = TrackedList()
    exporter = Recorder(max_delay=0, max_buffer=5, overflow="drop_oldest")
    exporter.gate = asyncio.Event()
    exporter.attach(items)
    items.append(-1)
    await settle(lambda: exporter.tries == 1)  # stuck in send() with [-1]
    for i in range(100):
        items.append(i)
    assert exporter.dropped == 95
    exporter.gate.set()
    await exporter.aclose()
    assert sent(exporter) == [-1, 95, 96, 97, 98, 99]


async def test_aclose_flushes_what_was_buffered_and_is_idempotent() -> None:
    """Changes made right before aclose() are sent by it; a second aclose() is a no-op."""
    config: TrackedDict[str, int] = TrackedDict()
    exporter = Recorder(max_delay=10.0)
    exporter.attach(config, source="config")
    config["a"] = 1
    config["b"] = 2
    await exporter.aclose()
    await exporter.aclose()
    assert sent(exporter) == [1, 2]
    config["c"] = 3
    await asyncio.sleep(0)
    assert sent(exporter) == [1, 2]


async def test_one_exporter_for_two_trees() -> None:
    """Each attached tree is exported with its own source."""
    first: TrackedDict[str, int] = TrackedDict()
    second: TrackedDict[str, int] = TrackedDict()
    async with Recorder(max_delay=0) as exporter:
        exporter.attach(first, source="first")
        exporter.attach(second)
        first["a"] = 1
        second["b"] = 2
    sources = sorted(record["source"] for batch in exporter.batches_seen for record in batch)
    assert sources == ["first", "tree-2"]


async def test_attach_after_close_and_bad_sources_are_refused() -> None:
    """A closed exporter cannot attach; a source must be a non-empty str."""
    exporter = Recorder()
    with pytest.raises(ValueError, match="source must be a non-empty str"):
        exporter.attach(TrackedDict(), source="")
    await exporter.aclose()
    with pytest.raises(RuntimeError, match="exporter is closed"):
        exporter.attach(TrackedDict())


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_batch", 0),
        ("max_batch", 1.5),
        ("max_delay", -1),
        ("max_buffer", -1),
        ("retries", True),
        ("backoff", "1"),
        ("overflow", "error"),
        ("overflow", "bogus"),
    ],
)
def test_bad_options_are_value_errors(option: str, value: Any) -> None:
    """Each option says what it accepts."""
    with pytest.raises(ValueError, match=f"{option} must be"):
        Recorder(**{option: value})


async def test_cancelling_aclose_stops_the_flush() -> None:
    """aclose() cancelled while a send hangs returns with the cancellation."""
    items: TrackedList[int] = TrackedList()
    exporter = Recorder(max_delay=0)
    exporter.gate = asyncio.Event()
    exporter.attach(items)
    items.append(1)
    closing = asyncio.create_task(exporter.aclose())
    await settle(lambda: exporter.tries == 1)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert exporter.closed_sink


async def test_the_write_path_and_a_healthy_export_log_nothing_above_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Writes, batching and sending log on "retract" at DEBUG at most."""
    import logging  # noqa: PLC0415

    items: TrackedList[int] = TrackedList()
    with caplog.at_level(logging.DEBUG, logger="retract"):
        async with Recorder({1: RetryableExportError("503")}, max_delay=0, backoff=0) as exporter:
            exporter.attach(items)
            for i in range(200):
                items.append(i)
    assert sent(exporter) == list(range(200))
    assert [r.levelname for r in caplog.records if r.levelno > logging.DEBUG] == []


async def test_the_first_wait_is_capped_by_max_backoff_too() -> None:
    """A backoff larger than max_backoff waits max_backoff, from the first retry on."""
    items: TrackedList[int] = TrackedList()
    fail: dict[int, Exception] = {1: RetryableExportError("503")}
    async with asyncio.timeout(10):  # an uncapped first wait would take 60 s
        async with Recorder(fail, max_delay=0, backoff=60, max_backoff=0.01) as exporter:
            exporter.attach(items)
            items.append(1)
    assert sent(exporter) == [1]
