"""Recovery: sessions whose owner died become INTERRUPTED; live and remote ones stay."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from retract import (
    Journal,
    OperationRecord,
    OperationRegistry,
    OperationState,
    Owner,
    SessionStateError,
    SessionStatus,
    UndoInProgressError,
)
from retract.journal._encoding import new_id
from retract.journal._owner import current_owner, owner_alive, process_start_time
from retract.journal.storage import NewOperation, OperationUpdate

S = SessionStatus
O = OperationState  # noqa: E741


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def zombie() -> Iterator[int]:
    """A child that has exited but is not reaped yet (still has a pid)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    for _ in range(500):
        stat = Path(f"/proc/{child.pid}/stat").read_text()
        state = stat.rsplit(")", 1)[1].split()[0]
        if state == "Z":
            break
        time.sleep(0.01)
    try:
        yield child.pid
    finally:
        child.wait()


def dead_owner() -> Owner:
    me = current_owner()
    return replace(me, token="dead-token", pid=dead_pid())


async def orphan_session(
    journal: Journal, owner: Owner, *states: OperationState, status: SessionStatus = S.RUNNING
) -> str:
    """A session left by ``owner``, with operations in the given states."""
    session_id = new_id()
    storage = journal.storage
    await storage.create_session(session_id, "{}", owner, time.time())
    await storage.append_operations(
        session_id,
        [
            NewOperation(new_id(), "t.op", f'{{"i":{i}}}', s, time.time())
            for i, s in enumerate(states)
        ],
    )
    if status is not S.RUNNING:
        await storage.update_session(session_id, status=status, at=time.time())
    return session_id


def test_owner_describes_this_process() -> None:
    """The current owner has our pid, host and a start time /proc agrees with."""
    me = current_owner()
    assert me.pid == os.getpid()
    assert len(me.token) == 32
    started = process_start_time(os.getpid())
    if started is not None:
        assert me.started_at == pytest.approx(started, abs=1.0)
        assert me.started_at <= time.time()


def test_liveness_of_owners() -> None:
    """We are alive; a reaped pid is dead; a reused pid is dead; another host is unknown."""
    me = current_owner()
    assert owner_alive(me) is True
    assert owner_alive(replace(me, token="x", pid=dead_pid())) is False
    if process_start_time(os.getpid()) is not None:
        reused = replace(me, token="x", started_at=me.started_at - 3600)
        assert owner_alive(reused) is False
    assert owner_alive(Owner("x", 1, "some-other-host", 0.0)) is None
    # same host name, other pid space (another container): a pid there means nothing here
    assert owner_alive(replace(me, token="x", pid=dead_pid(), machine="other/pid:[1]")) is None


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_zombie_owner_is_dead(zombie: int) -> None:
    """A process that exited but was not reaped yet counts as dead."""
    me = current_owner()
    started = process_start_time(zombie)
    assert started is not None
    assert owner_alive(replace(me, token="z", pid=zombie, started_at=started)) is False


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_gets_its_own_identity() -> None:
    """After fork the child is a new owner (token and pid), so recovery can tell them apart."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        os.write(write, f"{current_owner().token} {current_owner().pid}".encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        token, child_pid = pipe.read().split()
    os.waitpid(pid, 0)
    assert token != current_owner().token
    assert int(child_pid) == pid


async def test_recover_interrupts_sessions_of_dead_owners(journal: Journal) -> None:
    """A dead owner's RUNNING session becomes INTERRUPTED; its open intents IN_DOUBT."""
    owner = dead_owner()
    session_id = await orphan_session(journal, owner, O.DONE, O.INTENT, O.FAILED)
    recovered = await journal.recover()
    assert [r.session_id for r in recovered] == [session_id]
    record = recovered[0]
    assert record.status is S.INTERRUPTED
    assert record.error is not None
    assert str(owner.pid) in record.error
    assert record.completed_at is not None
    ops = await journal.get_operations(session_id)
    assert [op.state for op in ops] == [O.DONE, O.IN_DOUBT, O.FAILED]
    assert await journal.recover() == []


async def test_recover_leaves_live_and_remote_owners_alone(journal: Journal) -> None:
    """Sessions of live processes (this one included) and of other hosts are not touched."""
    me = current_owner()
    live_other = replace(me, token="other-live")
    remote = Owner("remote", 12345, "elsewhere.example", 0.0)
    theirs = await orphan_session(journal, live_other, O.INTENT)
    far = await orphan_session(journal, remote, O.INTENT)
    async with journal.start_session() as session, session.step("t.op", {"i": 0}):
        assert await journal.recover() == []
        ours = session.session_id
        for session_id in (ours, theirs, far):
            record = await journal.get_session(session_id)
            assert record is not None
            assert record.status is S.RUNNING
            assert [op.state for op in await journal.get_operations(session_id)] == [O.INTENT]


async def test_recover_takes_our_own_sessions_whose_end_was_lost(journal: Journal) -> None:
    """A session of ours that nobody here runs any more (end not written) is recovered."""
    ours = await orphan_session(journal, current_owner(), O.DONE, O.INTENT)
    recovered = await journal.recover()
    assert [r.session_id for r in recovered] == [ours]
    assert [op.state for op in await journal.get_operations(ours)] == [O.DONE, O.IN_DOUBT]


async def test_recover_ignores_finished_sessions(journal: Journal) -> None:
    """Only RUNNING and UNDOING sessions are candidates."""
    await orphan_session(journal, dead_owner(), O.DONE, status=S.COMPLETED)
    assert await journal.recover() == []


async def test_concurrent_recoverers_never_both_take_a_session(journal: Journal) -> None:
    """Two recover() calls at once recover each session exactly once."""
    ids = {await orphan_session(journal, dead_owner(), O.INTENT) for _ in range(5)}
    first, second = await asyncio.gather(journal.recover(), journal.recover())
    taken = [r.session_id for r in first] + [r.session_id for r in second]
    assert sorted(taken) == sorted(ids)


async def test_interrupted_undo_resumes_without_repeating(journal: Journal) -> None:
    """An undo whose process died resumes: UNDONE ops are skipped, UNDOING ones are in doubt."""
    owner = dead_owner()
    session_id = await orphan_session(journal, owner, O.DONE, O.DONE, O.DONE, O.DONE)
    await journal.storage.update_session(session_id, status=S.UNDOING, at=time.time())
    await journal.storage.update_operations(
        [
            OperationUpdate(session_id, 4, O.UNDONE),
            OperationUpdate(session_id, 3, O.UNDOING),
        ],
        time.time(),
    )
    seen: list[tuple[int, bool]] = []
    registry = OperationRegistry()

    @registry.handler("t.op")
    async def handler(op: OperationRecord) -> None:
        seen.append((op.sequence, op.in_doubt))

    recovered = await journal.recover()
    assert [(r.session_id, r.status, r.error) for r in recovered] == [
        (session_id, S.INTERRUPTED, None)
    ]
    report = await journal.undo_session(session_id, registry)
    assert seen == [(3, True), (2, False), (1, False)]
    assert report.status is S.ROLLED_BACK
    assert [op.state for op in await journal.get_operations(session_id)] == [O.UNDONE] * 4


async def test_undo_takes_over_a_dead_owners_session_directly(journal: Journal) -> None:
    """Undo does not need recover() first: a dead owner's session is claimed and undone."""
    session_id = await orphan_session(journal, dead_owner(), O.DONE, O.INTENT)
    seen: list[tuple[int, OperationState]] = []
    registry = OperationRegistry()

    @registry.handler("t.op")
    async def handler(op: OperationRecord) -> None:
        seen.append((op.sequence, op.state))

    report = await journal.undo_session(session_id, registry)
    assert seen == [(2, O.IN_DOUBT), (1, O.DONE)]
    assert report.status is S.ROLLED_BACK
    record = await journal.get_session(session_id)
    assert record is not None
    assert record.owner == current_owner()


async def test_undo_refuses_a_session_running_on_another_host(journal: Journal) -> None:
    """Liveness cannot be checked across hosts: the undo is refused, naming the host."""
    remote = Owner("remote", 12345, "elsewhere.example", 0.0)
    session_id = await orphan_session(journal, remote, O.DONE)
    with pytest.raises(SessionStateError, match=r"elsewhere\.example"):
        await journal.undo_session(session_id, OperationRegistry())


async def test_undo_refuses_a_session_another_live_process_is_undoing(journal: Journal) -> None:
    """An UNDOING session owned by a live process raises UndoInProgressError."""
    me = current_owner()
    live_other = replace(me, token="other-live")
    session_id = await orphan_session(journal, live_other, O.DONE, status=S.UNDOING)
    registry = OperationRegistry()
    registry.handler("t.op")(lambda op: None)
    with pytest.raises(UndoInProgressError, match=str(os.getpid())):
        await journal.undo_session(session_id, registry)
    assert [op.state for op in await journal.get_operations(session_id)] == [O.DONE]
