"""The group-commit writer of SQLiteStorage: plain sqlite3 on the connection's thread.

It never imports aiosqlite: it receives the connection's thread as a small interface
(``WriterThread``), implemented in :mod:`._sqlite`, the one module that does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..._errors import JournalClosedError, SessionNotFoundError
from ._protocol import NewOperation

__all__ = ("GroupCommitWriter", "Txn", "WriteFn", "WriterThread")

logger = logging.getLogger("retract")


class WriterThread(Protocol):
    """The connection thread the writer runs on."""

    @property
    def raw(self) -> sqlite3.Connection | None:
        """The sqlite3 connection, to be used only on that thread."""
        ...

    def post(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the thread, soon, without sending anything back."""
        ...


#: Rows per INSERT statement: 7 parameters each stays under SQLite's historical limit
#: of 999 bound parameters (raised to 32766 only in 3.32).
_ROWS_PER_INSERT = 128
#: Batches smaller than this are never split (see ``_drain_queue``): serving 16 callers
#: keeps the loop busy about as long as one commit takes, and below that an extra
#: commit costs more than the overlap gains.
_SPLIT_AT = 32
_INSERT_OPERATIONS = (
    "INSERT INTO operations (session_key, sequence, op_id, op_type, payload, state, created_at)"
    " VALUES "
)


@functools.cache
def _insert_sql(rows: int) -> str:
    """An INSERT of ``rows`` operations in one statement (see :meth:`Txn.flush`)."""
    return _INSERT_OPERATIONS + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * rows)


class Txn:
    """Scratch space of one group-commit transaction, shared by its requests.

    Appended operations are buffered as one flat parameter list; any other statement
    flushes them first, so the order of requests is kept. The transaction begins
    (``BEGIN IMMEDIATE``) only when a statement other than the buffered appends runs:
    a batch of nothing but appends to known sessions is committed as one multi-row
    INSERT in autocommit mode, which SQLite makes a transaction of its own.
    Its caches reach the writer's only when the transaction commits.

    ``before_io`` runs once, just before the first statement: the writer hands the
    previous batch's results to the event loop there (see ``_drain_queue``).
    """

    __slots__ = (
        "before_io",
        "begun",
        "conn",
        "finished",
        "keys",
        "next_seq",
        "params",
        "rows",
        "writer",
    )

    def __init__(
        self,
        conn: sqlite3.Connection,
        writer: GroupCommitWriter,
        before_io: Callable[[], None] | None = None,
    ) -> None:
        self.conn = conn
        self.writer = writer
        self.before_io = before_io
        self.begun = False
        self.keys: dict[str, int] = {}  # session_id -> sessions.seq
        self.next_seq: dict[str, int] = {}  # session_id -> next sequence number
        self.finished: set[str] = set()  # sessions that ended: drop them from the caches
        self.params: list[Any] = []  # operations to insert, 7 values a row
        self.rows = 0

    def _io(self) -> None:
        hook, self.before_io = self.before_io, None
        if hook is not None:
            hook()

    def begin(self) -> None:
        if not self.begun:
            self._io()
            self.conn.execute("BEGIN IMMEDIATE")
            self.begun = True

    def append(self, session_id: str, operations: Sequence[NewOperation]) -> list[int]:
        """Buffer ``operations`` with the session's next sequence numbers.

        This runs on the writer thread holding the GIL while the event loop may be
        waiting for it, so the common case (known session, one operation) is kept short.
        """
        writer = self.writer
        key = (
            self.keys.get(session_id)
            or writer.keys.get(session_id)
            or writer.session_key(self, session_id)
        )
        first = (
            self.next_seq.get(session_id)
            or writer.next_seq.get(session_id)
            or writer.next_sequence(self, session_id, key)
        )
        if len(operations) == 1:
            op_id, op_type, payload_json, state, created_at = operations[0]
            self.params += (key, first, op_id, op_type, payload_json, state.value, created_at)
            self.rows += 1
            self.next_seq[session_id] = first + 1
            return [first]
        params = self.params
        seq = first
        for op_id, op_type, payload_json, state, created_at in operations:
            params += (key, seq, op_id, op_type, payload_json, state.value, created_at)
            seq += 1
        self.rows += seq - first
        self.next_seq[session_id] = seq
        return list(range(first, seq))

    def discard(self) -> None:
        """Forget the buffered rows (their savepoint was rolled back)."""
        self.params = []
        self.rows = 0

    def flush(self) -> None:
        """Insert the buffered rows, in as few statements as possible.

        One multi-row statement instead of ``executemany`` matters on the writer thread:
        sqlite3 releases the GIL around every step, and each time it wants it back it
        queues behind the event loop, which lets go of the GIL only when it goes idle.
        """
        rows, params = self.rows, self.params
        if not rows:
            return
        self.discard()
        if not self.begun and rows > _ROWS_PER_INSERT:
            self.begin()  # several statements: they need a transaction around them
        self._io()
        for start in range(0, rows, _ROWS_PER_INSERT):
            count = min(_ROWS_PER_INSERT, rows - start)
            chunk = params if count == rows else params[start * 7 : (start + count) * 7]
            self.conn.execute(_insert_sql(count), chunk)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        self.begin()
        self.flush()
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, params: list[tuple[Any, ...]]) -> None:
        self.begin()
        self.flush()
        self.conn.executemany(sql, params)


WriteFn = Callable[[Txn], Any]


class _RequestFailedError(Exception):
    """A request of an optimistic batch raised: retry the batch with isolation."""


#: A queued write: the caller's future, then either a function run inside the
#: transaction, or None with the session id and operations of an append.
Request = tuple["asyncio.Future[Any]", WriteFn | None, str, Sequence[NewOperation]]
Outcome = tuple[bool, Any]  # (True, result) or (False, exception)


class GroupCommitWriter:
    """Queues write requests; the connection thread commits what is queued, batch by batch.

    Group commit is driven from the connection thread: a *drain* runs there while
    there is work, and each time a transaction commits it takes everything queued
    meanwhile as the next one, without waiting for the event loop. The loop only
    appends requests (starting a drain when none runs) and, when told a batch committed,
    wakes its callers, each of whom resumes only after the commit that holds its rows.
    So one hop and one fsync serve a whole batch, the next batch commits while the loop
    serves the previous one, and a batch's callers are woken by one callback.

    ``_pending``, ``_running`` and ``_idle`` are shared with the thread, under ``_lock``.
    The per-session caches are touched only on the connection thread.
    """

    def __init__(
        self,
        thread: WriterThread,
        *,
        location: str,
        translate: Callable[[BaseException, str], BaseException],
    ) -> None:
        self._thread = thread
        self._location = location
        self._translate = translate
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._pending: list[Request] = []
        self._running = False  # a drain is queued or running on the thread
        self._idle: asyncio.Future[None] | None = None  # set by aclose, woken by the drain
        self._closed = False
        # per-session caches of committed state, touched only on the connection thread
        self.keys: dict[str, int] = {}  # session_id -> sessions.seq
        self.next_seq: dict[str, int] = {}  # session_id -> next sequence number

    def submit(self, fn: WriteFn) -> asyncio.Future[Any]:
        """Queue ``fn`` to run in a transaction; the future resolves once it committed."""
        future = self._loop.create_future()
        self._queue((future, fn, "", ()))
        return future

    def append(self, session_id: str, operations: Sequence[NewOperation]) -> asyncio.Future[Any]:
        """Queue an append; the future resolves to its sequence numbers once committed."""
        future = self._loop.create_future()
        self._queue((future, None, session_id, operations))
        return future

    def _queue(self, request: Request) -> None:
        if self._closed:
            raise JournalClosedError(f"the journal at {self._location} is closed")
        with self._lock:
            self._pending.append(request)
            if self._running:
                return  # the drain on the thread will take it
            self._running = True
        try:
            self._thread.post(self._drain_queue)
        except BaseException as exc:  # the connection is gone: nothing will run
            with self._lock:
                batch, self._pending = self._pending, []
                self._running = False
            self._committed(batch, [(False, exc)] * len(batch))

    async def aclose(self) -> None:
        """Wait until everything submitted is committed; refuse new requests."""
        self._closed = True
        while True:
            with self._lock:
                if not self._running and not self._pending:
                    return
                if self._idle is None:
                    self._idle = self._loop.create_future()
                idle = self._idle
            await asyncio.shield(idle)

    def _committed(self, batch: list[Request], outcomes: list[Outcome]) -> None:
        """Wake the callers of a batch (on the loop, called from the thread)."""
        translate = self._translate
        for request, (ok, value) in zip(batch, outcomes, strict=True):
            future = request[0]
            if future.done():  # the caller was cancelled
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(translate(value, "writing"))

    @staticmethod
    def _wake(idle: asyncio.Future[None]) -> None:
        if not idle.done():
            idle.set_result(None)

    # -- on the connection thread ---------------------------------------------------

    def _drain_queue(self) -> None:
        """Commit queued requests, batch after batch, until the queue is empty.

        Two rules keep the event loop and this thread out of each other's way; both come
        from the GIL, which this thread gets back after each SQLite call only when the
        loop lets go of it, in practice when the loop goes idle:

        * The results of a batch are handed to the loop (one callback) only once the
          next batch is built, just before its first statement, and as the last thing
          before this thread blocks. Woken earlier, the loop would wait for the GIL
          while this thread builds rows, and pay a second wake-up for it.
        * A large batch takes at most half of the requests in flight (those it holds
          plus those whose results are being handed over); the rest wait for the next
          commit. The loop then always has about as many callers to serve as the disk
          has rows to commit, and the two overlap. Without this, once every caller is
          in one batch (or the split is lopsided), the loop and the disk take turns.
        """
        done: tuple[list[Request], list[Outcome]] | None = None  # not yet handed over
        batch: list[Request] = []
        try:
            while True:
                with self._lock:
                    batch = self._pending
                    if not batch:
                        self._running = False
                        idle, self._idle = self._idle, None
                    elif len(batch) >= _SPLIT_AT and len(batch) > (
                        share := (len(batch) + (len(done[0]) if done else 0) + 1) // 2
                    ):
                        batch, self._pending = batch[:share], batch[share:]
                    else:
                        self._pending = []
                if not batch:
                    if done is not None:
                        self._publish(*done)
                    if idle is not None:
                        self._loop.call_soon_threadsafe(self._wake, idle)  # aclose() waits
                    return
                # A request whose caller was cancelled before it was sent is dropped.
                batch = [request for request in batch if not request[0].done()]

                def publish_done() -> None:
                    nonlocal done
                    if done is not None:
                        self._publish(*done)
                        done = None

                try:
                    outcomes = self._apply(batch, publish_done)
                except BaseException as exc:  # the whole transaction failed: tell every caller
                    outcomes = [(False, exc)] * len(batch)
                publish_done()  # if the transaction never reached the database
                done, batch = (batch, outcomes), []
        except BaseException as exc:  # a bug here: never leave a caller waiting forever
            logger.error("the journal writer stopped unexpectedly", exc_info=exc)
            with self._lock:
                stranded = batch + self._pending
                self._pending = []
                self._running = False
                idle, self._idle = self._idle, None
            with contextlib.suppress(RuntimeError):  # the loop is closed
                if done is not None:
                    self._loop.call_soon_threadsafe(self._committed, *done)
                self._loop.call_soon_threadsafe(
                    self._committed, stranded, [(False, exc)] * len(stranded)
                )
                if idle is not None:
                    self._loop.call_soon_threadsafe(self._wake, idle)

    def _publish(self, batch: list[Request], outcomes: list[Outcome]) -> None:
        if batch:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                self._loop.call_soon_threadsafe(self._committed, batch, outcomes)

    def _apply(self, batch: list[Request], before_io: Callable[[], None]) -> list[Outcome]:
        conn = self._thread.raw
        assert conn is not None  # noqa: S101  (set by start())
        try:
            return self._transaction(conn, batch, isolate=False, before_io=before_io)
        except _RequestFailedError as failed:
            if len(batch) == 1:
                return [(False, failed.__cause__)]
            return self._transaction(conn, batch, isolate=True, before_io=before_io)

    def _transaction(
        self,
        conn: sqlite3.Connection,
        batch: list[Request],
        *,
        isolate: bool,
        before_io: Callable[[], None] | None = None,
    ) -> list[Outcome]:
        txn = Txn(conn, self, before_io)
        outcomes: list[Outcome] = []
        try:
            if not isolate:
                try:
                    for _, fn, session_id, operations in batch:
                        if fn is None:
                            outcomes.append((True, txn.append(session_id, operations)))
                        else:
                            outcomes.append((True, fn(txn)))
                    txn.flush()  # without a BEGIN so far, this is the whole transaction
                except sqlite3.OperationalError:
                    # The database refused the transaction itself (locked past the busy
                    # timeout, I/O error, disk full): no request is to blame, and a retry
                    # would only wait for the lock again.
                    raise
                except Exception as exc:
                    raise _RequestFailedError from exc
            else:
                txn.begin()
                for _, fn, session_id, operations in batch:
                    conn.execute("SAVEPOINT request")
                    saved = dict(txn.next_seq), dict(txn.keys)
                    try:
                        if fn is None:
                            outcomes.append((True, txn.append(session_id, operations)))
                        else:
                            outcomes.append((True, fn(txn)))
                        txn.flush()
                    except Exception as exc:
                        txn.discard()
                        conn.execute("ROLLBACK TO request")
                        txn.next_seq, txn.keys = saved
                        outcomes.append((False, exc))
                    conn.execute("RELEASE request")
            if txn.begun:
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.keys.update(txn.keys)
        self.next_seq.update(txn.next_seq)
        for session_id in txn.finished:
            self.keys.pop(session_id, None)
            self.next_seq.pop(session_id, None)
        return outcomes

    def session_key(self, txn: Txn, session_id: str) -> int:
        """The integer key of a session inside ``txn``.

        :raises SessionNotFoundError: there is no such session.
        """
        key = self.known_session_key(txn, session_id)
        if key is None:
            raise SessionNotFoundError(session_id)
        return key

    def known_session_key(self, txn: Txn, session_id: str) -> int | None:
        """The integer key of a session inside ``txn``, or None if there is none."""
        key = txn.keys.get(session_id) or self.keys.get(session_id)
        if key is None:
            row = txn.execute(
                "SELECT seq FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
            if row is None:
                return None
            key = txn.keys[session_id] = int(row[0])
        return key

    def next_sequence(self, txn: Txn, session_id: str, key: int) -> int:
        """The next sequence number of a session inside ``txn`` (gap-free)."""
        seq = txn.next_seq.get(session_id) or self.next_seq.get(session_id)
        if seq is None:
            row = txn.execute(
                "SELECT COALESCE(MAX(sequence), 0) + 1 FROM operations WHERE session_key = ?",
                (key,),
            ).fetchone()
            seq = int(row[0])
        return seq
