"""KafkaExporter: each change produced as one Kafka message (needs aiokafka).

aiokafka is the ``kafka`` extra (``pip install 'retract[kafka]'``); it is imported when
a :class:`KafkaExporter` is made, not when this module is, so the rest of
``retract.export`` works without it. Only this module imports aiokafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol, Unpack

from ._base import Exporter, ExporterOptions, ExportError, RetryableExportError
from ._encode import dumps

__all__ = ("KafkaExporter", "KafkaProducer")

_MISSING_AIOKAFKA = "KafkaExporter needs aiokafka: pip install 'retract[kafka]'"


class KafkaProducer(Protocol):
    """What the exporter uses of a producer: ``aiokafka.AIOKafkaProducer`` fits."""

    async def start(self) -> None:
        """Connect to the cluster (called only on the exporter's own producer)."""

    async def stop(self) -> None:
        """Flush and disconnect (called only on the exporter's own producer)."""

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None
    ) -> Awaitable[Any]:
        """Queue one message; the awaitable resolves once the broker acknowledged it."""


class KafkaExporter(Exporter):
    """Produce each change to ``topic`` as one message: JSON value, path-root key.

    ::

        async with KafkaExporter("config-changes", bootstrap_servers="kafka:9092") as exporter:
            exporter.attach(config, source="config")

    A message's value is the change's record as compact UTF-8 JSON (see
    :func:`~retract.export._encode.dumps`). Its key is the first element of the change's
    path (``str()`` of it, UTF-8), or the tree's ``source`` for a change of the root
    itself, so all changes under one top-level key go to one partition and keep their
    order there. A batch is handed to the producer whole, then every message's
    acknowledgement is awaited.

    A connection failure, a timeout or another error aiokafka marks retriable (a leader
    election, say) raises :class:`RetryableExportError` and the whole batch is sent again
    after a backoff: messages of it that did get through are then delivered twice (at
    least once, like Kafka's own producer retries). Any other Kafka error raises
    :class:`ExportError` and the batch is dropped and counted in :attr:`lost`.

    :param topic: the topic every change is produced to.
    :param bootstrap_servers: ``"host:port"`` or a list of them, for the exporter's own
        producer.
    :param producer: a producer of your own (an ``aiokafka.AIOKafkaProducer``), already
        started. The exporter neither starts nor stops it: its lifetime, like its
        configuration, is yours. Without it the exporter makes its own producer on the
        first batch, starts it then, and stops it (flushing it) in :meth:`aclose`.
    :param producer_options: more keyword arguments for the exporter's own
        ``AIOKafkaProducer`` (``acks``, ``compression_type``, ``linger_ms``, SASL and
        TLS settings...); not with ``producer``.
    :param options: the :class:`Exporter` options (``max_batch``, ``max_delay``,
        ``max_buffer``, ``overflow``, ``retries``, ``backoff``, ``max_backoff``).
    :raises ValueError: a ``topic`` that is not a non-empty str, ``bootstrap_servers``
        that are not one or more non-empty strs, ``producer_options`` with ``producer``.
    :raises ImportError: aiokafka is not installed.
    """

    def __init__(
        self,
        topic: str,
        *,
        bootstrap_servers: str | list[str] = "localhost:9092",
        producer: KafkaProducer | None = None,
        producer_options: Mapping[str, Any] | None = None,
        **options: Unpack[ExporterOptions],
    ) -> None:
        _check_topic(topic)
        _check_servers(bootstrap_servers)
        if producer is not None and producer_options:
            raise ValueError("producer_options configure the exporter's own producer, not yours")
        options_: object = producer_options
        if options_ is not None and not (
            isinstance(options_, Mapping) and all(isinstance(key, str) for key in options_)
        ):
            raise ValueError(
                "producer_options must be a mapping of AIOKafkaProducer argument names to "
                f"values, such as {{'acks': 'all'}}, not {producer_options!r}"
            )
        _import("aiokafka.errors")
        super().__init__(**options)
        self.topic = topic
        self.bootstrap_servers = bootstrap_servers
        self._producer_options = dict(producer_options or {})
        self._owns_producer = producer is None
        self._producer: KafkaProducer | None = producer
        self._starting = asyncio.Lock()

    async def send(self, batch: list[dict[str, Any]]) -> None:
        """Produce one message per record of ``batch`` and wait until all are acknowledged.

        :raises RetryableExportError: a connection error, a timeout or an aiokafka error
            marked retriable, chained as the cause.
        :raises ExportError: any other Kafka error (chained), or a message cancelled.
        """
        kafka_error = _import("aiokafka.errors").KafkaError
        pending: list[Awaitable[Any]] = []
        failure: BaseException | None = None
        try:
            producer = await self._started_producer()
            for record in batch:
                pending.append(  # noqa: PERF401  (what was queued is kept on an error)
                    await producer.send(self.topic, value=_value(record), key=_key(record))
                )
        except Exception as error:
            failure = error  # first wait for what was queued, so no outcome goes unread
        outcomes = await asyncio.gather(*pending, return_exceptions=True)
        if failure is None:
            failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
        if failure is None:
            return
        if isinstance(failure, kafka_error):
            raise self._export_error(failure) from failure
        if isinstance(failure, asyncio.CancelledError):
            raise ExportError(
                f"a message to Kafka topic {self.topic!r} was cancelled (producer stopped?)"
            ) from failure
        raise failure

    async def close_sink(self) -> None:
        """Stop the producer if the exporter made it (a producer passed in stays open)."""
        if self._owns_producer and self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def _started_producer(self) -> KafkaProducer:
        """The producer to send with; the exporter's own one is made and started once."""
        if self._producer is not None:
            return self._producer
        async with self._starting:  # two attached trees may send their first batch at once
            if self._producer is None:
                producer: KafkaProducer = _import("aiokafka").AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap_servers, **self._producer_options
                )
                try:
                    await producer.start()
                except BaseException:
                    # a producer that failed to start is not reused: the next try makes one
                    with contextlib.suppress(Exception):
                        await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    def _export_error(self, error: Exception) -> ExportError:
        errors = _import("aiokafka.errors")
        # aiokafka's errors read "[Error N] ClassName: detail" or "ClassName: detail"
        message = f"producing to Kafka topic {self.topic!r} failed: {error}"
        retryable = isinstance(
            error, (errors.KafkaConnectionError, errors.KafkaTimeoutError)
        ) or bool(getattr(error, "retriable", False))
        return RetryableExportError(message) if retryable else ExportError(message)


def _import(name: str) -> Any:
    """The aiokafka module ``name``, imported when first used (aiokafka ships no types)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(_MISSING_AIOKAFKA) from None


def _key(record: dict[str, Any]) -> bytes:
    """The root of the change's path (or its tree's source for the root), as UTF-8."""
    path = record.get("path")
    root = path[0] if path else record.get("source", "")
    return str(root).encode("utf-8", "backslashreplace")


def _value(record: dict[str, Any]) -> bytes:
    return dumps(record).encode("utf-8", "backslashreplace")  # a lone surrogate: escaped


def _check_topic(topic: object) -> None:
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"topic must be a non-empty str, not {topic!r}")


def _check_servers(servers: object) -> None:
    if isinstance(servers, str):
        valid = bool(servers)
    elif isinstance(servers, list):
        valid = bool(servers) and all(isinstance(s, str) and s for s in servers)
    else:
        valid = False
    if not valid:
        raise ValueError(
            f"bootstrap_servers must be a non-empty str or list of them, not {servers!r}"
        )
