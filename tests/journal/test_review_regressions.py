"""Regressions found in review: each test reproduces a bug that once existed."""

from __future__ import annotations

import asyncio
import os
import time
import warnings
from collections import Counter
from dataclasses import replace
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from retract import (
    InMemoryStorage,
    Journal,
    OperationRecord,
    OperationRegistry,
    OperationState,
    SessionStateError,
    SessionStatus,
    StorageError,
    UndoFailedError,
    UndoInProgressError,
)
from retract._async import shielded
from retract.journal._encoding import new_id
from retract.journal._owner import current_owner
from retract.journal.storage import NewOperation, OperationUpdate
from tests.journal.test_recovery import dead_pid

S = SessionStatus
O = OperationState  # noqa: E741


class Boom(Exception):
    """A failing handler or block."""


async def session_of(journal: Journal, n: int) -> str:
    async with journal.start_session() as session:
        await session.record_operations([("t.op", {"i": i}) for i in range(n)])
    return session.session_id


async def test_resumed_undo_that_stops_leaves_unreached_operations_in_doubt(
    journal: Journal,
) -> None:
    """UNDOING operations a resumed undo stops short of stay UNDOING, not UNDONE."""
    me = current_owner()
    dead = replace(me, token="dead", pid=dead_pid())
    session_id = new_id()
    storage = journal.storage
    await storage.create_session(session_id, "{}", dead, time.time())
    await storage.append_operations(
        session_id,
        [NewOperation(new_id(), "t.op", f'{{"i":{i}}}', O.DONE, time.time()) for i in range(20)],
    )
    await storage.update_session(session_id, status=S.UNDOING, at=time.time())
    # The crashed run had marked #11..#20 UNDOING and finished #20 and #19.
    await storage.record_undo_progress(session_id, outcomes=[], undone=None, begin=(11, 20), at=1)
    await storage.update_operations(
        [OperationUpdate(session_id, 20, O.UNDONE), OperationUpdate(session_id, 19, O.UNDONE)], 2
    )
    completed: Counter[int] = Counter()
    registry = OperationRegistry()

    @registry.handler("t.op")
    async def handler(op: OperationRecord) -> None:
        if op.sequence == 15 and not completed[-1]:
            completed[-1] += 1
            raise Boom("transient")
        completed[op.sequence] += 1

    with pytest.raises(UndoFailedError):
        await journal.undo_session(session_id, registry)
    states = {op.sequence: op.state for op in await journal.get_operations(session_id)}
    assert [s for s in range(11, 21) if states[s] is O.UNDONE] == [16, 17, 18, 19, 20]
    assert states[15] is O.UNDO_FAILED
    assert all(states[s] is O.UNDOING for s in range(11, 15))
    await journal.undo_session(session_id, registry)
    assert all(completed[s] == 1 for s in range(1, 19)), completed


async def test_failing_progress_callback_does_not_mark_unrun_operations_undone(
    journal: Journal,
) -> None:
    """If the progress callback raises, operations whose handlers never ran stay pending."""
    session_id = await session_of(journal, 20)
    ran: list[int] = []
    registry = OperationRegistry()

    @registry.handler("t.op")
    async def handler(op: OperationRecord) -> None:
        ran.append(op.sequence)

    def progress(done: int, total: int) -> None:
        if done == 3:
            raise BrokenPipeError("stderr went away")

    with pytest.raises(BrokenPipeError):
        await journal.undo_session(session_id, registry, progress=progress)
    undone = [
        op.sequence for op in await journal.get_operations(session_id) if op.state is O.UNDONE
    ]
    assert sorted(undone) == sorted(ran) == [18, 19, 20]
    report = await journal.undo_session(session_id, registry)
    assert report.status is S.ROLLED_BACK
    assert sorted(ran) == list(range(1, 21))


async def test_undos_started_in_the_same_tick_keep_the_running_one_registered(
    journal: Journal,
) -> None:
    """A refused second undo must not make the running one look abandoned."""
    session_id = await session_of(journal, 5)
    calls: Counter[int] = Counter()
    release = asyncio.Event()
    registry = OperationRegistry()

    @registry.handler("t.op")
    async def handler(op: OperationRecord) -> None:
        calls[op.sequence] += 1
        await release.wait()

    first = asyncio.create_task(journal.undo_session(session_id, registry))
    second = asyncio.create_task(journal.undo_session(session_id, registry))
    with pytest.raises(UndoInProgressError):
        await second
    for _ in range(100):
        if calls:
            break
        await asyncio.sleep(0.005)
    assert await journal.recover() == []
    with pytest.raises(UndoInProgressError):
        await journal.undo_session(session_id, registry)
    release.set()
    await first
    assert calls == Counter({5: 1, 4: 1, 3: 1, 2: 1, 1: 1})


class SlowClaims(InMemoryStorage):
    """Holds session updates until ``release``; a held write lands even if cancelled.

    That is how SQLite's writer thread behaves: a cancelled call still commits.
    """

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.waiting = asyncio.Event()
        self.hold = False
        self.writes: set[asyncio.Task[bool]] = set()

    async def update_session(self, session_id: str, **kwargs: Any) -> bool:
        if not self.hold:
            return await super().update_session(session_id, **kwargs)
        self.waiting.set()

        async def later() -> bool:
            await self.release.wait()
            return await InMemoryStorage.update_session(self, session_id, **kwargs)

        write = asyncio.ensure_future(later())
        self.writes.add(write)
        return await asyncio.shield(write)


async def test_undo_cancelled_during_its_claim_gives_the_claim_back() -> None:
    """A claim that lands after the task was cancelled is undone: never stuck UNDOING."""
    storage = SlowClaims()
    registry = OperationRegistry()
    registry.handler("t.op")(lambda op: None)
    async with Journal(storage, registry) as journal:
        session_id = await session_of(journal, 3)
        storage.hold = True
        task = asyncio.create_task(journal.undo_session(session_id))
        await storage.waiting.wait()
        task.cancel()
        storage.hold = False
        storage.release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.gather(*storage.writes)
        record = await journal.get_session(session_id)
        assert record is not None
        assert record.status is S.COMPLETED
        report = await journal.undo_session(session_id)
        assert report.status is S.ROLLED_BACK


@pytest.mark.parametrize("scope", ["move_on_after", "task_group"])
async def test_undo_on_error_rolls_back_under_anyio_cancellation(
    journal: Journal, scope: str
) -> None:
    """Cancel scopes of anyio (what Starlette and FastAPI use) still get the rollback."""
    undone: list[int] = []

    @journal.registry.handler("t.op")
    async def handler(op: OperationRecord) -> None:
        undone.append(op.payload["i"])

    ids: list[str] = []

    async def work() -> None:
        async with journal.start_session(undo_on_error=True) as session:
            ids.append(session.session_id)
            await session.record_operation("t.op", {"i": 0})
            await anyio.sleep(60)

    if scope == "move_on_after":
        with anyio.move_on_after(0.05):
            await work()
    else:
        async with anyio.create_task_group() as group:
            group.start_soon(work)
            await anyio.sleep(0.05)
            group.cancel_scope.cancel()
    assert undone == [0]
    record = await journal.get_session(ids[0])
    assert record is not None
    assert record.status is S.ROLLED_BACK


async def test_undo_on_error_rolls_back_under_asyncio_task_group(journal: Journal) -> None:
    """A sibling failing in an asyncio TaskGroup cancels the session, which rolls back."""
    undone: list[int] = []

    @journal.registry.handler("t.op")
    async def handler(op: OperationRecord) -> None:
        undone.append(op.payload["i"])

    async def work() -> None:
        async with journal.start_session(undo_on_error=True) as session:
            await session.record_operation("t.op", {"i": 0})
            await asyncio.sleep(60)

    async def sibling() -> None:
        await asyncio.sleep(0.05)
        raise Boom("sibling failed")

    with pytest.raises(ExceptionGroup):
        async with asyncio.TaskGroup() as group:
            group.create_task(work())
            group.create_task(sibling())
    assert undone == [0]


async def test_hung_handler_in_automatic_undo_is_bounded(journal: Journal) -> None:
    """undo_timeout stops a hung automatic undo; the error says so and progress is kept."""

    @journal.registry.handler("t.op")
    async def handler(op: OperationRecord) -> None:
        if op.payload["i"] == 1:
            await asyncio.sleep(60)

    with pytest.raises(Boom) as caught:
        async with journal.start_session(undo_on_error=True, undo_timeout=0.2) as session:
            await session.record_operations([("t.op", {"i": 0}), ("t.op", {"i": 1})])
            raise Boom("failed")
    assert "TimeoutError" in caught.value.__notes__[0]
    states = [op.state for op in await journal.get_operations(session.session_id)]
    assert states == [O.DONE, O.UNDO_FAILED]
    record = await journal.get_session(session.session_id)
    assert record is not None
    assert record.status is S.PARTIALLY_ROLLED_BACK


def test_undo_timeout_must_be_positive() -> None:
    """A zero or negative undo_timeout is refused when the session is made."""
    journal = Journal(InMemoryStorage())
    with pytest.raises(ValueError, match="undo_timeout"):
        journal.start_session(undo_on_error=True, undo_timeout=0)


async def test_shielded_wait_under_anyio_scope_does_not_spin(journal: Journal) -> None:
    """Waiting for a shielded write inside a cancelled anyio scope costs no busy CPU."""

    async def slow() -> None:
        await asyncio.sleep(0.3)

    started = time.process_time()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await shielded(slow())  # shielded: anyio does not even deliver it here...
        await anyio.lowlevel.checkpoint()  # ...but at the next checkpoint
        pytest.fail("the scope's cancellation was lost")  # pragma: no cover
    assert scope.cancelled_caught
    assert time.process_time() - started < 0.15


class FailingUpdates(InMemoryStorage):
    """Slow appends; every operation update fails."""

    async def append_operations(self, session_id: str, operations: Any) -> list[int]:
        await asyncio.sleep(0.05)
        return await super().append_operations(session_id, operations)

    async def update_operations(self, updates: Any, at: float) -> None:
        raise StorageError("disk full")


async def test_cancellation_is_not_replaced_by_a_failing_followup_write() -> None:
    """Cancelled while the intent is written, with the FAILED write failing: still cancelled."""
    async with Journal(FailingUpdates()) as journal:

        async def job() -> None:
            async with journal.start_session() as session, session.step("t.op"):
                pass

        task = asyncio.create_task(job())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()


async def test_explicit_empty_registry_is_not_replaced_by_the_default(journal: Journal) -> None:
    """plan_undo/undo_session with an empty registry use it (it is not "falsy")."""
    journal.registry.handler("t.op")(lambda op: None)
    session_id = await session_of(journal, 1)
    plan = await journal.plan_undo(session_id, OperationRegistry())
    assert plan.missing_types == ("t.op",)


async def test_step_update_after_the_step_ended_is_refused(journal: Journal) -> None:
    """Updating a step after its block is an error, not a silent no-op."""
    async with journal.start_session() as session:
        async with session.step("t.op", {"a": 1}) as step:
            pass
        with pytest.raises(SessionStateError, match="has ended"):
            step.update(b=2)
    (op,) = await journal.get_operations(session.session_id)
    assert op.payload == {"a": 1}


async def test_unclosed_journal_warns(tmp_path: Any) -> None:
    """A journal dropped while open raises a ResourceWarning naming it."""
    journal = Journal(InMemoryStorage())
    await journal.open()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        journal.__del__()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    await journal.aclose()


async def test_aclose_waits_for_queued_writes_even_when_cancelled(tmp_path: Any) -> None:
    """Closing commits what is queued, also if the closing task is cancelled meanwhile."""
    journal = Journal(__import__("retract").SQLiteStorage(os.path.join(tmp_path, "j.db")))
    await journal.open()
    context = journal.start_session()
    session = await context.__aenter__()
    writes = [asyncio.create_task(session.record_operation("t.op", {"i": i})) for i in range(20)]
    await asyncio.sleep(0)
    closing = asyncio.create_task(journal.aclose())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert all(isinstance(r, OperationRecord) for r in results), results
    async with Journal(
        __import__("retract").SQLiteStorage(os.path.join(tmp_path, "j.db"))
    ) as again:
        assert len(await again.get_operations(session.session_id)) == 20
