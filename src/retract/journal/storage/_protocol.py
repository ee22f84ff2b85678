"""The contract between the journal and a storage backend.

The journal holds all the policy (what may happen when); a storage only has to make
each call atomic and durable before it returns. Every write method is one transaction:
either all of its rows change or none do. A storage may group the writes of concurrent
callers into one transaction (group commit) as long as each caller resumes only after
its own rows are committed.

Cancellation: a write whose awaiting task is cancelled may still be committed; callers
that must know the outcome shield the call.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from .._events import EventStream
from .._records import OperationRecord, OperationState, Owner, SessionRecord, SessionStatus

__all__ = ("LeaseStorage", "NewOperation", "OperationUpdate", "Storage", "WatchStorage")


class NewOperation(NamedTuple):
    """An operation to append; the storage assigns its sequence number."""

    op_id: str
    op_type: str
    payload_json: str
    state: OperationState
    created_at: float


class OperationUpdate(NamedTuple):
    """A change of one operation's state (and optionally its error or payload).

    The operation is named by its session and sequence number.
    """

    session_id: str
    sequence: int
    state: OperationState
    error: str | None = None
    payload_json: str | None = None


class Storage(Protocol):
    """Where a journal keeps its sessions and operations.

    Implementations: :class:`~retract.SQLiteStorage`, :class:`~retract.InMemoryStorage`,
    :class:`~retract.journal.storage.PostgresStorage` (the ``postgres`` extra).
    All methods are called from one event loop. Methods other than :meth:`open` raise
    :class:`~retract.JournalClosedError` when the storage is not open.
    """

    @property
    def location(self) -> str:
        """A human-readable description of where the data lives (for messages)."""
        ...

    async def open(self) -> None:
        """Connect, check or create the schema. Opening an open storage is an error.

        :raises JournalOpenError: the location cannot be opened or created.
        :raises NotAJournalError: the location holds something that is not a journal.
        :raises SchemaVersionError: the journal was written by a newer retract.
        """
        ...

    async def aclose(self) -> None:
        """Finish pending writes and release every resource. Idempotent."""
        ...

    # -- writes ---------------------------------------------------------------------

    async def create_session(
        self, session_id: str, context_json: str, owner: Owner, created_at: float
    ) -> None:
        """Insert a RUNNING session owned by ``owner``."""
        ...

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
        """Change a session's status, as a compare-and-set.

        Nothing changes (and False is returned) when the session does not exist, its
        status is not in ``expect_statuses`` (if given) or its owner token is not
        ``expect_owner`` (if given).

        :param at: the time of the change; stored as ``completed_at`` when ``status`` is
            terminal.
        :param error: stored when not None; the old error is kept otherwise.
        :param owner: the new owner (a claim); the owner is kept when None.
        :param count_undo: also increment ``undo_count``.
        :param settle_intents: also turn the session's INTENT operations IN_DOUBT.
        :return: whether the session changed.
        """
        ...

    async def append_operations(
        self, session_id: str, operations: Sequence[NewOperation]
    ) -> list[int]:
        """Append operations to a session, numbering them after its last one (from 1).

        Sequence numbers are gap-free: a failed append consumes none.

        :return: the sequence numbers given, in order.
        """
        ...

    async def update_operations(self, updates: Sequence[OperationUpdate], at: float) -> None:
        """Apply state changes to operations, all in one transaction.

        The error is replaced by ``update.error`` (None clears it); the payload is
        replaced only when ``update.payload_json`` is given. Unknown operations are
        ignored.
        """
        ...

    async def record_undo_progress(
        self,
        session_id: str,
        *,
        outcomes: Sequence[OperationUpdate],
        undone: tuple[int, int] | None,
        begin: tuple[int, int] | None,
        at: float,
    ) -> None:
        """Write one step of an undo's progress, in one transaction.

        In this order:

        1. apply ``outcomes`` (individual results: SKIPPED, UNDO_FAILED, or a state given
           back to an operation whose handler never ran);
        2. ``undone=(lo, hi)``: operations of the session with ``lo <= sequence <= hi``
           that are still UNDOING become UNDONE;
        3. ``begin=(lo, hi)``: operations with ``lo <= sequence <= hi`` that are not
           UNDONE or SKIPPED become UNDOING.

        Ranges let a window of hundreds of operations cost two statements, not hundreds.
        """
        ...

    async def prune_sessions(
        self, *, ended_before: float, statuses: Collection[SessionStatus]
    ) -> list[str]:
        """Delete the sessions in ``statuses`` that ended before ``ended_before``.

        Their operations go with them. One transaction: the status is checked as the
        rows are deleted, so a session that changes state meanwhile is kept.

        :return: the deleted sessions' ids.
        """
        ...

    # -- reads ----------------------------------------------------------------------

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """One session, or None."""
        ...

    async def list_sessions(
        self,
        *,
        limit: int | None = None,
        statuses: Collection[SessionStatus] | None = None,
        id_prefix: str | None = None,
    ) -> list[SessionRecord]:
        """Sessions, newest first, optionally filtered by status or id prefix."""
        ...

    async def get_operations(self, session_id: str) -> list[OperationRecord]:
        """All operations of a session in sequence order."""
        ...

    async def operations_page(
        self, session_id: str, *, before: int | None, limit: int, pending_only: bool
    ) -> list[OperationRecord]:
        """Up to ``limit`` operations with sequence below ``before``, newest first.

        :param pending_only: leave out UNDONE and SKIPPED operations.
        """
        ...

    async def pending_summary(self, session_id: str) -> tuple[int, set[str]]:
        """How many operations still need undo, and their distinct types."""
        ...


@runtime_checkable
class LeaseStorage(Storage, Protocol):
    """A storage shared across hosts, where a session's owner holds a lease on it.

    A pid check cannot see another host, so such a storage stamps every RUNNING or
    UNDOING session with its owner's lease: a heartbeat time (by the storage's own
    clock) and the lease length. The :class:`~retract.Journal` renews the leases of
    the sessions this process works on every third of :attr:`lease_timeout`, and
    :meth:`~retract.Journal.recover` takes over those whose owner stopped renewing.
    Appends, operation updates and undo progress of a session another process took over
    raise :class:`~retract.SessionTakenOverError` and change nothing of it.
    """

    @property
    def lease_timeout(self) -> float:
        """Seconds a session's lease lasts after its last renewal."""
        ...

    async def renew_leases(self, owner_token: str, session_ids: Collection[str]) -> set[str]:
        """Renew the leases of the sessions among ``session_ids`` that ``owner_token`` holds.

        Each keeps the lease length it was given when created or claimed.

        :return: the sessions among ``session_ids`` that another owner holds now (another
            process took them over).
        """
        ...

    async def recover_expired(
        self, owner: Owner, at: float, session_ids: Collection[str] | None = None
    ) -> list[str]:
        """Take over the RUNNING or UNDOING sessions whose lease expired.

        Each is claimed with a row lock that concurrent recoverers skip, so no two
        recoverers take one session; it becomes INTERRUPTED, owned by ``owner`` (with a
        fresh lease), and its INTENT operations IN_DOUBT. Sessions ``owner`` holds
        itself are never taken: its own lease lapsed because it stalled, not died.

        :param at: the time of the change.
        :param session_ids: only these sessions (default: every expired one).
        :return: the ids of the sessions this call took over.
        """
        ...


@runtime_checkable
class WatchStorage(Storage, Protocol):
    """A storage that announces its committed changes to every process watching it."""

    def watch(self, *, session_id: str | None = None, max_pending: int = 10_000) -> EventStream:
        """A stream of the events committed from now on (of one session, or all).

        :param max_pending: events kept for a slow consumer; older ones are dropped.
        """
        ...
