"""Rows of the sessions and operations tables as records, for the SQL storages.

SQLite keeps times as POSIX seconds, PostgreSQL as ``timestamptz``: each storage passes
``when``, which turns its stored time (or None) into an aware UTC datetime (or None).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .._encoding import decode
from .._records import STATE_BY_VALUE, OperationRecord, Owner, SessionRecord, SessionStatus

__all__ = ("operation_record", "session_record")

When = Callable[[Any], Any]


def session_record(row: Sequence[Any], when: When) -> SessionRecord:
    """A sessions row as a record.

    The row: session id, created, status, context, completed, error, undo count, then
    the owner's token, pid, host, start time and machine, then (where the storage keeps
    leases) the lease's expiry.
    """
    (sid, created, status, context, completed, error, undo_count, *owner) = row
    token, pid, host, started, machine, *lease = owner
    return SessionRecord(
        session_id=sid,
        created_at=when(created),
        status=SessionStatus(status),
        context=decode(context),
        completed_at=when(completed),
        error=error,
        undo_count=undo_count,
        owner=None if token is None else Owner(token, pid, host, started, machine),
        lease_expires_at=when(lease[0]) if lease else None,
    )


def operation_record(session_id: str, row: Sequence[Any], when: When) -> OperationRecord:
    """An operations row as a record.

    The row: op id, sequence, type, payload, created, state, error, updated.
    """
    op_id, sequence, op_type, payload, created, state, error, updated = row
    return OperationRecord(
        op_id,
        session_id,
        sequence,
        op_type,
        decode(payload),
        when(created),
        STATE_BY_VALUE[state],
        error,
        when(updated),
    )
