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

The parts: this module (the connections and the SQLiteStorage facade),
``_sqlite_writer`` (group commit, plain sqlite3), ``_sqlite_sql`` (the statements of
each call, and rows as records), ``_sqlite_schema`` (schema, pragmas, checks at open).
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
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite

from ..._errors import (
    JournalBusyError,
    JournalClosedError,
    JournalError,
    JournalOpenError,
    RetractError,
    StorageError,
)
from .._records import (
    OperationRecord,
    Owner,
    SessionRecord,
    SessionStatus,
)
from . import _sqlite_sql as sql
from ._protocol import NewOperation, OperationUpdate
from ._sqlite_schema import Synchronous, preallocate_wal, prepare_connection
from ._sqlite_writer import GroupCommitWriter, WriteFn

__all__ = ("SQLiteStorage",)

logger = logging.getLogger("retract")

T = TypeVar("T")


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
    :param create: create the journal when the file is missing or empty (default).
        With False, opening a path with no journal raises
        :class:`~retract.JournalOpenError` (missing file) or
        :class:`~retract.NotAJournalError` (empty file) and creates nothing: for
        tools that only inspect or undo existing journals.

    Open it by using the :class:`~retract.Journal` that owns it as an async context
    manager. Use one journal per file per process: each open storage has its own writer.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "FULL",
        busy_timeout: float = 5.0,
        create: bool = True,
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
        self.create = create
        self._writer_thread: _ConnectionThread | None = None
        self._reader_thread: _ConnectionThread | None = None
        self._reader: aiosqlite.Connection | None = None
        self._writer: GroupCommitWriter | None = None
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
            await writer.call(functools.partial(self._prepare, writer.raw, writer=True))
            reader = _ConnectionThread(aiosqlite.connect(self.path, isolation_level=None))
            self._reader_thread = reader
            await reader.start()
            await reader.call(functools.partial(self._prepare, reader.raw, writer=False))
        except BaseException as exc:
            await self._close_connections()
            self._state = "closed"
            if isinstance(exc, Exception):
                raise self.translate(exc, "opening the journal") from exc
            raise
        self._reader = reader.conn  # reads use aiosqlite's public calls
        self._writer = GroupCommitWriter(writer, location=self.location, translate=self.translate)
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
        if not self.create and not self.path.exists():
            raise JournalOpenError(
                f"there is no journal at {self.location}: check the path (nothing was created)"
            )
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

    def _prepare(self, conn: sqlite3.Connection | None, *, writer: bool) -> None:
        assert conn is not None  # noqa: S101
        prepare_connection(
            conn,
            self.location,
            synchronous=self.synchronous,
            busy_timeout=self.busy_timeout,
            writer=writer,
            create=self.create,
        )
        if writer:
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
                f"{where} was locked by another connection for longer than the busy "
                f"timeout ({self.busy_timeout:g}s) while {action}; retry later, or raise "
                "busy_timeout"
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

    def _write(self, fn: WriteFn) -> asyncio.Future[Any]:
        """Queue ``fn`` for the next group commit; await the result to know it committed."""
        if self._writer is None or self._state != "open":
            raise JournalClosedError(self._not_open())
        return self._writer.submit(fn)

    async def _read(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        if self._reader is None or self._state != "open":
            raise JournalClosedError(self._not_open())
        try:
            rows = await self._reader.execute_fetchall(query, params)
        except Exception as exc:
            raise self.translate(exc, "reading") from exc
        return cast("list[tuple[Any, ...]]", rows)

    async def _read_operations(
        self, session_id: str, query: str, params: Sequence[Any]
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
            return [sql.operation_record(session_id, row) for row in raw.execute(query, params)]

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
        await self._write(sql.insert_session(session_id, context_json, owner, created_at))

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
        update = sql.update_session(
            session_id,
            status=status,
            at=at,
            error=error,
            owner=owner,
            expect_statuses=expect_statuses,
            expect_owner=expect_owner,
            count_undo=count_undo,
            settle_intents=settle_intents,
        )
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
        await self._write(sql.operation_updates(updates, at))

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
        await self._write(
            sql.undo_progress(session_id, outcomes=outcomes, undone=undone, begin=begin, at=at)
        )

    async def prune_sessions(
        self, *, ended_before: float, statuses: Collection[SessionStatus]
    ) -> list[str]:
        """Delete ended sessions and their operations (see the Storage protocol)."""
        return cast("list[str]", await self._write(sql.prune_sessions(ended_before, statuses)))

    # -- reads ----------------------------------------------------------------------

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """One session, or None."""
        rows = await self._read(*sql.select_session(session_id))
        return sql.session_record(rows[0]) if rows else None

    async def list_sessions(
        self,
        *,
        limit: int | None = None,
        statuses: Collection[SessionStatus] | None = None,
        id_prefix: str | None = None,
    ) -> list[SessionRecord]:
        """Sessions, newest first."""
        rows = await self._read(*sql.list_sessions(limit, statuses, id_prefix))
        return [sql.session_record(row) for row in rows]

    async def get_operations(self, session_id: str) -> list[OperationRecord]:
        """All operations of a session, in order."""
        return await self._read_operations(session_id, *sql.operations(session_id))

    async def operations_page(
        self, session_id: str, *, before: int | None, limit: int, pending_only: bool
    ) -> list[OperationRecord]:
        """A page of operations, newest first."""
        query = sql.operations_page(session_id, before, limit, pending_only)
        return await self._read_operations(session_id, *query)

    async def pending_summary(self, session_id: str) -> tuple[int, set[str]]:
        """Count and types of the operations that still need undo."""
        rows = await self._read(*sql.pending_summary(session_id))
        return sum(int(count) for _, count in rows), {str(op_type) for op_type, _ in rows}
