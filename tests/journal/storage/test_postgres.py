"""What only the PostgreSQL storage has: schema checks, pools, URLs, group commit, locks."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from retract import (
    JournalBusyError,
    JournalOpenError,
    NotAJournalError,
    OperationState,
    SchemaVersionError,
    SessionStatus,
)
from retract.journal._encoding import new_id
from retract.journal._owner import current_owner
from retract.journal.storage import NewOperation
from retract.journal.storage._postgres import PostgresStorage, _GroupCommit
from retract.journal.storage._postgres_schema import SCHEMA_VERSION
from tests._postgres import PASSWORD_ROLE, database_url


@pytest.fixture
async def admin(postgres_url: str) -> AsyncIterator[Any]:
    """A superuser connection to the test's database."""
    conn = await asyncpg.connect(postgres_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def storage(postgres_url: str) -> AsyncIterator[PostgresStorage]:
    """An open PostgreSQL storage on the test's database."""
    opened = PostgresStorage(postgres_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()


def op(state: OperationState = OperationState.DONE, payload: str = '{"n":1}') -> NewOperation:
    return NewOperation(new_id(), "t.op", payload, state, time.time())


async def new_session(storage: PostgresStorage) -> str:
    session_id = new_id()
    await storage.create_session(session_id, "{}", current_owner(), time.time())
    return session_id


async def connections(admin: Any) -> int:
    """Connections to the test's database other than ``admin``, once closed ones are gone.

    A server process ends a moment after its client hung up: wait for that (briefly).
    """
    query = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    for _ in range(100):
        count = int(await admin.fetchval(query))
        if count == 0:
            break
        await asyncio.sleep(0.02)
    return count


async def test_schema_is_created_once_and_reopened(postgres_url: str, admin: Any) -> None:
    """A new database gets the schema and its version; reopening keeps both and the data."""
    async with asyncio.timeout(30):
        first = PostgresStorage(postgres_url)
        await first.open()
        session_id = await new_session(first)
        assert await first.append_operations(session_id, [op(), op()]) == [1, 2]
        await first.aclose()
        meta = await admin.fetchrow("SELECT schema_version, created_at FROM retract.journal_meta")
        assert meta["schema_version"] == SCHEMA_VERSION
        tables = await admin.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'retract' ORDER BY 1"
        )
        assert [t[0] for t in tables] == ["journal_meta", "operations", "sessions"]

        again = PostgresStorage(postgres_url, create=False)
        await again.open()
        try:
            assert [r.sequence for r in await again.get_operations(session_id)] == [1, 2]
            assert await again.append_operations(session_id, [op()]) == [3]
        finally:
            await again.aclose()
        again_meta = await admin.fetchrow(
            "SELECT schema_version, created_at FROM retract.journal_meta"
        )
        assert again_meta == meta  # not created again
        assert await connections(admin) == 0  # both pools are closed


async def test_newer_schema_is_refused(postgres_url: str, admin: Any) -> None:
    """A journal from a newer retract raises SchemaVersionError, and nothing changes."""
    first = PostgresStorage(postgres_url)
    await first.open()
    await first.aclose()
    await admin.execute("UPDATE retract.journal_meta SET schema_version = $1", SCHEMA_VERSION + 1)
    newer = PostgresStorage(postgres_url)
    with pytest.raises(SchemaVersionError, match="upgrade retract"):
        await newer.open()
    assert await admin.fetchval("SELECT schema_version FROM retract.journal_meta") == (
        SCHEMA_VERSION + 1
    )
    assert await connections(admin) == 0  # the failed open closed its pool
    await newer.aclose()


async def test_missing_journal_is_not_created_when_asked_not_to(
    postgres_url: str, admin: Any
) -> None:
    """create=False on a database without a journal: NotAJournalError, nothing created."""
    with pytest.raises(NotAJournalError, match="nothing was created"):
        await PostgresStorage(postgres_url, create=False).open()
    assert await admin.fetchval("SELECT to_regnamespace('retract')") is None


async def test_foreign_tables_in_the_schema_are_refused_untouched(
    postgres_url: str, admin: Any
) -> None:
    """A schema holding someone else's tables is not a journal, and is left alone."""
    await admin.execute("CREATE SCHEMA retract; CREATE TABLE retract.sessions (x int)")
    with pytest.raises(NotAJournalError, match="other tables"):
        await PostgresStorage(postgres_url).open()
    tables = await admin.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'retract'")
    assert [t[0] for t in tables] == ["sessions"]


async def test_journals_in_two_schemas_are_separate(postgres_url: str) -> None:
    """Each schema holds its own journal; schema names are checked."""
    with pytest.raises(ValueError, match="invalid schema name"):
        PostgresStorage(postgres_url, schema='x"; DROP TABLE y; --')
    with pytest.raises(ValueError, match="keeps names starting with 'pg_'"):
        PostgresStorage(postgres_url, schema="pg_journal")
    one, two = PostgresStorage(postgres_url), PostgresStorage(postgres_url, schema="other")
    await one.open()
    await two.open()
    try:
        session_id = await new_session(one)
        assert await two.get_session(session_id) is None
        assert [s.session_id for s in await one.list_sessions()] == [session_id]
    finally:
        await one.aclose()
        await two.aclose()


async def test_two_pools_on_one_database_see_each_others_sessions(postgres_url: str) -> None:
    """Two storages (two processes, in effect) share sessions and their numbering."""
    one, two = PostgresStorage(postgres_url), PostgresStorage(postgres_url)
    await asyncio.gather(one.open(), two.open())  # creating the schema at once is fine
    try:
        session_id = await new_session(one)
        record = await two.get_session(session_id)
        assert record is not None
        assert record.owner == current_owner()
        assert await one.append_operations(session_id, [op()]) == [1]
        assert await two.append_operations(session_id, [op(), op()]) == [2, 3]
        assert await one.append_operations(session_id, [op()]) == [4]
        assert (
            await two.update_session(
                session_id, status=SessionStatus.COMPLETED, at=time.time(), expect_statuses=[]
            )
            is False
        )
        assert await two.update_session(session_id, status=SessionStatus.COMPLETED, at=1.0)
        seen = await one.get_session(session_id)
        assert seen is not None
        assert seen.status is SessionStatus.COMPLETED
        assert [r.sequence for r in await one.get_operations(session_id)] == [1, 2, 3, 4]
    finally:
        await one.aclose()
        await two.aclose()


async def test_password_is_not_shown_in_location(postgres_url: str, admin: Any) -> None:
    """A URL's password authenticates but never appears in location or repr."""
    secret = "s3cret-Pa55"  # noqa: S105
    try:
        await admin.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{secret}'")
    except asyncpg.DuplicateObjectError:
        await admin.execute(f"ALTER ROLE {PASSWORD_ROLE} PASSWORD '{secret}'")
    database = await admin.fetchval("SELECT current_database()")
    await admin.execute(f'GRANT CREATE ON DATABASE "{database}" TO {PASSWORD_ROLE}')
    port = urllib.parse.urlsplit(postgres_url).port
    url = f"postgresql://{PASSWORD_ROLE}:{secret}@127.0.0.1:{port}/{database}"
    storage = PostgresStorage(url + f"?password={secret}&application_name=x")
    assert secret not in storage.location
    assert secret not in repr(storage)
    assert storage.location == (
        f"postgresql://{PASSWORD_ROLE}@127.0.0.1:{port}/{database}?application_name=x"
    )
    await storage.open()
    try:
        await new_session(storage)
    finally:
        await storage.aclose()
    wrong = PostgresStorage(url.replace(secret, "wrong"))
    with pytest.raises(JournalOpenError) as refused:
        await wrong.open()
    assert "wrong" not in str(refused.value)
    assert secret not in str(refused.value)


async def test_borrowed_pool_is_left_open(postgres_url: str) -> None:
    """A storage on the caller's pool does not close it; its location names the database."""
    pool = await asyncpg.create_pool(postgres_url, min_size=1, max_size=2)
    try:
        storage = PostgresStorage(pool)
        await storage.open()
        session_id = await new_session(storage)
        await storage.aclose()
        assert not pool._closed
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM retract.sessions WHERE session_id = $1", session_id
            )
            == 1
        )
        assert storage.location.startswith("postgresql://postgres@127.0.0.1:")
        assert storage.location.endswith("/" + postgres_url.rsplit("/", 1)[1])
    finally:
        await pool.close()


async def test_unreachable_server_is_a_clear_error(postgres_url: str) -> None:
    """Nothing listening: JournalOpenError naming the URL (without waiting long)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = database_url(f"postgresql://postgres@127.0.0.1:{port}/x", "nowhere")
    with pytest.raises(JournalOpenError, match="nowhere"):
        await PostgresStorage(url, connect_timeout=5).open()


async def test_payloads_come_back_exactly_as_written(storage: PostgresStorage) -> None:
    """Payloads are json: big floats, -0.0, key order and a NUL escape come back as is."""
    session_id = await new_session(storage)
    written = '{"z":1,"a":1e23,"neg":-0.0,"big":1.7976931348623157e308,"s":"a\\u0000b"}'
    await storage.append_operations(session_id, [op(payload=written)])
    (record,) = await storage.get_operations(session_id)
    assert list(record.payload) == ["z", "a", "neg", "big", "s"]
    assert record.payload["a"] == 1e23
    assert isinstance(record.payload["a"], float)
    assert str(record.payload["neg"]) == "-0.0"
    assert record.payload["s"] == "a\x00b"


async def test_lock_held_too_long_is_busy(postgres_url: str, admin: Any) -> None:
    """A row locked by another connection past busy_timeout raises JournalBusyError."""
    storage = PostgresStorage(postgres_url, busy_timeout=0.2)
    await storage.open()
    try:
        session_id = await new_session(storage)
        async with admin.transaction():
            await admin.execute(
                "SELECT 1 FROM retract.sessions WHERE session_id = $1 FOR UPDATE", session_id
            )
            with pytest.raises(JournalBusyError, match="busy timeout"):
                await storage.update_session(session_id, status=SessionStatus.FAILED, at=1.0)
        assert await storage.update_session(session_id, status=SessionStatus.FAILED, at=1.0)
    finally:
        await storage.aclose()


async def test_a_batch_refused_by_a_lock_fails_once_not_request_by_request(
    postgres_url: str, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock past busy_timeout fails the whole batch in one try: no retry per request."""
    storage = PostgresStorage(postgres_url, busy_timeout=0.2)
    await storage.open()
    tries: list[int] = []
    attempt = _GroupCommit._attempt

    async def counting(self: _GroupCommit, conn: Any, batch: list[Any]) -> Any:
        tries.append(len(batch))
        return await attempt(self, conn, batch)

    try:
        locked = await new_session(storage)
        other = await new_session(storage)
        monkeypatch.setattr(_GroupCommit, "_attempt", counting)
        async with admin.transaction():
            await admin.execute(
                "SELECT 1 FROM retract.sessions WHERE session_id = $1 FOR UPDATE", locked
            )
            results = await asyncio.gather(
                *(storage.append_operations(locked, [op()]) for _ in range(6)),
                storage.append_operations(other, [op()]),
                return_exceptions=True,
            )
        assert all(isinstance(result, JournalBusyError) for result in results[:6])
        assert len(tries) <= 3  # a first lone append, then the rest as one batch (or so)
        assert await storage.append_operations(other, [op()]) in ([1], [2])
    finally:
        await storage.aclose()


async def test_concurrent_sessions_all_land_in_few_commits(
    storage: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 sessions appending at once: every row lands, numbered, in shared transactions."""
    batches: list[int] = []
    commit = _GroupCommit._commit

    async def counting(self: _GroupCommit, conn: Any, batch: list[Any]) -> Any:
        batches.append(len(batch))
        return await commit(self, conn, batch)

    monkeypatch.setattr(_GroupCommit, "_commit", counting)
    appends = 20

    async def worker() -> str:
        session_id = await new_session(storage)
        for _ in range(appends):
            await storage.append_operations(session_id, [op(OperationState.INTENT)])
        assert await storage.update_session(
            session_id, status=SessionStatus.COMPLETED, at=time.time(), settle_intents=True
        )
        return session_id

    async with asyncio.timeout(60):
        sessions = await asyncio.gather(*(worker() for _ in range(50)))
    writes = 50 * (appends + 2)
    assert sum(batches) == writes
    assert len(batches) < writes / 5  # group commit: many callers per transaction
    for session_id in sessions:
        records = await storage.get_operations(session_id)
        assert [r.sequence for r in records] == list(range(1, appends + 1))
        assert {r.state for r in records} == {OperationState.IN_DOUBT}
    listed = await storage.list_sessions(statuses=[SessionStatus.COMPLETED])
    assert {s.session_id for s in listed} == set(sessions)


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u@h:5432/db"),
        ("postgres://u@h/db?sslmode=require", "postgres://u@h/db?sslmode=require"),
        ("postgresql://:pw@h/db", "postgresql://h/db"),
        ("postgresql://u:p%40w@h1:1,h2:2/db", "postgresql://u@h1:1,h2:2/db"),
        (
            "postgresql:///db?host=/run/pg&Password=pw&user=u",
            "postgresql:///db?host=/run/pg&user=u",
        ),
        ("host=h password='p w' dbname=d", "host=h password=*** dbname=d"),
    ],
)
def test_location_never_shows_a_password(dsn: str, shown: str) -> None:
    """Passwords in the user part, in parameters or in key=value form are left out."""
    assert PostgresStorage(dsn).location == shown


async def test_open_journal_takes_a_postgresql_url(postgres_url: str, tmp_path: Path) -> None:
    """open_journal("postgresql://...") journals there; session.fs needs images_dir."""
    from retract import JournalOpenError, open_journal  # noqa: PLC0415

    async with open_journal(postgres_url, images_dir=tmp_path / "images") as journal:
        assert type(journal.storage).__name__ == "PostgresStorage"
        async with journal.start_session(script="deploy") as session:
            await session.fs.write_text(tmp_path / "a.txt", "new")
        (record,) = await journal.list_sessions()
        assert record.context == {"script": "deploy"}
    async with open_journal(postgres_url) as journal:
        with pytest.raises(JournalOpenError, match="images_dir"):
            async with journal.start_session() as session:
                await session.fs.write_text(tmp_path / "b.txt", "x")


def test_the_cli_reads_a_postgresql_journal(postgres_url: str) -> None:
    """`retract --db postgresql://... sessions` lists what another process journaled."""
    import asyncio  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from retract import open_journal  # noqa: PLC0415

    async def journal_one() -> str:
        async with (
            open_journal(postgres_url) as journal,
            journal.start_session(script="nightly") as session,
        ):
            return session.session_id

    session_id = asyncio.run(journal_one())
    result = subprocess.run(
        [sys.executable, "-m", "retract", "--db", postgres_url, "sessions", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert session_id in result.stdout


async def test_an_error_quoting_a_nul_still_ends_its_session(postgres_url: str) -> None:
    """A failure whose message holds NUL is stored (escaped); the session does not hang."""
    from retract import SessionStatus, open_journal  # noqa: PLC0415

    async with open_journal(postgres_url) as journal:
        with pytest.raises(ValueError, match="bad"):
            async with journal.start_session():
                raise ValueError("bad name 'a\x00b'")
        (record,) = await journal.list_sessions()
        assert record.status is SessionStatus.FAILED
        assert record.error == "ValueError: bad name 'a\\x00b'"


async def test_bad_connection_options_are_open_errors_and_hide_ssl_passwords(
    postgres_url: str,
) -> None:
    """A bogus URL option is a JournalOpenError; sslpassword never shows in location."""
    from retract import JournalOpenError  # noqa: PLC0415

    with pytest.raises(JournalOpenError):
        await PostgresStorage(postgres_url + "?sslmode=bogus").open()
    storage = PostgresStorage(postgres_url + "?sslpassword=secret-phrase")
    assert "secret-phrase" not in storage.location


_UNDOER = """
import asyncio, sys
from pathlib import Path
from retract import OperationRegistry, open_journal

url, session_id, log = sys.argv[1], sys.argv[2], Path(sys.argv[3])
registry = OperationRegistry()

@registry.handler("slow.op")
async def undo(op):
    with log.open("a") as f:
        f.write(f"{op.sequence}\\n")
    await asyncio.sleep(0.5)

async def main():
    async with open_journal(url, registry=registry) as journal:
        await journal.undo_session(session_id)

asyncio.run(main())
"""


async def test_a_second_undo_from_another_process_is_refused(
    postgres_url: str, tmp_path: Path
) -> None:
    """While one process undoes a session, another's undo is refused; each op undone once."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from retract import OperationRegistry, UndoInProgressError, open_journal  # noqa: PLC0415

    registry = OperationRegistry()
    registry.handler("slow.op")(lambda op: None)
    log = tmp_path / "undone.log"
    async with open_journal(postgres_url, registry=registry) as journal:
        async with journal.start_session() as session:
            for _ in range(3):
                await session.record_operation("slow.op", {})
        script = tmp_path / "undoer.py"
        script.write_text(_UNDOER)
        undoer = subprocess.Popen(  # noqa: ASYNC220  (waited for below, off the loop)
            [sys.executable, str(script), postgres_url, session.session_id, str(log)]
        )
        try:
            async with asyncio.timeout(60):
                while not log.exists():  # noqa: ASYNC110  (another process writes it)
                    await asyncio.sleep(0.02)
            with pytest.raises(UndoInProgressError, match="is being undone by process"):
                await journal.undo_session(session.session_id)
        finally:
            assert await asyncio.to_thread(undoer.wait, 60) == 0
        record = await journal.get_session(session.session_id)
        assert record is not None
        assert record.status is SessionStatus.ROLLED_BACK
    assert sorted(log.read_text().split()) == ["1", "2", "3"]  # each once, by one process


async def test_the_url_may_name_the_schema(postgres_url: str, admin: Any) -> None:
    """``?schema=`` picks the journal's schema wherever a URL goes, the CLI included."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from retract import open_journal  # noqa: PLC0415

    url = f"{postgres_url}?schema=jobs"
    async with open_journal(url) as journal, journal.start_session(script="x") as session:
        assert isinstance(journal.storage, PostgresStorage)
        assert journal.storage.schema == "jobs"
        assert journal.storage.location.endswith("?schema=jobs")
    assert await admin.fetchval("SELECT count(*) FROM jobs.sessions") == 1
    assert await admin.fetchval("SELECT to_regclass('retract.sessions')") is None
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "retract", "--db", url, "sessions", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert session.session_id in result.stdout


def test_a_schema_given_twice_must_agree(postgres_url: str) -> None:
    assert PostgresStorage(f"{postgres_url}?schema=a", schema="a").schema == "a"
    with pytest.raises(ValueError, match="give it in one place"):
        PostgresStorage(f"{postgres_url}?schema=a", schema="b")
    with pytest.raises(ValueError, match="invalid schema name"):
        PostgresStorage(f"{postgres_url}?schema=no-dashes")
