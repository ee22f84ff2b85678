"""Async subscriptions: changes queued for a consumer task, never blocking a mutation."""

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
_thread_id = threading.get_ident
_running_loop = asyncio._get_running_loop  # None outside a loop (get_running_loop raises)
_new_change = tuple.__new__


class Subscription:
    """An async iterator over a tracked tree's changes (``container.subscribe()``).

    ::

        sub = config.subscribe(maxsize=1000, overflow="drop_oldest")
        async for change in sub:
            ...

    Each change is queued as the mutation happens; the mutation never waits for the
    consumer. With ``maxsize=0`` the queue is unbounded and the consumer gets every
    change, in order. With a bound, a full queue drops the oldest queued change
    (``"drop_oldest"``), the new one (``"drop_newest"``), or ends the subscription with
    :class:`~retract.SubscriberOverflowError` once the consumer has read what was queued
    (``"error"``); :attr:`dropped` counts the drops.

    The queue is a ``deque`` that the tree appends to directly (for an unbounded
    subscription the feed is the deque's own ``append``: no Python call per change).
    A consumer that finds it empty registers a future with the tree and awaits it;
    the next change resolves it, so waking costs once per wait, not once per change.
    (``asyncio.Queue.put_nowait`` per change would cost more than the rest of a write;
    :func:`async_queue_observer` feeds an ``asyncio.Queue`` of your own.)

    It can be made anywhere, even before an event loop runs; each wait belongs to the
    loop that awaits. Mutations from other threads are queued as they happen and wake
    the consumer through its loop's ``call_soon_threadsafe`` (see
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
        self._closed = False
        self._error: SubscriberOverflowError | None = None
        self._dropped = [0]
        self._taken = 0  # changes handed to the consumer
        root, tracker = container._root_tracker()
        self._tracker = tracker
        scope = None if root is container else _scope(container, root)
        # A whole tree's "drop_oldest" queue is a deque with a maxlen, which drops in C:
        # its drops are counted from the sequence numbers instead (see `dropped`).
        self._ring = bool(maxsize) and overflow == "drop_oldest" and scope is None
        self._buffer: deque[Any] = deque(maxlen=maxsize if self._ring else None)
        feed: Feed
        if maxsize and not self._ring:
            feed = _bounded_feed(self._buffer, maxsize, overflow, self._dropped, weakref.ref(self))
        else:
            feed = self._buffer.append
        self._feed = tracker.add_feed(feed, scope)
        self._first = self._last = tracker.seq  # fed: the changes after _first (up to _last)
        # The tracker holds the feed, not the subscription: once its consumer dropped
        # it (a cancelled task, an abandoned iterator), it is no longer fed.
        weakref.finalize(self, tracker.remove_feed, self._feed)

    @property
    def dropped(self) -> int:
        """How many changes the overflow policy dropped."""
        if not self._ring:
            return self._dropped[0]
        last = self._last if self._closed else self._tracker.seq
        return max(0, last - self._first - self._taken - len(self._buffer))

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (or an ``"error"`` overflow happened)."""
        return self._closed

    def close(self) -> None:
        """Stop receiving changes; iteration ends once the queued ones are read."""
        if self._closed:
            return
        self._tracker.remove_feed(self._feed)
        self._last = self._tracker.seq
        self._closed = True
        self._tracker.wake()  # a waiting consumer sees the end

    def _overflowed(self, maxsize: int) -> None:
        self._error = SubscriberOverflowError(
            f"a subscriber fell {maxsize} changes behind (maxsize={maxsize}, "
            'overflow="error"); read faster, raise maxsize, or use "drop_oldest"'
        )
        self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Change:
        buffer = self._buffer
        while not buffer:
            if self._closed:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            await self._wait()
        self._taken += 1
        return _new_change(Change, buffer.popleft())

    async def _wait(self) -> None:
        """Until the next change (or close); the caller looks at the buffer again."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sleeper = (future, _thread_id())
        tracker = self._tracker
        tracker.add_sleeper(sleeper)
        try:
            # Registered first, then looked at again: a change or a close() from
            # another thread is either seen here or resolves the future.
            if not self._buffer and not self._closed:
                await future
        finally:
            tracker.remove_sleeper(sleeper)

    def get_nowait(self) -> Change | None:
        """The next queued change, or None if there is none right now."""
        buffer = self._buffer
        if not buffer:
            return None
        self._taken += 1
        return _new_change(Change, buffer.popleft())

    def qsize(self) -> int:
        """How many changes are waiting."""
        return len(self._buffer)

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
        if len(buffer) >= maxsize:
            if overflow == "drop_newest":
                dropped[0] += 1
                return
            if overflow == "error":
                dropped[0] += 1
                subscription = owner()
                if subscription is not None:
                    subscription._overflowed(maxsize)
                return
            try:
                buffer.popleft()
                dropped[0] += 1
            except IndexError:  # the consumer emptied it meanwhile: nothing dropped
                pass
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
