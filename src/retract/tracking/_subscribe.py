"""Async subscriptions: changes pushed onto an asyncio.Queue, never blocking a mutation."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Self

from .._errors import SubscriberOverflowError
from ._base import _path_within
from ._change import Change

if TYPE_CHECKING:
    from ._base import Tracked
    from ._tracker import Feed

__all__ = ("Overflow", "Subscription", "async_queue_observer")

Overflow = Literal["drop_oldest", "drop_newest", "error"]
_OVERFLOWS = ("drop_oldest", "drop_newest", "error")
#: Ends the iteration (queued by close()).
_END: Any = object()
#: Wakes a consumer waiting in ``get()``; never stored (see ``_ChangeQueue._put``).
_KICK: Any = object()
_thread_id = threading.get_ident
_running_loop = asyncio._get_running_loop  # None outside a loop (get_running_loop raises)
_new_change = tuple.__new__


class _ChangeQueue(asyncio.Queue[Any]):
    """The asyncio.Queue under a subscription, which the tracker fills directly.

    Recording a change appends its fields to :attr:`buffer` (this queue's own deque,
    made in ``_init``, the hook asyncio's own LIFO and priority queues use): for an
    unbounded subscription the feed is ``buffer.append`` itself, so a write costs no
    Python call per subscriber. A consumer that finds the buffer empty registers as a
    sleeper of the tracker and awaits ``get()``; the next write wakes it by putting
    ``_KICK``, which is stored only into an empty buffer (the consumer then looks
    again), so ``put_nowait``'s cost is paid once per wait, not once per change.
    """

    buffer: deque[Any]
    loop: asyncio.AbstractEventLoop | None
    thread: int

    def _init(self, maxsize: int) -> None:
        self._queue = self.buffer = deque()
        self.loop = None
        self.thread = 0

    def _put(self, item: Any) -> None:
        if item is not _KICK or not self.buffer:
            self.buffer.append(item)

    def kick(self) -> None:
        """Wake the consumer if it waits in ``get()`` (from any thread)."""
        if _thread_id() == self.thread:
            self.put_nowait(_KICK)
        elif self.loop is not None:  # asyncio is not thread-safe: through the loop
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self.loop.call_soon_threadsafe(self.put_nowait, _KICK)


class Subscription:
    """An async iterator over a tracked tree's changes (``container.subscribe()``).

    ::

        sub = config.subscribe(maxsize=1000, overflow="drop_oldest")
        async for change in sub:
            ...

    Each change goes on an ``asyncio.Queue`` as the mutation happens; the mutation
    never waits for the consumer. With ``maxsize=0`` the queue is unbounded and the
    consumer gets every change, in order. With a bound, a full queue drops the oldest
    queued change (``"drop_oldest"``), the new one (``"drop_newest"``), or ends the
    subscription with :class:`~retract.SubscriberOverflowError` once the consumer has
    read what was queued (``"error"``); :attr:`dropped` counts the drops.

    It can be made anywhere, even before an event loop runs; the loop that iterates
    it owns it. Mutations from other threads are queued as they happen and wake the
    consumer through its loop's ``call_soon_threadsafe`` (see
    :attr:`~retract.tracking.TrackedDict.tracking_lock` for several writing threads).
    :meth:`close` (or leaving ``async with``) ends the iteration after the changes
    queued so far. A subscription that nobody holds any more (its consumer task is
    gone) stops being fed.
    """

    def __init__(self, container: Tracked, *, maxsize: int, overflow: Overflow) -> None:
        if overflow not in _OVERFLOWS:
            raise ValueError(f"overflow must be one of {', '.join(_OVERFLOWS)}, not {overflow!r}")
        if type(maxsize) is not int or maxsize < 0:
            raise ValueError(f"maxsize must be an int >= 0 (0: unbounded), not {maxsize!r}")
        # Unbounded underneath: the bound is applied by the feed, with its policy.
        self._queue = queue = _ChangeQueue()
        self._closed = False
        self._error: SubscriberOverflowError | None = None
        self._dropped = [0]
        root, tracker = container._root_tracker()
        self._tracker = tracker
        scope = None if root is container else _scope(container, root)
        feed: Feed
        if maxsize:
            feed = _bounded_feed(queue.buffer, maxsize, overflow, self._dropped, weakref.ref(self))
        else:
            feed = queue.buffer.append
        self._feed = tracker.add_feed(feed, scope)
        # The tracker holds the feed, not the subscription: once its consumer dropped
        # it (a cancelled task, an abandoned iterator), it is no longer fed.
        weakref.finalize(self, tracker.remove_feed, self._feed)

    @property
    def dropped(self) -> int:
        """How many changes the overflow policy dropped."""
        return self._dropped[0]

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (or an ``"error"`` overflow happened)."""
        return self._closed

    def close(self) -> None:
        """Stop receiving changes; iteration ends once the queued ones are read."""
        if self._closed:
            return
        self._closed = True
        self._tracker.remove_feed(self._feed)
        self._queue.buffer.append(_END)
        self._queue.kick()  # a waiting consumer sees the end

    def _overflowed(self, maxsize: int) -> None:
        self._error = SubscriberOverflowError(
            f"a subscriber fell {maxsize} changes behind (maxsize={maxsize}, "
            'overflow="error"); read faster, raise maxsize, or use "drop_oldest"'
        )
        self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Change:
        queue = self._queue
        buffer = queue.buffer
        while True:
            if buffer:
                raw = buffer.popleft()
            else:
                raw = await self._wait()
            if raw is not _KICK:
                break
        if raw is _END:
            buffer.appendleft(_END)  # later calls end too
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        return _new_change(Change, raw)

    async def _wait(self) -> Any:
        queue, tracker = self._queue, self._tracker
        queue.loop = asyncio.get_running_loop()
        queue.thread = _thread_id()
        tracker.add_sleeper(queue)
        try:
            # Registered first, then looked at again: a change from another thread is
            # either seen here or wakes the queue.
            if queue.buffer:
                return queue.buffer.popleft()
            return await queue.get()
        finally:
            tracker.remove_sleeper(queue)

    def get_nowait(self) -> Change | None:
        """The next queued change, or None if there is none right now."""
        buffer = self._queue.buffer
        while buffer and buffer[0] is _KICK:
            buffer.popleft()
        if not buffer or buffer[0] is _END:
            return None
        return _new_change(Change, buffer.popleft())

    def qsize(self) -> int:
        """How many changes are waiting."""
        buffer = self._queue.buffer
        # A wake-up marker can only be first; once closed, the end marker is in the
        # buffer (exactly once) until read past.
        return len(buffer) - (bool(buffer) and buffer[0] is _KICK) - self._closed

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


def _scope(node: Tracked, root: Tracked) -> Callable[[], tuple[Any, ...] | None]:
    # Weakly: the feed must not keep a dropped child (and its subscription) alive.
    ref = weakref.ref(node)

    def scope() -> tuple[Any, ...] | None:
        live = ref()
        return None if live is None else _path_within(live, root)

    return scope


def _bounded_feed(
    buffer: deque[Any],
    maxsize: int,
    overflow: Overflow,
    dropped: list[int],
    owner: weakref.ref[Subscription],
) -> Feed:
    def feed(raw: tuple[Any, ...]) -> None:
        try:  # a wake-up marker first in the buffer is not a change
            full = len(buffer) - (buffer[0] is _KICK) >= maxsize
        except IndexError:  # empty
            full = False
        if full:
            dropped[0] += 1
            if overflow == "drop_newest":
                return
            if overflow == "error":
                subscription = owner()
                if subscription is not None:
                    subscription._overflowed(maxsize)
                return
            with contextlib.suppress(IndexError):  # the consumer took it meanwhile
                if buffer[0] is _KICK:
                    del buffer[1]
                else:
                    buffer.popleft()
        buffer.append(raw)

    return feed


def async_queue_observer(
    queue: asyncio.Queue[Change], *, loop: asyncio.AbstractEventLoop | None = None
) -> Any:
    """An observer that puts every change on ``queue`` with ``put_nowait``.

    The mutation never blocks: on a full bounded queue the change is dropped (counted
    in ``observer.dropped``). The queue belongs to ``loop``: by default the loop
    running when the observer is made, else the first one that runs a mutation. A
    mutation from any other thread hands its change to that loop with
    ``call_soon_threadsafe`` (in order, after the mutation returned). Made outside a
    loop, with mutations from other threads, pass ``loop=``.
    """
    if loop is None:
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
    owner: list[Any] = [loop]

    def put(change: Change) -> None:
        try:
            queue.put_nowait(change)
        except asyncio.QueueFull:
            observer.dropped += 1  # type: ignore[attr-defined]

    def observer(change: Change) -> None:
        bound = owner[0]
        if bound is None:
            try:
                bound = owner[0] = asyncio.get_running_loop()
            except RuntimeError:  # no loop anywhere yet: nobody can be waiting
                put(change)
                return
        if _running_loop() is bound:
            put(change)
        else:
            bound.call_soon_threadsafe(put, change)

    observer.dropped = 0  # type: ignore[attr-defined]
    return observer
