"""SQLiteStorage: the embedded journal, on aiosqlite. The only module importing aiosqlite.

Design, in short:

* Two connections: a writer and a reader (``query_only``). WAL lets the reader see
  every committed write without waiting behind the writer's fsyncs.
* Group commit: writes of concurrent callers queue up while the writer is busy; the next
  transaction takes all of them (``BEGIN IMMEDIATE`` ... ``COMMIT``) in *one* call on the
  connection's thread, so a batch costs one thread hop and one fsync, and every caller
  resumes only after the commit that holds its rows. A request that fails is isolated
  (the batch is retried with a savepoint per request) so it cannot sink its neighbours.
* Every pragma is set on every connection; the schema is checked before anything is
  written, so a foreign file is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
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


_INSERT_OPERATION = (
    "INSERT INTO operations (session_key, sequence, op_id, op_type, payload, state, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


class _Txn:
    """Scratch space of one group-commit transaction, shared by its requests.

    Appended operations are buffered and inserted with one ``executemany`` for the
    whole batch; any other statement flushes them first, so the order of requests
    is kept. Its caches reach the writer's only when the transaction commits.
    """

    __slots__ = ("conn", "finished", "keys", "next_seq", "rows")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.keys: dict[str, int] = {}  # session_id -> sessions.seq
        self.next_seq: dict[str, int] = {}  # session_id -> next sequence number
        self.finished: set[str] = set()  # sessions that ended: drop them from the caches
        self.rows: list[tuple[Any, ...]] = []  # operations to insert

    def flush(self) -> None:
        if self.rows:
            rows, self.rows = self.rows, []
            self.conn.executemany(_INSERT_OPERATION, rows)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        self.flush()
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, params: list[tuple[Any, ...]]) -> None:
        self.flush()
        self.conn.executemany(sql, params)


_WriteFn = Callable[[_Txn], Any]


class _RequestFailedError(Exception):
    """A request of an optimistic batch raised: retry the batch with isolation."""


class _ConnectionThread:
    """Runs plain functions on an aiosqlite connection's own thread, one hop per call.

    aiosqlite has no public call for this; ``Connection._execute`` (present since its
    first releases) is the one private name we use, confined to this class and pinned
    by ``tests/journal/storage/test_sqlite.py``. It turns a BEGIN/INSERT.../COMMIT
    sequence from N hops into one, which is what makes group commit pay off.
    """

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn
        self._execute = cast("Callable[..., Coroutine[Any, Any, Any]]", conn._execute)
        self.raw: sqlite3.Connection | None = None

    async def start(self) -> None:
        # aiosqlite's worker is not a daemon thread: a journal left unclosed would hang
        # interpreter exit. SQLite commits are atomic, so a daemon is safe to stop.
        thread = getattr(self.conn, "_thread", None)
        if isinstance(thread, threading.Thread) and not thread.is_alive():
            thread.daemon = True
        await self.conn
        self.raw = await self._execute(lambda: self.conn._conn)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return cast("T", await self._execute(fn, *args))

    def start_call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Queue ``fn`` on the thread *now* and return a future of its result.

        An awaited call (or a task) would queue it only at the next loop iteration,
        after every callback already scheduled. Stepping the coroutine by hand here (what
        Python 3.12 calls an eager task) is what lets a group commit start while the
        loop is still busy with the previous batch's callers.
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

    async def close(self) -> None:
        await self.conn.close()


_Request = tuple[_WriteFn, "asyncio.Future[Any]"]


class _GroupCommitWriter:
    """Queues write requests and commits what is queued in one transaction.

    Only one transaction is in flight at a time; requests made meanwhile form the next
    one. When a batch commits, its callers are woken in two halves with a "kick" in
    between, so that the next transaction (holding what the first half asked for next)
    is committing on the thread while the loop still serves the second half.
    """

    def __init__(self, storage: SQLiteStorage, thread: _ConnectionThread) -> None:
        self._storage = storage
        self._thread = thread
        self._pending: list[_Request] = []
        self._in_flight = False
        self._kick_scheduled = False
        self._idle: asyncio.Future[None] | None = None
        self._closed = False
        # per-session caches, touched only on the connection thread
        self._keys: dict[str, int] = {}
        self._next_seq: dict[str, int] = {}

    async def submit(self, fn: _WriteFn) -> Any:
        if self._closed:
            raise JournalClosedError(f"the journal at {self._storage.location} is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((fn, future))
        if not self._in_flight and not self._kick_scheduled:
            self._kick_scheduled = True
            loop.call_soon(self._kick)
        return await future

    async def aclose(self) -> None:
        """Wait until everything submitted is committed; refuse new requests."""
        self._closed = True
        while self._in_flight or self._pending or self._kick_scheduled:
            if self._idle is None:
                self._idle = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._idle)

    def _kick(self) -> None:
        self._kick_scheduled = False
        if self._in_flight:
            return
        # A request whose caller was cancelled before it was sent is dropped.
        batch = [request for request in self._pending if not request[1].done()]
        self._pending = []
        if not batch:
            self._wake_closer()
            return
        self._in_flight = True
        try:
            commit = self._thread.start_call(self._apply, [fn for fn, _ in batch])
        except BaseException as exc:  # the connection is gone
            self._in_flight = False
            self._fail(batch, exc)
            self._wake_closer()
            return
        commit.add_done_callback(lambda done: self._committed(batch, done))

    def _committed(self, batch: list[_Request], done: asyncio.Future[Any]) -> None:
        self._in_flight = False
        if done.exception() is not None:
            self._fail(batch, done.exception())
            outcomes: list[tuple[bool, Any]] = []
        else:
            outcomes = done.result()
        half = len(outcomes) // 2
        for index, ((_, future), (ok, value)) in enumerate(zip(batch, outcomes, strict=True)):
            if index == half and self._pending is not None:
                self._schedule_kick()
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(self._storage.translate(value, "writing"))
        self._schedule_kick()

    def _schedule_kick(self) -> None:
        if not self._kick_scheduled:
            self._kick_scheduled = True
            asyncio.get_running_loop().call_soon(self._kick)

    def _fail(self, batch: list[_Request], exc: BaseException | None) -> None:
        assert exc is not None  # noqa: S101
        for _, future in batch:
            if not future.done():
                future.set_exception(self._storage.translate(exc, "writing"))

    def _wake_closer(self) -> None:
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
            self._idle = None

    # -- on the connection thread ---------------------------------------------------

    def _apply(self, fns: list[_WriteFn]) -> list[tuple[bool, Any]]:
        conn = self._thread.raw
        assert conn is not None  # noqa: S101  (set by start())
        try:
            return self._transaction(conn, fns, isolate=False)
        except _RequestFailedError as failed:
            if len(fns) == 1:
                return [(False, failed.__cause__)]
            return self._transaction(conn, fns, isolate=True)

    def _transaction(
        self, conn: sqlite3.Connection, fns: list[_WriteFn], *, isolate: bool
    ) -> list[tuple[bool, Any]]:
        txn = _Txn(conn)
        outcomes: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not isolate:
                try:
                    outcomes = [(True, fn(txn)) for fn in fns]
                    txn.flush()
                except Exception as exc:
                    raise _RequestFailedError from exc
            else:
                for fn in fns:
                    conn.execute("SAVEPOINT request")
                    saved = dict(txn.next_seq), dict(txn.keys)
                    try:
                        outcomes.append((True, fn(txn)))
                        txn.flush()
                    except Exception as exc:
                        txn.rows = []
                        conn.execute("ROLLBACK TO request")
                        txn.next_seq, txn.keys = saved
                        outcomes.append((False, exc))
                    conn.execute("RELEASE request")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._keys.update(txn.keys)
        self._next_seq.update(txn.next_seq)
        for session_id in txn.finished:
            self._keys.pop(session_id, None)
            self._next_seq.pop(session_id, None)
        return outcomes

    def session_key(self, txn: _Txn, session_id: str) -> int:
        """The integer key of a session inside ``txn``.

        :raises SessionNotFoundError: there is no such session.
        """
        key = txn.keys.get(session_id) or self._keys.get(session_id)
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
        seq = txn.next_seq.get(session_id) or self._next_seq.get(session_id)
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

    async def _write(self, fn: _WriteFn) -> Any:
        if self._writer is None or self._state != "open":
            raise JournalClosedError(self._not_open())
        return await self._writer.submit(fn)

    async def _read(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        if self._reader is None or self._state != "open":
            raise JournalClosedError(self._not_open())
        try:
            rows = await self._reader.execute_fetchall(sql, params)
        except Exception as exc:
            raise self.translate(exc, "reading") from exc
        return cast("list[tuple[Any, ...]]", rows)

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
        writer = self._writer

        def append(txn: _Txn) -> list[int]:
            assert writer is not None  # noqa: S101
            key = writer.session_key(txn, session_id)
            first = writer.next_sequence(txn, session_id, key)
            txn.rows += [
                (
                    key,
                    first + i,
                    op.op_id,
                    op.op_type,
                    op.payload_json,
                    op.state.value,
                    op.created_at,
                )
                for i, op in enumerate(operations)
            ]
            txn.next_seq[session_id] = first + len(operations)
            return list(range(first, first + len(operations)))

        return cast("list[int]", await self._write(append))

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
        rows = await self._read(
            f"SELECT {_OPERATION_COLUMNS} FROM operations"  # noqa: S608
            f" WHERE session_key = {_SESSION_KEY} ORDER BY sequence",
            (session_id,),
        )
        return [_operation(session_id, row) for row in rows]

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
        return [_operation(session_id, row) for row in await self._read(sql, params)]

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
