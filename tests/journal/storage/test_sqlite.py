"""What only the SQLite storage has: pragmas, schema checks, files, locks, group commit."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import sqlite3
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiosqlite
import pytest

from retract import (
    JournalBusyError,
    JournalOpenError,
    NotAJournalError,
    SchemaVersionError,
    SQLiteStorage,
    open_journal,
)
from retract.journal.storage._sqlite_schema import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    WAL_AUTOCHECKPOINT,
)
from tests.helpers import sqlite_threads, wait_for_sqlite_threads


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    """An open SQLite storage in tmp_path."""
    opened = SQLiteStorage(tmp_path / "journal.db")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()


async def _pragmas(storage: SQLiteStorage) -> list[dict[str, object]]:
    names = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout", "wal_autocheckpoint")
    results = []
    for thread in (storage._writer_thread, storage._reader_thread):
        assert thread is not None
        assert thread.raw is not None
        raw = thread.raw
        results.append(
            {
                name: await thread.call(
                    lambda n=name, r=raw: r.execute(f"PRAGMA {n}").fetchone()[0]
                )
                for name in names
            }
        )
    return results


async def test_every_connection_gets_every_pragma(storage: SQLiteStorage) -> None:
    """Writer and reader both run WAL, FULL, foreign keys, the busy timeout, the checkpoint."""
    for pragmas in await _pragmas(storage):
        assert pragmas == {
            "journal_mode": "wal",
            "synchronous": 2,
            "foreign_keys": 1,
            "busy_timeout": 5000,
            "wal_autocheckpoint": WAL_AUTOCHECKPOINT,
        }


async def test_normal_synchronous_is_an_opt_in(tmp_path: Path) -> None:
    """synchronous="NORMAL" reaches both connections."""
    storage = SQLiteStorage(tmp_path / "j.db", synchronous="NORMAL", busy_timeout=0.25)
    await storage.open()
    try:
        for pragmas in await _pragmas(storage):
            assert pragmas["synchronous"] == 1
            assert pragmas["busy_timeout"] == 250
    finally:
        await storage.aclose()


async def test_reader_connection_is_query_only(storage: SQLiteStorage) -> None:
    """The reader cannot write, whatever happens."""
    thread = storage._reader_thread
    assert thread is not None
    assert thread.raw is not None
    raw = thread.raw
    with pytest.raises(sqlite3.OperationalError, match=r"readonly|read-only|query_only"):
        await thread.call(lambda: raw.execute("DELETE FROM sessions"))


async def test_schema_version_and_application_id_are_stored(tmp_path: Path) -> None:
    """A new journal file carries our application id and schema version."""
    path = tmp_path / "j.db"
    async with open_journal(path):
        pass
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


async def test_data_survives_reopening(tmp_path: Path) -> None:
    """What one journal wrote, the next one on the same file reads."""
    path = tmp_path / "j.db"
    async with open_journal(path) as journal, journal.start_session(run=1) as session:
        await session.record_operation("t.op", {"x": 1})
    async with open_journal(path) as journal:
        (record,) = await journal.list_sessions()
        assert record.session_id == session.session_id
        assert [op.payload for op in await journal.get_operations(record.session_id)] == [{"x": 1}]


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A journal from a newer retract raises SchemaVersionError and is not modified."""
    path = tmp_path / "j.db"
    async with open_journal(path):
        pass
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(SchemaVersionError, match="upgrade retract"):
        async with open_journal(path):
            pass
    assert path.read_bytes() == before


async def test_file_that_is_not_a_database_is_refused_untouched(tmp_path: Path) -> None:
    """A text file is not a journal: NotAJournalError, and its bytes stay as they were."""
    path = tmp_path / "notes.txt"
    path.write_bytes(b"my precious notes\n" * 100)
    with pytest.raises(NotAJournalError, match="not a retract journal"):
        async with open_journal(path):
            pass
    assert path.read_bytes() == b"my precious notes\n" * 100
    assert not Path(f"{path}-wal").exists()


async def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    """Another application's SQLite file is not used (and an unmake journal is named)."""
    path = tmp_path / "history.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE sessions (session_id TEXT)")
        conn.execute("CREATE TABLE operations (op_id TEXT)")
    conn.close()
    with pytest.raises(NotAJournalError, match="unmake"):
        async with open_journal(path):
            pass
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert tables == {"sessions", "operations"}


async def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    """A journal in a directory that does not exist says so, and creates nothing."""
    with pytest.raises(JournalOpenError, match="does not exist"):
        async with open_journal(tmp_path / "nope" / "j.db"):
            pass
    assert not (tmp_path / "nope").exists()


async def test_directory_path_is_a_clear_error(tmp_path: Path) -> None:
    """Giving a directory instead of a file is refused."""
    with pytest.raises(JournalOpenError, match="is a directory"):
        async with open_journal(tmp_path):
            pass


@contextlib.contextmanager
def _read_only(directory: Path) -> Iterator[None]:
    """Make ``directory`` unwritable, also for root (which ignores permission bits)."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("running as root without chattr: cannot make a directory read-only")
        made = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, check=False)
        if made.returncode != 0:
            pytest.skip(f"chattr +i failed here: {made.stderr.decode().strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)


async def test_read_only_directory_is_a_clear_error(tmp_path: Path) -> None:
    """A journal that cannot be created in a read-only directory raises JournalOpenError."""
    directory = tmp_path / "ro"
    directory.mkdir()
    with _read_only(directory):
        with pytest.raises(JournalOpenError, match=r"writable|read-only"):
            async with open_journal(directory / "j.db"):
                pass
        assert list(directory.iterdir()) == []


async def test_existing_journal_in_read_only_directory_is_a_clear_error(tmp_path: Path) -> None:
    """An existing journal whose directory became read-only cannot be opened for writing."""
    directory = tmp_path / "ro"
    directory.mkdir()
    async with open_journal(directory / "j.db") as journal, journal.start_session():
        pass
    before = (directory / "j.db").read_bytes()
    with _read_only(directory), pytest.raises(JournalOpenError, match=r"writable|read-only"):
        async with open_journal(directory / "j.db"):
            pass
    assert (directory / "j.db").read_bytes() == before


async def test_create_false_refuses_a_missing_file_and_creates_nothing(tmp_path: Path) -> None:
    """create=False on a path without a journal is an error; no file appears."""
    path = tmp_path / "typo.db"
    with pytest.raises(JournalOpenError, match="no journal at"):
        async with open_journal(path, create=False):
            pass
    assert list(tmp_path.iterdir()) == []


async def test_create_false_refuses_an_empty_file_untouched(tmp_path: Path) -> None:
    """create=False on an empty file refuses it and leaves it empty (no WAL either)."""
    path = tmp_path / "empty.db"
    path.touch()
    with pytest.raises(NotAJournalError, match="is empty"):
        async with open_journal(path, create=False):
            pass
    assert path.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]


async def test_create_false_opens_an_existing_journal(tmp_path: Path) -> None:
    """create=False is only about creating: an existing journal opens as usual."""
    path = tmp_path / "j.db"
    async with open_journal(path) as journal, journal.start_session():
        pass
    async with open_journal(path, create=False) as journal:
        assert len(await journal.list_sessions()) == 1


def test_memory_path_is_rejected_with_advice() -> None:
    """SQLiteStorage(":memory:") points to InMemoryStorage."""
    with pytest.raises(ValueError, match="InMemoryStorage"):
        SQLiteStorage(":memory:")


@pytest.mark.parametrize("bad", [{"synchronous": "OFF"}, {"busy_timeout": -1}])
def test_bad_options_are_rejected(tmp_path: Path, bad: dict[str, object]) -> None:
    """Unknown synchronous levels and negative timeouts are refused up front."""
    with pytest.raises(ValueError, match=r"synchronous|busy_timeout"):
        SQLiteStorage(tmp_path / "j.db", **bad)  # type: ignore[arg-type]


async def test_lock_held_too_long_is_a_busy_error_and_not_fatal(tmp_path: Path) -> None:
    """A write lock held past busy_timeout is JournalBusyError; afterwards writes work."""
    path = tmp_path / "j.db"
    async with open_journal(path, busy_timeout=0.2) as journal:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(JournalBusyError, match="locked by another connection"):
                async with journal.start_session():
                    pass
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        async with journal.start_session() as session:
            await session.record_operation("t.op", {})
        assert len(await journal.get_operations(session.session_id)) == 1


async def test_requests_queued_behind_a_failed_batch_still_run(tmp_path: Path) -> None:
    """A batch that fails as a whole (lock timeout) does not wedge the writer."""
    path = tmp_path / "j.db"
    async with open_journal(path, busy_timeout=0.5) as journal:
        async with journal.start_session() as session:
            blocker = sqlite3.connect(path, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            try:
                first = asyncio.create_task(session.record_operation("t.op", {"i": 0}))
                await asyncio.sleep(0.05)
                second = asyncio.create_task(session.record_operation("t.op", {"i": 1}))
                with pytest.raises(JournalBusyError):
                    await first
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            # a hang detector, not a speed check: a wedged writer never finishes
            record = await asyncio.wait_for(second, timeout=30)
        assert record.sequence == 1
        assert [op.payload for op in await journal.get_operations(session.session_id)] == [{"i": 1}]


async def test_concurrent_writes_share_commits(storage: SQLiteStorage, tmp_path: Path) -> None:
    """Concurrent appends are committed together: fewer transactions than requests."""
    async with open_journal(tmp_path / "g.db") as journal:
        store = journal.storage
        assert isinstance(store, SQLiteStorage)
        writer = store._writer
        assert writer is not None
        transactions = 0
        original = writer._transaction

        def counting(*args: object, **kwargs: object) -> object:
            nonlocal transactions
            transactions += 1
            return original(*args, **kwargs)  # type: ignore[arg-type]

        writer._transaction = counting  # type: ignore[method-assign,assignment]
        async with journal.start_session() as session:
            await asyncio.gather(*(session.record_operation("t.op", {"i": i}) for i in range(50)))
        assert transactions < 50
        assert len(await journal.get_operations(session.session_id)) == 50


async def test_awaited_record_is_committed_when_the_await_returns(tmp_path: Path) -> None:
    """Right after record_operation returns, another connection sees the row."""
    path = tmp_path / "j.db"
    async with open_journal(path) as journal, journal.start_session() as session:
        outside = sqlite3.connect(path)
        try:
            for i in range(5):
                await session.record_operation("t.op", {"i": i})
                count = outside.execute("SELECT COUNT(*) FROM operations").fetchone()[0]
                assert count == i + 1
        finally:
            outside.close()


async def test_write_ahead_log_is_preallocated(storage: SQLiteStorage) -> None:
    """Opening grows the WAL to its working size, so commits overwrite existing blocks."""
    assert os.path.getsize(f"{storage.path}-wal") >= WAL_AUTOCHECKPOINT * 4096


async def test_closing_releases_threads(tmp_path: Path) -> None:
    """After aclose the storage's two aiosqlite connection threads have ended."""
    async with open_journal(tmp_path / "j.db") as journal, journal.start_session() as session:
        await session.record_operation("t.op", {})
        storage = journal.storage
        assert isinstance(storage, SQLiteStorage)
        threads = [
            t.conn._thread
            for t in (storage._writer_thread, storage._reader_thread)
            if t is not None
        ]
        assert len(threads) == 2
        assert all(t.is_alive() for t in threads)
    for thread in threads:
        thread.join(timeout=5)
        assert not thread.is_alive()


async def test_failed_open_releases_threads(tmp_path: Path) -> None:
    """A refused file leaves no connection thread behind."""
    path = tmp_path / "x.db"
    path.write_text("not a database at all, not even close" * 10)
    before = len(sqlite_threads())
    with pytest.raises(NotAJournalError):
        async with open_journal(path):
            pass
    await wait_for_sqlite_threads(before)


def test_aiosqlite_private_call_we_rely_on_still_exists() -> None:
    """``Connection._execute(fn, *args)`` runs fn on the connection's thread (pinned)."""
    assert inspect.iscoroutinefunction(aiosqlite.Connection._execute)
    params = list(inspect.signature(aiosqlite.Connection._execute).parameters)
    assert params[:2] == ["self", "fn"]
    assert isinstance(aiosqlite.Connection._conn, property)


async def test_aiosqlite_worker_queue_we_post_to_still_exists(storage: SQLiteStorage) -> None:
    """The writer posts its drain straight onto the connection's worker queue (pinned)."""
    thread = storage._writer_thread
    assert thread is not None
    queue = thread.conn._tx
    assert callable(queue.put_nowait)
    assert thread._put == queue.put_nowait


async def test_eager_call_queues_before_the_next_loop_iteration(storage: SQLiteStorage) -> None:
    """start_call puts the function on the thread at once and delivers its result."""
    thread = storage._writer_thread
    assert thread is not None
    seen: list[str] = []

    def work() -> str:
        seen.append("ran")
        return threading.current_thread().name

    name = await thread.start_call(work)
    assert seen == ["ran"]
    assert name != threading.current_thread().name
