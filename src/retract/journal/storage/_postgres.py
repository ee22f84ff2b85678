"""PostgresStorage: the journal in PostgreSQL, on asyncpg. The only module importing asyncpg.

Design, in short:

* A connection pool (made from a DSN, or the caller's). Reads run on any pooled
  connection; under READ COMMITTED each sees every write committed before it started,
  and a writer resumes only after its commit, so a caller reads its own writes.
* Group commit: writes of concurrent callers queue up while a write is in flight; one
  drain task commits what is queued as one transaction, then what was queued meanwhile,
  and so on, and wakes each caller once the commit that holds its rows is done. The
  appends of a batch are one statement (``Statements.append``), so a batch of nothing
  but appends is one round trip and one implicit transaction. A request that fails
  sinks its batch's transaction; the batch is then retried one request at a time, so
  the failure stays its own. Deadlocks and serialization failures are retried.
* Sequence numbers come from ``sessions.last_sequence``, bumped in the statement that
  inserts the rows: nothing is cached per process, so another process (a later
  recovery on another host) always sees and continues the real numbering.
* The schema is checked before anything is written, and created or migrated under a
  transaction-scoped advisory lock, so processes opening a new database at once agree.

Times of records are ``timestamptz`` (bound as POSIX seconds through ``to_timestamp``,
read back as aware UTC datetimes); payloads and contexts are ``json``, kept as written
(``jsonb`` would turn ``1e23`` into an int and reorder keys). Should a payload still be
refused as text PostgreSQL cannot hold (the NUL character, U+0000), that is
:class:`~retract.InvalidRecordError`. ``_postgres_schema`` holds the DDL and all SQL.
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
import weakref
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, cast

try:
    import asyncpg  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError(
        "PostgresStorage needs asyncpg: install retract with the 'postgres' extra "
        "(pip install 'retract[postgres]')"
    ) from exc

from ..._errors import (
    InvalidRecordError,
    JournalBusyError,
    JournalClosedError,
    JournalOpenError,
    NotAJournalError,
    RetractError,
    SchemaVersionError,
    SessionNotFoundError,
    SessionTakenOverError,
    StorageError,
)
from .._events import EventStream
from .._owner import current_owner
from .._records import (
    OperationRecord,
    Owner,
    SessionRecord,
    SessionStatus,
)
from ._postgres_schema import (
    APPLICATION,
    MIGRATIONS,
    SCHEMA_VERSION,
    Statements,
    no_nul,
    owner_fields,
)
from ._protocol import NewOperation, OperationUpdate
from ._rows import operation_record, session_record

__all__ = ("PostgresStorage",)

#: Attempts of a transaction that PostgreSQL rolled back to break a deadlock or a
#: serialization conflict (SQLSTATE class 40); they succeed when tried again.
_ATTEMPTS = 3
#: Errors that refuse a batch as a whole (not one request of it): not retried one by one.
_WHOLE_BATCH_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.LockNotAvailableError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)
#: Larger than any sequence number: ``before=None`` of a page.
_NO_LIMIT = 2**62
#: How long aclose() lets reads in flight finish before it cuts the connections.
_CLOSE_TIMEOUT = 10.0

Outcome = tuple[bool, Any]  # (True, result) or (False, exception)
Conn = Any  # an asyncpg.Connection (asyncpg ships no type information)


@dataclass(slots=True)
class _Append:
    """A queued append; its future resolves to its sequence numbers."""

    future: asyncio.Future[Any]
    session_id: str
    operations: Sequence[NewOperation]


@dataclass(slots=True)
class _Call:
    """A queued write run on the connection; its future resolves to ``fn``'s result.

    :ivar single: ``fn`` runs one statement, atomic without a transaction of its own.
    """

    future: asyncio.Future[Any]
    fn: Callable[[Conn], Awaitable[Any]]
    single: bool


_Request = _Append | _Call


async def _keep_session_state(conn: Conn) -> None:
    """Our pool's ``reset``: skip the reset query on every release (a round trip).

    The storage leaves no session state behind: no SET, no LISTEN, no session-level
    advisory lock, no cursor outside a transaction.
    """


class _GroupCommit:
    """Queues writes; one drain task at a time commits them, batch by batch."""

    def __init__(
        self,
        pool: Any,
        sql: Statements,
        translate: Callable[[BaseException, str], BaseException],
        location: str,
    ) -> None:
        self._pool = pool
        self._sql = sql
        self._translate = translate
        self._location = location
        self._pending: list[_Request] = []
        self._drain: asyncio.Task[None] | None = None
        self._closed = False

    def append(self, session_id: str, operations: Sequence[NewOperation]) -> asyncio.Future[Any]:
        """Queue an append; the future resolves to its sequence numbers once committed."""
        future = asyncio.get_running_loop().create_future()
        self._queue(_Append(future, session_id, operations))
        return future

    def call(self, fn: Callable[[Conn], Awaitable[Any]], *, single: bool) -> asyncio.Future[Any]:
        """Queue ``fn``; the future resolves to its result once committed."""
        future = asyncio.get_running_loop().create_future()
        self._queue(_Call(future, fn, single))
        return future

    def _queue(self, request: _Request) -> None:
        if self._closed:
            raise JournalClosedError(f"the journal at {self._location} is closed")
        self._pending.append(request)
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_task(self._drain_queue())

    async def aclose(self) -> None:
        """Refuse new writes and wait until everything queued is committed (or failed)."""
        self._closed = True
        while self._drain is not None:
            await asyncio.shield(self._drain)

    async def _drain_queue(self) -> None:
        batch: list[_Request] = []
        try:
            while self._pending:
                # Held for the busy period only: a pool the caller sized tightly is not
                # starved, and a sequential writer pays one acquire per write.
                async with self._pool.acquire() as conn:
                    while self._pending and not conn.is_closed():  # else: another one
                        batch, self._pending = self._pending, []
                        # A request whose caller was cancelled before it was sent is dropped.
                        batch = [request for request in batch if not request.future.done()]
                        if batch:
                            outcomes = await self._commit(conn, batch)
                            self._deliver(batch, outcomes)
                        batch = []
        except BaseException as exc:  # no connection (server gone), or cancelled at exit
            stranded, self._pending = batch + self._pending, []
            for request in stranded:
                if request.future.done():
                    continue
                if isinstance(exc, Exception):
                    request.future.set_exception(self._translate(exc, "writing"))
                else:
                    request.future.cancel()
            if not isinstance(exc, Exception):
                raise
        finally:
            self._drain = None  # no await since the queue was last seen empty

    def _deliver(self, batch: list[_Request], outcomes: list[Outcome]) -> None:
        for request, (ok, value) in zip(batch, outcomes, strict=True):
            if request.future.done():  # the caller was cancelled
                continue
            if ok:
                request.future.set_result(value)
            else:
                request.future.set_exception(self._translate(value, "writing"))

    async def _commit(self, conn: Conn, batch: list[_Request]) -> list[Outcome]:
        """Commit ``batch`` in one transaction; if a request fails, each on its own."""
        try:
            return await self._attempt(conn, batch)
        except Exception as exc:
            if len(batch) == 1 or isinstance(exc, _WHOLE_BATCH_ERRORS):
                # A lock held past busy_timeout, a lost connection: the batch as a whole
                # was refused, and each request alone would only wait for it again.
                return [(False, exc)] * len(batch)
        outcomes: list[Outcome] = []
        for request in batch:
            try:
                outcomes += await self._attempt(conn, [request])
            except Exception as exc:
                outcomes.append((False, exc))
        return outcomes

    async def _attempt(self, conn: Conn, batch: list[_Request]) -> list[Outcome]:
        """Run ``batch`` as one transaction, again if PostgreSQL rolled it back (class 40)."""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return await self._run(conn, batch)
            except asyncpg.TransactionRollbackError:
                if attempt == _ATTEMPTS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run(self, conn: Conn, batch: list[_Request]) -> list[Outcome]:
        if all(isinstance(request, _Append) for request in batch):
            return await self._append(conn, cast("list[_Append]", batch))
        if len(batch) == 1 and isinstance(call := batch[0], _Call) and call.single:
            return [(True, await call.fn(conn))]
        outcomes: list[Outcome] = []
        async with conn.transaction():
            start = 0
            while start < len(batch):
                end = start
                while end < len(batch) and isinstance(batch[end], _Append):
                    end += 1
                if end > start:  # consecutive appends: one statement
                    outcomes += await self._append(conn, cast("list[_Append]", batch[start:end]))
                    start = end
                else:
                    request = cast("_Call", batch[start])
                    outcomes.append((True, await request.fn(conn)))
                    start += 1
        return outcomes

    async def _append(self, conn: Conn, appends: list[_Append]) -> list[Outcome]:
        """Append the operations of every request in one statement.

        A request naming a session that does not exist gets SessionNotFoundError and
        takes no sequence numbers; the others are unaffected.
        """
        # Sessions in one order in every batch: two batches lock their rows alike.
        totals: dict[str, int] = dict.fromkeys(sorted({r.session_id for r in appends}), 0)
        starts: list[int] = []
        sessions: list[str] = []
        offsets: list[int] = []
        op_ids: list[str] = []
        op_types: list[str] = []
        payloads: list[str] = []
        states: list[str] = []
        created: list[float] = []
        for request in appends:
            session_id = request.session_id
            start = totals[session_id]
            starts.append(start)
            offset = start
            for op_id, op_type, payload_json, state, created_at in request.operations:
                offset += 1
                sessions.append(session_id)
                offsets.append(offset)
                op_ids.append(op_id)
                op_types.append(op_type)
                payloads.append(payload_json)
                states.append(state.value)
                created.append(created_at)
            totals[session_id] = offset
        rows = await conn.fetch(
            self._sql.append,
            list(totals),
            list(totals.values()),
            sessions,
            offsets,
            op_ids,
            op_types,
            payloads,
            states,
            created,
            current_owner().token,
        )
        bases: dict[str, int] = {row[0]: row[1] for row in rows}
        refused = {}
        if len(bases) < len(totals):  # sessions missing, or held by another process
            refused = await self._refusals(conn, [s for s in totals if s not in bases])
        outcomes: list[Outcome] = []
        for request, start in zip(appends, starts, strict=True):
            base = bases.get(request.session_id)
            if base is None:
                outcomes.append((False, refused[request.session_id]))
            else:
                first = base + start + 1
                outcomes.append((True, list(range(first, first + len(request.operations)))))
        return outcomes

    async def _refusals(self, conn: Conn, session_ids: list[str]) -> dict[str, Exception]:
        """Why appends to these sessions were refused: missing, or taken over."""
        errors: dict[str, Exception] = {sid: SessionNotFoundError(sid) for sid in session_ids}
        for sid, status, pid, host in await conn.fetch(self._sql.holders, session_ids):
            errors[sid] = taken_over(sid, status, pid, host)
        return errors


def taken_over(session_id: str, status: str, pid: int | None, host: str | None) -> Exception:
    """The error of a write to a session another process holds now."""
    return SessionTakenOverError(
        f"session {session_id} is held by process {pid} on {host} now ({status}): it "
        "took the session over after this process let its lease expire (a blocked event "
        "loop or a lost connection for longer than lease_timeout?); nothing was written"
    )


#: The schema of a journal when neither the URL nor the caller names one.
DEFAULT_SCHEMA = "retract"


def _split_schema(dsn: str) -> tuple[str, str | None]:
    """``dsn`` without its ``schema`` query parameter, and that parameter's value.

    The parameter is retract's (asyncpg would send it to the server as a setting).
    """
    parts = urllib.parse.urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql") or not parts.query:
        return dsn, None
    named: str | None = None
    kept = []
    for item in parts.query.split("&"):
        key, _, value = item.partition("=")
        if urllib.parse.unquote(key) != "schema":
            kept.append(item)
        elif named is not None and urllib.parse.unquote(value) != named:
            raise ValueError(f"the URL names two schemas, {named!r} and {value!r}: give one")
        else:
            named = urllib.parse.unquote(value)
    if named is None:
        return dsn, None  # as given: urlunsplit would respell some URLs
    return urllib.parse.urlunsplit(parts._replace(query="&".join(kept))), named


def _public_dsn(dsn: str) -> str:
    """``dsn`` without its password (in the user part or as a parameter)."""
    parts = urllib.parse.urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        return re.sub(r"((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", dsn)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}@{hosts}" if user else hosts
    kept = [
        item
        for item in parts.query.split("&")
        if item
        and urllib.parse.unquote(item.partition("=")[0]).lower() not in ("password", "sslpassword")
    ]
    public = f"{parts.scheme}://{netloc}{parts.path}"
    if kept:
        public += "?" + "&".join(kept)
    if parts.fragment:
        public += "#" + parts.fragment
    return public


def _as_is(value: Any) -> Any:
    return value  # asyncpg gives timestamptz as aware UTC datetimes already


def _session_record(row: Sequence[Any]) -> SessionRecord:
    return session_record(row, _as_is)


def _operation_record(session_id: str, row: Sequence[Any]) -> OperationRecord:
    return operation_record(session_id, row, _as_is)


class PostgresStorage:
    """The journal in a PostgreSQL database, shared by processes and hosts.

    :param dsn_or_pool: a ``postgresql://`` URL, or an ``asyncpg`` pool to borrow
        connections from (the caller keeps it open for the storage's lifetime and
        closes it; the storage then leaves no session state on its connections).
    :param schema: the schema holding the journal's tables; created, with its tables,
        when missing. Several journals may share a database in different schemas.
        Also given as the URL's ``schema`` query parameter
        (``postgresql://host/db?schema=jobs``, which works wherever a URL does: the
        CLI's ``--db``, ``$RETRACT_DB``); ``"retract"`` by default.
    :param create: create the journal when the schema is missing or empty (default).
        With False, opening a database with no journal raises
        :class:`~retract.NotAJournalError` and creates nothing.
    :param busy_timeout: seconds a statement waits for another connection's locks before
        raising :class:`~retract.JournalBusyError` (``lock_timeout``; own pool only).
    :param min_size: connections the pool keeps open (own pool only).
    :param max_size: connections the pool opens at most (own pool only).
    :param connect_timeout: seconds to wait for a connection (own pool only).
    :param lease_timeout: seconds a session's lease lasts after its owner last renewed
        it; the :class:`~retract.Journal` renews it every third of this while the
        session runs or is being undone. A process on another host may take over a
        session whose lease expired (:meth:`~retract.Journal.recover`), so keep it
        well above the longest time this process may go without running its event
        loop or reaching the database.

    Needs PostgreSQL 11 or later. Open it by using the :class:`~retract.Journal` that
    owns it as an async context manager.
    """

    def __init__(
        self,
        dsn_or_pool: str | asyncpg.Pool,
        *,
        schema: str | None = None,
        create: bool = True,
        busy_timeout: float = 5.0,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        lease_timeout: float = 30.0,
    ) -> None:
        if isinstance(dsn_or_pool, str):
            dsn, named = _split_schema(dsn_or_pool)
            if named is not None and schema is not None and named != schema:
                raise ValueError(
                    f"the URL names schema {named!r} but schema={schema!r} was given: "
                    "give it in one place"
                )
            schema = schema if schema is not None else named
        schema = schema if schema is not None else DEFAULT_SCHEMA
        self._sql = Statements.for_schema(schema)  # checks the name
        if busy_timeout < 0:
            raise ValueError(f"busy_timeout must be >= 0 seconds, not {busy_timeout!r}")
        if not lease_timeout > 0 or lease_timeout == float("inf"):
            raise ValueError(f"lease_timeout must be positive seconds, not {lease_timeout!r}")
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError(
                f"need 0 <= min_size <= max_size and max_size >= 1, not {min_size}, {max_size}"
            )
        if isinstance(dsn_or_pool, str):
            self._dsn: str | None = dsn
            self._pool: Any = None
            self._location = _public_dsn(dsn_or_pool)
        elif isinstance(dsn_or_pool, asyncpg.Pool):
            self._dsn = None
            self._pool = dsn_or_pool
            self._location = "postgresql (a caller's pool)"  # made precise by open()
        else:
            raise TypeError(
                "PostgresStorage needs a postgresql:// URL or an asyncpg pool, not "
                f"{type(dsn_or_pool).__name__}"
            )
        self.schema = schema
        self.create = create
        self.busy_timeout = float(busy_timeout)
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = float(connect_timeout)
        self.lease_timeout = float(lease_timeout)
        self._writer: _GroupCommit | None = None
        self._state = "new"
        self._settled: asyncio.Event | None = None  # set when open() has finished
        self._streams: weakref.WeakSet[EventStream] = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"PostgresStorage({self._location!r}, schema={self.schema!r})"

    @property
    def location(self) -> str:
        """The database URL, without any password."""
        return self._location

    # -- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        """Connect (making the pool, if given a URL) and check, create or migrate the schema.

        If the awaiting task is cancelled, everything opened so far is closed again.
        """
        if self._state != "new":
            raise JournalClosedError(
                f"{self!r} was already opened; create a new PostgresStorage to open it again"
            )
        self._state = "opening"
        self._settled = asyncio.Event()
        try:
            await self._open()
        finally:
            self._settled.set()

    async def _open(self) -> None:
        try:
            if self._dsn is not None:
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=self.min_size,
                    max_size=self.max_size,
                    timeout=self.connect_timeout,
                    reset=_keep_session_state,
                    server_settings={
                        "application_name": "retract",
                        # 0 would mean "wait forever"
                        "lock_timeout": str(max(1, round(self.busy_timeout * 1000))),
                    },
                )
            async with self._pool.acquire() as conn:
                if self._dsn is None:
                    self._location = await self._describe(conn)
                await self._prepare_schema(conn)
        except BaseException as exc:
            # Translated while still "opening": a bad connection option is an open error.
            error = (
                self.translate(exc, "opening the journal") if isinstance(exc, Exception) else exc
            )
            self._state = "closed"
            if self._dsn is not None and self._pool is not None:
                self._pool.terminate()
                self._pool = None
            if error is exc:
                raise
            raise error from exc
        if self._state != "opening":  # aclose() was called meanwhile
            await self._finish()
            raise JournalClosedError(f"the journal at {self.location} was closed while opening")
        self._writer = _GroupCommit(self._pool, self._sql, self.translate, self.location)
        self._state = "open"

    async def aclose(self) -> None:
        """Commit what is queued, then close the pool if this storage made it. Idempotent.

        If the awaiting task is cancelled, closing still completes (shielded).
        """
        if self._state == "opening" and self._settled is not None:
            # open() sees this, closes what it opened and raises; wait until it has.
            self._state = "closed"
            await asyncio.shield(self._settled.wait())
            return
        if self._state in {"closed", "new"}:
            self._state = "closed"
            return
        self._state = "closed"
        closing = asyncio.ensure_future(self._finish())
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            await asyncio.shield(closing)
            raise

    async def _finish(self) -> None:
        for stream in list(self._streams):
            await stream.aclose()
        if self._writer is not None:
            await self._writer.aclose()
        pool, self._pool = self._pool, None
        if pool is not None and self._dsn is not None:
            try:
                await asyncio.wait_for(pool.close(), _CLOSE_TIMEOUT)
            except BaseException:
                pool.terminate()
                raise

    @staticmethod
    async def _describe(conn: Conn) -> str:
        """A borrowed pool's database as a URL (user, server address, database)."""
        row = await conn.fetchrow(
            "SELECT current_user, host(inet_server_addr()), inet_server_port(), current_database()"
        )
        user, host, port, database = row
        where = "localhost" if host is None else (f"[{host}]" if ":" in host else host)
        if port is not None:
            where += f":{port}"
        return f"postgresql://{urllib.parse.quote(user)}@{where}/{urllib.parse.quote(database)}"

    async def _prepare_schema(self, conn: Conn) -> None:
        """Check the schema; create or migrate it under the schema's advisory lock."""
        version = await self._inspect(conn)
        if version == SCHEMA_VERSION:
            return
        if version is None and not self.create:
            raise NotAJournalError(
                f"there is no journal in schema {self.schema!r} of {self.location} (and "
                "nothing was created, as asked): check the URL and the schema"
            )
        if version is not None and not self.create:
            raise SchemaVersionError(
                f"schema {self.schema!r} of {self.location} holds a journal of schema "
                f"version {version}, older than the {SCHEMA_VERSION} this retract uses, "
                "and nothing was changed, as asked (create=False): stop the processes of "
                "the older retract, then open it once with create=True (open_journal(url) "
                "does) to upgrade it"
            )
        async with conn.transaction():
            await conn.execute(self._sql.lock, self.schema)
            # Check again under the lock: another process may have done it meanwhile.
            version = await self._inspect(conn)
            for step in range((version or 0) + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[step](self._sql.schema):
                    await conn.execute(statement)

    async def _inspect(self, conn: Conn) -> int | None:
        """The journal's schema version; None where the schema is missing or empty.

        :raises NotAJournalError: the schema holds tables but no journal.
        :raises SchemaVersionError: the journal is newer than this retract.
        """
        exists, has_meta, relations = await conn.fetchrow(self._sql.inspect, self.schema)
        where = f"schema {self.schema!r} of {self.location}"
        if not has_meta:
            if exists and relations:
                raise NotAJournalError(
                    f"{where} holds other tables, not a retract journal: choose another "
                    "schema for the journal (schema=...)"
                )
            return None
        try:
            rows = await conn.fetch(self._sql.meta)
        except asyncpg.PostgresError as exc:
            raise NotAJournalError(
                f"{where} has a journal_meta table that retract cannot read ({exc}): it "
                "is not a retract journal; choose another schema"
            ) from exc
        if len(rows) != 1 or rows[0][0] != APPLICATION or not isinstance(rows[0][1], int):
            raise NotAJournalError(
                f"{where} has a journal_meta table that is not retract's: choose another "
                "schema for the journal"
            )
        version = int(rows[0][1])
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{where} has journal schema version {version}, newer than the "
                f"{SCHEMA_VERSION} this retract understands: upgrade retract to read it"
            )
        return version

    def translate(self, exc: BaseException, action: str) -> BaseException:
        """Map a driver error to the library's errors; others pass through unchanged."""
        if isinstance(exc, RetractError | asyncio.CancelledError) or not isinstance(exc, Exception):
            return exc
        where = f"journal {self.location}"
        opening = self._state != "open"
        error: RetractError
        if isinstance(exc, asyncpg.PostgresError):
            code = str(getattr(exc, "sqlstate", "") or "")
            if code == "55P03":
                error = JournalBusyError(
                    f"{where} was locked by another connection for longer than the busy "
                    f"timeout ({self.busy_timeout:g}s) while {action}; retry later, or "
                    "raise busy_timeout"
                )
            elif code == "22P05":
                error = InvalidRecordError(
                    f"{where} cannot store this record: PostgreSQL cannot hold the NUL "
                    f"character (\\u0000) in it ({exc})"
                )
            elif code == "23505" and "sessions" in str(getattr(exc, "table_name", "")):
                error = StorageError(f"{where}: {action} failed: the session already exists")
            elif opening and (code[:2] in ("08", "28", "53") or code in ("3D000", "42501")):
                error = JournalOpenError(f"cannot open {where}: {exc}")
            else:
                error = StorageError(f"{where}: {action} failed: {exc}")
        elif isinstance(exc, OSError | TimeoutError):
            if opening:
                error = JournalOpenError(
                    f"cannot connect to {where}: {str(exc) or type(exc).__name__}"
                )
            else:
                error = StorageError(f"{where}: {action} failed: {str(exc) or type(exc).__name__}")
        elif isinstance(exc, asyncpg.InterfaceError):
            if self._state == "closed":
                error = JournalClosedError(f"the journal at {self.location} is closed")
            elif opening and isinstance(exc, ValueError):  # ClientConfigurationError
                error = JournalOpenError(f"cannot open {where}: {exc}")
            else:
                error = StorageError(f"{where}: {action} failed: {exc}")
        else:
            return exc
        error.__cause__ = exc
        return error

    # -- helpers --------------------------------------------------------------------

    def _open_writer(self) -> _GroupCommit:
        if self._writer is None or self._state != "open":
            raise JournalClosedError(self._not_open())
        return self._writer

    def _not_open(self) -> str:
        if self._state == "closed":
            return f"the journal at {self.location} is closed"
        return (
            f"the journal at {self.location} is not open; use `async with Journal(...)` "
            "or `async with open_journal(...)`"
        )

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        if self._pool is None or self._state != "open":
            raise JournalClosedError(self._not_open())
        try:
            return cast("list[Any]", await self._pool.fetch(query, *args))
        except Exception as exc:
            raise self.translate(exc, "reading") from exc

    # -- writes ---------------------------------------------------------------------

    async def create_session(
        self, session_id: str, context_json: str, owner: Owner, created_at: float
    ) -> None:
        """Insert a RUNNING session."""
        query = self._sql.insert_session
        params = (
            session_id,
            created_at,
            SessionStatus.RUNNING.value,
            context_json,
            *owner_fields(owner),
            self.lease_timeout,
        )

        async def insert(conn: Conn) -> None:
            await conn.execute(query, *params)

        await self._open_writer().call(insert, single=True)

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
        writer = self._open_writer()
        query, params = self._sql.update_session(
            session_id,
            status=status,
            at=at,
            error=error,
            owner=owner,
            expect_statuses=expect_statuses,
            expect_owner=expect_owner,
            count_undo=count_undo,
            settle_intents=settle_intents,
            lease=self.lease_timeout,
        )

        async def update(conn: Conn) -> bool:
            return bool(await conn.fetchval(query, *params))

        return cast("bool", await writer.call(update, single=True))

    async def append_operations(
        self, session_id: str, operations: Sequence[NewOperation]
    ) -> list[int]:
        """Append operations with gap-free sequence numbers."""
        writer = self._open_writer()
        if type(operations) is not tuple:
            operations = tuple(operations)  # read when the batch is sent: take a copy
        return cast("list[int]", await writer.append(session_id, operations))

    def _operation_updates(
        self, updates: Sequence[OperationUpdate], at: float
    ) -> Callable[[Conn], Awaitable[None]] | None:
        """One statement applying ``updates`` in order, or None when there are none.

        An operation updated twice is updated once, with what applying both in order
        leaves: the last state and error, the last payload given.
        """
        merged: dict[tuple[str, int], list[Any]] = {}
        for update in updates:
            key = (update.session_id, update.sequence)
            earlier = merged.get(key)
            payload = update.payload_json
            if payload is None and earlier is not None:
                payload = earlier[4]
            merged[key] = [*key, update.state.value, no_nul(update.error), payload]
        if not merged:
            return None
        columns = [list(column) for column in zip(*merged.values(), strict=True)]
        query = self._sql.update_operations

        async def apply(conn: Conn) -> None:
            refused = await conn.fetch(query, *columns, at, current_owner().token)
            if refused:  # the others' updates are applied: this is not a rollback
                raise taken_over(*refused[0])

        return apply

    async def update_operations(self, updates: Sequence[OperationUpdate], at: float) -> None:
        """Apply operation state changes in one transaction.

        :raises SessionTakenOverError: some updates name a session that another process
            took over; those are not applied (the others are).
        """
        writer = self._open_writer()
        apply = self._operation_updates(updates, at)
        if apply is not None:
            await writer.call(apply, single=True)

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
        writer = self._open_writer()
        apply = self._operation_updates(outcomes, at)
        sql = self._sql

        async def progress(conn: Conn) -> None:
            # Written only while this process holds the session: an undo that stalled
            # past its lease must not go on beside the process that took it over.
            holder = await conn.fetchrow(sql.hold, session_id)
            if holder is not None and holder[0] != current_owner().token:
                _, pid, host, status = holder
                raise taken_over(session_id, status, pid, host)
            if apply is not None:
                await apply(conn)
            if undone is not None:
                await conn.execute(sql.mark_undone, session_id, *undone, at)
            if begin is not None:
                await conn.execute(sql.mark_undoing, session_id, *begin, at)

        if apply is not None or undone is not None or begin is not None:
            await writer.call(progress, single=False)

    async def prune_sessions(
        self, *, ended_before: float, statuses: Collection[SessionStatus]
    ) -> list[str]:
        """Delete ended sessions and their operations (see the Storage protocol)."""
        writer = self._open_writer()
        if not statuses:
            return []
        query = self._sql.prune
        wanted = [status.value for status in statuses]

        async def prune(conn: Conn) -> list[str]:
            return [row[0] for row in await conn.fetch(query, wanted, ended_before)]

        return cast("list[str]", await writer.call(prune, single=True))

    # -- leases ---------------------------------------------------------------------

    async def renew_leases(self, owner_token: str, session_ids: Collection[str]) -> set[str]:
        """Renew the leases of the sessions ``owner_token`` holds (see LeaseStorage)."""
        writer = self._open_writer()
        if not session_ids:
            return set()
        query, wanted = self._sql.renew_leases, list(session_ids)

        async def renew(conn: Conn) -> set[str]:
            return {row[0] for row in await conn.fetch(query, owner_token, wanted)}

        return cast("set[str]", await writer.call(renew, single=True))

    async def recover_expired(
        self, owner: Owner, at: float, session_ids: Collection[str] | None = None
    ) -> list[str]:
        """Take over the sessions whose lease expired (see LeaseStorage)."""
        writer = self._open_writer()
        query = self._sql.recover_expired
        params = (
            None if session_ids is None else list(session_ids),
            at,
            *owner_fields(owner),
            self.lease_timeout,
        )

        async def recover(conn: Conn) -> list[str]:
            return [row[0] for row in await conn.fetch(query, *params)]

        return cast("list[str]", await writer.call(recover, single=True))

    # -- events ---------------------------------------------------------------------

    def watch(self, *, session_id: str | None = None, max_pending: int = 10_000) -> EventStream:
        """Events committed from now on, by any process (``LISTEN``; see ``_events``).

        The stream holds a connection of its own (from a borrowed pool, one of the
        pool's) until it is closed, or until this storage closes.
        """
        if self._pool is None or self._state != "open":
            raise JournalClosedError(self._not_open())
        stream = EventStream(
            channel=self._sql.channel,
            connect=self._listener,
            release=self._release_listener,
            location=self.location,
            session_id=session_id,
            max_pending=max_pending,
            close_timeout=_CLOSE_TIMEOUT,
        )
        self._streams.add(stream)
        return stream

    async def _listener(self) -> Conn:
        if self._pool is None or self._state != "open":
            raise JournalClosedError(self._not_open())
        try:
            if self._dsn is None:
                return await self._pool.acquire()
            return await asyncpg.connect(
                self._dsn,
                timeout=self.connect_timeout,
                server_settings={"application_name": "retract watch"},
            )
        except Exception as exc:
            raise self.translate(exc, "watching") from exc

    async def _release_listener(self, conn: Conn) -> None:
        if self._dsn is None and self._pool is not None:
            await self._pool.release(conn)
        else:
            await conn.close(timeout=_CLOSE_TIMEOUT)

    # -- reads ----------------------------------------------------------------------

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """One session, or None."""
        rows = await self._fetch(self._sql.select_session, session_id)
        return _session_record(rows[0]) if rows else None

    async def list_sessions(
        self,
        *,
        limit: int | None = None,
        statuses: Collection[SessionStatus] | None = None,
        id_prefix: str | None = None,
    ) -> list[SessionRecord]:
        """Sessions, newest first."""
        wanted = None if statuses is None else [status.value for status in statuses]
        rows = await self._fetch(self._sql.list_sessions, wanted, id_prefix, limit)
        return [_session_record(row) for row in rows]

    async def get_operations(self, session_id: str) -> list[OperationRecord]:
        """All operations of a session, in order."""
        rows = await self._fetch(self._sql.operations, session_id)
        return [_operation_record(session_id, row) for row in rows]

    async def operations_page(
        self, session_id: str, *, before: int | None, limit: int, pending_only: bool
    ) -> list[OperationRecord]:
        """A page of operations, newest first."""
        sql = self._sql
        query = sql.operations_page_pending if pending_only else sql.operations_page
        below = _NO_LIMIT if before is None else before
        rows = await self._fetch(query, session_id, below, limit)
        return [_operation_record(session_id, row) for row in rows]

    async def pending_summary(self, session_id: str) -> tuple[int, set[str]]:
        """Count and types of the operations that still need undo."""
        rows = await self._fetch(self._sql.pending_summary, session_id)
        return sum(int(count) for _, count in rows), {str(op_type) for op_type, _ in rows}
