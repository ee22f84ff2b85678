"""The PostgreSQL journal schema and the SQL text of every PostgresStorage call.

Plain strings, no driver: the only module that imports asyncpg is :mod:`._postgres`.
All SQL is built from constants, the (checked and quoted) schema name and ``$n``
placeholders; values are always bound as parameters.

The layout follows the SQLite journal's (``_sqlite_schema``): sessions with an integer
key and their owner (token, pid, host, start time, pid space), operations keyed by
(session, sequence). What differs:

* times of records are ``timestamptz`` (read back as aware UTC datetimes); the owner's
  process start time stays ``double precision``, an identity compared exactly;
* payloads and contexts are ``json`` (stored as written: numbers, key order and NUL
  escapes come back exactly, which ``jsonb`` would not give);
* ``sessions.last_sequence`` is the last sequence number given out, so an append
  numbers its operations with one row update, gap-free across processes (the row lock
  orders concurrent appenders; a rolled-back append gives its numbers back);
* the schema version lives in a ``journal_meta`` table of the journal's schema;
* (version 2) a session holds a lease: ``heartbeat_at`` (the server's clock) and
  ``lease_seconds`` (its owner's lease length), so a process on another host can tell
  when the owner stopped renewing it (:meth:`Statements.recover_expired`);
* (version 2) triggers announce every session status change and every change of
  operation states on a channel per schema (``NOTIFY``), for ``Journal.watch()``.
  Appends are not announced: a ``NOTIFY`` takes a cluster-wide lock at commit, which
  would serialize the commits of every writing process.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from .._records import (
    SETTLED_STATES,
    TERMINAL_STATUSES,
    OperationState,
    Owner,
    SessionStatus,
)

__all__ = (
    "APPLICATION",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Statements",
    "no_nul",
    "owner_fields",
    "quote_schema",
)

#: Stored in ``journal_meta.application``: what tells a journal from other tables.
APPLICATION = "retract"
#: Stored in ``journal_meta.schema_version``; bumped by every schema change.
SCHEMA_VERSION = 2

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def quote_schema(schema: str) -> str:
    """The schema name as a quoted identifier.

    :raises ValueError: not 1 to 63 letters, digits and underscores, starting with a
        letter or underscore (no quoting tricks, no surprises in messages), or starting
        with ``pg_``, which PostgreSQL keeps for its own schemas.
    """
    if schema.lower().startswith("pg_"):
        raise ValueError(
            f"invalid schema name {schema!r}: PostgreSQL keeps names starting with 'pg_' "
            "for its own schemas; choose another (e.g. 'retract')"
        )
    if _SCHEMA_NAME.fullmatch(schema) is None:
        raise ValueError(
            f"invalid schema name {schema!r}: use 1 to 63 letters, digits or '_', "
            "starting with a letter or '_' (e.g. 'retract')"
        )
    return f'"{schema}"'


def _create_v1(s: str) -> list[str]:
    return [
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"""CREATE TABLE {s}.sessions (
            key           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            session_id    text NOT NULL UNIQUE,
            created_at    timestamptz NOT NULL,
            completed_at  timestamptz,
            status        text NOT NULL,
            context       json NOT NULL,
            error         text,
            undo_count    integer NOT NULL DEFAULT 0,
            last_sequence bigint NOT NULL DEFAULT 0,
            owner_token   text,
            owner_pid     bigint,
            owner_host    text,
            owner_started double precision,
            owner_machine text
        )""",
        f"CREATE INDEX sessions_by_status ON {s}.sessions (status)",
        f"""CREATE TABLE {s}.operations (
            session_key bigint NOT NULL REFERENCES {s}.sessions (key) ON DELETE CASCADE,
            sequence    bigint NOT NULL,
            op_id       text NOT NULL,
            op_type     text NOT NULL,
            payload     json NOT NULL,
            state       text NOT NULL,
            created_at  timestamptz NOT NULL,
            updated_at  timestamptz,
            error       text,
            PRIMARY KEY (session_key, sequence)
        )""",
        f"""CREATE TABLE {s}.journal_meta (
            application    text PRIMARY KEY CHECK (application = '{APPLICATION}'),
            schema_version integer NOT NULL,
            created_at     timestamptz NOT NULL DEFAULT now()
        )""",
        f"INSERT INTO {s}.journal_meta (application, schema_version)"  # noqa: S608
        f" VALUES ('{APPLICATION}', 1)",
    ]


#: The lease (seconds) that version 2 gives the sessions live when a journal is upgraded.
MIGRATED_LEASE = 30.0
_LIVE = f"('{SessionStatus.RUNNING.value}', '{SessionStatus.UNDOING.value}')"
#: Operation states whose changes are announced (what an undo or a recovery sets).
_ANNOUNCED = (
    "("
    + ", ".join(
        f"'{state.value}'"
        for state in (
            OperationState.UNDOING,
            OperationState.UNDONE,
            OperationState.UNDO_FAILED,
            OperationState.SKIPPED,
            OperationState.IN_DOUBT,
        )
    )
    + ")"
)


def event_channel(schema: str) -> str:
    """The ``NOTIFY`` channel of a journal's events: one per schema, under 64 bytes."""
    channel = f"retract.{schema}"
    if len(channel) < 64:
        return channel
    return "retract." + hashlib.sha256(schema.encode()).hexdigest()[:32]


def _to_v2(s: str) -> list[str]:
    channel = event_channel(s.strip('"'))
    now = "extract(epoch FROM clock_timestamp())"
    return [
        f"ALTER TABLE {s}.sessions ADD COLUMN heartbeat_at timestamptz,"
        " ADD COLUMN lease_seconds double precision",
        # Sessions live at the upgrade get a lease from now: unless a process of this
        # version renews it (theirs, of version 1, cannot), it expires and they can be
        # taken over, rather than stay beyond anyone's reach.
        f"UPDATE {s}.sessions SET heartbeat_at = clock_timestamp(),"  # noqa: S608
        f" lease_seconds = {MIGRATED_LEASE} WHERE status IN {_LIVE}",
        f"""CREATE FUNCTION {s}.notify_session() RETURNS trigger LANGUAGE plpgsql AS $body$
        BEGIN
            PERFORM pg_notify('{channel}', json_build_object(
                'kind', 'session', 'session_id', NEW.session_id, 'status', NEW.status,
                'undo_count', NEW.undo_count, 'at', {now})::text);
            RETURN NULL;
        END
        $body$""",
        f"CREATE TRIGGER notify_created AFTER INSERT ON {s}.sessions"
        f" FOR EACH ROW EXECUTE FUNCTION {s}.notify_session()",
        f"CREATE TRIGGER notify_status AFTER UPDATE OF status ON {s}.sessions"
        " FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)"
        f" EXECUTE FUNCTION {s}.notify_session()",
        # One event per session and new state per statement: a window of an undo that
        # flips 500 operations to UNDONE is one event with its sequence range. Only the
        # states an undo or a recovery gives: a running session's own step outcomes
        # (DONE, FAILED) are not announced, like its appends.
        f"""CREATE FUNCTION {s}.notify_operations() RETURNS trigger LANGUAGE plpgsql
        AS $body$
        BEGIN
            PERFORM pg_notify('{channel}', json_build_object(
                'kind', 'operations', 'session_id', s.session_id, 'state', c.state,
                'count', c.n, 'first', c.lo, 'last', c.hi, 'at', {now})::text)
            FROM (SELECT n.session_key, n.state, count(*) AS n, min(n.sequence) AS lo,
                         max(n.sequence) AS hi
                  FROM new_rows AS n JOIN old_rows AS o USING (session_key, sequence)
                  WHERE n.state IS DISTINCT FROM o.state AND n.state IN {_ANNOUNCED}
                  GROUP BY n.session_key, n.state) AS c
            JOIN {s}.sessions AS s ON s.key = c.session_key
            ORDER BY c.session_key, c.lo;
            RETURN NULL;
        END
        $body$""",  # noqa: S608
        f"CREATE TRIGGER notify_states AFTER UPDATE ON {s}.operations"
        " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
        f" FOR EACH STATEMENT EXECUTE FUNCTION {s}.notify_operations()",
        f"UPDATE {s}.journal_meta SET schema_version = 2",  # noqa: S608
    ]


#: version -> the statements that bring a journal of the previous version (or an empty
#: schema, for version 1) to it, each a function of the quoted schema name. A migration
#: ends by setting ``journal_meta.schema_version``; each runs in the transaction that
#: holds the schema's advisory lock.
MIGRATIONS = {1: _create_v1, 2: _to_v2}

_SESSION_COLUMNS = (
    "session_id, created_at, status, context::text, completed_at, error, undo_count,"
    " owner_token, owner_pid, owner_host, owner_started, owner_machine,"
    " heartbeat_at + lease_seconds * interval '1 second'"
)
_OPERATION_COLUMNS = "op_id, sequence, op_type, payload::text, created_at, state, error, updated_at"
_SETTLED = "(" + ", ".join(f"'{state.value}'" for state in sorted(SETTLED_STATES)) + ")"


@dataclass(frozen=True, slots=True)
class Statements:
    """Every statement of PostgresStorage, for one schema (see :meth:`for_schema`)."""

    schema: str
    channel: str
    # -- open
    lock: str
    inspect: str
    meta: str
    # -- writes
    insert_session: str
    append: str
    holders: str
    hold: str
    renew_leases: str
    recover_expired: str
    update_operations: str
    mark_undone: str
    mark_undoing: str
    prune: str
    # -- reads
    select_session: str
    list_sessions: str
    operations: str
    operations_page: str
    operations_page_pending: str
    pending_summary: str

    @classmethod
    def for_schema(cls, schema: str) -> Statements:
        """The statements on the tables of ``schema`` (quoted here)."""
        s = quote_schema(schema)
        key = f"(SELECT key FROM {s}.sessions WHERE session_id = $1)"  # noqa: S608
        return cls(
            schema=s,
            channel=event_channel(schema),
            # One lock per schema, held until the transaction ends.
            lock="SELECT pg_advisory_xact_lock(hashtextextended('retract.schema:' || $1, 0))",
            # Whether the schema exists, whether it has journal_meta, and how many
            # tables, views or sequences it holds (one consistent read of the catalog).
            inspect=(
                "SELECT n.oid IS NOT NULL,"
                " to_regclass(quote_ident($1) || '.journal_meta') IS NOT NULL,"
                " (SELECT count(*) FROM pg_class AS c WHERE c.relnamespace = n.oid"
                "  AND c.relkind IN ('r', 'p', 'v', 'm', 'f'))"
                " FROM (SELECT 1) AS one"
                " LEFT JOIN pg_namespace AS n ON n.nspname = $1"
            ),
            meta=f"SELECT application, schema_version FROM {s}.journal_meta",  # noqa: S608
            insert_session=(
                f"INSERT INTO {s}.sessions (session_id, created_at, status, context,"  # noqa: S608
                " owner_token, owner_pid, owner_host, owner_started, owner_machine,"
                " heartbeat_at, lease_seconds)"
                " VALUES ($1, to_timestamp($2), $3, $4::json, $5, $6, $7, $8, $9,"
                " clock_timestamp(), $10)"
            ),
            # A whole batch of appends in one statement (so one implicit transaction):
            # $1/$2 are each session once with its number of new operations, $3..$9
            # the rows, each with its offset (1, 2, ...) among its session's new rows
            # in this batch. Rows of a session that does not exist, or that another
            # process owns now ($10: this process's owner token; see ``holders``), match
            # no update and are not inserted; the sessions written come back with their
            # first number.
            append=(
                f"WITH totals AS ("  # noqa: S608
                " SELECT * FROM unnest($1::text[], $2::bigint[]) AS t (session_id, n)"
                "), bumped AS ("
                f" UPDATE {s}.sessions AS s SET last_sequence = s.last_sequence + t.n"
                " FROM totals AS t WHERE s.session_id = t.session_id AND s.owner_token = $10"
                " RETURNING s.session_id, s.key, s.last_sequence - t.n AS base"
                "), inserted AS ("
                f" INSERT INTO {s}.operations"
                " (session_key, sequence, op_id, op_type, payload, state, created_at)"
                " SELECT b.key, b.base + r.n, r.op_id, r.op_type, r.payload::json, r.state,"
                " to_timestamp(r.created_at)"
                " FROM unnest($3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[],"
                " $8::text[], $9::float8[])"
                " AS r (session_id, n, op_id, op_type, payload, state, created_at)"
                " JOIN bumped AS b ON b.session_id = r.session_id"
                ") SELECT session_id, base FROM bumped"
            ),
            # Who holds these sessions now (after an append refused some).
            holders=(
                f"SELECT session_id, status, owner_pid, owner_host"  # noqa: S608
                f" FROM {s}.sessions WHERE session_id = ANY($1::text[])"
            ),
            # The owner of one session, locked against a takeover until the transaction
            # ends (an undo's progress is written only while this process holds it).
            hold=(
                f"SELECT owner_token, owner_pid, owner_host, status"  # noqa: S608
                f" FROM {s}.sessions WHERE session_id = $1 FOR SHARE"
            ),
            # $1 the owner token, $2 the sessions it works on; each keeps the lease
            # length it was given when created or claimed (another journal of the
            # process may renew it too). Returns those among $2 another owner holds now.
            renew_leases=(
                f"WITH renewed AS (UPDATE {s}.sessions"  # noqa: S608
                " SET heartbeat_at = clock_timestamp()"
                " WHERE session_id = ANY($2::text[]) AND owner_token = $1"
                f" AND status IN {_LIVE})"
                f" SELECT session_id FROM {s}.sessions"
                " WHERE session_id = ANY($2::text[]) AND owner_token IS DISTINCT FROM $1"
            ),
            # Take over the live sessions whose lease expired by the server's clock
            # (all of them, or those among $1): each is claimed with its row lock, and
            # rows another transaction holds are skipped, so two recoverers never take
            # one session. It becomes INTERRUPTED and owned by the recoverer ($3..$8);
            # its INTENT operations IN_DOUBT. $2 is the time of the change. Never the
            # recoverer's own: a lapse of its own lease means it stalled, not died.
            recover_expired=(
                f"WITH expired AS (SELECT key FROM {s}.sessions"  # noqa: S608
                f" WHERE status IN {_LIVE} AND owner_token IS DISTINCT FROM $3"
                " AND heartbeat_at + lease_seconds * interval '1 second' < clock_timestamp()"
                " AND ($1::text[] IS NULL OR session_id = ANY($1::text[]))"
                " ORDER BY key FOR UPDATE SKIP LOCKED"
                f"), changed AS (UPDATE {s}.sessions AS s"
                f" SET status = '{SessionStatus.INTERRUPTED.value}',"
                " completed_at = to_timestamp($2),"
                f" error = CASE WHEN s.status = '{SessionStatus.RUNNING.value}'"
                " THEN 'interrupted: process ' || s.owner_pid || ' on ' || s.owner_host"
                " || ' stopped renewing its lease (expired '"
                " || to_char((s.heartbeat_at + s.lease_seconds * interval '1 second')"
                " AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC'"
                " || ') while the session was running' ELSE s.error END,"
                " owner_token = $3, owner_pid = $4, owner_host = $5, owner_started = $6,"
                " owner_machine = $7, heartbeat_at = clock_timestamp(), lease_seconds = $8"
                " FROM expired AS e WHERE s.key = e.key RETURNING s.key, s.session_id"
                f"), settled AS (UPDATE {s}.operations"
                f" SET state = '{OperationState.IN_DOUBT.value}', updated_at = to_timestamp($2)"
                " WHERE session_key IN (SELECT key FROM changed)"
                f" AND state = '{OperationState.INTENT.value}')"
                " SELECT session_id FROM changed ORDER BY key"
            ),
            # Each operation at most once per statement (the caller merges repeats), and
            # only in sessions that $7 (this process's owner token) still holds: one
            # taken over keeps its operations as the recoverer left them (IN_DOUBT).
            # The session rows are locked first (a takeover committing meanwhile is
            # waited for and seen). Returns the sessions refused, with who holds them.
            update_operations=(
                f"WITH held AS (SELECT key, session_id, status, owner_token, owner_pid,"  # noqa: S608
                f" owner_host FROM {s}.sessions WHERE session_id = ANY($1::text[])"
                " ORDER BY key FOR SHARE"
                f"), updated AS (UPDATE {s}.operations AS o"
                " SET state = u.state, error = u.error, updated_at = to_timestamp($6),"
                " payload = COALESCE(u.payload::json, o.payload)"
                " FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[])"
                " AS u (session_id, sequence, state, error, payload)"
                " JOIN held AS h ON h.session_id = u.session_id"
                " WHERE o.session_key = h.key AND o.sequence = u.sequence"
                " AND h.owner_token = $7)"
                " SELECT session_id, status, owner_pid, owner_host FROM held"
                " WHERE owner_token IS DISTINCT FROM $7"
            ),
            mark_undone=(
                f"UPDATE {s}.operations SET state = '{OperationState.UNDONE.value}',"  # noqa: S608
                " error = NULL, updated_at = to_timestamp($4)"
                f" WHERE session_key = {key} AND sequence BETWEEN $2 AND $3"
                f" AND state = '{OperationState.UNDOING.value}'"
            ),
            mark_undoing=(
                f"UPDATE {s}.operations SET state = '{OperationState.UNDOING.value}',"  # noqa: S608
                " updated_at = to_timestamp($4)"
                f" WHERE session_key = {key} AND sequence BETWEEN $2 AND $3"
                f" AND state NOT IN {_SETTLED}"
            ),
            prune=(
                f"DELETE FROM {s}.sessions WHERE status = ANY($1::text[])"  # noqa: S608
                " AND COALESCE(completed_at, created_at) < to_timestamp($2)"
                " RETURNING session_id"
            ),
            select_session=(
                f"SELECT {_SESSION_COLUMNS} FROM {s}.sessions WHERE session_id = $1"  # noqa: S608
            ),
            # NULL filters are off; starts_with() takes the prefix literally.
            list_sessions=(
                f"SELECT {_SESSION_COLUMNS} FROM {s}.sessions"  # noqa: S608
                " WHERE ($1::text[] IS NULL OR status = ANY($1::text[]))"
                " AND ($2::text IS NULL OR starts_with(session_id, $2::text))"
                " ORDER BY key DESC LIMIT $3"
            ),
            operations=(
                f"SELECT {_OPERATION_COLUMNS} FROM {s}.operations"  # noqa: S608
                f" WHERE session_key = {key} ORDER BY sequence"
            ),
            operations_page=(
                f"SELECT {_OPERATION_COLUMNS} FROM {s}.operations"  # noqa: S608
                f" WHERE session_key = {key} AND sequence < $2"
                " ORDER BY sequence DESC LIMIT $3"
            ),
            operations_page_pending=(
                f"SELECT {_OPERATION_COLUMNS} FROM {s}.operations"  # noqa: S608
                f" WHERE session_key = {key} AND sequence < $2 AND state NOT IN {_SETTLED}"
                " ORDER BY sequence DESC LIMIT $3"
            ),
            pending_summary=(
                f"SELECT op_type, count(*) FROM {s}.operations"  # noqa: S608
                f" WHERE session_key = {key} AND state NOT IN {_SETTLED} GROUP BY op_type"
            ),
        )

    def update_session(
        self,
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
        lease: float,
    ) -> tuple[str, list[Any]]:
        """The compare-and-set of a session: one statement, returning 1 if it changed.

        A new ``owner`` gets a fresh lease of ``lease`` seconds.
        """
        s = self.schema
        params: list[Any] = [session_id, status.value, at]
        sets = ["status = $2"]
        if status in TERMINAL_STATUSES:
            sets.append("completed_at = to_timestamp($3)")
        if error is not None:
            params.append(no_nul(error))
            sets.append(f"error = ${len(params)}")
        if owner is not None:
            first = len(params) + 1
            params += [*owner_fields(owner), lease]
            sets.append(
                f"owner_token = ${first}, owner_pid = ${first + 1}, owner_host = ${first + 2},"
                f" owner_started = ${first + 3}, owner_machine = ${first + 4},"
                f" heartbeat_at = clock_timestamp(), lease_seconds = ${first + 5}"
            )
        if count_undo:
            sets.append("undo_count = undo_count + 1")
        where = ["session_id = $1"]
        if expect_statuses is not None:
            params.append([wanted.value for wanted in expect_statuses])
            where.append(f"status = ANY(${len(params)}::text[])")
        if expect_owner is not None:
            params.append(expect_owner)
            where.append(f"owner_token = ${len(params)}")
        sql = (
            f"WITH changed AS (UPDATE {s}.sessions SET {', '.join(sets)}"  # noqa: S608
            f" WHERE {' AND '.join(where)} RETURNING key)"
        )
        if settle_intents:
            sql += (
                f", settled AS (UPDATE {s}.operations"  # noqa: S608
                f" SET state = '{OperationState.IN_DOUBT.value}', updated_at = to_timestamp($3)"
                " WHERE session_key IN (SELECT key FROM changed)"
                f" AND state = '{OperationState.INTENT.value}')"
            )
        # $3 appears even when no time is stored, so that it has a type
        return f"{sql} SELECT count(*) FROM changed WHERE $3::float8 IS NOT NULL", params  # noqa: S608


def owner_fields(owner: Owner) -> tuple[str, int, str, float, str | None]:
    """The owner columns' values, in their order (token, pid, host, started, machine)."""
    return owner.token, owner.pid, owner.host, owner.started_at, owner.machine


def no_nul(text: str | None) -> str | None:
    r"""``text`` as PostgreSQL's ``text`` can hold it: a NUL character written as ``\x00``.

    Error messages are stored as given; one quoting a NUL (from a file name, say) would
    otherwise be refused, and leave its session unfinished.
    """
    return text if text is None or "\x00" not in text else text.replace("\x00", "\\x00")
