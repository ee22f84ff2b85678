"""journal.watch() on PostgreSQL: session and operation events, across processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from retract import (
    EventStream,
    Journal,
    JournalError,
    OperationsEvent,
    OperationState,
    SessionEvent,
    SessionStatus,
    StorageError,
    open_journal,
)
from retract.journal._events import JournalEvent, parse_event

S = SessionStatus
O = OperationState  # noqa: E741  (short names keep the expected sequences readable)


@pytest.fixture
async def journal(postgres_url: str) -> AsyncIterator[Journal]:
    async with open_journal(postgres_url) as opened:
        opened.registry.handler("t.op")(lambda record: None)
        yield opened


async def take(events: EventStream, count: int) -> list[JournalEvent]:
    """The next ``count`` events (failing the test rather than hanging)."""
    async with asyncio.timeout(30):
        return [await anext(events) for _ in range(count)]


def brief(event: JournalEvent) -> tuple[object, ...]:
    if isinstance(event, SessionEvent):
        return ("session", event.status, event.undo_count)
    return ("ops", event.state, event.count, event.first, event.last)


async def test_a_session_and_its_undo_are_watched_live(journal: Journal) -> None:
    """Start, end, and every window of the undo arrive in commit order."""
    async with journal.watch() as events:
        async with journal.start_session() as session:
            for _ in range(5):
                await session.record_operation("t.op", {})
        await journal.undo_session(session.session_id)
        got: list[JournalEvent] = []
        async with asyncio.timeout(30):
            async for event in events:
                got.append(event)
                if isinstance(event, SessionEvent) and event.status is S.ROLLED_BACK:
                    break
    assert {event.session_id for event in got} == {session.session_id}
    assert [brief(event) for event in got[:3]] == [
        ("session", S.RUNNING, 0),
        ("session", S.COMPLETED, 0),
        ("session", S.UNDOING, 1),
    ]
    assert brief(got[-1]) == ("session", S.ROLLED_BACK, 1)
    # the undo's windows (their size adapts), newest operations first; each operation
    # announced UNDOING, then UNDONE
    marked: dict[int, list[OperationState]] = {}
    for event in got[3:-1]:
        assert isinstance(event, OperationsEvent)
        assert event.count == event.last - event.first + 1
        for sequence in range(event.first, event.last + 1):
            marked.setdefault(sequence, []).append(event.state)
    assert marked == {n: [O.UNDOING, O.UNDONE] for n in range(1, 6)}
    assert got[0].at <= got[-1].at


async def test_a_running_sessions_own_writes_are_not_announced(journal: Journal) -> None:
    """Appends and step outcomes (DONE, FAILED) are not events; session ends are.

    A NOTIFY serializes commits cluster-wide: a running session's writes send none.
    """
    async with journal.watch() as events:
        async with journal.start_session() as session:
            await session.record_operation("t.op", {})  # appended DONE
            async with session.step("t.op", {}):  # INTENT, then DONE
                pass
        with pytest.raises(RuntimeError):
            async with journal.start_session() as failing, failing.step("t.op", {}):
                raise RuntimeError("boom")
        got = await take(events, 4)
    assert [brief(event) for event in got] == [
        ("session", S.RUNNING, 0),
        ("session", S.COMPLETED, 0),
        ("session", S.RUNNING, 0),
        ("session", S.FAILED, 0),
    ]
    assert {event.session_id for event in got} == {session.session_id, failing.session_id}


async def test_one_sessions_events_only(journal: Journal) -> None:
    async with journal.start_session() as first:
        pass
    async with journal.watch(first.session_id) as events:
        async with journal.start_session():
            pass
        await journal.undo_session(first.session_id)
        got = await take(events, 2)
    assert [brief(event) for event in got] == [
        ("session", S.UNDOING, 1),
        ("session", S.ROLLED_BACK, 1),
    ]


_WORKER = """
import asyncio, sys
from retract import open_journal

async def main() -> None:
    async with open_journal(sys.argv[1]) as journal:
        async with journal.start_session(worker="other") as session:
            await session.record_operation("t.op", {})
        print(session.session_id)

asyncio.run(main())
"""


async def test_events_of_another_process_are_seen(journal: Journal, tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    url = journal.storage.location  # no password in the test cluster's URL
    async with journal.watch() as events:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, str(script), url],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        got = await take(events, 2)
    session_id = done.stdout.strip()
    assert [(event.session_id, brief(event)) for event in got] == [
        (session_id, ("session", S.RUNNING, 0)),
        (session_id, ("session", S.COMPLETED, 0)),
    ]


async def test_closing_the_journal_ends_the_watch(postgres_url: str) -> None:
    """A consumer waiting for events leaves its loop when the journal closes."""
    seen: list[JournalEvent] = []
    async with open_journal(postgres_url) as journal:
        events = journal.watch()
        await events.start()

        async def consume() -> None:
            async for event in events:  # seen fills as they come
                seen.append(event)  # noqa: PERF401

        consumer = asyncio.create_task(consume())
        async with journal.start_session():
            pass
        async with asyncio.timeout(30):
            while len(seen) < 2:  # noqa: ASYNC110  (the consumer task fills it)
                await asyncio.sleep(0.01)
    async with asyncio.timeout(30):
        await consumer
    assert [brief(event) for event in seen] == [
        ("session", S.RUNNING, 0),
        ("session", S.COMPLETED, 0),
    ]
    with pytest.raises(JournalError, match="closed"):
        await events.start()


async def test_a_lost_connection_ends_the_watch_with_an_error(
    journal: Journal, postgres_url: str
) -> None:
    async with journal.watch() as events:
        admin = await asyncpg.connect(postgres_url)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'retract watch' AND datname = current_database()"
            )
        finally:
            await admin.close()
        with pytest.raises(StorageError, match="events committed since were not seen"):
            await take(events, 1)
        with pytest.raises(StopAsyncIteration):
            await anext(events)
    async with journal.start_session():  # the journal itself is unaffected
        pass


async def test_a_slow_consumer_loses_the_oldest_events(journal: Journal) -> None:
    async with journal.watch(max_pending=2) as events:
        for _ in range(3):
            async with journal.start_session():
                pass
        # the last session's end is the sixth event; wait until it is in
        async with asyncio.timeout(30):
            while events.dropped < 4:  # noqa: ASYNC110  (the listener fills it)
                await asyncio.sleep(0.01)
        got = await take(events, 2)
    assert events.dropped == 4
    assert [brief(event) for event in got] == [
        ("session", S.RUNNING, 0),
        ("session", S.COMPLETED, 0),
    ]


async def test_watch_needs_a_storage_that_announces(tmp_path: Path) -> None:
    async with open_journal(tmp_path / "journal.db") as journal:
        with pytest.raises(JournalError, match=r"needs a storage that announces changes"):
            journal.watch()


def test_max_pending_must_be_positive() -> None:
    async def never() -> None:
        raise AssertionError

    with pytest.raises(ValueError, match="max_pending must be at least 1"):
        EventStream(
            channel="c",
            connect=never,
            release=lambda conn: never(),
            location="x",
            max_pending=0,
        )


def test_events_are_parsed_and_bad_ones_refused() -> None:
    event = parse_event(
        '{"kind":"operations","session_id":"s","state":"undone","count":3,'
        '"first":2,"last":4,"at":1700000000.5}'
    )
    assert isinstance(event, OperationsEvent)
    assert (event.state, event.count, event.first, event.last) == (O.UNDONE, 3, 2, 4)
    with pytest.raises(ValueError, match="not a journal event"):
        parse_event('{"kind":"other","at":1}')


async def test_the_cli_prints_events_as_json_lines(journal: Journal) -> None:
    """`retract watch --count N --json` follows another process's session, then stops."""
    import json  # noqa: PLC0415

    url = journal.storage.location
    watcher = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "retract",
        "--db",
        url,
        "watch",
        "--count",
        "2",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            assert watcher.stderr is not None
            line = await watcher.stderr.readline()  # listening from here on
            assert b"watching" in line
            async with journal.start_session() as session:
                pass
            out, _ = await watcher.communicate()
    finally:
        if watcher.returncode is None:
            watcher.kill()
            await watcher.wait()
    assert watcher.returncode == 0
    lines = [json.loads(text) for text in out.decode().splitlines()]
    assert [(e["kind"], e["session_id"], e["status"]) for e in lines] == [
        ("session", session.session_id, "running"),
        ("session", session.session_id, "completed"),
    ]


def test_the_cli_watch_explains_sqlite_cannot(tmp_path: Path) -> None:
    from retract.cli import main  # noqa: PLC0415

    async def make() -> None:
        async with open_journal(tmp_path / "j.db"):
            pass

    asyncio.run(make())
    assert main(["--db", str(tmp_path / "j.db"), "watch"]) == 1


async def test_closing_a_watch_on_a_server_that_hangs_is_bounded(journal: Journal) -> None:
    """A listener whose server process stopped answering is cut, not waited for."""
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415

    events = journal.watch()
    await events.start()
    events._close_timeout = 0.5
    conn = events._conn
    assert conn is not None
    backend = conn.get_server_pid()
    os.kill(backend, signal.SIGSTOP)
    try:
        async with asyncio.timeout(30):
            await events.aclose()
        assert conn.is_closed()
    finally:
        os.kill(backend, signal.SIGCONT)


class _RefusingConnection:
    """A connection whose LISTEN fails: what start() must clean up after."""

    def __init__(self) -> None:
        self.termination: list[object] = []

    def add_termination_listener(self, callback: object) -> None:
        self.termination.append(callback)

    def remove_termination_listener(self, callback: object) -> None:
        self.termination.remove(callback)

    async def add_listener(self, channel: str, callback: object) -> None:
        raise ConnectionResetError("gone")


async def test_a_failed_start_leaves_nothing_on_the_connection() -> None:
    conn = _RefusingConnection()
    released: list[object] = []

    async def connect() -> _RefusingConnection:
        return conn

    async def release(given: object) -> None:
        released.append(given)

    events = EventStream(channel="c", connect=connect, release=release, location="x")
    with pytest.raises(ConnectionResetError):
        await events.start()
    assert conn.termination == []
    assert released == [conn]
