"""Several processes on ONE SQLite journal: writes, undo and recovery side by side.

Workers (``_mp_worker.py``, run with ``sys.executable``) coordinate with the test through
files: they start together behind a barrier file, and an undo or a session can be held
open until the test creates a release file. No test measures time; the polling loops
only guard against hangs. ``RETRACT_SEED`` fixes the seed of the written mix.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retract import (
    Journal,
    OperationRecord,
    OperationRegistry,
    OperationState,
    SessionStateError,
    SessionStatus,
    UndoInProgressError,
    open_journal,
)
from tests.helpers import WorkerProcess, WorkerProcesses, wait_until

SEED = int(os.environ.get("RETRACT_SEED") or random.SystemRandom().randrange(2**32))
WORKER = Path(__file__).with_name("_mp_worker.py")
#: Guards the waits below against a hang; never an assertion about speed.
WAIT_LIMIT = 120.0
WRITERS = 4

S = SessionStatus
O = OperationState  # noqa: E741


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[WorkerProcesses]:
    """Start workers sharing ``tmp_path``; any still running at the end is killed and reaped."""
    config = {"db": str(tmp_path / "journal.db")}
    with WorkerProcesses(
        WORKER, tmp_path, seed=SEED, wait_limit=WAIT_LIMIT, config=config, label="worker "
    ) as workers:
        yield workers


async def wait_for(path: Path, *workers: WorkerProcess) -> None:
    """Wait until ``path`` exists; fail at once if a worker exits meanwhile."""
    await wait_until(
        path.name, path.exists, *workers, seed=SEED, wait_limit=WAIT_LIMIT, interval=0.002
    )


async def start_together(tmp_path: Path, workers: list[WorkerProcess]) -> None:
    """Let the workers past their barrier once every one of them is waiting at it."""
    for worker in workers:
        await wait_for(tmp_path / f"ready-{worker.name}", worker)
    (tmp_path / "start").touch()


def integrity(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()


def counting_registry(calls: collections.Counter[str]) -> OperationRegistry:
    registry = OperationRegistry()

    @registry.handler("mp.note")
    @registry.handler("mp.step")
    async def undo(op: OperationRecord) -> None:
        calls[op.op_id] += 1

    return registry


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh-file", "existing-file"])
async def test_four_processes_writing_one_file_lose_and_duplicate_nothing(
    tmp_path: Path, spawn: WorkerProcesses, fresh: bool
) -> None:
    """4 processes write sessions into one file at once: every row once, gap-free, no lock error."""
    db = tmp_path / "journal.db"
    if not fresh:
        async with open_journal(db):
            pass
    workers = [spawn("write", f"w{i}", sessions=40, parallel=8) for i in range(WRITERS)]
    await start_together(tmp_path, workers)
    for worker in workers:
        await worker.finish()
        assert "locked" not in worker.err.read_text(), worker.describe()

    expected: dict[str, tuple[int, dict[int, list[str]]]] = {}
    for worker in workers:
        written = json.loads((tmp_path / f"result-{worker.name}.json").read_text())
        for session_id, rows in written.items():
            expected[session_id] = (
                worker.popen.pid,
                {int(sequence): row for sequence, row in rows.items()},
            )
    assert len(expected) == WRITERS * 40
    op_ids: list[str] = []
    async with open_journal(db) as journal:
        sessions = await journal.list_sessions()
        assert {s.session_id for s in sessions} == expected.keys(), f"seed {SEED}"
        for session in sessions:
            tag = f"seed {SEED}, session {session.session_id}"
            pid, rows = expected[session.session_id]
            assert session.status is S.COMPLETED, f"{tag}: {session}"
            assert session.owner is not None
            assert session.owner.pid == pid, tag
            ops = await journal.get_operations(session.session_id)
            assert [op.sequence for op in ops] == list(range(1, len(ops) + 1)), tag
            assert {op.sequence: [op.op_id, op.state.value] for op in ops} == rows, tag
            op_ids += [op.op_id for op in ops]
    assert len(op_ids) == len(set(op_ids)), f"seed {SEED}: duplicate op ids"
    assert integrity(db) == [("ok",)]


async def test_four_processes_undoing_each_others_sessions_while_others_write(
    tmp_path: Path, spawn: WorkerProcesses
) -> None:
    """Each worker undoes the previous one's sessions: every handler once, newest first."""
    db = tmp_path / "journal.db"
    async with open_journal(db):
        pass
    names = [f"w{i}" for i in range(WRITERS)]
    workers = [
        spawn("write", name, sessions=30, parallel=6, undo_peer=names[i - 1])
        for i, name in enumerate(names)
    ]
    await start_together(tmp_path, workers)
    for worker in workers:
        await worker.finish()
    async with open_journal(db) as journal:
        for i, worker in enumerate(workers):
            peer = names[i - 1]
            written = json.loads((tmp_path / f"result-{peer}.json").read_text())
            undone = json.loads((tmp_path / f"undone-{worker.name}.json").read_text())
            assert undone["statuses"] == dict.fromkeys(written, S.ROLLED_BACK.value)
            for session_id, rows in written.items():
                tag = f"seed {SEED}, {peer}'s session {session_id} undone by {worker.name}"
                newest_first = [rows[key][0] for key in sorted(rows, key=int, reverse=True)]
                assert undone["handled"].get(session_id, []) == newest_first, tag
                record = await journal.get_session(session_id)
                assert record is not None
                assert (record.status, record.undo_count) == (S.ROLLED_BACK, 1), tag
                ops = await journal.get_operations(session_id)
                assert [op.sequence for op in ops] == list(range(1, len(rows) + 1)), tag
                assert {op.state for op in ops} == {O.UNDONE}, tag
    assert integrity(db) == [("ok",)]


async def test_journals_opened_at_once_on_a_fresh_file_all_open(tmp_path: Path) -> None:
    """Four journals opened together on one new file all open (minimal race reproducer)."""
    # In one process for speed; the same happens across processes (see fresh-file above).
    # One round hits the race only sometimes, so up to 40 rounds run; a fixed library
    # passes every round.
    for attempt in range(40):
        db = tmp_path / f"fresh-{attempt}.db"
        journals = [open_journal(db) for _ in range(4)]
        opened = await asyncio.gather(*(j.open() for j in journals), return_exceptions=True)
        for journal in journals:
            await journal.aclose()
        errors = [result for result in opened if isinstance(result, BaseException)]
        if errors:
            raise errors[0]


async def new_session(journal: Journal, operations: int) -> tuple[str, list[str]]:
    """A COMPLETED session of notes and steps; its op ids in sequence order."""
    op_ids: list[str] = []
    async with journal.start_session(script="multiprocess") as session:
        for n in range(operations):
            if n % 2:
                op_ids.append((await session.record_operation("mp.note", {"n": n})).op_id)
            else:
                async with session.step("mp.step", {"n": n}) as step:
                    pass
                op_ids.append(step.op_id)
    return session.session_id, op_ids


async def test_second_undo_from_another_process_is_refused_while_the_first_runs(
    tmp_path: Path, spawn: WorkerProcesses
) -> None:
    """While a worker undoes a session, this process's undo and recover() leave it alone."""
    calls: collections.Counter[str] = collections.Counter()
    async with open_journal(tmp_path / "journal.db") as journal:
        session_id, op_ids = await new_session(journal, 6)
        undoer = spawn("undo-block", "undoer", session_id=session_id)
        await wait_for(tmp_path / "entered", undoer)  # its first handler is running

        record = await journal.get_session(session_id)
        assert record is not None
        assert record.status is S.UNDOING
        assert record.owner is not None
        assert record.owner.pid == undoer.popen.pid
        with pytest.raises(UndoInProgressError):
            await journal.undo_session(session_id, counting_registry(calls))
        assert not calls, "the refused undo called a handler"
        assert await journal.recover() == []
        record = await journal.get_session(session_id)
        assert record is not None
        assert record.status is S.UNDOING

        (tmp_path / "release").touch()
        await undoer.finish()
        result = json.loads((tmp_path / "result-undoer.json").read_text())
        assert result == {"handled": op_ids[::-1], "status": S.ROLLED_BACK.value}
        record = await journal.get_session(session_id)
        assert record is not None
        assert record.status is S.ROLLED_BACK
        assert record.undo_count == 1
        ops = await journal.get_operations(session_id)
        assert {op.state for op in ops} == {O.UNDONE}
        report = await journal.undo_session(session_id, counting_registry(calls))
        assert (report.status, report.total) == (S.ROLLED_BACK, 0)
        assert not calls
    assert integrity(tmp_path / "journal.db") == [("ok",)]


async def test_recover_leaves_the_running_session_of_a_live_process_alone(
    tmp_path: Path, spawn: WorkerProcesses
) -> None:
    """recover() in another process does not touch a live worker's RUNNING session."""
    async with open_journal(tmp_path / "journal.db") as journal:
        holder = spawn("hold", "holder")
        await wait_for(tmp_path / "holding", holder)  # inside an open step
        (record,) = await journal.list_sessions()
        assert record.status is S.RUNNING
        assert await journal.recover() == []
        with pytest.raises(SessionStateError) as refused:
            await journal.undo_session(record.session_id, counting_registry(collections.Counter()))
        assert not isinstance(refused.value, UndoInProgressError)
        record_now = await journal.get_session(record.session_id)
        assert record_now is not None
        assert record_now.status is S.RUNNING
        ops = await journal.get_operations(record.session_id)
        assert [op.state for op in ops] == [O.DONE, O.INTENT]

        (tmp_path / "release").touch()
        await holder.finish()
        record_now = await journal.get_session(record.session_id)
        assert record_now is not None
        assert record_now.status is S.COMPLETED
        ops = await journal.get_operations(record.session_id)
        assert [op.state for op in ops] == [O.DONE, O.DONE]


async def test_concurrent_recoverers_claim_each_dead_session_exactly_once(
    tmp_path: Path, spawn: WorkerProcesses
) -> None:
    """4 processes recover a killed process's sessions at once; each is taken by one."""
    doomed = spawn("die", "doomed", sessions=20)
    await wait_for(tmp_path / "holding", doomed)
    doomed.popen.send_signal(signal.SIGKILL)
    assert await asyncio.to_thread(doomed.popen.wait, WAIT_LIMIT) == -signal.SIGKILL

    recoverers = [spawn("recover", f"r{i}") for i in range(4)]
    await start_together(tmp_path, recoverers)
    claimed: list[str] = []
    for worker in recoverers:
        await worker.finish()
        claimed += json.loads((tmp_path / f"result-{worker.name}.json").read_text())
    async with open_journal(tmp_path / "journal.db") as journal:
        sessions = await journal.list_sessions()
        assert len(sessions) == 20
        assert sorted(claimed) == sorted(s.session_id for s in sessions), "claimed twice or never"
        for session in sessions:
            assert session.status is S.INTERRUPTED
            ops = await journal.get_operations(session.session_id)
            assert [op.state for op in ops] == [O.DONE, O.DONE, O.IN_DOUBT]
        assert await journal.recover() == []
    assert integrity(tmp_path / "journal.db") == [("ok",)]
