"""What the journal stores and returns: statuses, states, records and undo reports."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = (
    "FailedOperation",
    "OperationRecord",
    "OperationState",
    "Owner",
    "SessionRecord",
    "SessionStatus",
    "UndoPlan",
    "UndoReport",
    "from_timestamp",
)


class SessionStatus(enum.StrEnum):
    """Where a session is in its life. Every transition is written to the journal."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    UNDOING = "undoing"
    ROLLED_BACK = "rolled_back"
    PARTIALLY_ROLLED_BACK = "partially_rolled_back"


#: Statuses of a session that nobody is working on any more.
TERMINAL_STATUSES = frozenset(
    {
        SessionStatus.COMPLETED,
        SessionStatus.FAILED,
        SessionStatus.CANCELLED,
        SessionStatus.INTERRUPTED,
        SessionStatus.ROLLED_BACK,
        SessionStatus.PARTIALLY_ROLLED_BACK,
    }
)


class OperationState(enum.StrEnum):
    """Where one operation is: done, in doubt, or on its way back."""

    INTENT = "intent"
    DONE = "done"
    FAILED = "failed"
    IN_DOUBT = "in_doubt"
    UNDOING = "undoing"
    UNDONE = "undone"
    UNDO_FAILED = "undo_failed"
    SKIPPED = "skipped"


#: Operation states that need no further undo.
SETTLED_STATES = frozenset({OperationState.UNDONE, OperationState.SKIPPED})
#: Stored value -> state, faster than calling the enum.
STATE_BY_VALUE = {state.value: state for state in OperationState}


def from_timestamp(value: float | None) -> datetime | None:
    """Turn a stored POSIX timestamp into an aware UTC datetime."""
    return None if value is None else datetime.fromtimestamp(value, UTC)


@dataclass(frozen=True, slots=True)
class Owner:
    """The process responsible for a session: who may write to it, and who recovers it.

    :ivar token: random per process, unique across hosts.
    :ivar pid: the process id on :attr:`host`.
    :ivar host: the host name.
    :ivar started_at: the process start time (POSIX seconds), to tell a reused pid apart.
    :ivar machine: which pid space the pid belongs to (the kernel's boot id and the pid
        namespace), or None where that cannot be read. Two containers can share a host
        name but not a pid space: a pid is only checked where this matches.
    """

    token: str
    pid: int
    host: str
    started_at: float
    machine: str | None = None


@dataclass(slots=True)
class SessionRecord:
    """One session as stored: unmake's fields plus the owner and ``state``.

    A snapshot: changing it changes nothing in the journal. ``state`` is the same value
    as ``status``, named like :attr:`OperationRecord.state`.

    :ivar lease_expires_at: when the owner's lease on the session runs out unless the
        owner renews it (by the database server's clock), in a storage shared across
        hosts (:class:`~retract.journal.storage.PostgresStorage`); None in the others.
        It matters only while the session is RUNNING or UNDOING.
    """

    session_id: str
    created_at: datetime
    status: SessionStatus
    context: dict[str, Any] = field(default_factory=dict)
    completed_at: datetime | None = None
    error: str | None = None
    undo_count: int = 0
    owner: Owner | None = None
    lease_expires_at: datetime | None = None

    @property
    def state(self) -> SessionStatus:
        """The session status (an alias, for symmetry with operations)."""
        return self.status


@dataclass(slots=True)
class OperationRecord:
    """One journaled operation: unmake's fields plus ``state``, ``error`` and ``updated_at``.

    A snapshot, like :class:`SessionRecord`. Undo handlers receive it. :attr:`in_doubt`
    is true when its effect may be partial or may already have been undone: the handler
    should check before acting.
    """

    op_id: str
    session_id: str
    sequence: int
    op_type: str
    payload: dict[str, Any]
    created_at: datetime
    state: OperationState = OperationState.DONE
    error: str | None = None
    updated_at: datetime | None = None

    @property
    def in_doubt(self) -> bool:
        """True unless the operation is known to have completed and not been undone yet."""
        return self.state is not OperationState.DONE


@dataclass(frozen=True, slots=True)
class UndoPlan:
    """What an undo would do, computed without side effects.

    :ivar operations: the operations still to undo, in the order they would be undone
        (newest first). Operations already UNDONE or SKIPPED are left out.
    :ivar missing_types: operation types with no handler; the undo would refuse to start.
    :ivar blocker: why the session cannot be undone right now (it is still running, or
        another live process is undoing it), or None.
    """

    session: SessionRecord
    operations: tuple[OperationRecord, ...]
    missing_types: tuple[str, ...] = ()
    blocker: str | None = None

    @property
    def ready(self) -> bool:
        """True when an undo could start now: every type has a handler, nothing blocks."""
        return not self.missing_types and self.blocker is None

    def __len__(self) -> int:
        return len(self.operations)


@dataclass(frozen=True, slots=True)
class FailedOperation:
    """An operation whose undo handler raised."""

    op_id: str
    sequence: int
    op_type: str
    error: str


@dataclass(frozen=True, slots=True)
class UndoReport:
    """The outcome of one undo run. It stays small however many operations were undone.

    :ivar status: the session's status after the run.
    :ivar total: operations that needed undo when the run started.
    :ivar undone: operations undone by this run.
    :ivar skipped: operations whose handler raised :class:`~retract.UndoSkipped`.
    :ivar failed: operations whose handler raised, in the order they failed.
    :ivar remaining: operations still to undo by a later run: those whose handler failed
        and those not reached after a stop or cancellation.
    """

    session_id: str
    status: SessionStatus
    total: int
    undone: int
    skipped: int
    failed: tuple[FailedOperation, ...]
    remaining: int
    duration: float

    @property
    def complete(self) -> bool:
        """True when every operation of the session is now undone or skipped."""
        return self.status is SessionStatus.ROLLED_BACK
