"""InMemoryStorage: the journal in a dict, for tests and short-lived programs.

It follows the same contract as SQLiteStorage (the conformance suite runs against
both): payloads are stored as JSON text, so a record read back never aliases the caller's
objects, and every write is all-or-nothing. Nothing survives the process.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from ..._errors import JournalClosedError, SessionNotFoundError
from .._encoding import decode
from .._records import (
    SETTLED_STATES,
    TERMINAL_STATUSES,
    OperationRecord,
    OperationState,
    Owner,
    SessionRecord,
    SessionStatus,
    from_timestamp,
)
from ._protocol import NewOperation, OperationUpdate

__all__ = ("InMemoryStorage",)


@dataclass(slots=True)
class _Op:
    op_id: str
    session_id: str
    sequence: int
    op_type: str
    payload_json: str
    created_at: float
    state: OperationState
    error: str | None = None
    updated_at: float | None = None

    def record(self) -> OperationRecord:
        return OperationRecord(
            op_id=self.op_id,
            session_id=self.session_id,
            sequence=self.sequence,
            op_type=self.op_type,
            payload=decode(self.payload_json),
            created_at=from_timestamp(self.created_at),  # type: ignore[arg-type]
            state=self.state,
            error=self.error,
            updated_at=from_timestamp(self.updated_at),
        )


@dataclass(slots=True)
class _Session:
    session_id: str
    created_at: float
    context_json: str
    owner: Owner
    status: SessionStatus = SessionStatus.RUNNING
    completed_at: float | None = None
    error: str | None = None
    undo_count: int = 0
    ops: list[_Op] = field(default_factory=list)

    def record(self) -> SessionRecord:
        return SessionRecord(
            session_id=self.session_id,
            created_at=from_timestamp(self.created_at),  # type: ignore[arg-type]
            status=self.status,
            context=decode(self.context_json),
            completed_at=from_timestamp(self.completed_at),
            error=self.error,
            undo_count=self.undo_count,
            owner=self.owner,
        )


class InMemoryStorage:
    """A journal storage that lives in this process's memory.

    Not thread-safe: use it from one event loop, like every retract journal.
    """

    def __init__(self) -> None:
        self._sessions: dict[str, _Session] = {}
        self._state = "new"

    def __repr__(self) -> str:
        return f"InMemoryStorage(<{len(self._sessions)} sessions>)"

    @property
    def location(self) -> str:
        """Always ``":memory:"``."""
        return ":memory:"

    async def open(self) -> None:
        """Mark the storage open."""
        if self._state != "new":
            raise JournalClosedError(
                "this InMemoryStorage was already opened; create a new one to open it again"
            )
        self._state = "open"

    async def aclose(self) -> None:
        """Mark the storage closed. Idempotent; the data stays readable by nobody."""
        self._state = "closed"

    def _check_open(self) -> None:
        if self._state != "open":
            state = "closed" if self._state == "closed" else "not open"
            raise JournalClosedError(
                f"the in-memory journal is {state}; use `async with Journal(...)`"
            )

    async def create_session(
        self, session_id: str, context_json: str, owner: Owner, created_at: float
    ) -> None:
        """Insert a RUNNING session."""
        self._check_open()
        if session_id in self._sessions:
            raise ValueError(f"session {session_id} already exists")
        self._sessions[session_id] = _Session(session_id, created_at, context_json, owner)

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
        """Compare-and-set a session's status."""
        self._check_open()
        session = self._sessions.get(session_id)
        if (
            session is None
            or (expect_statuses is not None and session.status not in expect_statuses)
            or (expect_owner is not None and session.owner.token != expect_owner)
        ):
            return False
        session.status = status
        if status in TERMINAL_STATUSES:
            session.completed_at = at
        if error is not None:
            session.error = error
        if owner is not None:
            session.owner = owner
        if count_undo:
            session.undo_count += 1
        if settle_intents:
            for op in session.ops:
                if op.state is OperationState.INTENT:
                    op.state = OperationState.IN_DOUBT
                    op.updated_at = at
        return True

    async def append_operations(
        self, session_id: str, operations: Sequence[NewOperation]
    ) -> list[int]:
        """Append operations with gap-free sequence numbers."""
        self._check_open()
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFoundError(session_id)
        first = len(session.ops) + 1
        for i, new in enumerate(operations):
            op = _Op(
                new.op_id,
                session_id,
                first + i,
                new.op_type,
                new.payload_json,
                new.created_at,
                new.state,
            )
            session.ops.append(op)
        return list(range(first, first + len(operations)))

    async def update_operations(self, updates: Sequence[OperationUpdate], at: float) -> None:
        """Apply operation state changes, all or nothing."""
        self._check_open()
        for update in updates:
            session = self._sessions.get(update.session_id)
            if session is None or not 1 <= update.sequence <= len(session.ops):
                continue  # like an SQL UPDATE matching no row
            op = session.ops[update.sequence - 1]
            op.state = update.state
            op.error = update.error
            op.updated_at = at
            if update.payload_json is not None:
                op.payload_json = update.payload_json

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
        await self.update_operations(outcomes, at)
        session = self._sessions.get(session_id)
        if session is None:
            return
        if undone is not None:
            for op in session.ops[max(undone[0] - 1, 0) : undone[1]]:
                if op.state is OperationState.UNDOING:
                    op.state, op.error, op.updated_at = OperationState.UNDONE, None, at
        if begin is not None:
            for op in session.ops[max(begin[0] - 1, 0) : begin[1]]:
                if op.state not in SETTLED_STATES:
                    op.state, op.updated_at = OperationState.UNDOING, at

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """One session, or None."""
        self._check_open()
        session = self._sessions.get(session_id)
        return None if session is None else session.record()

    async def prune_sessions(
        self, *, ended_before: float, statuses: Collection[SessionStatus]
    ) -> list[str]:
        """Delete ended sessions and their operations."""
        self._check_open()
        doomed = [
            sid
            for sid, session in self._sessions.items()
            if session.status in statuses
            and (session.completed_at or session.created_at) < ended_before
        ]
        for sid in doomed:
            del self._sessions[sid]
        return doomed

    async def list_sessions(
        self,
        *,
        limit: int | None = None,
        statuses: Collection[SessionStatus] | None = None,
        id_prefix: str | None = None,
    ) -> list[SessionRecord]:
        """Sessions, newest first."""
        self._check_open()
        found: list[SessionRecord] = []
        for session in reversed(self._sessions.values()):
            if limit is not None and len(found) >= limit:
                break
            if statuses is not None and session.status not in statuses:
                continue
            if id_prefix is not None and not session.session_id.startswith(id_prefix):
                continue
            found.append(session.record())
        return found

    async def get_operations(self, session_id: str) -> list[OperationRecord]:
        """All operations of a session, in order."""
        self._check_open()
        session = self._sessions.get(session_id)
        return [] if session is None else [op.record() for op in session.ops]

    async def operations_page(
        self, session_id: str, *, before: int | None, limit: int, pending_only: bool
    ) -> list[OperationRecord]:
        """A page of operations, newest first."""
        self._check_open()
        session = self._sessions.get(session_id)
        if session is None:
            return []
        end = len(session.ops) if before is None else min(before - 1, len(session.ops))
        page: list[OperationRecord] = []
        for index in range(end - 1, -1, -1):
            if len(page) >= limit:
                break
            op = session.ops[index]
            if pending_only and op.state in SETTLED_STATES:
                continue
            page.append(op.record())
        return page

    async def pending_summary(self, session_id: str) -> tuple[int, set[str]]:
        """Count and types of the operations that still need undo."""
        self._check_open()
        session = self._sessions.get(session_id)
        pending = [op for op in (session.ops if session else ()) if op.state not in SETTLED_STATES]
        return len(pending), {op.op_type for op in pending}
