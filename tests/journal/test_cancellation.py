"""Cancellation at every await of start, record, step and undo.

A wrapper counts the suspensions of the code under test and cancels its task at the
k-th one, for every k until the code finishes without reaching k. After each run the
journal must tell the truth (no session left RUNNING, no step left INTENT, no
operation left UNDOING, no gap in sequences), and nothing may leak: no thread, no task.
"""

from __future__ import annotations

import asyncio
import functools
import types
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

import pytest

from retract import (
    Journal,
    OperationRecord,
    OperationRegistry,
    OperationState,
    SessionStatus,
)
from tests.helpers import StorageFactory, sqlite_threads, wait_for_sqlite_threads

S = SessionStatus
O = OperationState  # noqa: E741
MAX_AWAITS = 200


@types.coroutine
def _counting(
    coro: Coroutine[Any, Any, Any], on_suspend: Callable[[], None]
) -> Generator[Any, Any, Any]:
    """Drive ``coro`` step by step, calling ``on_suspend`` each time it suspends."""
    to_send: Any = None
    to_throw: BaseException | None = None
    while True:
        try:
            yielded = coro.throw(to_throw) if to_throw is not None else coro.send(to_send)
        except StopIteration as stop:
            return stop.value
        on_suspend()
        try:
            to_send, to_throw = (yield yielded), None
        except BaseException as exc:
            to_send, to_throw = None, exc


async def cancel_at_await(k: int, work: Callable[[], Awaitable[Any]]) -> bool:
    """Run ``work()`` in a task cancelled at its k-th suspension; True if that happened."""
    seen = 0

    def on_suspend() -> None:
        nonlocal seen
        seen += 1
        if seen == k:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()

    async def run() -> Any:
        return await _counting(work(), on_suspend)  # type: ignore[arg-type]

    task = asyncio.create_task(run())
    try:
        await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise  # we were cancelled ourselves
    return seen >= k


async def assert_no_leaks(threads_before: int) -> None:
    """No connection thread and no stray task outlives the journal."""
    await wait_for_sqlite_threads(threads_before)
    for _ in range(200):
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        if not tasks:
            return
        await asyncio.sleep(0.01)
    assert not tasks, tasks


async def sweep(
    storage_factory: StorageFactory,
    prepare: Callable[[Journal], Awaitable[Any]],
    work: Callable[[Journal, Any], Awaitable[Any]],
    check: Callable[[Journal, Any], Awaitable[None]],
) -> int:
    """Cancel ``work`` at each await in turn; return how many await points were covered."""
    threads_before = len(sqlite_threads())
    for k in range(1, MAX_AWAITS):
        async with Journal(storage_factory()) as journal:
            prepared = await prepare(journal)
            fired = await cancel_at_await(k, functools.partial(work, journal, prepared))
            await check(journal, prepared)
        await assert_no_leaks(threads_before)
        if not fired:
            return k - 1
    pytest.fail(f"work still suspending after {MAX_AWAITS} awaits")


async def no_running_sessions(journal: Journal) -> None:
    for session in await journal.list_sessions():
        assert session.status in (S.COMPLETED, S.CANCELLED), session


async def nothing(journal: Journal) -> None:
    return None


async def test_cancel_anywhere_in_a_session_start_and_end(
    storage_factory: StorageFactory,
) -> None:
    """A session cancelled at any await ends COMPLETED or CANCELLED, never RUNNING."""

    async def work(journal: Journal, _: None) -> None:
        async with journal.start_session(job="x"):
            pass

    async def check(journal: Journal, _: None) -> None:
        await no_running_sessions(journal)

    assert await sweep(storage_factory, nothing, work, check) >= 2


async def test_cancel_anywhere_while_recording(storage_factory: StorageFactory) -> None:
    """Records are whole or absent, numbered without gaps, and the session ends truthfully."""

    async def work(journal: Journal, _: None) -> None:
        async with journal.start_session() as session:
            await session.record_operation("t.op", {"i": 0})
            await session.record_operations([("t.op", {"i": 1}), ("t.op", {"i": 2})])
            await session.record_operation("t.op", {"i": 3})

    async def check(journal: Journal, _: None) -> None:
        await no_running_sessions(journal)
        for session in await journal.list_sessions():
            ops = await journal.get_operations(session.session_id)
            assert [op.sequence for op in ops] == list(range(1, len(ops) + 1))
            assert [op.payload["i"] for op in ops] == list(range(len(ops)))
            assert {op.state for op in ops} <= {O.DONE}

    assert await sweep(storage_factory, nothing, work, check) >= 2


async def test_cancel_anywhere_around_a_step(storage_factory: StorageFactory) -> None:
    """A step is DONE, FAILED (cancelled) or absent, never left INTENT or IN_DOUBT."""

    async def work(journal: Journal, _: None) -> None:
        async with journal.start_session() as session:
            async with session.step("t.op", {"i": 0}) as step:
                await asyncio.sleep(0)
                step.update(done=True)
                await asyncio.sleep(0)
            await session.record_operation("t.op", {"i": 1})

    async def check(journal: Journal, _: None) -> None:
        await no_running_sessions(journal)
        for session in await journal.list_sessions():
            ops = await journal.get_operations(session.session_id)
            assert [op.sequence for op in ops] == list(range(1, len(ops) + 1))
            for op in ops:
                assert op.state in (O.DONE, O.FAILED), op
                if op.state is O.FAILED:
                    assert op.error is not None
                    assert "CancelledError" in op.error
                    assert session.status is S.CANCELLED

    assert await sweep(storage_factory, nothing, work, check) >= 2


async def test_cancel_anywhere_in_an_undo_then_resume(storage_factory: StorageFactory) -> None:
    """A cancelled undo leaves nothing UNDOING; resuming completes every handler exactly once.

    Only an operation whose handler was interrupted (UNDO_FAILED) is handed over again.
    """
    completed: Counter[tuple[int, int]] = Counter()
    in_doubt_reruns: list[OperationState] = []
    trial = 0
    registry = OperationRegistry()

    @registry.handler("t.op")
    async def handler(op: OperationRecord) -> None:
        if op.state is not O.DONE:
            in_doubt_reruns.append(op.state)
        await asyncio.sleep(0)
        completed[(trial, op.payload["i"])] += 1

    async def prepare(journal: Journal) -> str:
        nonlocal trial
        trial += 1
        journal.registry = registry
        async with journal.start_session() as session:
            await session.record_operations([("t.op", {"i": i}) for i in range(5)])
        return session.session_id

    async def work(journal: Journal, session_id: str) -> None:
        await journal.undo_session(session_id, max_in_doubt=2)

    async def check(journal: Journal, session_id: str) -> None:
        record = await journal.get_session(session_id)
        assert record is not None
        assert record.status in (S.COMPLETED, S.ROLLED_BACK, S.PARTIALLY_ROLLED_BACK), record
        states = [op.state for op in await journal.get_operations(session_id)]
        assert O.UNDOING not in states
        assert set(states) <= {O.DONE, O.UNDONE, O.UNDO_FAILED}
        report = await journal.undo_session(session_id)
        assert report.status is S.ROLLED_BACK
        for i in range(5):
            assert completed[(trial, i)] == 1, (trial, i, states)

    assert await sweep(storage_factory, prepare, work, check) >= 2
    assert set(in_doubt_reruns) <= {O.UNDO_FAILED}


async def test_native_timeout_during_terminal_write_still_records_the_end(
    storage_factory: StorageFactory,
) -> None:
    """asyncio.timeout firing while the session's end is written cannot leave it RUNNING."""
    for delay in (0.0, 0.0001, 0.0005, 0.001, 0.003):
        async with Journal(storage_factory()) as journal:
            try:
                async with asyncio.timeout(delay), journal.start_session() as session:
                    await session.record_operation("t.op", {"i": 0})
            except TimeoutError:
                pass
            await no_running_sessions(journal)
