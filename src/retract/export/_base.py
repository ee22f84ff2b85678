"""Exporter: an async consumer of subscriptions that ships changes in batches.

The tracked write only appends to a subscription's queue; everything else happens in
the exporter's own task: gathering a batch (up to ``max_batch`` changes, or whatever
arrived within ``max_delay`` of the first), encoding it, and sending it with retries
and backoff. The subscription's bound (``max_buffer``, with its ``overflow`` policy)
is the exporter's buffer: while a sink is slow or down, at most that many changes wait.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Self, TypedDict

from .._errors import RetractError
from ..tracking import Subscription
from ..tracking._subscribe import Overflow
from ._encode import change_record

if TYPE_CHECKING:
    from ..tracking._base import Tracked

__all__ = ("ExportError", "Exporter", "ExporterOptions", "RetryableExportError")

logger = logging.getLogger("retract")


class ExporterOptions(TypedDict, total=False):
    """The keyword arguments of :class:`Exporter`, which every exporter passes through."""

    max_batch: int
    max_delay: float
    max_buffer: int
    overflow: Overflow
    retries: int
    backoff: float
    max_backoff: float


class ExportError(RetractError):
    """A batch could not be exported; it is dropped (and counted) unless retryable."""


class RetryableExportError(ExportError):
    """A failure worth another try (a 5xx, a connection refused, a timeout)."""


class Exporter(ABC):
    """Ship a tracked tree's changes somewhere, in batches, off the write path.

    ::

        async with JsonLinesExporter("changes.jsonl") as exporter:
            exporter.attach(config, source="config")
            config["mode"] = "release"  # queued; written by the exporter's task
        # leaving the block flushed what was buffered

    Subclasses implement :meth:`send` (and, to release resources, :meth:`close_sink`).

    :param max_batch: at most this many changes per :meth:`send`.
    :param max_delay: seconds a batch may wait for more changes after its first one.
    :param max_buffer: changes that may wait per attached tree (0: no bound).
    :param overflow: what a full buffer does with a new change: ``"drop_oldest"`` or
        ``"drop_newest"`` (counted in :attr:`dropped`).
    :param retries: further tries of a batch after a :class:`RetryableExportError`.
    :param backoff: seconds before the first retry, doubled after each (with jitter).
    :param max_backoff: the longest wait between two tries.
    """

    def __init__(
        self,
        *,
        max_batch: int = 500,
        max_delay: float = 1.0,
        max_buffer: int = 10_000,
        overflow: Overflow = "drop_oldest",
        retries: int = 5,
        backoff: float = 0.1,
        max_backoff: float = 10.0,
    ) -> None:
        _check_positive("max_batch", max_batch, integer=True)
        _check_positive("max_delay", max_delay, zero=True)
        _check_positive("max_buffer", max_buffer, integer=True, zero=True)
        _check_positive("retries", retries, integer=True, zero=True)
        _check_positive("backoff", backoff, zero=True)
        _check_positive("max_backoff", max_backoff, zero=True)
        if overflow not in ("drop_oldest", "drop_newest"):
            raise ValueError(
                f'overflow must be "drop_oldest" or "drop_newest", not {overflow!r} (an '
                "exporter keeps going when its buffer is full; it does not stop with an error)"
            )
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.max_buffer = max_buffer
        self.overflow: Overflow = overflow
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        #: Changes sent, batches sent, tries that failed, changes given up on.
        self.exported = 0
        self.batches = 0
        self.failures = 0
        self.lost = 0
        self._tasks: list[tuple[Subscription, asyncio.Task[None]]] = []
        self._closed = False

    # -- what subclasses provide --------------------------------------------------------

    @abstractmethod
    async def send(self, batch: list[dict[str, Any]]) -> None:
        """Ship one batch of encoded changes (see :func:`change_record`).

        :raises RetryableExportError: to have the batch tried again after a backoff.
        Any other exception drops the batch (logged and counted in :attr:`lost`).
        """

    async def close_sink(self) -> None:  # noqa: B027  (optional for subclasses)
        """Release the sink's resources, after the last batch was sent."""

    # -- use ----------------------------------------------------------------------------

    def attach(self, container: Tracked, *, source: str | None = None) -> Subscription:
        """Export every change of ``container``'s subtree from now on.

        Each record carries ``source`` (default: the container's ``repr``-free label
        ``"tree-N"``). Call it inside the running event loop, which runs the export.
        :return: the subscription feeding it (closed by :meth:`aclose`).
        """
        if self._closed:
            raise RuntimeError("this exporter is closed; make a new one to attach to")
        loop = asyncio.get_running_loop()
        label: object = source if source is not None else f"tree-{len(self._tasks) + 1}"
        if not isinstance(label, str) or not label:
            raise ValueError(f"source must be a non-empty str, not {source!r}")
        subscription = container.subscribe(maxsize=self.max_buffer, overflow=self.overflow)
        task = loop.create_task(self._run(subscription, label), name=f"retract-export-{label}")
        self._tasks.append((subscription, task))
        return subscription

    @property
    def dropped(self) -> int:
        """Changes the buffers' overflow policy dropped before they could be sent."""
        return sum(subscription.dropped for subscription, _ in self._tasks)

    async def aclose(self) -> None:
        """Send what is buffered, then close the sink (idempotent).

        Cancelling the call stops the flush: what was not sent yet is lost.
        """
        if self._closed:
            return
        self._closed = True
        for subscription, _ in self._tasks:
            subscription.close()
        try:
            # Every task ends before the sink closes, even if one of them failed.
            outcomes = await asyncio.gather(
                *(task for _, task in self._tasks), return_exceptions=True
            )
        finally:
            await self.close_sink()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the consumer task ----------------------------------------------------------------

    async def _run(self, subscription: Subscription, source: str) -> None:
        batch: list[dict[str, Any]] = []
        try:
            async for change in subscription:
                batch.append(change_record(change, source))
                await self._fill(subscription, batch, source)
                await self._ship(batch)
                batch = []
        except asyncio.CancelledError:
            self.lost += len(batch)
            raise
        except Exception:
            logger.exception("the %s exporter of %r stopped", type(self).__name__, source)
            raise

    async def _fill(self, subscription: Subscription, batch: list[Any], source: str) -> None:
        """Add what arrives within ``max_delay`` of the first change, up to ``max_batch``."""
        deadline = time.monotonic() + self.max_delay
        while len(batch) < self.max_batch:
            change = subscription.get_nowait()
            if change is not None:
                batch.append(change_record(change, source))
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or subscription.closed:
                return
            try:
                change = await asyncio.wait_for(anext(subscription), remaining)
            except (TimeoutError, StopAsyncIteration):
                return
            batch.append(change_record(change, source))

    async def _ship(self, batch: list[dict[str, Any]]) -> None:
        delay = min(self.backoff, self.max_backoff)
        for attempt in range(self.retries + 1):
            try:
                await self.send(batch)
            except RetryableExportError as error:
                self.failures += 1
                if attempt == self.retries:
                    logger.error(
                        "%s gave up on a batch of %d changes after %d tries: %s",
                        type(self).__name__,
                        len(batch),
                        attempt + 1,
                        error,
                    )
                    break
                logger.debug("%s will retry a batch: %s", type(self).__name__, error)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311
                delay = min(delay * 2, self.max_backoff)
                continue
            except Exception:
                self.failures += 1
                logger.exception(
                    "%s dropped a batch of %d changes", type(self).__name__, len(batch)
                )
                break
            self.exported += len(batch)
            self.batches += 1
            return
        self.lost += len(batch)


def _check_positive(name: str, value: Any, *, integer: bool = False, zero: bool = False) -> None:
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    number: object = value
    if (
        isinstance(number, bool)
        or not isinstance(number, kinds)
        or number < 0  # type: ignore[operator]
        or (number == 0 and not zero)
    ):
        kind = "an int" if integer else "a number"
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"{name} must be {kind} {bound}, not {value!r}")
