"""SQLiteStorage: the embedded journal, on aiosqlite. The only module importing aiosqlite.

Design, in short:

* Two connections: a writer and a reader (``query_only``). WAL lets the reader see
  every committed write without waiting behind the writer's fsyncs.
* Group commit: writes of concurrent callers queue up while the writer is busy; on the
  connection's thread, a drain commits what is queued as one transaction, then what was
  queued meanwhile, and so on, so a batch costs one fsync, a busy period one thread hop,
  and every caller resumes only after the commit that holds its rows. A batch of plain
  appends is a single multi-row INSERT (SQLite commits a lone statement atomically). A
  request that fails is isolated (the batch is retried with a savepoint per request) so
  it cannot sink its neighbours. ``docs/benchmarks.md`` explains the measurements behind
  the details (the GIL shapes most of them).
* Every pragma is set on every connection; the schema is checked before anything is
  written, so a foreign file is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Collection, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite

from ..._errors import (
    JournalBusyError,
    JournalClosedError,
    JournalError,
    JournalOpenError,
    RetractError,
    SessionNotFoundError,
    StorageError,
)
from .._encoding import decode
from .._records import (
    STATE_BY_VALUE,
    TERMINAL_STATUSES,
    OperationRecord,
    OperationState,
    Owner,
    SessionRecord,
    SessionStatus,
    from_timestamp,
)
from ._protocol import NewOperation, OperationUpdate
from ._sqlite_schema import Synchronous, preallocate_wal, prepare_connection

__all__ = ("SQLiteStorage",)

logger = logging.getLogger("retract")

T = TypeVar("T")

_SESSION_COLUMNS = (
    "session_id, created_at, status, context, completed_at, error, undo_count, "
    "owner_token, owner_pid, owner_host, owner_started"
)
_OPERATION_COLUMNS = "op_id, sequence, op_type, payload, created_at, state, error, updated_at"
_SESSION_KEY = "(SELECT seq FROM sessions WHERE session_id = ?)"
_SETTLED = f"('{OperationState.UNDONE}', '{OperationState.SKIPPED}')"
_MARK_UNDOING = (
    "UPDATE operations SET state = ?, updated_at = ?"  # noqa: S608  (only constants)
    f" WHERE session_key = ? AND sequence BETWEEN ? AND ? AND state NOT IN {_SETTLED}"
)


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
    """An INSERT of ``rows`` operations in one statement (see :meth:`_Txn.flush`)."""
    return _INSERT_OPERATIONS + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * rows)


class _Txn:
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
        writer: _GroupCommitWriter,
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


_WriteFn = Callable[[_Txn], Any]


class _RequestFailedError(Exception):
    """A request of an optimistic batch raised: retry the batch with isolation."""


class _ConnectionThread:
    """Runs plain functions on an aiosqlite connection's own thread, one hop per call.

    aiosqlite has no public call for this; ``Connection._execute`` (present since its
    first releases) is the private name we use, confined to this class and pinned by
    ``tests/journal/storage/test_sqlite.py``, along with the worker queue ``_tx`` in
    :meth:`post`. It turns a BEGIN/INSERT.../COMMIT sequence from N hops into one, which
    is what makes group commit pay off.
    """

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn
        self._execute = cast("Callable[..., Coroutine[Any, Any, Any]]", conn._execute)
        self.raw: sqlite3.Connection | None = None
        self.closed = False
        self._put: Callable[[tuple[None, Callable[[], None]]], None] | None = None

    async def start(self) -> None:
        # aiosqlite's worker is not a daemon thread: a journal left unclosed would hang
        # interpreter exit. SQLite commits are atomic, so a daemon is safe to stop.
        thread = getattr(self.conn, "_thread", None)
        if isinstance(thread, threading.Thread) and not thread.is_alive():
            thread.daemon = True
        await self.conn
        self.raw = await self._execute(lambda: self.conn._conn)
        put = getattr(getattr(self.conn, "_tx", None), "put_nowait", None)
        self._put = put if callable(put) else None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return cast("T", await self._execute(fn, *args))

    def start_call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Queue ``fn`` on the thread *now* and return a future of its result.

        An awaited call (or a task) would queue it only at the next loop iteration,
        after every callback already scheduled. Stepping the coroutine by hand here (what
        Python 3.12 calls an eager task) puts the work on the thread at once.
        """
        result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        coro = self._execute(fn, *args)

        def step(_: object = None) -> None:
            try:
                awaited = coro.send(None)
            except StopIteration as stop:
                result.set_result(stop.value)
            except BaseException as exc:  # delivered to the awaiting side, not raised here
                result.set_exception(exc)
            else:
                awaited.add_done_callback(step)

        step()
        return result

    def post(self, fn: Callable[[], None]) -> None:
        """Queue ``fn`` on the thread now, without a result: nothing is sent back.

        The writer's drain reports to the loop itself; the completion that
        :meth:`start_call` delivers would cost the loop an extra wake-up and three
        callbacks per drain, which is per record for a sequential writer. ``fn`` must
        not raise (aiosqlite drops the errors of such calls). This puts the call straight
        on aiosqlite's private worker queue (``_tx``, present with this layout since 0.20);
        should that change, it falls back to :meth:`start_call`.

        :raises JournalClosedError: the connection was closed.
        """
        if self.raw is None or self.closed:
            raise JournalClosedError("the journal's connection is closed")
        if self._put is not None:
            self._put((None, fn))
        else:  # pragma: no cover - a future aiosqlite without the worker queue
            self.start_call(fn).add_done_callback(_log_lost_call)

    async def close(self) -> None:
        self.closed = True
        await self.conn.close()


def _log_lost_call(call: asyncio.Future[Any]) -> None:  # pragma: no cover - see post()
    if not call.cancelled() and call.exception() is not None:
        logger.error("a call on the journal's connection failed", exc_info=call.exception())


#: A queued write: the caller's future, then either a function run inside the
#: transaction, or None with the session id and operations of an append.
_Request = tuple["asyncio.Future[Any]", _WriteFn | None, str, Sequence[NewOperation]]
_Outcome = tuple[bool, Any]  # (True, result) or (False, exception)


class _GroupCommitWriter:
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

    def __init__(self, storage: SQLiteStorage, thread: _ConnectionThread) -> None:
        self._storage = storage
        self._thread = thread
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._pending: list[_Request] = []
        self._running = False  # a drain is queued or running on the thread
        self._idle: asyncio.Future[None] | None = None  # set by aclose, woken by the drain
        self._closed = False
        # per-session caches of committed state, touched only on the connection thread
        self.keys: dict[str, int] = {}  # session_id -> sessions.seq
        self.next_seq: dict[str, int] = {}  # session_id -> next sequence number

    def submit(self, fn: _WriteFn) -> asyncio.Future[Any]:
        """Queue ``fn`` to run in a transaction; the future resolves once it committed."""
        future = self._loop.create_future()
        self._queue((future, fn, "", ()))
        return future

    def append(self, session_id: str, operations: Sequence[NewOperation]) -> asyncio.Future[Any]:
        """Queue an append; the future resolves to its sequence numbers once committed."""
        future = self._loop.create_future()
        self._queue((future, None, session_id, operations))
        return future

    def _queue(self, request: _Request) -> None:
        if self._closed:
            raise JournalClosedError(f"the journal at {self._storage.location} is closed")
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

    def _committed(self, batch: list[_Request], outcomes: list[_Outcome]) -> None:
        """Wake the callers of a batch (on the loop, called from the thread)."""
        translate = self._storage.translate
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
        done: tuple[list[_Request], list[_Outcome]] | None = None  # not yet handed over
        batch: list[_Request] = []
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

    def _publish(self, batch: list[_Request], outcomes: list[_Outcome]) -> None:
        if batch:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                self._loop.call_soon_threadsafe(self._committed, batch, outcomes)

    def _apply(self, batch: list[_Request], before_io: Callable[[], None]) -> list[_Outcome]:
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
        batch: list[_Request],
        *,
        isolate: bool,
        before_io: Callable[[], None] | None = None,
    ) -> list[_Outcome]:
        txn = _Txn(conn, self, before_io)
        outcomes: list[_Outcome] = []
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

    def session_key(self, txn: _Txn, session_id: str) -> int:
        """The integer key of a session inside ``txn``.

        :raises SessionNotFoundError: there is no such session.
        """
        key = txn.keys.get(session_id) or self.keys.get(session_id)
        if key is None:
            row = txn.execute(
                "SELECT seq FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
            if row is None:
                raise SessionNotFoundError(session_id)
            key = txn.keys[session_id] = int(row[0])
        return key

    def next_sequence(self, txn: _Txn, session_id: str, key: int) -> int:
        """The next sequence number of a session inside ``txn`` (gap-free)."""
        seq = txn.next_seq.get(session_id) or self.next_seq.get(session_id)
        if seq is None:
            row = txn.execute(
                "SELECT COALESCE(MAX(sequence), 0) + 1 FROM operations WHERE session_key = ?",
                (key,),
            ).fetchone()
            seq = int(row[0])
        return seq


class SQLiteStorage:
    """The embedded journal storage: one SQLite file in WAL mode.

    :param path: the database file; created (with its schema) when missing. Its
        directory must exist and be writable (SQLite keeps ``-wal`` and ``-shm`` files
        beside it).
    :param synchronous: ``"FULL"`` (default): every commit is fsynced, so a committed
        record survives power loss. ``"NORMAL"``: commits are fsynced only at
        checkpoints; a process crash loses nothing, a power loss may lose the last
        commits. Several times faster for sequential writers.
    :param busy_timeout: seconds to wait for another process's write lock before
        raising :class:`~retract.JournalBusyError`.

    Open it by using the :class:`~retract.Journal` that owns it as an async context
    manager. Use one journal per file per process: each open storage has its own writer.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "FULL",
        busy_timeout: float = 5.0,
    ) -> None:
        if str(path) in {"", ":memory:"} or str(path).startswith("file::memory:"):
            raise ValueError(
                "SQLiteStorage needs a file path; use InMemoryStorage() for a journal "
                "that lives in memory"
            )
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', not {synchronous!r}")
        if busy_timeout < 0:
            raise ValueError(f"busy_timeout must be >= 0 seconds, not {busy_timeout!r}")
        self.path = Path(path)
        self.synchronous: Synchronous = synchronous
        self.busy_timeout = float(busy_timeout)
        self._writer_thread: _ConnectionThread | None = None
        self._reader_thread: _ConnectionThread | None = None
        self._reader: aiosqlite.Connection | None = None
        self._writer: _GroupCommitWriter | None = None
        self._state = "new"

    def __repr__(self) -> str:
        return f"SQLiteStorage({str(self.path)!r}, synchronous={self.synchronous!r})"

    @property
    def location(self) -> str:
        """The database path."""
        return str(self.path)

    # -- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        """Open both connections and check or create the schema.

        If the awaiting task is cancelled, everything opened so far is closed again.
        """
        if self._state != "new":
            raise JournalClosedError(
                f"{self!r} was already opened; create a new SQLiteStorage to open it again"
            )
        self._state = "opening"
        self._check_directory()
        try:
            writer = _ConnectionThread(aiosqlite.connect(self.path, isolation_level=None))
            self._writer_thread = writer
            await writer.start()
            await writer.call(functools.partial(self._prepare, writer.raw, create=True))
            reader = _ConnectionThread(aiosqlite.connect(self.path, isolation_level=None))
            self._reader_thread = reader
            await reader.start()
            await reader.call(functools.partial(self._prepare, reader.raw, create=False))
        except BaseException as exc:
            await self._close_connections()
            self._state = "closed"
            if isinstance(exc, Exception):
                raise self.translate(exc, "opening the journal") from exc
            raise
        self._reader = reader.conn  # reads use aiosqlite's public calls
        self._writer = _GroupCommitWriter(self, writer)
        self._state = "open"

    async def aclose(self) -> None:
        """Commit what is queued, then close both connections. Idempotent.

        If the awaiting task is cancelled, closing still completes (shielded).
        """
        if self._state == "closed":
            return
        self._state = "closed"
        closing = asyncio.ensure_future(self._finish())
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            await asyncio.shield(closing)
            raise

    async def _finish(self) -> None:
        if self._writer is not None:
            await self._writer.aclose()
        await self._close_connections()

    async def _close_connections(self) -> None:
        for thread in (self._reader_thread, self._writer_thread):
            if thread is None:
                continue
            # closing a broken connection: nothing is left to do about an error
            with contextlib.suppress(Exception):
                await thread.close()
        self._reader = None
        self._reader_thread = None
        self._writer_thread = None

    def _check_directory(self) -> None:
        directory = self.path.parent
        if not directory.is_dir():
            raise JournalOpenError(
                f"cannot open journal {self.location}: directory {directory} does not "
                "exist; create it first or choose another path"
            )
        if self.path.is_dir():
            raise JournalOpenError(
                f"cannot open journal {self.location}: it is a directory; give a file path"
            )

    def _prepare(self, conn: sqlite3.Connection | None, *, create: bool) -> None:
        assert conn is not None  # noqa: S101
        prepare_connection(
            conn,
            self.location,
            synchronous=self.synchronous,
            busy_timeout=self.busy_timeout,
            create=create,
        )
        if create:
            preallocate_wal(conn, f"{self.path}-wal")

    def translate(self, exc: BaseException, action: str) -> BaseException:
        """Map a driver error to the library's errors; others pass through unchanged."""
        if isinstance(exc, RetractError | asyncio.CancelledError) or not isinstance(exc, Exception):
            return exc
        if isinstance(exc, ValueError) and "closed" in str(exc).lower():
            return JournalClosedError(f"the journal at {self.location} is closed")
        if not isinstance(exc, sqlite3.Error):
            return exc
        message = str(exc)
        where = f"journal {self.location}"
        if "locked" in message or "busy" in message:
            error: JournalError = JournalBusyError(
                f"{where} stayed locked by another process for more than "
                f"{self.busy_timeout:g}s while {action}; retry later or raise busy_timeout"
            )
        elif "readonly" in message or "read-only" in message:
            error = JournalOpenError(
                f"{where} cannot be written while {action}: the file or its directory is "
                "read-only (SQLite also writes -wal and -shm files beside it); make them "
                "writable or choose another path"
            )
        elif "unable to open" in message:
            error = JournalOpenError(
                f"cannot open {where}: SQLite could not open or create the file or its "
                "-wal/-shm companions; check that the directory is writable"
            )
        else:
            error = StorageError(f"{where}: {action} failed: {message}")
        error.__cause__ = exc
        return error

    # -- helpers --------------------------------------------------------------------

    def _write(self, fn: _WriteFn) -> asyncio.Future[Any]:
        """Queue ``fn`` for the next group commit; await the result to know it committed."""
        if self._writer is None or self._state != "open":
            raise JournalClosedError(self._not_open())
        return self._writer.submit(fn)

    async def _read(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        if self._reader is None or self._state != "open":
            raise JournalClosedError(self._not_open())
        try:
            rows = await self._reader.execute_fetchall(sql, params)
        except Exception as exc:
            raise self.translate(exc, "reading") from exc
        return cast("list[tuple[Any, ...]]", rows)

    async def _read_operations(
        self, session_id: str, sql: str, params: Sequence[Any]
    ) -> list[OperationRecord]:
        """Run ``sql`` and build the operation records, both on the reader's thread.

        Building the records is most of the cost of a read (JSON, datetimes); done on the
        reader's thread it mostly happens while the loop waits for something else (an
        undo waits for its progress commits), instead of on the loop.
        """
        thread = self._reader_thread
        if thread is None or thread.raw is None or self._state != "open":
            raise JournalClosedError(self._not_open())
        raw = thread.raw

        def fetch() -> list[OperationRecord]:
            return [_operation(session_id, row) for row in raw.execute(sql, params)]

        try:
            return await thread.call(fetch)
        except Exception as exc:
            raise self.translate(exc, "reading") from exc

    def _not_open(self) -> str:
        if self._state == "closed":
            return f"the journal at {self.location} is closed"
        return (
            f"the journal at {self.location} is not open; use `async with Journal(...)` "
            "or `async with open_journal(...)`"
        )

    # -- writes ---------------------------------------------------------------------

    async def create_session(
        self, session_id: str, context_json: str, owner: Owner, created_at: float
    ) -> None:
        """Insert a RUNNING session."""

        def insert(txn: _Txn) -> None:
            cursor = txn.execute(
                "INSERT INTO sessions (session_id, created_at, status, context, owner_token,"
                " owner_pid, owner_host, owner_started) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    created_at,
                    SessionStatus.RUNNING.value,
                    context_json,
                    owner.token,
                    owner.pid,
                    owner.host,
                    owner.started_at,
                ),
            )
            assert cursor.lastrowid is not None  # noqa: S101
            txn.keys[session_id] = cursor.lastrowid
            txn.next_seq[session_id] = 1

        await self._write(insert)

    async def update_session(
        self,
        session_id: str,
        *,
        status: SessionStatus,
        at: float,
        error: str | None = None,
        owner: Owner | None = None,
        expect_statuses: Collection[SessionStatus] | None = None,
        expect_owner: str | None = None,
        count_undo: bool = False,
        settle_intents: bool = False,
    ) -> bool:
        """Compare-and-set a session's status (see :class:`~retract.journal.Storage`)."""
        sets = ["status = ?"]
        params: list[Any] = [status.value]
        if status in TERMINAL_STATUSES:
            sets.append("completed_at = ?")
            params.append(at)
        if error is not None:
            sets.append("error = ?")
            params.append(error)
        if owner is not None:
            sets.append("owner_token = ?, owner_pid = ?, owner_host = ?, owner_started = ?")
            params += [owner.token, owner.pid, owner.host, owner.started_at]
        if count_undo:
            sets.append("undo_count = undo_count + 1")
        where = ["session_id = ?"]
        params.append(session_id)
        if expect_statuses is not None:
            where.append(f"status IN ({', '.join('?' * len(expect_statuses))})")
            params += [s.value for s in expect_statuses]
        if expect_owner is not None:
            where.append("owner_token = ?")
            params.append(expect_owner)
        sql = f"UPDATE sessions SET {', '.join(sets)} WHERE {' AND '.join(where)}"  # noqa: S608

        writer = self._writer

        def update(txn: _Txn) -> bool:
            assert writer is not None  # noqa: S101
            if txn.execute(sql, params).rowcount == 0:
                return False
            if settle_intents:
                txn.execute(
                    "UPDATE operations SET state = ?, updated_at = ?"
                    " WHERE session_key = ? AND state = ?",
                    (
                        OperationState.IN_DOUBT.value,
                        at,
                        writer.session_key(txn, session_id),
                        OperationState.INTENT.value,
                    ),
                )
            if status in TERMINAL_STATUSES:
                txn.finished.add(session_id)
            return True

        return bool(await self._write(update))

    async def append_operations(
        self, session_id: str, operations: Sequence[NewOperation]
    ) -> list[int]:
        """Append operations with gap-free sequence numbers."""
        if self._writer is None or self._state != "open":
            raise JournalClosedError(self._not_open())
        if type(operations) is not tuple:
            operations = tuple(operations)  # read on the connection thread: take a copy
        return cast("list[int]", await self._writer.append(session_id, operations))

    async def update_operations(self, updates: Sequence[OperationUpdate], at: float) -> None:
        """Apply operation state changes in one transaction."""
        await self._write(self._operation_updates(updates, at))

    def _operation_updates(
        self, updates: Sequence[OperationUpdate], at: float
    ) -> Callable[[_Txn], None]:
        writer = self._writer

        def update(txn: _Txn) -> None:
            assert writer is not None  # noqa: S101
            plain: list[tuple[Any, ...]] = []
            with_payload: list[tuple[Any, ...]] = []
            for u in updates:
                try:
                    key = writer.session_key(txn, u.session_id)
                except SessionNotFoundError:
                    continue  # like an UPDATE matching no row
                if u.payload_json is None:
                    plain.append((u.state.value, u.error, at, key, u.sequence))
                else:
                    with_payload.append(
                        (u.state.value, u.error, at, u.payload_json, key, u.sequence)
                    )
            if plain:
                txn.executemany(
                    "UPDATE operations SET state = ?, error = ?, updated_at = ?"
                    " WHERE session_key = ? AND sequence = ?",
                    plain,
                )
            if with_payload:
                txn.executemany(
                    "UPDATE operations SET state = ?, error = ?, updated_at = ?, payload = ?"
                    " WHERE session_key = ? AND sequence = ?",
                    with_payload,
                )

        return update

    async def record_undo_progress(
        self,
        session_id: str,
        *,
        outcomes: Sequence[OperationUpdate],
        undone: tuple[int, int] | None,
        begin: tuple[int, int] | None,
        at: float,
    ) -> None:
        """One step of an undo's progress (see the Storage protocol)."""
        writer = self._writer
        apply_outcomes = self._operation_updates(outcomes, at)

        def progress(txn: _Txn) -> None:
            assert writer is not None  # noqa: S101
            apply_outcomes(txn)
            key = writer.session_key(txn, session_id)
            if undone is not None:
                txn.execute(
                    "UPDATE operations SET state = ?, error = NULL, updated_at = ?"
                    " WHERE session_key = ? AND sequence BETWEEN ? AND ? AND state = ?",
                    (OperationState.UNDONE.value, at, key, *undone, OperationState.UNDOING.value),
                )
            if begin is not None:
                txn.execute(_MARK_UNDOING, (OperationState.UNDOING.value, at, key, *begin))

        await self._write(progress)

    # -- reads ----------------------------------------------------------------------

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """One session, or None."""
        rows = await self._read(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = ?",  # noqa: S608
            (session_id,),
        )
        return _session(rows[0]) if rows else None

    async def list_sessions(
        self,
        *,
        limit: int | None = None,
        statuses: Collection[SessionStatus] | None = None,
        id_prefix: str | None = None,
    ) -> list[SessionRecord]:
        """Sessions, newest first."""
        where: list[str] = []
        params: list[Any] = []
        if statuses is not None:
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params += [s.value for s in statuses]
        if id_prefix is not None:
            where.append("substr(session_id, 1, ?) = ?")
            params += [len(id_prefix), id_prefix]
        sql = f"SELECT {_SESSION_COLUMNS} FROM sessions"  # noqa: S608
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_session(row) for row in await self._read(sql, params)]

    async def get_operations(self, session_id: str) -> list[OperationRecord]:
        """All operations of a session, in order."""
        return await self._read_operations(
            session_id,
            f"SELECT {_OPERATION_COLUMNS} FROM operations"  # noqa: S608
            f" WHERE session_key = {_SESSION_KEY} ORDER BY sequence",
            (session_id,),
        )

    async def operations_page(
        self, session_id: str, *, before: int | None, limit: int, pending_only: bool
    ) -> list[OperationRecord]:
        """A page of operations, newest first."""
        sql = f"SELECT {_OPERATION_COLUMNS} FROM operations WHERE session_key = {_SESSION_KEY}"  # noqa: S608
        params: list[Any] = [session_id]
        if before is not None:
            sql += " AND sequence < ?"
            params.append(before)
        if pending_only:
            sql += f" AND state NOT IN {_SETTLED}"
        sql += " ORDER BY sequence DESC LIMIT ?"
        params.append(limit)
        return await self._read_operations(session_id, sql, params)

    async def pending_summary(self, session_id: str) -> tuple[int, set[str]]:
        """Count and types of the operations that still need undo."""
        rows = await self._read(
            "SELECT op_type, COUNT(*) FROM operations"  # noqa: S608
            f" WHERE session_key = {_SESSION_KEY} AND state NOT IN {_SETTLED} GROUP BY op_type",
            (session_id,),
        )
        return sum(int(count) for _, count in rows), {str(op_type) for op_type, _ in rows}


def _session(row: tuple[Any, ...]) -> SessionRecord:
    (sid, created, status, context, completed, error, undo_count, token, pid, host, started) = row
    return SessionRecord(
        session_id=sid,
        created_at=from_timestamp(created),  # type: ignore[arg-type]
        status=SessionStatus(status),
        context=decode(context),
        completed_at=from_timestamp(completed),
        error=error,
        undo_count=undo_count,
        owner=None if token is None else Owner(token, pid, host, started),
    )


def _operation(session_id: str, row: tuple[Any, ...]) -> OperationRecord:
    op_id, sequence, op_type, payload, created, state, error, updated = row
    return OperationRecord(
        op_id,
        session_id,
        sequence,
        op_type,
        decode(payload),
        datetime.fromtimestamp(created, UTC),
        STATE_BY_VALUE[state],
        error,
        None if updated is None else datetime.fromtimestamp(updated, UTC),
    )
