"""Journal events: what ``Journal.watch()`` yields, and the stream that yields them.

A storage that can announce its changes to other processes (PostgreSQL's
``LISTEN``/``NOTIFY``) sends one small JSON message per change once it is committed:
a session's status changed (it started, ended, began or finished an undo), or an undo
or a recovery changed the state of some of a session's operations (a window marked
UNDOING, then UNDONE; SKIPPED, UNDO_FAILED; steps found IN_DOUBT). A running session's
own writes (appends, step outcomes) are not announced: a ``NOTIFY`` serializes the
commits of every process. An :class:`EventStream` turns those messages into
:class:`SessionEvent` and :class:`OperationsEvent` values, in commit order.

The stream keeps its own connection (``LISTEN`` is per connection) and a bounded
buffer: a consumer that falls more than ``max_pending`` events behind loses the oldest
(:attr:`EventStream.dropped` counts them, and a warning says so once). A lost
connection ends the iteration with :class:`~retract.StorageError`: events committed
meanwhile were not seen, so read the sessions again before watching anew.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from .._errors import JournalClosedError, StorageError
from ._records import OperationState, SessionStatus

__all__ = ("EventStream", "JournalEvent", "OperationsEvent", "SessionEvent", "parse_event")

logger = logging.getLogger("retract")


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """A session was created or changed status (committed).

    :ivar status: its new status (RUNNING when it was created).
    :ivar undo_count: undo runs started on it so far.
    :ivar at: when the change was made, by the database server's clock.
    """

    session_id: str
    status: SessionStatus
    undo_count: int
    at: datetime


@dataclass(frozen=True, slots=True)
class OperationsEvent:
    """Operations of one session changed to one state in one write (committed).

    An undo marks a window of operations UNDOING, then UNDONE: each is one event with
    the range of sequence numbers it touched (``first`` to ``last``; ``count`` of
    them changed, fewer than the range when some were settled before).
    """

    session_id: str
    state: OperationState
    count: int
    first: int
    last: int
    at: datetime


JournalEvent = SessionEvent | OperationsEvent


def parse_event(payload: str) -> JournalEvent:
    """The event a storage announced as JSON text.

    :raises ValueError: the text is not an event.
    """
    data = json.loads(payload)
    at = datetime.fromtimestamp(float(data["at"]), UTC)
    if data["kind"] == "session":
        return SessionEvent(
            data["session_id"], SessionStatus(data["status"]), int(data["undo_count"]), at
        )
    if data["kind"] == "operations":
        return OperationsEvent(
            data["session_id"],
            OperationState(data["state"]),
            int(data["count"]),
            int(data["first"]),
            int(data["last"]),
            at,
        )
    raise ValueError(f"not a journal event: {payload!r}")


Conn = Any  # a driver connection with add_listener/add_termination_listener


class EventStream:
    """An async iterator of :data:`JournalEvent` values; also an async context manager.

    ::

        async with journal.watch() as events:
            async for event in events:
                print(event)

    It starts listening when entered (or on the first ``__anext__``) and stops at
    :meth:`aclose`, at the end of the ``async with`` block, or when the journal closes.
    Events committed before it started listening are not delivered.

    :ivar dropped: events lost because the consumer fell ``max_pending`` behind.
    """

    def __init__(
        self,
        *,
        channel: str,
        connect: Callable[[], Awaitable[Conn]],
        release: Callable[[Conn], Awaitable[None]],
        location: str,
        session_id: str | None = None,
        max_pending: int = 10_000,
        close_timeout: float = 10.0,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, not {max_pending!r}")
        self._channel = channel
        self._connect = connect
        self._release = release
        self._location = location
        self._session_id = session_id
        self._close_timeout = close_timeout
        self._pending: collections.deque[JournalEvent | BaseException] = collections.deque(
            maxlen=max_pending
        )
        self._wakeup = asyncio.Event()
        self._conn: Conn | None = None
        self._state = "new"
        self.dropped = 0

    def __repr__(self) -> str:
        return f"<EventStream {self._location} {self._state}>"

    async def start(self) -> None:
        """Connect and listen. Entering the stream, or iterating it, does this."""
        if self._state != "new":
            if self._state == "closed":
                raise JournalClosedError(f"the event stream of {self._location} is closed")
            return
        self._state = "starting"
        try:
            conn = await self._connect()
        except BaseException:
            self._state = "closed"
            raise
        if self._state == "closed":  # closed while connecting
            await self._release(conn)
            raise JournalClosedError(f"the event stream of {self._location} is closed")
        self._conn = conn
        try:
            conn.add_termination_listener(self._on_lost)
            await conn.add_listener(self._channel, self._on_notify)
        except BaseException:
            self._conn = None
            self._state = "closed"
            conn.remove_termination_listener(self._on_lost)
            await self._release(conn)
            raise
        self._state = "open"

    def _on_notify(self, conn: Conn, pid: int, channel: str, payload: str) -> None:
        try:
            event = parse_event(payload)
        except (ValueError, KeyError, TypeError):
            logger.warning("ignored a malformed journal event on %s: %r", channel, payload)
            return
        if self._session_id is not None and event.session_id != self._session_id:
            return
        self._push(event)

    def _on_lost(self, conn: Conn) -> None:
        if self._state == "open":
            self._push(
                StorageError(
                    f"the connection watching {self._location} was lost: events committed "
                    "since were not seen; read the sessions again, then watch anew"
                )
            )

    def _push(self, item: JournalEvent | BaseException) -> None:
        pending = self._pending
        if len(pending) == pending.maxlen:
            if not self.dropped:
                logger.warning(
                    "a journal watcher of %s fell %d events behind: the oldest are dropped",
                    self._location,
                    pending.maxlen,
                )
            self.dropped += 1
        pending.append(item)
        self._wakeup.set()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> JournalEvent:
        if self._state == "new":
            await self.start()
        while not self._pending:
            if self._state == "closed":
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        item = self._pending.popleft()
        if isinstance(item, BaseException):
            await self.aclose()
            raise item
        return item

    async def aclose(self) -> None:
        """Stop listening and give the connection back. Idempotent.

        A consumer waiting in ``async for`` then ends its loop after the events still
        buffered.
        """
        if self._state == "closed":
            return
        self._state = "closed"
        self._wakeup.set()
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.remove_termination_listener(self._on_lost)
            if not conn.is_closed():
                try:
                    await asyncio.wait_for(
                        conn.remove_listener(self._channel, self._on_notify),
                        self._close_timeout,
                    )
                except Exception:  # the server does not answer: cut the connection
                    conn.terminate()
        finally:
            await self._release(conn)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
