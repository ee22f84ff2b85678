"""Leases on PostgreSQL: renewed while a session is worked on, taken over once expired.

A session's owner on another host cannot be checked by pid, so the tests make sessions
owned by a process "elsewhere" (an :class:`Owner` with another host name) and let
their lease run out, or keep renewing it through a journal's heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from retract import (
    Journal,
    JournalClosedError,
    OperationState,
    SchemaVersionError,
    SessionStateError,
    SessionStatus,
    SessionTakenOverError,
    open_journal,
)
from retract.journal._encoding import new_id
from retract.journal._leases import Heartbeat
from retract.journal._owner import active, current_owner
from retract.journal._records import Owner
from retract.journal.storage import LeaseStorage, NewOperation, OperationUpdate
from retract.journal.storage._postgres import PostgresStorage
from retract.journal.storage._postgres_schema import MIGRATIONS, SCHEMA_VERSION, quote_schema

#: Short enough to expire within a test, long enough for a busy 2-core machine to renew.
LEASE = 1.0


def elsewhere() -> Owner:
    """A process on another host: its liveness is unknown here, only its lease tells."""
    return Owner(uuid.uuid4().hex, 4242, "elsewhere.example", 1.0, None)


def op(state: OperationState = OperationState.DONE) -> NewOperation:
    return NewOperation(new_id(), "t.op", "{}", state, time.time())


@pytest.fixture
async def storage(postgres_url: str) -> AsyncIterator[PostgresStorage]:
    opened = PostgresStorage(postgres_url, lease_timeout=LEASE)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture
async def journal(postgres_url: str) -> AsyncIterator[Journal]:
    async with open_journal(postgres_url, lease_timeout=LEASE) as opened:
        yield opened


def pg(journal: Journal) -> PostgresStorage:
    assert isinstance(journal.storage, PostgresStorage)
    return journal.storage


async def foreign_session(storage: PostgresStorage, *states: OperationState) -> str:
    """A RUNNING session of a process on another host, with operations in ``states``.

    Appends are refused to anyone but the owner, so the rows go in directly.
    """
    session_id = new_id()
    await storage.create_session(session_id, "{}", elsewhere(), time.time())
    conn = await asyncpg.connect(storage._dsn)
    try:
        for sequence, state in enumerate(states, 1):
            await conn.execute(
                "INSERT INTO retract.operations (session_key, sequence, op_id, op_type,"
                " payload, state, created_at)"
                " SELECT key, $2, $3, 't.op', '{}', $4, now() FROM retract.sessions"
                " WHERE session_id = $1",
                session_id,
                sequence,
                new_id(),
                state.value,
            )
        await conn.execute(
            "UPDATE retract.sessions SET last_sequence = $2 WHERE session_id = $1",
            session_id,
            len(states),
        )
    finally:
        await conn.close()
    return session_id


async def expire(storage: PostgresStorage, *session_ids: str) -> None:
    """Let the sessions' leases lapse (as if their owner had stopped long ago)."""
    conn = await asyncpg.connect(storage._dsn)
    try:
        await conn.execute(
            "UPDATE retract.sessions SET heartbeat_at = heartbeat_at - interval '1 hour'"
            " WHERE session_id = ANY($1::text[])",
            list(session_ids),
        )
    finally:
        await conn.close()


def test_postgres_storage_is_a_lease_storage(postgres_url: str) -> None:
    """The journal knows to renew leases by the protocol, which SQLite does not follow."""
    assert isinstance(PostgresStorage(postgres_url), LeaseStorage)
    from retract import InMemoryStorage, SQLiteStorage  # noqa: PLC0415

    assert not isinstance(InMemoryStorage(), LeaseStorage)
    assert not isinstance(SQLiteStorage("unused.db"), LeaseStorage)


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan")])
def test_lease_timeout_must_be_positive(postgres_url: str, bad: float) -> None:
    with pytest.raises(ValueError, match="lease_timeout must be positive seconds"):
        PostgresStorage(postgres_url, lease_timeout=bad)


async def test_a_new_session_holds_a_lease_by_the_servers_clock(storage: PostgresStorage) -> None:
    session_id = new_id()
    await storage.create_session(session_id, "{}", current_owner(), time.time())
    record = await storage.get_session(session_id)
    assert record is not None
    assert record.lease_expires_at is not None
    left = (record.lease_expires_at - datetime.now(UTC)).total_seconds()
    assert 0 < left <= LEASE + 1  # clocks of one machine


async def test_the_journal_renews_the_leases_of_running_sessions(postgres_url: str) -> None:
    """A session kept open longer than its lease stays held: the heartbeat renews it."""
    async with open_journal(postgres_url, lease_timeout=LEASE) as journal:
        async with journal.start_session() as session:
            first = await journal.get_session(session.session_id)
            assert first is not None
            assert first.lease_expires_at is not None
            await asyncio.sleep(LEASE * 1.5)
            later = await journal.get_session(session.session_id)
            assert later is not None
            assert later.lease_expires_at is not None
            assert later.lease_expires_at > first.lease_expires_at
            async with open_journal(postgres_url) as other:
                assert await other.recover() == []
            await session.record_operation("t.op", {})
        record = await journal.get_session(session.session_id)
        assert record is not None
        assert record.status is SessionStatus.COMPLETED


async def test_recover_leaves_live_leases_and_takes_over_expired_ones(journal: Journal) -> None:
    """Only expired leases are taken: INTERRUPTED, owned by the recoverer, intents in doubt."""
    storage = pg(journal)
    live = await foreign_session(storage, OperationState.DONE)
    dead = await foreign_session(storage, OperationState.DONE, OperationState.INTENT)
    await expire(storage, dead)
    recovered = await journal.recover()
    assert [r.session_id for r in recovered] == [dead]
    (record,) = recovered
    assert record.status is SessionStatus.INTERRUPTED
    assert record.owner == current_owner()
    assert record.error is not None
    assert "process 4242 on elsewhere.example stopped renewing its lease" in record.error
    assert record.completed_at is not None
    states = [o.state for o in await storage.get_operations(dead)]
    assert states == [OperationState.DONE, OperationState.IN_DOUBT]
    still = await storage.get_session(live)
    assert still is not None
    assert still.status is SessionStatus.RUNNING
    assert await journal.recover() == []  # taken once


async def test_concurrent_recoverers_never_take_one_session_twice(postgres_url: str) -> None:
    """Four recoverers on their own pools split the expired sessions between them."""
    stores = [PostgresStorage(postgres_url, lease_timeout=LEASE) for _ in range(4)]
    for store in stores:
        await store.open()
    try:
        sessions = [await foreign_session(stores[0]) for _ in range(60)]
        await expire(stores[0], *sessions)
        owners = [elsewhere() for _ in stores]
        taken = await asyncio.gather(
            *(
                store.recover_expired(owner, time.time())
                for store, owner in zip(stores, owners, strict=True)
            )
        )
        flat = [sid for part in taken for sid in part]
        assert sorted(flat) == sorted(sessions)  # every one, none twice
        for owner, part in zip(owners, taken, strict=True):
            for sid in part:
                record = await stores[0].get_session(sid)
                assert record is not None
                assert record.owner == owner
    finally:
        for store in stores:
            await store.aclose()


async def test_writes_to_a_session_taken_over_are_refused(storage: PostgresStorage) -> None:
    """The process that lost its lease can no longer append, settle steps or undo."""
    session_id = new_id()
    await storage.create_session(session_id, "{}", current_owner(), time.time())
    assert await storage.append_operations(session_id, [op(OperationState.INTENT)]) == [1]
    await expire(storage, session_id)
    assert await storage.recover_expired(elsewhere(), time.time()) == [session_id]
    with pytest.raises(SessionTakenOverError, match=r"process 4242 on elsewhere\.example"):
        await storage.append_operations(session_id, [op()])
    # a step finishing late is refused: the operation stays IN_DOUBT, as the recoverer
    # marked it; an update of another session in the same call is applied
    other = new_id()
    await storage.create_session(other, "{}", current_owner(), time.time())
    assert await storage.append_operations(other, [op(OperationState.INTENT)]) == [1]
    with pytest.raises(SessionTakenOverError):
        await storage.update_operations(
            [
                OperationUpdate(session_id, 1, OperationState.DONE),
                OperationUpdate(other, 1, OperationState.DONE),
            ],
            1.0,
        )
    (done,) = await storage.get_operations(other)
    assert done.state is OperationState.DONE
    with pytest.raises(SessionTakenOverError):
        await storage.record_undo_progress(
            session_id, outcomes=[], undone=None, begin=(1, 1), at=1.0
        )
    (record,) = await storage.get_operations(session_id)
    assert record.state is OperationState.IN_DOUBT
    # an append of another session in the same batch is unaffected
    results = await asyncio.gather(
        storage.append_operations(session_id, [op()]),
        storage.append_operations(other, [op()]),
        storage.append_operations("missing", [op()]),
        return_exceptions=True,
    )
    assert isinstance(results[0], SessionTakenOverError)
    assert results[1] == [2]
    assert type(results[2]).__name__ == "SessionNotFoundError"


async def test_heartbeat_reports_a_session_taken_over(
    storage: PostgresStorage, caplog: pytest.LogCaptureFixture
) -> None:
    """The next renewal finds the loss, logs it once and stops renewing that session."""
    session_id = new_id()
    await storage.create_session(session_id, "{}", current_owner(), time.time())
    active.leased.add(session_id)
    try:
        heartbeat = Heartbeat(storage)
        assert await heartbeat.beat() == set()
        await expire(storage, session_id)
        await storage.recover_expired(elsewhere(), time.time())
        with caplog.at_level(logging.ERROR, logger="retract"):
            assert await heartbeat.beat() == {session_id}
        assert f"session {session_id} was taken over by another process" in caplog.text
        assert session_id not in active.leased
        assert await heartbeat.beat() == set()
    finally:
        active.leased.discard(session_id)


async def test_heartbeat_survives_a_failing_renewal(
    storage: PostgresStorage, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal that fails is logged as a warning and tried again next time."""
    session_id = new_id()
    await storage.create_session(session_id, "{}", current_owner(), time.time())
    active.leased.add(session_id)

    async def broken(owner_token: str, session_ids: Any) -> set[str]:
        raise ConnectionResetError("server went away")

    try:
        heartbeat = Heartbeat(storage)
        monkeypatch.setattr(storage, "renew_leases", broken)
        with caplog.at_level(logging.WARNING, logger="retract"):
            assert await heartbeat.beat() == set()
        assert "could not renew the leases of" in caplog.text
        assert "server went away" in caplog.text
        monkeypatch.undo()
        assert await heartbeat.beat() == set()
    finally:
        active.leased.discard(session_id)


async def test_heartbeat_stops_with_the_journal(postgres_url: str) -> None:
    async with open_journal(postgres_url, lease_timeout=LEASE) as journal:
        heartbeat = journal._heartbeat
        assert heartbeat is not None
        task = heartbeat._task
        assert task is not None
        assert not task.done()
    assert task.done()
    assert journal._heartbeat is not None
    assert journal._heartbeat._task is None
    with pytest.raises(JournalClosedError):
        await heartbeat.storage.renew_leases("x", ["y"])


async def test_undo_refuses_a_live_lease_and_takes_over_an_expired_one(journal: Journal) -> None:
    """Undo of a session running elsewhere waits for the lease; once expired it takes over."""
    undone: list[int] = []
    journal.registry.handler("t.op")(lambda record: undone.append(record.sequence))
    storage = pg(journal)
    session_id = await foreign_session(storage, OperationState.DONE, OperationState.DONE)
    with pytest.raises(SessionStateError, match="holds its lease until"):
        await journal.undo_session(session_id)
    plan = await journal.plan_undo(session_id)
    assert plan.blocker is not None
    assert "holds its lease until" in plan.blocker
    await expire(storage, session_id)
    report = await journal.undo_session(session_id)
    assert report.complete
    assert undone == [2, 1]
    record = await storage.get_session(session_id)
    assert record is not None
    assert record.status is SessionStatus.ROLLED_BACK
    assert record.owner == current_owner()


async def test_a_version_1_journal_is_migrated(postgres_url: str) -> None:
    """A journal made by the first schema gains leases and events, and keeps its rows."""
    assert SCHEMA_VERSION == 2
    conn = await asyncpg.connect(postgres_url)
    try:
        async with conn.transaction():
            for statement in MIGRATIONS[1](quote_schema("retract")):
                await conn.execute(statement)
        await conn.execute(
            "INSERT INTO retract.sessions (session_id, created_at, status, context)"
            " VALUES ('old', now(), 'completed', '{\"v\": 1}')"
        )
    finally:
        await conn.close()
    async with open_journal(postgres_url) as journal:
        old = await journal.get_session("old")
        assert old is not None
        assert old.context == {"v": 1}
        assert old.lease_expires_at is None
        async with journal.start_session() as session:
            await session.record_operation("t.op", {})
        new = await journal.get_session(session.session_id)
        assert new is not None
        assert new.lease_expires_at is not None
    conn = await asyncpg.connect(postgres_url)
    try:
        assert await conn.fetchval("SELECT schema_version FROM retract.journal_meta") == 2
    finally:
        await conn.close()


async def test_open_journal_passes_the_postgresql_options(postgres_url: str) -> None:
    async with open_journal(
        postgres_url, schema="jobs", lease_timeout=7.5, pool_size=(0, 3)
    ) as journal:
        storage = journal.storage
        assert isinstance(storage, PostgresStorage)
        assert (storage.schema, storage.lease_timeout) == ("jobs", 7.5)
        assert (storage.min_size, storage.max_size) == (0, 3)


@pytest.mark.parametrize("location", [":memory:", "journal.db"])
def test_postgresql_options_are_refused_elsewhere(location: str) -> None:
    with pytest.raises(ValueError, match="schema, lease_timeout only apply to a PostgreSQL"):
        open_journal(location, schema="x", lease_timeout=3)


async def test_aclose_while_opening_waits_for_the_open_to_end(postgres_url: str) -> None:
    """aclose() during open() returns once open() has closed what it opened."""
    storage = PostgresStorage(postgres_url)
    opening = asyncio.ensure_future(storage.open())
    await asyncio.sleep(0)  # open() has started: connecting
    await storage.aclose()
    assert opening.done()
    with pytest.raises(JournalClosedError, match="closed while opening"):
        await opening
    assert storage._pool is None


async def test_a_plan_does_not_block_on_an_expired_lease(journal: Journal) -> None:
    """The dry run of a session whose owner's lease expired says the undo can start."""
    journal.registry.handler("t.op")(lambda record: None)
    storage = pg(journal)
    session_id = await foreign_session(storage, OperationState.DONE)
    await expire(storage, session_id)
    plan = await journal.plan_undo(session_id)
    assert plan.blocker is None
    assert plan.ready
    record = await storage.get_session(session_id)
    assert record is not None
    assert record.status is SessionStatus.RUNNING  # a plan changes nothing


async def test_a_stalled_owner_is_told_at_its_steps_end_and_sessions_end(
    journal: Journal,
) -> None:
    """A step or session that ends after a takeover raises instead of passing silently."""
    storage = pg(journal)
    with pytest.raises(SessionTakenOverError, match="took it over"):
        async with journal.start_session() as session:
            with pytest.raises(SessionTakenOverError, match="elsewhere"):
                async with session.step("t.op", {}):
                    await expire(storage, session.session_id)
                    assert await storage.recover_expired(elsewhere(), time.time())
    (record,) = await storage.get_operations(session.session_id)
    assert record.state is OperationState.IN_DOUBT  # as the recoverer left it
    taken = await storage.get_session(session.session_id)
    assert taken is not None
    assert taken.status is SessionStatus.INTERRUPTED
    assert taken.owner is not None
    assert taken.owner.host == "elsewhere.example"


async def test_an_arq_retry_goes_by_the_earlier_tries_lease(journal: Journal) -> None:
    """Try 2 refuses a try 1 whose worker elsewhere still renews its lease, then undoes it."""
    from retract.integrations.arq import EarlierTryRunningError, undo_earlier_tries  # noqa: PLC0415

    journal.registry.handler("t.op")(lambda record: None)
    storage = pg(journal)
    context = '{"integration":"arq","job_id":"j1","job_try":1,"enqueue_time":"t0"}'
    session_id = new_id()
    await storage.create_session(session_id, context, elsewhere(), time.time())
    with pytest.raises(EarlierTryRunningError):
        await undo_earlier_tries(journal, "j1", 2, "t0")
    record = await storage.get_session(session_id)
    assert record is not None
    assert record.status is SessionStatus.RUNNING  # untouched while its lease lives
    await expire(storage, session_id)
    assert await undo_earlier_tries(journal, "j1", 2, "t0") == [session_id]
    record = await storage.get_session(session_id)
    assert record is not None
    assert record.status is SessionStatus.ROLLED_BACK


async def test_recover_never_takes_this_processs_own_sessions(journal: Journal) -> None:
    """Its own lease lapsing means this process stalled, not died: it keeps its session."""
    storage = pg(journal)
    async with journal.start_session() as session:
        await expire(storage, session.session_id)
        assert await journal.recover() == []
        assert await storage.recover_expired(current_owner(), time.time()) == []
        await session.record_operation("t.op", {})
    record = await journal.get_session(session.session_id)
    assert record is not None
    assert record.status is SessionStatus.COMPLETED


async def test_another_journals_heartbeat_keeps_each_sessions_lease(
    journal: Journal, postgres_url: str
) -> None:
    """Journals of one process renew each other's sessions but never shorten a lease."""
    storage = pg(journal)  # lease LEASE
    async with (
        open_journal(postgres_url, lease_timeout=60.0) as long_lease,
        long_lease.start_session() as session,
    ):
        await asyncio.sleep(LEASE)  # the short journal's heartbeat ran meanwhile
        record = await storage.get_session(session.session_id)
        assert record is not None
        assert record.lease_expires_at is not None
        left = (record.lease_expires_at - datetime.now(UTC)).total_seconds()
        assert left > 30


async def test_sessions_live_at_the_upgrade_get_a_lease(postgres_url: str) -> None:
    """A version 1 journal's running session can be taken over once upgraded."""
    conn = await asyncpg.connect(postgres_url)
    try:
        async with conn.transaction():
            for statement in MIGRATIONS[1](quote_schema("retract")):
                await conn.execute(statement)
        await conn.execute(
            "INSERT INTO retract.sessions (session_id, created_at, status, context,"
            " owner_token, owner_pid, owner_host, owner_started)"
            " VALUES ('live', now(), 'running', '{}', 'v1-process', 7, 'old-host', 1.0)"
        )
    finally:
        await conn.close()
    async with open_journal(postgres_url) as journal:
        storage = pg(journal)
        record = await storage.get_session("live")
        assert record is not None
        assert record.lease_expires_at is not None
        assert await journal.recover() == []
        await expire(storage, "live")
        (taken,) = await journal.recover()
        assert taken.session_id == "live"
        assert taken.status is SessionStatus.INTERRUPTED


async def test_a_step_ending_while_a_takeover_commits_is_refused(journal: Journal) -> None:
    """The fence waits for a takeover in flight and sees it: the step's DONE is refused."""
    storage = pg(journal)
    conn = await asyncpg.connect(storage._dsn)
    try:
        async with journal.start_session() as session:
            with pytest.raises(SessionTakenOverError):
                async with session.step("t.op", {}):
                    await expire(storage, session.session_id)
                    # another host's recover(), committed only once the step has ended
                    recovering = conn.transaction()
                    await recovering.start()
                    other = elsewhere()
                    taken = await conn.fetch(
                        storage._sql.recover_expired,
                        [session.session_id],
                        time.time(),
                        other.token,
                        other.pid,
                        other.host,
                        other.started_at,
                        other.machine,
                        LEASE,
                    )
                    assert [row[0] for row in taken] == [session.session_id]

                    async def commit_soon() -> None:
                        await asyncio.sleep(0.3)  # the step's update is waiting by then
                        await recovering.commit()

                    committer = asyncio.create_task(commit_soon())
            await committer
    except SessionTakenOverError:
        pass  # the session's end, refused too
    finally:
        await conn.close()
    (record,) = await storage.get_operations(session.session_id)
    assert record.state is OperationState.IN_DOUBT


async def test_an_undo_that_loses_the_takeover_race_undoes_what_is_there(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another recoverer claimed the session first: the undo reads it again and goes on."""
    journal.registry.handler("t.op")(lambda record: None)
    storage = pg(journal)
    session_id = await foreign_session(storage, OperationState.DONE)
    await expire(storage, session_id)
    real = storage.recover_expired

    async def beaten(owner: Owner, at: float, session_ids: Any = None) -> list[str]:
        await real(elsewhere(), at, session_ids)  # another host is faster
        return []

    monkeypatch.setattr(storage, "recover_expired", beaten)
    report = await journal.undo_session(session_id)
    assert report.complete


async def test_a_fenced_session_is_not_undone_by_its_stalled_owner(journal: Journal) -> None:
    """undo_on_error does not roll back a session another process took over: it is theirs."""
    ran: list[int] = []
    journal.registry.handler("t.op")(lambda record: ran.append(record.sequence))
    storage = pg(journal)
    with pytest.raises(RuntimeError, match="boom") as caught:
        async with journal.start_session(undo_on_error=True) as session:
            await session.record_operation("t.op", {})
            await expire(storage, session.session_id)
            assert await storage.recover_expired(elsewhere(), time.time())
            raise RuntimeError("boom")
    assert any("it was not undone by this process" in note for note in caught.value.__notes__)
    assert ran == []
    record = await storage.get_session(session.session_id)
    assert record is not None
    assert record.status is SessionStatus.INTERRUPTED
    assert record.owner is not None
    assert record.owner.host == "elsewhere.example"


async def test_an_old_journal_is_not_upgraded_when_asked_to_create_nothing(
    postgres_url: str,
) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        async with conn.transaction():
            for statement in MIGRATIONS[1](quote_schema("retract")):
                await conn.execute(statement)
        with pytest.raises(SchemaVersionError, match="older than the 2 this retract uses"):
            async with open_journal(postgres_url, create=False):
                pass
        assert await conn.fetchval("SELECT schema_version FROM retract.journal_meta") == 1
    finally:
        await conn.close()


def test_the_url_names_one_schema(postgres_url: str) -> None:
    assert PostgresStorage(f"{postgres_url}?schema=a&schema=a").schema == "a"
    with pytest.raises(ValueError, match="two schemas"):
        PostgresStorage(f"{postgres_url}?schema=a&schema=b")


async def test_prune_without_images_dir_on_a_server_journal(journal: Journal) -> None:
    async with journal.start_session() as session:
        pass
    assert await journal.prune(0) == [session.session_id]
    assert await journal.get_session(session.session_id) is None
