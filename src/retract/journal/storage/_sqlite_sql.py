"""The SQL behind each SQLiteStorage call, and the rows it reads back as records.

Writes are functions of a :class:`~._sqlite_writer.Txn`, run by the group-commit writer
on the connection's thread; reads are statements with their parameters. All SQL text
is built from constants and placeholders only.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

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
from . import _rows as rows
from ._protocol import OperationUpdate
from ._sqlite_writer import Txn, WriteFn

__all__ = (
    "Query",
    "insert_session",
    "list_sessions",
    "operation_record",
    "operation_updates",
    "operations",
    "operations_page",
    "pending_summary",
    "select_session",
    "session_record",
    "undo_progress",
    "update_session",
)

#: A statement and its parameters.
Query = tuple[str, Sequence[Any]]

_SESSION_COLUMNS = (
    "session_id, created_at, status, context, completed_at, error, undo_count, "
    "owner_token, owner_pid, owner_host, owner_started, owner_machine"
)
_OPERATION_COLUMNS = "op_id, sequence, op_type, payload, created_at, state, error, updated_at"
_SESSION_KEY = "(SELECT seq FROM sessions WHERE session_id = ?)"
_SETTLED = "(" + ", ".join(f"'{state.value}'" for state in sorted(SETTLED_STATES)) + ")"
_MARK_UNDOING = (
    "UPDATE operations SET state = ?, updated_at = ?"  # noqa: S608  (only constants)
    f" WHERE session_key = ? AND sequence BETWEEN ? AND ? AND state NOT IN {_SETTLED}"
)
_MARK_UNDONE = (
    "UPDATE operations SET state = ?, error = NULL, updated_at = ?"
    " WHERE session_key = ? AND sequence BETWEEN ? AND ? AND state = ?"
)
_SETTLE_INTENTS = (
    "UPDATE operations SET state = ?, updated_at = ? WHERE session_key = ? AND state = ?"
)


# -- writes -----------------------------------------------------------------------


def insert_session(session_id: str, context_json: str, owner: Owner, created_at: float) -> WriteFn:
    """Insert a RUNNING session (and seed the writer's caches for it)."""

    def insert(txn: Txn) -> None:
        cursor = txn.execute(
            "INSERT INTO sessions (session_id, created_at, status, context, owner_token,"
            " owner_pid, owner_host, owner_started, owner_machine)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                session_id,
                created_at,
                SessionStatus.RUNNING.value,
                context_json,
                owner.token,
                owner.pid,
                owner.host,
                owner.started_at,
                owner.machine,
            ),
        )
        assert cursor.lastrowid is not None  # noqa: S101
        txn.keys[session_id] = cursor.lastrowid
        txn.next_seq[session_id] = 1

    return insert


def prune_sessions(ended_before: float, statuses: Collection[SessionStatus]) -> WriteFn:
    """Delete ended sessions (operations cascade); the function returns their ids."""
    marks = ", ".join("?" * len(statuses))
    where = f"status IN ({marks}) AND COALESCE(completed_at, created_at) < ?"
    params = [*(s.value for s in statuses), ended_before]
    select = f"SELECT session_id FROM sessions WHERE {where}"  # noqa: S608  (placeholders only)
    delete = f"DELETE FROM sessions WHERE {where}"  # noqa: S608

    def prune(txn: Txn) -> list[str]:
        if not statuses:
            return []
        txn.begin()
        ids = [row[0] for row in txn.execute(select, params)]
        txn.execute(delete, params)
        txn.finished.update(ids)
        return ids

    return prune


def update_session(
    session_id: str,
    *,
    status: SessionStatus,
    at: float,
    error: str | None,
    owner: Owner | None,
    expect_statuses: Collection[SessionStatus] | None,
    expect_owner: str | None,
    count_undo: bool,
    settle_intents: bool,
) -> WriteFn:
    """Compare-and-set a session's status; the function returns whether it changed."""
    sets = ["status = ?"]
    params: list[Any] = [status.value]
    if status in TERMINAL_STATUSES:
        sets.append("completed_at = ?")
        params.append(at)
    if error is not None:
        sets.append("error = ?")
        params.append(error)
    if owner is not None:
        sets.append(
            "owner_token = ?, owner_pid = ?, owner_host = ?, owner_started = ?, owner_machine = ?"
        )
        params += [owner.token, owner.pid, owner.host, owner.started_at, owner.machine]
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

    def update(txn: Txn) -> bool:
        if txn.execute(sql, params).rowcount == 0:
            return False
        if settle_intents:
            key = txn.writer.session_key(txn, session_id)
            txn.execute(
                _SETTLE_INTENTS,
                (OperationState.IN_DOUBT.value, at, key, OperationState.INTENT.value),
            )
        if status in TERMINAL_STATUSES:
            txn.finished.add(session_id)
        return True

    return update


def operation_updates(updates: Sequence[OperationUpdate], at: float) -> WriteFn:
    """Apply operation state changes; unknown operations are skipped."""

    def update(txn: Txn) -> None:
        plain: list[tuple[Any, ...]] = []
        with_payload: list[tuple[Any, ...]] = []
        for u in updates:
            key = txn.writer.known_session_key(txn, u.session_id)
            if key is None:
                continue  # like an UPDATE matching no row
            if u.payload_json is None:
                plain.append((u.state.value, u.error, at, key, u.sequence))
            else:
                with_payload.append((u.state.value, u.error, at, u.payload_json, key, u.sequence))
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


def undo_progress(
    session_id: str,
    *,
    outcomes: Sequence[OperationUpdate],
    undone: tuple[int, int] | None,
    begin: tuple[int, int] | None,
    at: float,
) -> WriteFn:
    """One step of an undo's progress, in the Storage protocol's order."""
    apply_outcomes = operation_updates(outcomes, at)

    def progress(txn: Txn) -> None:
        apply_outcomes(txn)
        key = txn.writer.session_key(txn, session_id)
        if undone is not None:
            txn.execute(
                _MARK_UNDONE,
                (OperationState.UNDONE.value, at, key, *undone, OperationState.UNDOING.value),
            )
        if begin is not None:
            txn.execute(_MARK_UNDOING, (OperationState.UNDOING.value, at, key, *begin))

    return progress


# -- reads ------------------------------------------------------------------------


def select_session(session_id: str) -> Query:
    """One session by id."""
    return (
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = ?",  # noqa: S608
        (session_id,),
    )


def list_sessions(
    limit: int | None, statuses: Collection[SessionStatus] | None, id_prefix: str | None
) -> Query:
    """Sessions, newest first, filtered."""
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
    return sql, params


def operations(session_id: str) -> Query:
    """All operations of a session, in order."""
    return (
        f"SELECT {_OPERATION_COLUMNS} FROM operations"  # noqa: S608
        f" WHERE session_key = {_SESSION_KEY} ORDER BY sequence",
        (session_id,),
    )


def operations_page(session_id: str, before: int | None, limit: int, pending_only: bool) -> Query:
    """A page of a session's operations, newest first."""
    sql = f"SELECT {_OPERATION_COLUMNS} FROM operations WHERE session_key = {_SESSION_KEY}"  # noqa: S608
    params: list[Any] = [session_id]
    if before is not None:
        sql += " AND sequence < ?"
        params.append(before)
    if pending_only:
        sql += f" AND state NOT IN {_SETTLED}"
    sql += " ORDER BY sequence DESC LIMIT ?"
    params.append(limit)
    return sql, params


def pending_summary(session_id: str) -> Query:
    """Operation types and counts still needing undo."""
    return (
        "SELECT op_type, COUNT(*) FROM operations"  # noqa: S608
        f" WHERE session_key = {_SESSION_KEY} AND state NOT IN {_SETTLED} GROUP BY op_type",
        (session_id,),
    )


def session_record(row: Sequence[Any]) -> SessionRecord:
    """A sessions row (in ``_SESSION_COLUMNS`` order) as a record."""
    return rows.session_record(row, from_timestamp)


def operation_record(session_id: str, row: Sequence[Any]) -> OperationRecord:
    """An operations row (in ``_OPERATION_COLUMNS`` order) as a record."""
    return rows.operation_record(session_id, row, from_timestamp)
