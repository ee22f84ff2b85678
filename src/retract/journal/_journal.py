"""Journal: the hub that sessions write to and undo reads from."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Collection
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .._async import run_sync, shielded
from .._errors import JournalClosedError, JournalError, JournalOpenError, SessionNotFoundError
from ..fs._handlers import DRIFT_POLICIES, DriftPolicy, drift_policy
from ._events import EventStream
from ._leases import Heartbeat
from ._metrics import MetricsCollector
from ._owner import current_owner, session_held
from ._records import (
    TERMINAL_STATUSES,
    OperationRecord,
    SessionRecord,
    SessionStatus,
    UndoPlan,
    UndoReport,
)
from ._registry import OperationRegistry
from ._session import SessionContext
from ._undo import OnError, ProgressCallback, plan_undo, require_session, undo_session
from .storage import is_postgres_url
from .storage._memory import InMemoryStorage
from .storage._protocol import LeaseStorage, Storage, WatchStorage
from .storage._sqlite import SQLiteStorage
from .storage._sqlite_schema import Synchronous

__all__ = ("Journal", "open_journal")

#: The names of session image folders (session ids are UUID strings).
_SESSION_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class Journal:
    """The journal of sessions and their operations, and the way to undo them.

    ::

        async with Journal(SQLiteStorage("history.db")) as journal:
            async with journal.start_session(script="deploy.py") as session:
                async with session.step("mail.send", {"to": "ops@example.com"}):
                    ...
            await journal.undo_session(session.session_id)

    A journal is used from one event loop. It is an async context manager; it must be
    open for every call and cannot be reopened after :meth:`aclose`.

    :param storage: where sessions and operations are kept.
    :param registry: the default undo handlers for :meth:`undo_session`,
        :meth:`plan_undo` and ``undo_on_error`` sessions; a new
        :class:`OperationRegistry` when omitted.
    :param metrics: counters to update, e.g. a :class:`MetricsCollector`.
    :param images_dir: where ``session.fs`` keeps before-images (one folder per
        session). By default ``<journal file>.images`` beside an SQLite journal, and a
        temporary folder, removed at :meth:`aclose`, for an in-memory one.
    """

    def __init__(
        self,
        storage: Storage,
        registry: OperationRegistry | None = None,
        *,
        metrics: MetricsCollector | None = None,
        images_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.storage = storage
        self.registry = registry if registry is not None else OperationRegistry()
        self.metrics = metrics
        self._images_dir = Path(images_dir).absolute() if images_dir is not None else None
        self._custom_images = images_dir is not None
        self._own_images = False
        self._state = "new"
        self._heartbeat: Heartbeat | None = None

    def __repr__(self) -> str:
        return f"<Journal {self.storage.location} {self._state}>"

    def __del__(self) -> None:
        if getattr(self, "_state", None) == "open":
            warnings.warn(
                f"{self!r} was never closed; use `async with` or `await journal.aclose()`",
                ResourceWarning,
                stacklevel=2,
            )

    # -- lifecycle ------------------------------------------------------------------

    async def open(self) -> Self:
        """Open the storage. ``async with journal`` does this for you.

        :raises JournalOpenError, NotAJournalError, SchemaVersionError: see the storage.
        :raises JournalClosedError: the journal was opened before.
        """
        if self._state != "new":
            raise JournalClosedError(
                f"{self!r} cannot be opened again; create a new Journal for the storage"
            )
        self._state = "opening"
        try:
            await self.storage.open()
        except BaseException:
            self._state = "closed"
            raise
        self._state = "open"
        if isinstance(self.storage, LeaseStorage):
            self._heartbeat = Heartbeat(self.storage)
            self._heartbeat.start()
        return self

    async def aclose(self) -> None:
        """Commit pending writes and release the storage. Idempotent.

        Completes even if the awaiting task is cancelled (the cancellation is re-raised
        afterwards). Sessions still open afterwards fail on their next write.
        """
        if self._state in ("closed", "new"):
            self._state = "closed"
            return
        self._state = "closed"
        if self._heartbeat is not None:
            await shielded(self._heartbeat.stop())
        await shielded(self.storage.aclose())
        if self._own_images and self._images_dir is not None:
            # An in-memory journal's sessions die with it, and so do their images.
            await run_sync(_remove_tree, self._images_dir)

    @property
    def images_dir(self) -> Path:
        """The folder where ``session.fs`` keeps before-images (made on first use)."""
        if self._images_dir is None:
            if self._in_memory():
                # Only named here; the first before-image creates it (in a worker thread).
                unique = f"retract-images-{os.getpid()}-{uuid.uuid4().hex[:12]}"
                self._images_dir = Path(tempfile.gettempdir(), unique)
                self._own_images = True
            elif self._on_server():
                raise JournalOpenError(
                    f"a journal in a database server ({self.storage.location}) keeps the "
                    "before-images of session.fs on the host that made them: give it a "
                    "folder, open_journal(..., images_dir=...) or Journal(images_dir=...)"
                )
            else:
                self._images_dir = Path(self.storage.location + ".images").absolute()
        return self._images_dir

    async def _remove_orphan_images(self, images: Path) -> None:
        """Remove image folders whose session is gone (a prune that died halfway).

        Only in the default area (``<journal>.images``), which is this journal's alone;
        a folder given as ``images_dir`` might be shared, and is left alone.
        """
        for name in await run_sync(_image_folders, images):
            if _SESSION_ID.fullmatch(name) and await self.storage.get_session(name) is None:
                await run_sync(_remove_images, images, [name])

    def _in_memory(self) -> bool:
        return self.storage.location == ":memory:"

    def _on_server(self) -> bool:
        return "://" in self.storage.location

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def check_open(self) -> None:
        """Raise JournalClosedError unless the journal is open."""
        if self._state != "open":
            state = "closed" if self._state == "closed" else "not open yet"
            raise JournalClosedError(
                f"the journal at {self.storage.location} is {state}; use "
                "`async with open_journal(...) as journal:`"
            )

    # -- sessions -------------------------------------------------------------------

    def start_session(
        self,
        *,
        undo_on_error: bool = False,
        undo_timeout: float | None = 60.0,
        **context: Any,
    ) -> SessionContext:
        """Start a session: ``async with journal.start_session(script="x") as session``.

        :param context: what to remember about the run (JSON values), e.g. the script
            and its arguments.
        :param undo_on_error: if the block raises (or is cancelled), undo the session's
            operations with the journal's registry, then re-raise the original exception
            unchanged (a failed undo is logged and added as a note to it). The undo is
            shielded from cancellation, so a cancelled block is rolled back too.
        :param undo_timeout: the most seconds that automatic undo may take (None: no
            limit); past it, the undo is cancelled, keeps its progress and is noted as
            failed on the exception. ``undo_on_error`` and ``undo_timeout`` are not
            part of the context.
        :raises NotSerializableError: ``context`` is not plain JSON (a TypeError naming
            the key), raised here, before anything is written.
        """
        return SessionContext(self, context, undo_on_error=undo_on_error, undo_timeout=undo_timeout)

    # -- queries --------------------------------------------------------------------

    async def list_sessions(
        self,
        *,
        limit: int | None = None,
        status: SessionStatus | str | Collection[SessionStatus | str] | None = None,
    ) -> list[SessionRecord]:
        """Sessions, newest first.

        :param limit: at most this many (all when None).
        :param status: only sessions with this status (or any of these statuses).
        :raises ValueError: an unknown status name, or a negative limit.
        """
        self.check_open()
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit!r}")
        statuses: set[SessionStatus] | None = None
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            try:
                statuses = {SessionStatus(s) for s in wanted}
            except ValueError:
                known = ", ".join(s.value for s in SessionStatus)
                raise ValueError(
                    f"unknown session status in {status!r}; use one of {known}"
                ) from None
        return await self.storage.list_sessions(limit=limit, statuses=statuses)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """One session, or None if there is none with this id."""
        self.check_open()
        return await self.storage.get_session(session_id)

    async def get_operations(self, session_id: str) -> list[OperationRecord]:
        """Every operation of a session, in the order they were journaled.

        :raises SessionNotFoundError: no session has this id (the message lists recent
            ones).
        """
        self.check_open()
        operations = await self.storage.get_operations(session_id)
        if not operations:
            await require_session(self, session_id)
        return operations

    async def resolve_session_id(self, prefix: str) -> str:
        """The full id of the one session whose id starts with ``prefix``.

        :raises SessionNotFoundError: no session matches, or several do (the message
            lists them).
        """
        self.check_open()
        matches = await self.storage.list_sessions(limit=6, id_prefix=prefix)
        if len(matches) == 1:
            return matches[0].session_id
        if not matches:
            recent = await self.storage.list_sessions(limit=5)
            raise SessionNotFoundError(prefix, [s.session_id for s in recent])
        ids = [s.session_id for s in matches]
        error = SessionNotFoundError(prefix, ids)
        error.args = (
            f"session id prefix {prefix!r} is ambiguous; it matches:\n"
            + "\n".join(f"  {sid}" for sid in ids[:5]),
        )
        raise error

    # -- undo -----------------------------------------------------------------------

    async def plan_undo(
        self, session_id: str, registry: OperationRegistry | None = None
    ) -> UndoPlan:
        """What :meth:`undo_session` would undo, in order, without changing anything.

        The plan lists the operations still to undo (newest first) and the operation
        types that have no handler in ``registry`` (the journal's registry by default).

        :raises SessionNotFoundError: no session has this id.
        """
        self.check_open()
        return await plan_undo(
            self, session_id, registry if registry is not None else self.registry
        )

    async def undo_session(
        self,
        session_id: str,
        registry: OperationRegistry | None = None,
        *,
        on_error: OnError = "stop",
        max_in_doubt: int = 1024,
        progress: ProgressCallback | None = None,
        drift: DriftPolicy = "refuse",
    ) -> UndoReport:
        """Undo a session's operations, newest first, each with its registered handler.

        Before touching anything it checks that every pending operation type has a
        handler. Each operation is marked UNDOING before its handler runs and UNDONE (or
        SKIPPED, or UNDO_FAILED) after it, so a later run resumes where this one stopped
        and never hands an UNDONE operation to a handler again. Operations whose effect
        is uncertain (IN_DOUBT, FAILED, or UNDOING from an interrupted undo) reach their
        handler with ``op.in_doubt`` true.

        A session whose owner process died is taken over. A session being undone by a
        live process, or still running, is refused.

        :param registry: the handlers; the journal's registry by default.
        :param on_error: ``"stop"`` at the first failing handler (raise
            :class:`UndoFailedError`), or ``"continue"`` with the rest and raise every
            failure together as :class:`UndoErrorGroup`.
        :param max_in_doubt: how many operations a crash may leave UNDOING (progress is
            committed per window of up to this many fast handlers; 1 commits before
            each handler).
        :param progress: called with (handled, total) after each operation.
        :param drift: what the built-in ``session.fs`` handlers do with a path that
            changed since its operation: ``"refuse"`` (raise :class:`DriftError`,
            touch nothing for that step), ``"skip"`` (leave it, mark the operation
            SKIPPED) or ``"force"`` (restore anyway).
        :return: an :class:`UndoReport`; the session ends ROLLED_BACK, or
            PARTIALLY_ROLLED_BACK when something failed or was cancelled.
        :raises SessionNotFoundError: no session has this id.
        :raises UnknownOperationTypeError: some operation type has no handler; nothing
            was undone.
        :raises UndoInProgressError: another undo of this session is running.
        :raises SessionStateError: the session is still running.

        If the awaiting task is cancelled, the operation whose handler was running is
        marked UNDO_FAILED (its effect is unknown), the session PARTIALLY_ROLLED_BACK,
        and the cancellation propagates; running the undo again resumes.
        """
        self.check_open()
        if drift not in DRIFT_POLICIES:
            raise ValueError(f"drift must be one of {', '.join(DRIFT_POLICIES)}, not {drift!r}")
        token = drift_policy.set(drift)
        try:
            return await undo_session(
                self,
                session_id,
                registry if registry is not None else self.registry,
                on_error=on_error,
                max_in_doubt=max_in_doubt,
                progress=progress,
            )
        finally:
            drift_policy.reset(token)

    # -- pruning --------------------------------------------------------------------

    async def prune(
        self,
        older_than: timedelta | float | datetime,
        *,
        statuses: Collection[SessionStatus | str] | None = None,
    ) -> list[str]:
        """Delete sessions that ended long enough ago, with their operations and images.

        Pruned sessions can no longer be undone: their journal rows and the
        before-images ``session.fs`` kept for them are removed. Sessions still RUNNING
        or UNDOING are never pruned.

        :param older_than: how long ago a session must have ended (a timedelta, or
            seconds), counted from its end (from its start if it never ended); or a
            datetime: sessions that ended before it.
        :param statuses: only sessions with these statuses (default: every ended one:
            completed, failed, cancelled, interrupted, rolled back, partially rolled
            back).
        :return: the ids of the pruned sessions.
        :raises ValueError: a negative age, or a status that is not an ended one.

        If the awaiting task is cancelled after the rows were deleted, the images are
        still removed before the cancellation is raised.
        """
        self.check_open()
        if isinstance(older_than, datetime):
            cutoff = older_than.timestamp()
        else:
            seconds = (
                older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
            )
            if seconds < 0:
                raise ValueError(f"older_than must not be negative, not {older_than!r}")
            cutoff = datetime.now().timestamp() - seconds
        if isinstance(statuses, str):
            statuses = [statuses]  # one name, not a collection of one-letter names
        try:
            wanted = TERMINAL_STATUSES if statuses is None else {SessionStatus(s) for s in statuses}
        except ValueError:
            known = ", ".join(sorted(s.value for s in TERMINAL_STATUSES))
            raise ValueError(f"unknown session status in {statuses!r}; use {known}") from None
        if not wanted <= TERMINAL_STATUSES:
            live = ", ".join(sorted(s.value for s in wanted - TERMINAL_STATUSES))
            raise ValueError(f"sessions that are {live} have not ended and cannot be pruned")
        write = asyncio.ensure_future(
            self.storage.prune_sessions(ended_before=cutoff, statuses=wanted)
        )
        cancelled: asyncio.CancelledError | None = None
        try:
            pruned = await shielded(write)
        except asyncio.CancelledError as exc:
            if write.cancelled() or write.exception() is not None:
                raise
            # The rows are gone: their images must go too before the cancellation.
            pruned, cancelled = write.result(), exc
        # No folder of images to clean: an in-memory journal's is temporary, and a
        # server journal has one only where it was given (session.fs needs it).
        no_images = self._images_dir is None and (self._in_memory() or self._on_server())
        if not no_images:
            images = self.images_dir
            await run_sync(_remove_images, images, pruned)
            if cancelled is not None:
                raise cancelled
            if not self._custom_images:
                await self._remove_orphan_images(images)
        if cancelled is not None:
            raise cancelled
        return pruned

    # -- events ---------------------------------------------------------------------

    def watch(self, session_id: str | None = None, *, max_pending: int = 10_000) -> EventStream:
        """Session and operation events as they are committed, by any process.

        ::

            async with journal.watch() as events:
                async for event in events:
                    if isinstance(event, retract.OperationsEvent):
                        print(event.session_id, event.state, event.first, event.last)

        Yields a :class:`SessionEvent` when a session starts or changes status, and an
        :class:`OperationsEvent` when an undo or a recovery changes operations' states
        (a window marked UNDOING, then UNDONE; steps found IN_DOUBT). A running
        session's own writes (appends, step outcomes) are not announced (see
        ``docs/scaling.md``). Needs a storage
        that can announce changes across processes
        (:class:`~retract.journal.storage.PostgresStorage`, over ``LISTEN``/``NOTIFY``).

        :param session_id: only the events of this session.
        :param max_pending: events buffered for a slow consumer; beyond that the oldest
            are dropped and counted in ``EventStream.dropped``.
        :raises JournalError: the storage cannot announce changes (SQLite, in memory).
        """
        self.check_open()
        storage = self.storage
        if not isinstance(storage, WatchStorage):
            raise JournalError(
                f"journal.watch() needs a storage that announces changes to other processes "
                f"(PostgresStorage); {type(storage).__name__} at {storage.location} cannot. "
                "Poll journal.list_sessions() instead"
            )
        return storage.watch(session_id=session_id, max_pending=max_pending)

    # -- recovery -------------------------------------------------------------------

    async def recover(self) -> list[SessionRecord]:
        """Mark the sessions whose owner process is gone INTERRUPTED.

        A session RUNNING or UNDOING whose owner (same host) has died, or whose pid now
        belongs to a younger process, becomes INTERRUPTED, and its steps still in INTENT
        become IN_DOUBT. So does one of this process whose end could not be written (a
        storage failure) and that nobody here works on any more. In a storage shared
        across hosts (:class:`~retract.journal.storage.LeaseStorage`, PostgreSQL), so
        does a session of any host whose owner stopped renewing its lease: it is taken
        over (this process becomes its owner) under a row lock that other recoverers
        skip. Sessions of live processes are left alone, as are those of other hosts
        where there are no leases (their liveness cannot be checked). Each session is
        claimed atomically, so concurrent recoverers never both take one.

        :return: the sessions this call recovered, as they are now; undo them with
            :meth:`undo_session`.
        """
        self.check_open()
        recovered = await self._recover_dead_owners()
        if isinstance(self.storage, LeaseStorage):
            for session_id in await self.storage.recover_expired(current_owner(), time.time()):
                record = await self.storage.get_session(session_id)
                if record is not None:
                    recovered.append(record)
        return recovered

    async def _recover_dead_owners(self) -> list[SessionRecord]:
        """recover() of the sessions whose owner this host can check."""
        candidates = await self.storage.list_sessions(
            statuses=(SessionStatus.RUNNING, SessionStatus.UNDOING)
        )
        recovered: list[SessionRecord] = []
        for session in candidates:
            owner = session.owner
            if owner is None or session_held(session) is not False:
                continue
            changed = await self.storage.update_session(
                session.session_id,
                status=SessionStatus.INTERRUPTED,
                at=time.time(),
                error=(
                    f"interrupted: process {owner.pid} on {owner.host} ended while the "
                    "session was running"
                    if session.status is SessionStatus.RUNNING
                    else None
                ),
                expect_statuses=(session.status,),
                expect_owner=owner.token,
                settle_intents=True,
            )
            if changed:
                record = await self.storage.get_session(session.session_id)
                if record is not None:
                    recovered.append(record)
        return recovered


def _remove_tree(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _image_folders(images: Path) -> list[str]:
    try:
        return [entry.name for entry in os.scandir(images) if entry.is_dir()]
    except FileNotFoundError:
        return []


def _remove_images(images: Path, session_ids: list[str]) -> None:
    """Remove pruned sessions' image folders (blocking)."""
    for session_id in session_ids:
        shutil.rmtree(images / session_id, ignore_errors=True)


def open_journal(
    location: str | os.PathLike[str],
    *,
    registry: OperationRegistry | None = None,
    metrics: MetricsCollector | None = None,
    synchronous: Synchronous = "FULL",
    busy_timeout: float = 5.0,
    create: bool = True,
    images_dir: str | os.PathLike[str] | None = None,
    schema: str | None = None,
    lease_timeout: float | None = None,
    pool_size: tuple[int, int] | None = None,
) -> Journal:
    """Make a :class:`Journal` for a location; use it with ``async with``.

    ``":memory:"`` gives an in-memory journal; a ``postgresql://`` URL a
    :class:`~retract.journal.storage.PostgresStorage` (the ``postgres`` extra;
    ``synchronous`` does not apply, ``images_dir`` is needed for ``session.fs``);
    anything else is an SQLite file (see
    :class:`SQLiteStorage` for ``synchronous``, ``busy_timeout`` and ``create``, which
    with False refuses a path that holds no journal yet instead of creating one).

    For PostgreSQL only: ``schema`` (default: the URL's ``?schema=``, else
    ``"retract"``), ``lease_timeout`` (seconds,
    default 30) and ``pool_size`` (the pool's ``(min_size, max_size)``, default (1, 10)),
    as :class:`~retract.journal.storage.PostgresStorage` takes them.

    :raises ValueError: a PostgreSQL-only option for another kind of journal.
    """
    storage: Storage
    server_options = {
        name: value
        for name, value in (
            ("schema", schema),
            ("lease_timeout", lease_timeout),
            ("pool_size", pool_size),
        )
        if value is not None
    }
    if server_options and not is_postgres_url(location):
        raise ValueError(
            f"{', '.join(server_options)} only apply to a PostgreSQL journal "
            f"(a postgresql:// URL), not to {str(location)!r}"
        )
    if str(location) == ":memory:":
        storage = InMemoryStorage()
    elif is_postgres_url(location):
        from .storage._postgres import PostgresStorage  # noqa: PLC0415  (postgres extra)

        min_size, max_size = pool_size if pool_size is not None else (1, 10)
        storage = PostgresStorage(
            str(location),
            create=create,
            busy_timeout=busy_timeout,
            schema=schema,
            lease_timeout=lease_timeout if lease_timeout is not None else 30.0,
            min_size=min_size,
            max_size=max_size,
        )
    else:
        storage = SQLiteStorage(
            location, synchronous=synchronous, busy_timeout=busy_timeout, create=create
        )
    return Journal(storage, registry, metrics=metrics, images_dir=images_dir)
