"""Async subscriptions: changes pushed onto an asyncio.Queue, never blocking a mutation."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Self

from .._errors import SubscriberOverflowError
from ._change import Change

if TYPE_CHECKING:
    from ._base import Tracked
    from ._tracker import Tracker

__all__ = ("Overflow", "Subscription", "async_queue_observer")

Overflow = Literal["drop_oldest", "drop_newest", "error"]
_OVERFLOWS = ("drop_oldest", "drop_newest", "error")
_END: Any = object()
_thread_id = threading.get_ident


class Subscription:
    """An async iterator over a tracked tree's changes (``container.subscribe()``).

    ::

        sub = config.subscribe(maxsize=1000, overflow="drop_oldest")
        async for change in sub:
            ...

    Each change is put on an ``asyncio.Queue`` as the mutation happens; the mutation
    never waits for the consumer. With ``maxsize=0`` the queue is unbounded and the
    consumer gets every change, in order. With a bound, a full queue drops the oldest
    queued change (``"drop_oldest"``), the new one (``"drop_newest"``), or ends the
    subscription with :class:`~retract.SubscriberOverflowError` once the consumer has
    read what was queued (``"error"``); :attr:`dropped` counts the drops.

    Create it in the event loop that consumes it. Mutations from other threads are
    handed to that loop with ``call_soon_threadsafe`` (in order, but after the
    mutation returned). :meth:`close` ends the iteration after the queued changes.
    """

    def __init__(self, container: Tracked, *, maxsize: int, overflow: Overflow) -> None:
        if overflow not in _OVERFLOWS:
            raise ValueError(f"overflow must be one of {', '.join(_OVERFLOWS)}, not {overflow!r}")
        if type(maxsize) is not int or maxsize < 0:
            raise ValueError(f"maxsize must be an int >= 0 (0: unbounded), not {maxsize!r}")
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self._bounded = maxsize > 0
        self._overflow = overflow
        self._container = container
        self._closed = False
        self._end_pending = False
        self._error: SubscriberOverflowError | None = None
        self.dropped = 0
        # The tracker holds the subscription weakly: one that its consumer dropped
        # (a cancelled task, an abandoned iterator) stops receiving, and its queue goes.
        self._tracker = container._root_tracker()[1]
        self._observer = _weak_observer(self, self._tracker)
        container.tracking_add_observer(self._observer)

    def _observe(self, change: Change) -> None:
        if _thread_id() != self._thread:
            self._loop.call_soon_threadsafe(self._offer, change)
        elif self._bounded or self._closed:
            self._offer(change)
        else:  # the common case, kept short: unbounded, in the loop's own thread
            self._queue.put_nowait(change)

    def _offer(self, change: Any) -> None:
        if self._closed:  # handed over from another thread, but close() came first
            return
        queue = self._queue
        if not queue.full():
            queue.put_nowait(change)
            return
        self.dropped += 1
        if self._overflow == "drop_oldest":
            queue.get_nowait()
            queue.put_nowait(change)
        elif self._overflow == "error":
            self._error = SubscriberOverflowError(
                f"a subscriber fell {queue.maxsize} changes behind (maxsize={queue.maxsize}, "
                'overflow="error"); read faster, raise maxsize, or use "drop_oldest"'
            )
            self.close()

    def close(self) -> None:
        """Stop receiving changes; iteration ends once the queued ones are read."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ValueError):  # already removed
            self._tracker.remove_observer(self._observer)
        self._end()

    def _end(self) -> None:
        if self._queue.full():
            # no room for the end marker: it goes in when the consumer takes a change,
            # so every change queued before close() is still delivered
            self._end_pending = True
        else:
            self._queue.put_nowait(_END)

    def _taken(self) -> None:
        if self._end_pending:
            self._end_pending = False
            self._queue.put_nowait(_END)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Change:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # later calls end too
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        self._taken()
        return item  # type: ignore[no-any-return]

    def get_nowait(self) -> Change | None:
        """The next queued change, or None if there is none right now."""
        try:
            item = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        if item is _END:
            self._queue.put_nowait(_END)
            return None
        self._taken()
        return item  # type: ignore[no-any-return]

    def qsize(self) -> int:
        """How many changes are waiting."""
        return self._queue.qsize()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


def _weak_observer(subscription: Subscription, tracker: Tracker) -> Callable[[Change], None]:
    def forget(_: object) -> None:
        with contextlib.suppress(ValueError):  # closed before it was collected
            tracker.remove_observer(observe)

    ref = weakref.ref(subscription, forget)

    def observe(change: Change) -> None:
        live = ref()
        if live is not None:
            live._observe(change)

    return observe


def async_queue_observer(queue: asyncio.Queue[Change]) -> Any:
    """An observer that puts every change on ``queue`` with ``put_nowait``.

    The mutation never blocks: on a full bounded queue the change is dropped (counted
    in ``observer.dropped``). Call it from the queue's event loop thread, or let
    mutations from other threads go through ``call_soon_threadsafe`` as
    :class:`Subscription` does.
    """
    loop = asyncio.get_running_loop()
    thread = threading.get_ident()

    def put(change: Change) -> None:
        try:
            queue.put_nowait(change)
        except asyncio.QueueFull:
            observer.dropped += 1  # type: ignore[attr-defined]

    def observer(change: Change) -> None:
        if threading.get_ident() != thread:
            loop.call_soon_threadsafe(put, change)
        else:
            put(change)

    observer.dropped = 0  # type: ignore[attr-defined]
    return observer
